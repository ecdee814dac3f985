"""Publishing (`python -m train.publish`) with the real huggingface_hub client against the local Hub stand-in.

A small model with an evaluation report and its card is published in one commit, pinned in a
catalogue, and loaded back by its catalogue name from a checkout without its bundled folder; the
card's model-index is read with huggingface_hub's own reader. Folders whose weights fail strict
loading or whose card lacks (or misstates) results are refused before anything is sent. Finally the
five shipped models, served by the stand-in as they would be published, load by name in the
command line and the app with MEDCONDDIFF_WEIGHTS_SOURCE=hub, and nothing is downloaded while the
bundled folders are there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hubserver import HubServer
from PIL import Image

from medconddiff import catalogue, examples, hub
from train import publish

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = {"config.json", "model.safetensors", "README.md", "learning_curve.png"}  # the curve: the card's picture


def run(module: str, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A small model (PVT-v2-B0, 64 px, fp16: about 12 MB) with an evaluation report and the card made from it."""
    import torch

    from medconddiff import metrics
    from medconddiff.config import MedCondDiffConfig
    from medconddiff.model import MedCondDiff
    from train.card import write_card
    from train.evaluate import mean_of

    torch.manual_seed(0)
    config = MedCondDiffConfig(image_size=64, backbone="pvt_v2_b0", width=32, denoiser_width=32, time_embed_dim=64)
    folder = hub.save_model(MedCondDiff(config).eval(), tmp_path_factory.mktemp("release") / "tiny-demo", half=True)
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(3):
        truth = rng.integers(0, config.num_classes, (32, 32))
        cases[f"case{i}"] = metrics.evaluate_case(np.where(rng.random((32, 32)) < 0.8, truth, 0), truth, 5)
    data = {"root": "/data/lab", "layout": "images", "split": {"file": "split.json", "part": "test"}}
    report = {"class_names": config.class_names, "settings": {"steps": 2}, "data": data, "cases": cases}
    report["mean"] = mean_of(list(cases.values()))
    (folder.parent / "report.json").write_text(json.dumps(report))
    write_card(folder, folder.parent / "report.json")  # README.md + evaluation.json beside the weights
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "learning_curve.png")  # as training draws one
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    for name in ("flair", "t1c"):
        img = np.zeros((48, 40), np.uint8)
        img[8:40, 6:34] = rng.integers(30, 250, (32, 28))
        Image.fromarray(img).save(d / f"{name}.png")
    return [d / "flair.png", d / "t1c.png"]


@pytest.fixture
def server():
    with HubServer() as s:
        yield s


def _checkout(tmp_path: Path, release: Path) -> tuple[Path, Path]:
    """A catalogue offering tiny-demo (lab/tiny-demo, not published yet) and a weights folder bundling it."""
    weights = tmp_path / "weights"
    shutil.copytree(release, weights / "tiny-demo")
    models = tmp_path / "models.toml"
    models.write_text(
        '# a test catalogue\n\n[[models]]\nname = "tiny-demo"\nrepo = "lab/old-name"  # moved below\n'
        'revision = "main"\nbundled = "tiny-demo"\npurpose = "a test model"\n',
        encoding="utf-8",
    )
    return models, weights


