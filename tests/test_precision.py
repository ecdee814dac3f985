"""Precision "auto" against fp32 on every shipped model and its bundled examples, and how "auto" is chosen.

"auto" (the library's, the command line's and the app's default) runs the network in bf16 on a CPU with
native bf16 and on a CUDA GPU that has it, fp16 on an older GPU, fp32 elsewhere (`precision.resolve`).
Each bundled example of a shipped model (assets/weights/*, examples in assets/examples/examples.json)
is segmented with its model's defaults at both precisions: every image's mask (every slice of a NIfTI
slab) must keep a foreground Dice of at least 0.99 against fp32. On a CPU without native bf16, "auto"
is fp32 and the check still runs (and finds the masks identical). The fingerprints in
tests/test_regression_masks.py hold fp32 itself to the bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medconddiff import examples
from medconddiff.errors import SettingsError
from medconddiff.precision import CHOICES, resolve

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name for p in (REPO / "assets" / "weights").iterdir() if (p / "config.json").is_file())
MIN_DICE = 0.99


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Foreground Dice of two label maps, pooled over the classes: 2 sum_c |A_c & B_c| / sum_c (|A_c| + |B_c|),
    c >= 1 (one wrong pixel of a small class weighs as much as one of a large class); 1.0 when both are empty."""
    same = int(((a == b) & (a > 0)).sum())
    total = int((a > 0).sum()) + int((b > 0).sum())
    return 1.0 if total == 0 else 2.0 * same / total


def test_mask_dice_counts_a_class_swap_as_a_miss():
    a = np.array([[0, 1, 1, 2]])
    assert mask_dice(a, a) == 1.0 and mask_dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert mask_dice(a, np.array([[0, 1, 2, 2]])) == pytest.approx(2 * 2 / 6)  # foreground kept, one class swapped
    assert mask_dice(a, np.zeros_like(a)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_auto_keeps_the_fp32_masks_of_every_bundled_example(name):
    from medconddiff.hub import load_folder
    from medconddiff.pipeline import SamplingSettings, load_case, segment_slices, segment_volume

    if not (REPO / "assets" / "weights" / name / "model.safetensors").is_file():
        pytest.skip(f"{name}: the weights are not in this checkout")
    cases = [e for e in examples.load_examples() if e.model == name]
    assert cases, f"{name} is shipped without a bundled example to check it on (assets/examples/examples.json)"
    model = load_folder(REPO / "assets" / "weights" / name)
    settings = SamplingSettings.defaults_for(model.config, seed=0)
    chosen = resolve("auto", "cpu")
    scores = {}
    for ex in cases:
        scan = load_case(list(ex.files), model.config)
        masks = {}
        for precision in ("auto", "fp32"):
            if scan.is_volume:
                res = segment_volume(model, scan.data, settings, kind=scan.kind, precision=precision)
                masks[precision] = [res.labels[..., k] for k in range(scan.data.shape[-1])]
            else:
                res = segment_slices(model, [scan.data], settings, kind=scan.kind, precision=precision)[0]
                masks[precision] = [res.labels]
            assert res.precision == (chosen if precision == "auto" else "fp32")
        for k, (a, b) in enumerate(zip(masks["auto"], masks["fp32"], strict=True)):
            scores[f"{ex.caption} [{k}]" if scan.is_volume else ex.caption] = mask_dice(a, b)
        assert any(m.any() for m in masks["fp32"]), f"{ex.caption}: no foreground at all, nothing was compared"
    low = {k: round(v, 4) for k, v in scores.items() if v < MIN_DICE}
    assert not low, f"{name} in {chosen}: mask Dice against fp32 below {MIN_DICE}: {low}"
    if chosen == "fp32":
        assert set(scores.values()) == {1.0}


def test_auto_resolves_by_the_hardware(monkeypatch):
    from medconddiff import precision

    assert CHOICES == ("auto", "fp32", "bf16", "fp16")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve("auto", "cpu") == expected
        assert resolve("fp32", "cpu") == "fp32"
    with pytest.warns(UserWarning, match="slower than fp32"):  # still False: bf16 would be emulated
        assert resolve("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(SettingsError, match="accepted: auto, fp32, bf16, fp16"):
        resolve("fp8", "cpu")
