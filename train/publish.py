"""Publish a model to a Hugging Face Hub model repo in one commit, and pin that commit in the models catalogue.

    python -m train.publish kvasir-demo --repo medconddiff/kvasir-demo --dry-run   # what would be uploaded
    python -m train.publish kvasir-demo --repo medconddiff/kvasir-demo             # upload, pin the commit
    python -m train.publish path/to/weights --repo owner/name                      # any weights folder

NAME is an offered model (its bundled folder is published; `--repo` defaults to its catalogued repo)
or a weights folder. Nothing is uploaded unless the weights load strictly and the model card carries
a `model-index` whose results are those of the evaluation.json beside it (`python -m train.card`
writes both). The commit holds config.json, model.safetensors and README.md (the card), and the
learning curve the card shows (learning_curve.png) where the folder has one; its id is
printed and, for an offered model, written into the catalogue as the revision to load (`--no-pin`
leaves the catalogue as it is). Log in first with `hf auth login` (or set HF_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from medconddiff import catalogue, hub
from medconddiff.errors import MedCondDiffError, one_line

from . import card as cards
from .data import command_main

FILES = (hub.CONFIG_NAME, hub.WEIGHTS_NAME, hub.CARD_NAME)  # exactly what a model repo needs to load and to read
PICTURES = ("learning_curve.png",)  # uploaded too where the folder has them: the card embeds the learning curve


def published_files(folder: Path) -> list[str]:
    """What one commit of `folder` holds: the three files, and the card's pictures that are there."""
    return [*FILES, *(p for p in PICTURES if (folder / p).is_file())]


class PublishError(MedCondDiffError):
    """A folder that may not be published (weights or card not fit), or a Hub that refused the upload."""


@dataclass(frozen=True)
class Release:
    """A checked weights folder, ready to upload: where it is, the offered model it is (if any), its results."""

    folder: Path
    model: catalogue.Model | None
    results: list  # huggingface_hub EvalResult, as the Hub will read them from the card


def _folder(name: str) -> tuple[Path, catalogue.Model | None]:
    model = catalogue.find(name)
    if model is not None:
        folder = hub.bundled_folder(model)
        if folder is None:
            raise PublishError(
                f"{name}: its bundled folder {model.bundled or '(none catalogued)'} is not here (looked in "
                f"{', '.join(map(str, hub.weights_dirs()))}); publish the weights from their folder: NAME = the folder"
            )
        return folder, model
    if Path(name).is_dir():
        return Path(name), None
    offered = ", ".join(catalogue.names()) or "none"
    raise PublishError(
        f"{name}: neither an offered model nor a folder; accepted: a weights folder, or one of {offered}"
    )


def _card_results(folder: Path) -> list:
    """The card's model-index as huggingface_hub reads it; `PublishError` when the card has none or is malformed."""
    import yaml
    from huggingface_hub import ModelCard

    how = f"write it with `python -m train.card {folder} --report EVALUATION.json`"
    try:
        card = ModelCard.load(folder / hub.CARD_NAME, ignore_metadata_errors=False)
    except (yaml.YAMLError, ValueError, TypeError, KeyError) as err:  # unparsable YAML, a model-index the Hub rejects
        raise PublishError(f"{folder / hub.CARD_NAME}: its metadata does not parse ({one_line(err)}); {how}") from None
    if not card.data.eval_results:
        raise PublishError(f"{folder / hub.CARD_NAME}: the model card lacks results (no model-index); {how}")
    missing = [k for k in ("pipeline_tag", "license") if not getattr(card.data, k, None)]
    if missing:
        raise PublishError(f"{folder / hub.CARD_NAME}: the card's metadata lacks {', '.join(missing)}; {how}")
    return card.data.eval_results


def _as_rows(results) -> list[tuple]:
    return [(r.dataset_split, r.metric_type, r.metric_name, r.metric_value) for r in results]


def check(name: str) -> Release:
    """Everything that must hold before an upload, checked locally (no network): files, strict load, card results."""
    folder, model = _folder(name)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise PublishError(f"{folder}: lacks {', '.join(missing)}; a published model holds {', '.join(FILES)}")
    try:
        hub.load_folder(folder)  # strict: every tensor present with its shape, safetensors only
    except MedCondDiffError as err:
        raise PublishError(f"{folder}: the weights do not load strictly, so they are not published ({err})") from None
    results = _card_results(folder)
    report_file = folder / cards.REPORT_NAME
    if report_file.is_file():  # the card's numbers must be the evaluation's, not typed by hand or left stale
        report = json.loads(report_file.read_text())
        split = cards.report_split(report)
        expected = [(split, m["type"], m["name"], m["value"]) for m in cards.report_metrics(report)]
        if _as_rows(results) != expected:
            raise PublishError(
                f"{folder / hub.CARD_NAME}: its model-index is not the results of {report_file.name}; "
                f"regenerate the card with `python -m train.card {folder}`"
            )
    return Release(folder=folder, model=model, results=results)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def describe(release: Release, repo: str, revision: str, *, pin: bool) -> str:
    """What `publish` would do, file by file (the --dry-run listing)."""
    lines = [f"would create (if missing) the model repo {repo} and make one commit on {revision}:"]
    for name in published_files(release.folder):
        extra = ""
        if name == hub.CARD_NAME:
            splits = sorted({r.dataset_split for r in release.results})
            extra = f"  model-index: {len(release.results)} results on the {', '.join(splits)} split"
        lines.append(f"  {name:<18} {_size((release.folder / name).stat().st_size):>9}{extra}")
    if release.model is not None and pin:
        lines.append(f"then pin {release.model.name} in {catalogue.path()} to the new commit")
    return "\n".join(lines)


