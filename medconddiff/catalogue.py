"""The offered models (assets/models.toml): each one's name, Hub repo and pinned revision, bundled folder, example.

    from medconddiff import catalogue
    for m in catalogue.load():
        print(m.name, m.repo, m.revision, m.purpose)

The catalogue decides what the demo and the command line offer; `medconddiff.hub.locate` decides
where an offered model's weights come from (its bundled folder, else the Hub at the pinned
revision). The file is data: offer a model by adding one [[models]] table to it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, which huggingface_hub depends on there
    import tomli as tomllib

from .errors import WeightsError

_PACKAGE = Path(__file__).resolve().parent
CATALOGUE_FILE = _PACKAGE.parent / "assets" / "models.toml"  # a source checkout
INSTALLED_CATALOGUE_FILE = _PACKAGE / "assets" / "models.toml"  # `pip install .` copies it here (package data)
CATALOGUE_ENV = "MEDCONDDIFF_CATALOGUE"  # another catalogue file (tests, deployments), read instead
SOURCE_ENV = "MEDCONDDIFF_WEIGHTS_SOURCE"
SOURCES = {
    "auto": "the bundled folder when it is there, else the Hub repo at the pinned revision",
    "hub": "always the Hub repo at the pinned revision, through the Hugging Face cache",
    "bundled": "only the bundled folder; never the network",
}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class Model:
    """One offered model, as its [[models]] table in the catalogue describes it."""

    name: str  # what --weights, the API and the model picker call it
    repo: str  # the Hub model repo it is published in, "owner/name"
    revision: str  # the commit (or branch, tag) of `repo` to load
    purpose: str  # one line for the model picker
    bundled: str | None = None  # its folder's name under the weights folders (`hub.weights_dirs`), if any
    example: str | None = None  # the caption of its gallery example (assets/examples/examples.json)

    @property
    def download_command(self) -> str:
        """The command that fetches this model's pinned files into a folder DIR."""
        return f"hf download {self.repo} --revision {self.revision} --local-dir DIR"


_FIELDS = {f.name for f in fields(Model)}
_REQUIRED = ("name", "repo", "revision", "purpose")


def path() -> Path:
    """The catalogue file: $MEDCONDDIFF_CATALOGUE, else the checkout's assets/models.toml, else the installed copy."""
    if os.environ.get(CATALOGUE_ENV):
        return Path(os.environ[CATALOGUE_ENV]).expanduser()
    return CATALOGUE_FILE if CATALOGUE_FILE.is_file() else INSTALLED_CATALOGUE_FILE


def _entry(table: object, where: str) -> Model:
    if not isinstance(table, dict):
        raise WeightsError(f"{where}: not a table; accepted: [[models]] tables with {', '.join(_REQUIRED)}")
    unknown = sorted(set(table) - _FIELDS)
    missing = [k for k in _REQUIRED if k not in table]
    if unknown or missing:
        problems = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing {', '.join(missing)}"] if missing else []
        )
        raise WeightsError(f"{where}: {'; '.join(problems)}; accepted fields: {', '.join(sorted(_FIELDS))}")
    bad = [k for k, v in table.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise WeightsError(f"{where}: {', '.join(bad)} must be non-empty text")
    model = Model(**{k: v.strip() for k, v in table.items()})
    if not _NAME.match(model.name) or (model.bundled is not None and not _NAME.match(model.bundled)):
        raise WeightsError(
            f"{where}: name and bundled are folder-like names (letters, digits, '.', '_', '-'), not paths"
        )
    if not REPO_ID.match(model.repo):
        raise WeightsError(f"{where}: repo {model.repo!r} is not a Hub repo id; accepted: owner/name")
    return model


def load(file: str | Path | None = None) -> list[Model]:
    """The catalogued models in the file's order ([] when there is no catalogue file); `WeightsError` if malformed."""
    file = Path(file) if file is not None else path()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"{file}: not a readable TOML catalogue ({err}); accepted: [[models]] tables") from None
    tables = data.get("models", [])
    if not isinstance(tables, list) or set(data) - {"models"}:
        raise WeightsError(f"{file}: expected only [[models]] tables, found {', '.join(sorted(data))}")
    models = [_entry(t, f"{file}: [[models]] #{i + 1}") for i, t in enumerate(tables)]
    names = [m.name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise WeightsError(f"{file}: {', '.join(twice)} catalogued more than once; each name once")
    return models


def find(name: str, file: str | Path | None = None) -> Model | None:
    """The catalogued model called `name`, or None."""
    return next((m for m in load(file) if m.name == name), None)


def names(file: str | Path | None = None) -> list[str]:
    return [m.name for m in load(file)]


def weights_source() -> str:
    """MEDCONDDIFF_WEIGHTS_SOURCE: auto (default), hub or bundled; `WeightsError` for any other value."""
    value = os.environ.get(SOURCE_ENV, "").strip().lower() or "auto"
    if value not in SOURCES:
        accepted = "; ".join(f"{k} ({v})" for k, v in SOURCES.items())
        raise WeightsError(f"{SOURCE_ENV}={value!r} is not a weights source; accepted: {accepted}")
    return value
