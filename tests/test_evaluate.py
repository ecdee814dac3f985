"""`python -m train.evaluate`: the numbers it reports are taken in fp32 unless asked otherwise, and say so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medconddiff import hub

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"


def _kvasir_folder(tmp: Path) -> Path:
    """A two-image folder in Kvasir-SEG's layout (images/NAME.jpg, masks/NAME.jpg with 255 for the polyp)."""
    root = tmp / "kvasir"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for name in ("cju0roaw", "cju0s2a9"):
        shutil.copy(EXAMPLES / f"kvasir_{name}.jpg", root / "images" / f"{name}.jpg")
        label = np.array(Image.open(EXAMPLES / f"kvasir_{name}_seg.png"))
        Image.fromarray((label > 0).astype(np.uint8) * 255).save(root / "masks" / f"{name}.jpg", quality=100)
    return root


def test_evaluate_reports_fp32_by_default_and_the_precision_asked_for(tmp_path, capfd):
    if "kvasir-demo" not in hub.bundled_models():
        pytest.skip("kvasir-demo weights are not bundled")
    from train.evaluate import main as evaluate

    data = _kvasir_folder(tmp_path)
    common = ["--weights", "kvasir-demo", "--data", str(data), "--steps", "1", "--ensemble", "1", "--no-progress"]
    assert evaluate([*common, "--out", str(tmp_path / "fp32.json")]) == 0
    report = json.loads((tmp_path / "fp32.json").read_text())
    assert report["precision"] == "fp32" and sorted(report["cases"]) == ["cju0roaw", "cju0s2a9"]
    dice = [c["dice"][1] for c in report["cases"].values()]  # the polyp class
    assert all(0.0 <= d <= 1.0 for d in dice)
    capfd.readouterr()

    assert evaluate([*common, "--out", str(tmp_path / "bad.json"), "--precision", "fp8"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error:") and "fp8" in err and all(p in err for p in ("auto", "fp32", "bf16"))
    assert not (tmp_path / "bad.json").exists()