def upload(release: Release, repo: str, *, revision: str = "main", private: bool | None = None) -> str:
    """Create the repo if needed and commit the three files in one commit; the commit's id (40 hex digits)."""
    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    name = release.model.name if release.model else release.folder.name
    message = f"MedCondDiff {name}: config.json, model.safetensors and the model card with its results"
    operations = [
        CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(release.folder / f))
        for f in published_files(release.folder)
    ]
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True, private=private)
        info = api.create_commit(repo, operations, commit_message=message, revision=revision)
    except OfflineModeIsEnabled:
        raise PublishError(f"{repo}: HF_HUB_OFFLINE is set; publishing needs the Hub: unset it") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        login = " (log in with `hf auth login` or set HF_TOKEN to a token that may write there)"
        raise PublishError(
            f"the Hub refused to publish to {repo}: {one_line(err)}{login if status in (401, 403) else ''}"
        ) from None
    except (httpx.HTTPError, OSError, ValueError) as err:
        raise PublishError(f"could not publish to {repo}: {type(err).__name__}: {one_line(err)}") from None
    return info.oid


def pin(file: Path, name: str, repo: str, revision: str) -> None:
    """Write `repo` and `revision` into the catalogue's [[models]] table of `name`, keeping the rest of the file."""
    text = file.read_text(encoding="utf-8")
    blocks = re.split(r"(?m)^(?=\[\[models\]\])", text)
    named = re.compile(rf'(?m)^name\s*=\s*"{re.escape(name)}"\s*$')
    index = next((i for i, b in enumerate(blocks) if named.search(b)), None)
    if index is None:
        raise PublishError(f"{file}: no [[models]] table with name = {name!r} to pin")
    block = re.sub(r'(?m)^repo\s*=\s*"[^"\n]*"', f'repo = "{repo}"', blocks[index], count=1)
    blocks[index] = re.sub(r'(?m)^revision\s*=\s*"[^"\n]*"', f'revision = "{revision}"', block, count=1)
    file.write_text("".join(blocks), encoding="utf-8")
    written = catalogue.find(name, file)
    if written is None or (written.repo, written.revision) != (repo, revision):
        raise PublishError(f"{file}: could not pin {name}; set its repo = {repo!r} and revision = {revision!r} by hand")


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m train.publish", description="Publish a model to the Hugging Face Hub and pin it."
    )
    ap.add_argument("name", metavar="NAME", help="an offered model (its bundled folder) or a weights folder")
    ap.add_argument("--repo", help="the Hub model repo, owner/name (default: the offered model's catalogued repo)")
    ap.add_argument("--revision", default="main", help="the branch to commit to (default: main)")
    ap.add_argument("--private", action="store_true", help="create the repo as private (an existing repo keeps its)")
    ap.add_argument(
        "--dry-run", action="store_true", help="check the folder and list what would be uploaded; no network"
    )
    ap.add_argument("--no-pin", action="store_true", help="do not write the new commit into the catalogue")
    args = ap.parse_args(argv)

    release = check(args.name)
    repo = args.repo or (release.model.repo if release.model else None)
    if not repo:
        ap.error("--repo OWNER/NAME is needed for a folder that is not an offered model")
    if not catalogue.REPO_ID.match(repo):
        raise PublishError(f"--repo {repo!r} is not a Hub repo id; accepted: owner/name")
    if args.dry_run:
        print("dry run: nothing is uploaded.")
        print(describe(release, repo, args.revision, pin=not args.no_pin))
        return 0
    commit = upload(release, repo, revision=args.revision, private=True if args.private else None)
    print(f"published {release.folder} to {repo}: commit {commit}")
    if release.model is not None and not args.no_pin:
        pin(catalogue.path(), release.model.name, repo, commit)
        print(f"pinned in {catalogue.path()}: {release.model.name} = {repo}@{commit}")
    else:
        print(f'pin it in the catalogue ({catalogue.path()}): repo = "{repo}", revision = "{commit}"')
    return 0


main = command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