def test_publish_pins_the_commit_and_the_model_loads_back_by_name_without_its_folder(
    server, release, pair, tmp_path
):  # fmt: skip
    models, weights = _checkout(tmp_path, release)
    env = server.env(tmp_path / "hf-publisher", token=True)
    env |= {catalogue.CATALOGUE_ENV: str(models), hub.WEIGHTS_DIR_ENV: str(weights)}
    r = run("train.publish", "tiny-demo", "--repo", "lab/tiny-demo", env=env)
    assert r.returncode == 0, r.stderr

    assert len(server.commit_log) == 1, "one commit holds everything"
    commit = server.commit_log[0]["commit"]
    assert f"commit {commit}" in r.stdout and f"tiny-demo = lab/tiny-demo@{commit}" in r.stdout
    published = server.files("lab/tiny-demo", commit)
    assert set(published) - {".gitattributes"} == PUBLISHED
    assert all(published[name] == (release / name).read_bytes() for name in PUBLISHED)
    oid = hashlib.sha256(published["model.safetensors"]).hexdigest()
    assert ("PUT", f"/lfs/{oid}") in server.requests, "the weights went through Git LFS, as the Hub takes them"
    pinned = catalogue.find("tiny-demo", models)
    assert (pinned.repo, pinned.revision) == ("lab/tiny-demo", commit)
    assert models.read_text().startswith("# a test catalogue\n") and 'purpose = "a test model"' in models.read_text()

    shutil.rmtree(weights / "tiny-demo")  # now a checkout without the bundled folder, and a fresh cache
    env = server.env(tmp_path / "hf-user") | {catalogue.CATALOGUE_ENV: str(models), hub.WEIGHTS_DIR_ENV: str(weights)}
    seen = len(server.requests)
    common = [*map(str, pair), "--steps", "2", "--seed", "1", "--quiet"]
    by_name = run(
        "medconddiff", "segment", *common, "-o", str(tmp_path / "name.png"), "--weights", "tiny-demo", env=env
    )
    assert by_name.returncode == 0, by_name.stderr
    local = run("medconddiff", "segment", *common, "-o", str(tmp_path / "dir.png"), "--weights", str(release), env=env)
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "name.png")), np.asarray(Image.open(tmp_path / "dir.png"))
    )
    asked = {path for _, path in server.requests[seen:]}
    assert f"/lab/tiny-demo/resolve/{commit}/model.safetensors" in asked, "the pinned commit is what loads"
    assert not any("/resolve/main/" in path for path in asked)

    info = run("medconddiff", "info", "--weights", "tiny-demo", env=env | {"HF_HUB_OFFLINE": "1"})  # from the cache now
    assert info.returncode == 0, info.stderr
    assert (
        f"(tiny-demo, from the Hub: lab/tiny-demo@{commit})" in info.stdout and str(tmp_path / "hf-user") in info.stdout
    )


def test_the_published_card_is_read_by_the_hubs_own_reader(server, release, tmp_path):
    """The card as downloaded from the repo: its model-index parses into the report's results."""
    from huggingface_hub import ModelCard, metadata_load

    from train import card as cards

    env = server.env(tmp_path / "hf", token=True)
    r = run("train.publish", str(release), "--repo", "lab/carded", env=env)
    assert r.returncode == 0, r.stderr
    assert "pin it in the catalogue" in r.stdout  # a folder, not an offered model: the catalogue is not touched
    downloaded = tmp_path / "README.md"
    downloaded.write_bytes(server.files("lab/carded")["README.md"])
    card = ModelCard.load(downloaded, ignore_metadata_errors=False)
    report = json.loads((release / "evaluation.json").read_text())
    assert card.data.pipeline_tag == "image-segmentation" and card.data.license and card.data.datasets
    rows = [
        (e.task_type, e.dataset_split, e.metric_type, e.metric_name, e.metric_value) for e in card.data.eval_results
    ]
    expected = [("image-segmentation", "test", m["type"], m["name"], m["value"]) for m in cards.report_metrics(report)]
    assert rows == expected and len(rows) == 3 + 4  # three means, then the Dice of each of the four classes
    assert rows[0][4] == round(report["mean"]["dice_mean"]["foreground"], 4)
    assert metadata_load(downloaded)["model-index"][0]["name"] == "tiny-demo"


