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


def test_a_photograph_larger_than_the_model_reads_is_scored_at_its_own_size(tmp_path):
    """A picture over 4x the model's size is reduced as it is read; its prediction comes back to the file's
    size (as the app and the command line give it) before it meets the full-size mask: it was a shape error."""
    if "kvasir-demo" not in hub.bundled_models():
        pytest.skip("kvasir-demo weights are not bundled")
    from medconddiff import metrics
    from medconddiff.pipeline import SamplingSettings, load_case
    from train.evaluate import main as evaluate
    from train.evaluate import predict_case

    data = _kvasir_folder(tmp_path)
    model = hub.load_model("kvasir-demo")
    side = 4 * model.config.image_size + 60  # more than 4 x the model's size, the most it reads at
    for name in ("cju0roaw", "cju0s2a9"):
        for sub, resample in (("images", Image.BICUBIC), ("masks", Image.NEAREST)):
            path = data / sub / f"{name}.jpg"
            Image.open(path).resize((side, side), resample).save(path, quality=100)
    out = tmp_path / "big.json"
    common = ["--weights", "kvasir-demo", "--data", str(data), "--steps", "1", "--ensemble", "1", "--no-progress"]
    assert evaluate([*common, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    scan = load_case([data / "images" / "cju0roaw.jpg"], model.config)
    assert scan.data.shape[1:] != (side, side)  # reduced as it was read
    pred = scan.to_source(predict_case(model, scan, SamplingSettings(steps=1, ensemble=1)))
    truth = (np.asarray(Image.open(data / "masks" / "cju0roaw.jpg").convert("L")) > 127).astype(np.int64)
    assert pred.shape == truth.shape == (side, side)
    assert report["cases"]["cju0roaw"]["dice"][1] == pytest.approx(metrics.per_class(pred, truth, 2)["dice"][1])
