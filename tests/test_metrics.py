"""Metrics against hand-computed cases, including the empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medconddiff import metrics


def test_dice_iou_hand_computed():
    p = np.zeros((4, 4), bool)
    t = np.zeros((4, 4), bool)
    p[0, :3] = True  # 3 pixels
    t[0, 1:] = True  # 3 pixels, overlap 2
    assert metrics.dice(p, t) == pytest.approx(2 * 2 / 6)
    assert metrics.iou(p, t) == pytest.approx(2 / 4)


def test_empty_mask_conventions():
    e = np.zeros((5, 5), bool)
    f = e.copy()
    f[2, 2] = True
    assert metrics.dice(e, e) == 1.0 and metrics.iou(e, e) == 1.0
    assert metrics.dice(f, e) == 0.0 and metrics.dice(e, f) == 0.0 and metrics.iou(e, f) == 0.0
    assert metrics.hd95(e, e) == 0.0
    assert math.isnan(metrics.hd95(f, e)) and math.isnan(metrics.hd95(e, f))
    assert metrics.nanmean([1.0, float("nan"), 3.0]) == (2.0, 1)


def test_hd95_in_mm_uses_spacing():
    p = np.zeros((1, 20), bool)
    t = np.zeros((1, 20), bool)
    p[0, 2] = True
    t[0, 7] = True  # 5 voxels apart
    assert metrics.hd95(p, t) == pytest.approx(5.0)
    assert metrics.hd95(p, t, spacing=(1.0, 2.0)) == pytest.approx(10.0)
    assert metrics.hd95(t, t) == 0.0


def test_per_class_and_both_averages():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 0]])
    pred = np.array([[0, 0, 1, 0], [0, 2, 2, 2]])
    pc = metrics.per_class(pred, truth, 4)
    assert pc["dice"][0] == pytest.approx(2 * 3 / (4 + 4))
    assert pc["dice"][1] == pytest.approx(2 * 1 / 3)
    assert pc["dice"][2] == pytest.approx(2 * 2 / 5)
    assert pc["dice"][3] == 1.0  # absent from both
    avg = metrics.averages(pc["dice"])
    assert avg["foreground"] == pytest.approx(np.mean(pc["dice"][1:]))
    assert avg["all"] == pytest.approx(np.mean(pc["dice"]))


def test_brats_regions():
    truth = np.array([0, 1, 2, 3, 4, 4, 0, 0])
    pred = np.array([0, 1, 2, 2, 4, 0, 0, 2])
    r = metrics.brats_regions(pred[None], truth[None])
    # WT: pred {1,2,3,4,7} vs truth {1,2,3,4,5}: overlap 4 -> 8/10
    assert r["WT"]["dice"] == pytest.approx(0.8)
    # TC = {1,3,4}: pred {1,4} vs truth {1,3,4,5}: overlap 2 -> 4/6
    assert r["TC"]["dice"] == pytest.approx(4 / 6)
    # ET = {4}: pred {4} vs truth {4,5} -> 2/3
    assert r["ET"]["dice"] == pytest.approx(2 / 3)
    assert set(r["WT"]) == {"dice", "hd95"}
