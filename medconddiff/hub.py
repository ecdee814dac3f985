"""Weights from an offered model's name, a local folder or a Hugging Face Hub repo id, through safetensors only.

A weights folder holds config.json + model.safetensors (+ README.md, the model card), as written
by `MedCondDiff.save_pretrained`. `load_model` accepts:
    None                  MEDCONDDIFF_WEIGHTS if set, else the default model ("brats-demo")
    an offered name       a model of the catalogue (assets/models.toml, `medconddiff.catalogue`): its
                          bundled folder when present, else its Hub repo at the pinned revision (`locate`)
    another short name    a folder of that name under `weights_dirs()`
    a folder path         loaded as is
    "owner/name[@rev]"    downloaded (or taken from the cache) with huggingface_hub
Loading is strict: every tensor must be present with the right shape; pickles are never read.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch

from . import catalogue
from .errors import WeightsError, one_line
from .model import CONFIG_NAME, WEIGHTS_NAME, MedCondDiff

_PACKAGE = Path(__file__).resolve().parent
WEIGHTS_DIR = _PACKAGE.parent / "assets" / "weights"  # a source checkout (run from the repo, or `pip install -e .`)
INSTALLED_WEIGHTS_DIR = _PACKAGE / "weights"  # `pip install .` copies assets/weights/ here (package data)
WEIGHTS_DIR_ENV = "MEDCONDDIFF_WEIGHTS_DIR"  # a folder of named weight folders, searched first
DEFAULT_WEIGHTS = "brats-demo"  # the catalogue's first model
CARD_NAME = "README.md"  # the model card, fetched with the weights when the repo has one
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".nii", ".gz", ".png", ".jpg", ".zip")


def weights_dirs() -> list[Path]:
    """Where bundled names are looked up, in order: $MEDCONDDIFF_WEIGHTS_DIR, the checkout, the installed package.

    The same list from any working directory: nothing here depends on where the command runs.
    """
    dirs = [Path(os.environ[WEIGHTS_DIR_ENV]).expanduser()] if os.environ.get(WEIGHTS_DIR_ENV) else []
    return [*dirs, WEIGHTS_DIR, INSTALLED_WEIGHTS_DIR]


def _bundled(name: str) -> Path | None:
    """The first folder `name` under `weights_dirs()` that holds the weights file, or None."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    return next((d / name for d in weights_dirs() if (d / name / WEIGHTS_NAME).is_file()), None)


def bundled_folder(model: catalogue.Model) -> Path | None:
    """An offered model's bundled folder, when one is there (whatever MEDCONDDIFF_WEIGHTS_SOURCE says)."""
    return _bundled(model.bundled) if model.bundled else None


def bundled_models() -> list[str]:
    """Names of the bundled weight folders (config.json + model.safetensors) found under `weights_dirs()`."""
    names = set()
    for d in weights_dirs():
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if (p / WEIGHTS_NAME).is_file())
    return sorted(names)


def _split_revision(spec: str) -> tuple[str, str | None]:
    repo, _, rev = spec.partition("@")
    return repo, (rev or None)


