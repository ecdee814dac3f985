"""The shipped weights give the same masks on the bundled examples as when these fingerprints were taken.

Each bundled example goes through the library (read, then `segment_volume` for NIfTI slabs, or
`segment_slices` for a 2D slice) with its model's default settings, seed 0 and precision "fp32" (the
library's default "auto" picks bf16 on hardware that has it: tests/test_precision.py holds that to
the fp32 masks by Dice; these fingerprints hold fp32 to the bit). The fingerprint of
the uint8 label map is its per-class pixel counts and its sha256; `tests/data/regression_masks.json`
holds those of the code before the data-path restructuring (the photograph and cardiac models: when they
were added). Regenerate only when a change of
masks is intended, and say why in the commit:

    python tests/test_regression_masks.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
FINGERPRINTS = Path(__file__).resolve().parent / "data" / "regression_masks.json"

# name -> (bundled model, input files in the model's channel order)
CASES = {
    "brats_pat0003_z080": ("brats-demo", ["brats_pat0003_z080_flair.png", "brats_pat0003_z080_t1c.png"]),
    "brats_pat0003_z088": ("brats-demo", ["brats_pat0003_z088_flair.png", "brats_pat0003_z088_t1c.png"]),
    "brats_pat0004_z096": ("brats-demo", ["brats_pat0004_z096_flair.png", "brats_pat0004_z096_t1c.png"]),
    "brats_pat0004_slab": ("brats-demo", ["brats_pat0004_slab_flair.nii.gz", "brats_pat0004_slab_t1c.nii.gz"]),
    "ct_z088": ("abdomen-ct-demo", ["ct_z088.png"]),
    "ct_z096": ("abdomen-ct-demo", ["ct_z096.png"]),
    "ct_slab": ("abdomen-ct-demo", ["ct_slab.nii.gz"]),
    "ph2_IMD002": ("ph2-demo", ["ph2_IMD002.png"]),
    "kvasir_cju0s2a9": ("kvasir-demo", ["kvasir_cju0s2a9.jpg"]),
    "acdc_patient002_z05": ("acdc-demo", ["acdc_patient002_z05.png"]),
    "acdc_patient002_slab": ("acdc-demo", ["acdc_patient002_slab.nii.gz"]),
}


def fingerprint(labels: np.ndarray, num_classes: int) -> dict:
    """Per-class pixel counts and the sha256 of the C-ordered uint8 label map (with its shape)."""
    mask = np.ascontiguousarray(labels.astype(np.uint8))
    return {
        "shape": list(mask.shape),
        "counts": np.bincount(mask.ravel(), minlength=num_classes).tolist(),
        "sha256": hashlib.sha256(mask.tobytes()).hexdigest(),
    }


_models: dict = {}


def segment_example(name: str) -> tuple[np.ndarray, int]:
    """An example's mask through the library, with its model's defaults and seed 0."""
    from medconddiff.hub import load_model
    from medconddiff.pipeline import SamplingSettings, load_case, segment_slices, segment_volume

    model_name, files = CASES[name]
    if model_name not in _models:
        _models[model_name] = load_model(model_name, device="cpu")
    model = _models[model_name]
    settings = SamplingSettings.defaults_for(model.config, seed=0)
    scan = load_case([EXAMPLES / f for f in files], model.config)
    if scan.is_volume:
        labels = segment_volume(model, scan.data, settings, kind=scan.kind, precision="fp32").labels
    else:
        labels = segment_slices(model, [scan.data], settings, kind=scan.kind, precision="fp32")[0].labels
    return labels, model.config.num_classes


def _bundled(name: str) -> bool:
    from medconddiff import hub

    return CASES[name][0] in hub.bundled_models()


@pytest.mark.parametrize("name", list(CASES))
def test_masks_match_the_stored_fingerprints(name):
    if not _bundled(name):
        pytest.skip(f"{CASES[name][0]} weights are not bundled")
    expected = json.loads(FINGERPRINTS.read_text())[name]
    labels, k = segment_example(name)
    assert fingerprint(labels, k) == expected


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_regression_masks.py --write")
    sys.path.insert(0, str(REPO))
    out = {name: fingerprint(*segment_example(name)) for name in CASES if _bundled(name)}
    FINGERPRINTS.parent.mkdir(exist_ok=True)
    FINGERPRINTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS} ({len(out)} examples)")