def test_dry_run_lists_the_upload_and_sends_nothing(server, release, tmp_path):
    r = run("train.publish", str(release), "--repo", "lab/tiny-demo", "--dry-run", env=server.env(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dry run: nothing is uploaded.\nwould create (if missing) the model repo lab/tiny-demo")
    for name in PUBLISHED:
        assert f"  {name} " in r.stdout
    assert "model-index: 7 results on the test split" in r.stdout
    assert server.requests == []


def _damaged(release: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(release, folder)
    return folder


def test_weights_that_fail_strict_loading_are_not_published(server, release, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _damaged(release, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors.pop(sorted(tensors)[0])  # one tensor missing: the model cannot be rebuilt exactly
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    r = run("train.publish", str(folder), "--repo", "lab/x", env=server.env(tmp_path / "hf", token=True))
    assert_clean_error(r, "the weights do not load strictly, so they are not published", "missing")
    assert server.requests == []


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("no-results", "the model card lacks results (no model-index)"),
        ("stale", "its model-index is not the results of evaluation.json"),
        ("no-card", "lacks README.md"),
        ("bad-yaml", "its metadata does not parse"),
    ],
)
def test_a_card_without_its_results_is_not_published(server, release, tmp_path, damage, fragment):
    from train.card import write_card

    folder = _damaged(release, tmp_path)
    if damage == "no-results":
        (folder / "evaluation.json").unlink()
        write_card(folder)  # no report: "Not evaluated yet", no model-index
    elif damage == "stale":
        report = json.loads((folder / "evaluation.json").read_text())
        report["mean"]["dice_mean"]["foreground"] += 0.1  # the numbers moved on, the card did not
        (folder / "evaluation.json").write_text(json.dumps(report))
    elif damage == "no-card":
        (folder / "README.md").unlink()
    else:
        card = (folder / "README.md").read_text()
        (folder / "README.md").write_text(card.replace("model-index:", "model-index: [", 1))
    r = run("train.publish", str(folder), "--repo", "lab/x", "--dry-run", env=server.env(tmp_path / "hf", token=True))
    assert_clean_error(r, fragment)
    assert server.requests == []


def test_publishing_without_a_token_says_how_to_log_in(server, release, tmp_path):
    r = run("train.publish", str(release), "--repo", "lab/x", env=server.env(tmp_path / "hf"))  # no HF_TOKEN
    assert_clean_error(r, "the Hub refused to publish to lab/x", "401", "hf auth login")
    assert server.commit_log == []


# -- the shipped models, served by the stand-in as train.publish would publish them ---------------------------------

SERVE_ALL = textwrap.dedent(
    """
    import json, sys
    from medconddiff.__main__ import main
    jobs = json.loads(sys.argv[1])
    sys.exit(max(main(["segment", *files, "-o", out, "--weights", name, "--steps", "2", "--ensemble", "1", "--quiet"])
                 for name, files, out in jobs))
    """
)


def _shipped_or_skip() -> list[catalogue.Model]:
    models = catalogue.load()
    if any(hub.bundled_folder(m) is None for m in models):
        pytest.skip("the shipped weights are not all bundled here")
    return models


@pytest.mark.slow
def test_every_catalogued_model_serves_from_the_hub_in_the_cli_and_the_app(server, tmp_path):
    """With MEDCONDDIFF_WEIGHTS_SOURCE=hub (as a Space without assets/weights/ would be) each catalogued model
    loads by name from its repo at its pinned revision, through the command line and the app's API, and
    segments its own gallery example exactly as its bundled folder does."""
    from gradio_client import Client, handle_file
    from support.appserver import AppServer

    models = _shipped_or_skip()
    for m in models:
        folder = hub.bundled_folder(m)
        server.add_repo(m.repo, {n: folder / n for n in publish.published_files(folder)}, revision=m.revision)
    featured = {e.caption: e for e in examples.load_examples()}
    jobs = [(m.name, list(featured[m.example].files), str(tmp_path / f"{m.name}-bundled.png")) for m in models]
    env = server.env(tmp_path / "hf") | {"HF_HUB_OFFLINE": "1"}  # bundled: no network at all
    r = subprocess.run([sys.executable, "-c", SERVE_ALL, json.dumps(jobs)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]

    env = server.env(tmp_path / "hf") | {catalogue.SOURCE_ENV: "hub"}
    hub_jobs = [(name, files, out.replace("-bundled", "-hub")) for name, files, out in jobs]
    r = subprocess.run([sys.executable, "-c", SERVE_ALL, json.dumps(hub_jobs)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for m in models:
        assert f"/{m.repo}/resolve/{m.revision}/model.safetensors" in {p for _, p in server.requests}, m.name
    for (name, _, bundled), (_, _, pulled) in zip(jobs, hub_jobs, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(pulled)), np.asarray(Image.open(bundled)), err_msg=name)

    app_env = env | {"MEDCONDDIFF_CUSTOM_WEIGHTS": "off", "HF_HUB_OFFLINE": "0"}
    with AppServer(tmp_path / "app", env=app_env) as app:
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
        for name, files, bundled in jobs:
            mask, summary = client.predict([handle_file(f) for f in files], name, 2, 1, "", 0, api_name="/segment")
            assert summary["model"] == name
            np.testing.assert_array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(bundled)), err_msg=name)


def test_with_the_bundled_folders_present_nothing_is_downloaded(server, tmp_path):
    _shipped_or_skip()
    probe = "from medconddiff import catalogue, hub\nfor name in catalogue.names(): print(hub.resolve(name))"
    env = server.env(tmp_path / "hf")  # online, pointed at the stand-in, which serves nothing
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(hub.bundled_folder(m)) for m in catalogue.load()]
    assert server.requests == []
