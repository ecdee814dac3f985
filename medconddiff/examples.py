"""The bundled example cases (assets/examples/examples.json): what they are, which model they are for.

    from medconddiff import examples
    for ex in examples.load_examples():
        print(ex.caption, ex.model, ex.files)

The catalogue is data: add an example by adding its files and one entry to examples.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
CATALOGUE = "examples.json"


@dataclass(frozen=True)
class Example:
    caption: str
    files: tuple[str, ...]  # absolute paths, one per modality, in the channel order of `model`
    truth: str | None  # absolute path of the label map, if there is one
    model: str  # the bundled model it was made for
    modality: str  # "mri", "ct" or "natural", as in MedCondDiffConfig.modality


def _catalogue(folder: Path) -> dict:
    path = folder / CATALOGUE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"examples": []}
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); accepted: see its 'about'") from None


def load_examples(folder: str | Path = EXAMPLES_DIR) -> list[Example]:
    """The examples listed in `folder`/examples.json whose files are all there, in the catalogue's order."""
    folder = Path(folder)
    out = []
    for entry in _catalogue(folder)["examples"]:
        files = tuple(str(folder / name) for name in entry["files"])
        truth = str(folder / entry["truth"]) if entry.get("truth") else None
        if all(Path(f).is_file() for f in files):
            truth = truth if truth and Path(truth).is_file() else None
            out.append(Example(entry["caption"], files, truth, entry["model"], entry["modality"]))
    return out


def attribution(folder: str | Path = EXAMPLES_DIR) -> str:
    """Where the examples come from and their licence, in one Markdown paragraph."""
    return _catalogue(Path(folder)).get("attribution", "")


def thumbnail(example: Example) -> np.ndarray:
    """The example's slice (a volume's middle one) with its labels drawn on: (H, W, 3) uint8, display orientation."""
    from . import io, viz

    scan = io.read_scan(list(example.files))
    z = scan.data.shape[-1] // 2 if scan.is_volume else None
    picture = viz.to_display(
        scan.data[..., z] if z is not None else scan.data, modality=example.modality, kind=scan.kind
    )
    if example.truth:
        truth = io.read_labels(example.truth, shape=scan.data.shape[1:], num_classes=256)
        truth = truth[..., z] if z is not None else truth
        picture = viz.overlay(picture, truth, viz.class_colours(int(truth.max()) + 1), alpha=0.35)
    return viz.for_viewer(picture, scan.kind, io.axis_codes(scan.affine) if scan.is_volume else None)
