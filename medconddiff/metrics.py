"""Segmentation metrics: Dice (= F1), IoU, HD95, BraTS regions and the two averaging conventions.

Empty-mask conventions (stated once, used everywhere):
    Dice / IoU: prediction and truth both empty -> 1.0 (nothing to find, nothing found);
                exactly one empty -> 0.0.
    HD95:       both empty -> 0.0 mm; exactly one empty -> NaN (undefined: averages skip it and
                report how many cases were skipped).
Averages: "foreground" averages classes 1..K-1 (the usual convention); "all" also includes the
background class 0, which is what the paper's tables appear to do. Both are reported.
"""

from __future__ import annotations

import math

import numpy as np

BRATS_REGIONS: dict[str, tuple[int, ...]] = {
    "WT": (1, 2, 3, 4),  # whole tumour
    "TC": (1, 3, 4),  # tumour core
    "ET": (4,),  # enhancing tumour
}
# the same regions for the BraTS 2017+ labels, as contiguous classes: 0 background, 1 necrotic and
# non-enhancing core (2015's labels 1 and 3), 2 oedema, 3 enhancing tumour (the files' label 4)
BRATS_REGIONS_MERGED: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape (any dimension)."""
    p, t = pred.astype(bool), truth.astype(bool)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    p, t = pred.astype(bool), truth.astype(bool)
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """95th percentile of the symmetric surface distances, in mm (voxel units times `spacing`)."""
    from scipy import ndimage

    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * p.ndim
    sp, st = _surface(p), _surface(t)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)  # distance of each voxel to truth's surface
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    dists = np.concatenate([d_to_t[sp], d_to_p[st]])
    return float(np.percentile(dists, 95))


def per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, list[float]]:
    """Label maps -> {"dice": [K values], "iou": [K values]} (class 0 = background included)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    return {
        "dice": [dice(pred == c, truth == c) for c in range(num_classes)],
        "iou": [iou(pred == c, truth == c) for c in range(num_classes)],
    }


def averages(values: list[float]) -> dict[str, float]:
    """K per-class values -> {"foreground": mean of classes 1..K-1, "all": mean of 0..K-1}."""
    return {"foreground": float(np.mean(values[1:])), "all": float(np.mean(values))}


def brats_regions(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    regions: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, dict[str, float]]:
    """BraTS WT/TC/ET: {"WT": {"dice": .., "hd95": ..}, ...} from label maps; `regions` names each region's
    classes (default `BRATS_REGIONS`, the labels 0..4; `regions_for` picks it from a model's class names)."""
    out = {}
    for name, labels in (regions or BRATS_REGIONS).items():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        out[name] = {"dice": dice(p, t), "hd95": hd95(p, t, spacing)}
    return out


def regions_for(class_names: list[str]) -> dict[str, tuple[int, ...]]:
    """The BraTS regions (WT/TC/ET) of a model's classes, else {}.

    Read from the class names, so any model trained on BraTS labels gets them: five classes (the 2015
    labels 0..4, `BRATS_REGIONS`) or four (2017+ labels with 1 and 3 merged, `BRATS_REGIONS_MERGED`),
    class 2 oedema and the last class enhancing tumour.
    """
    names = [n.lower() for n in class_names]
    if len(names) not in (4, 5) or "edema" not in names[2].replace("oe", "e") or not names[-1].startswith("enhancing"):
        return {}
    return dict(BRATS_REGIONS) if len(names) == 5 else dict(BRATS_REGIONS_MERGED)


def present_dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """`dice` of two boolean masks, or None where both are empty (nothing to score, rather than a perfect 1.0)."""
    if not pred.any() and not truth.any():
        return None
    return dice(pred, truth)


def scored(pred: np.ndarray, truth: np.ndarray, class_names: list[str]) -> dict:
    """Label maps of any dimension -> what a person should read off them, with the same Dice as `dice`.

    {"classes": [(name, dice or None, predicted voxels, truth voxels), ...] for classes 1..K-1,
     "regions": [(name, dice or None), ...] (`regions_for`), "mean": the mean over the foreground
     classes present in prediction or truth (None when none is), "absent": how many were left out}.
    A class in neither map scores None: `dice` would call it 1.0, which says nothing about the model.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    k = len(class_names)
    pred_px = np.bincount(pred.ravel().astype(np.int64), minlength=k)
    true_px = np.bincount(truth.ravel().astype(np.int64), minlength=k)
    classes = [
        (class_names[c], present_dice(pred == c, truth == c), int(pred_px[c]), int(true_px[c])) for c in range(1, k)
    ]
    regions = [
        (name, present_dice(np.isin(pred, labels), np.isin(truth, labels)))
        for name, labels in regions_for(class_names).items()
    ]
    defined = [d for _, d, _, _ in classes if d is not None]
    return {
        "classes": classes,
        "regions": regions,
        "mean": float(np.mean(defined)) if defined else None,
        "absent": len(classes) - len(defined),
    }


def nanmean(values: list[float]) -> tuple[float, int]:
    """Mean over the finite values and how many were skipped as undefined (NaN)."""
    finite = [v for v in values if not math.isnan(v)]
    return (float(np.mean(finite)) if finite else float("nan")), len(values) - len(finite)


def evaluate_case(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    *,
    spacing=None,
    brats: bool = False,
    regions: dict[str, tuple[int, ...]] | None = None,
) -> dict:
    """Everything reported for one case: per-class Dice/IoU, both averages, and BraTS regions if asked
    (`brats=True`: the 2015 labels' regions; `regions`: these)."""
    pc = per_class(pred, truth, num_classes)
    out = {
        "dice": pc["dice"],
        "iou": pc["iou"],
        "dice_mean": averages(pc["dice"]),
        "iou_mean": averages(pc["iou"]),
    }
    if brats or regions:
        out["brats"] = brats_regions(pred, truth, spacing, regions)
    return out