def resolve(spec: str | os.PathLike | None = None) -> Path:
    """Turn a weights spec into a local folder holding config.json and model.safetensors."""
    if spec is None or str(spec) == "":
        spec = os.environ.get("MEDCONDDIFF_WEIGHTS") or DEFAULT_WEIGHTS
    spec = str(spec)
    offered = catalogue.find(spec)
    if offered is not None:
        return locate(offered)
    bundled = _bundled(spec)
    if bundled is not None:
        return bundled
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    repo, rev = _split_revision(spec)
    # Only file-like endings make a spec a path: repo names and revisions may hold dots ("x/y-1.5@v1.0").
    looks_like_path = (
        spec.startswith((".", "/", "~")) or "\\" in spec or repo.count("/") > 1 or repo.lower().endswith(_FILE_SUFFIXES)
    )
    if path.exists():
        raise WeightsError(f"{spec}: is a file; --weights takes a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    if looks_like_path or not catalogue.REPO_ID.match(repo):
        offered_names = ", ".join(catalogue.names()) or "none"
        others = ", ".join(n for n in bundled_models() if n not in catalogue.names())
        where = ", ".join(str(d) for d in weights_dirs())
        raise WeightsError(
            f"{spec}: not an offered model, no such weights folder, and not a Hub repo id (owner/name[@revision]). "
            f"Offered models: {offered_names} ({catalogue.path()})"
            + (f"; other weight folders: {others}" if others else "")
            + f" (looked in {where}; set {WEIGHTS_DIR_ENV} to a folder of weight folders)"
        )
    return _download(repo, rev)


def locate(model: catalogue.Model) -> Path:
    """An offered model's weights folder: its bundled folder when present, else its Hub repo at the pinned revision.

    MEDCONDDIFF_WEIGHTS_SOURCE=hub skips the bundled folder, =bundled never goes to the Hub. When
    neither side has it, one `WeightsError` names the repo, the revision and the `hf download` command.
    """
    source = catalogue.weights_source()
    folder = bundled_folder(model) if source != "hub" else None
    if folder is not None:
        return folder
    where = ", ".join(str(d) for d in weights_dirs())
    if source == "bundled":
        missing = f"its folder {model.bundled!r} is in none of {where}" if model.bundled else "it has no bundled folder"
        raise WeightsError(
            f"{model.name}: {catalogue.SOURCE_ENV}=bundled, but {missing}; accepted: put the folder there "
            f"(`{model.download_command}`, then copy DIR to {WEIGHTS_DIR / (model.bundled or model.name)}), "
            f"or set {catalogue.SOURCE_ENV}=auto to load it from the Hub"
        )
    try:
        return _download(model.repo, model.revision)
    except WeightsError as err:
        if source == "hub":
            not_here = f"{catalogue.SOURCE_ENV}=hub, and "
        else:
            not_here = f"not bundled here (no {model.bundled} in {where}), and " if model.bundled else ""
        hint = "" if "hf download" in str(err) else f"; get it with `{model.download_command}` and pass --weights DIR"
        raise WeightsError(f"{model.name}: {not_here}{err}{hint}") from None


def cached_folder(model: catalogue.Model) -> Path | None:
    """The Hugging Face cache's copy of an offered model's pinned weights, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(model.repo, name, revision=model.revision) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    return Path(found[1]).parent if all(isinstance(f, str) for f in found) else None


def availability(model: catalogue.Model) -> str:
    """Where an offered model would load from now, in words, without loading it or touching the network."""
    source = catalogue.weights_source()
    folder = bundled_folder(model) if source != "hub" else None
    if folder is not None:
        return f"bundled ({folder})"
    if source == "bundled":
        return "not bundled here"
    pinned = f"{model.repo}@{model.revision}"
    return f"Hub {pinned}, " + ("in the Hugging Face cache" if cached_folder(model) else "downloaded when first used")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download(repo: str, revision: str | None) -> Path:
    """Fetch config.json and model.safetensors of a Hub repo (or take them from the cache), and its card if any."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}" + (f"@{revision}" if revision else "")
    files = {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files[name] = Path(hf_hub_download(repo_id=repo, filename=name, revision=revision))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            # before EntryNotFoundError: LocalEntryNotFoundError is a subclass of it (offline, not in the cache)
            offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
            raise WeightsError(
                f"cannot reach the Hugging Face Hub for {where}{offline} and no cached copy exists. "
                f"Connect to the internet (or set HF_ENDPOINT to a mirror), or download it elsewhere with "
                f"`hf download {repo}{f' --revision {revision}' if revision else ''} --local-dir DIR` "
                f"and pass that folder with --weights DIR"
            ) from None
        except RevisionNotFoundError:
            raise WeightsError(
                f"Hub repo {repo}: revision {revision!r} does not exist; accepted: a branch, tag or commit of the repo"
            ) from None
        except RepositoryNotFoundError:
            raise WeightsError(f"Hub repo {repo} not found (or private: log in with `hf auth login`)") from None
        except EntryNotFoundError:
            extra = " (pickled .bin/.pt weights are never loaded)" if name == WEIGHTS_NAME else ""
            raise WeightsError(
                f"Hub repo {where} has no {name}{extra}; accepted: {CONFIG_NAME} + {WEIGHTS_NAME}"
            ) from None
        except HfHubHTTPError as err:
            raise WeightsError(f"Hub repo {where}: download failed ({one_line(err)})") from None
        except (OSError, ValueError) as err:  # a full disk, an unwritable cache, a malformed revision, ...
            raise WeightsError(
                f"Hub repo {where}: could not fetch {name} ({type(err).__name__}: {one_line(err)})"
            ) from None
    # the model card at the same commit (the demo's About tab reads it); a repo without one still loads
    with contextlib.suppress(EntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        hf_hub_download(repo_id=repo, filename=CARD_NAME, revision=files[CONFIG_NAME].parent.name)
    return files[WEIGHTS_NAME].parent


def load_folder(folder: Path, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model from folder/config.json and load folder/model.safetensors strictly."""
    return MedCondDiff.from_folder(folder, device=device)


def load_model(spec: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load MedCondDiff weights from a bundled name, a folder, or a Hub repo id (`id@revision`)."""
    return load_folder(resolve(spec), device=device)


def save_model(model, folder: str | Path, *, half: bool = False, model_card: str | None = None) -> Path:
    """Write config.json + model.safetensors (+ README.md) with the Hub mixin's `save_pretrained`.

    `half` stores fp16 tensors (half the download); `load_folder` upcasts them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model_card is not None:
        (folder / "README.md").write_text(model_card, encoding="utf-8")
    to_save = copy.deepcopy(model).half() if half else model
    to_save.save_pretrained(folder, config=model.config.to_dict())
    return folder
