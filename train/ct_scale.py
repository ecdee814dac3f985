"""Does a CT model see a finer scan at the scale it was trained on?

The abdominal CT's held-out slices are segmented twice: as stored (3 mm pixels) and resampled
in-plane to the pixel size of a typical contrast CT (0.73 mm, about 500 px across). A model that
fits the body crop to its grid sees the same anatomy either way only if the field of view is the
same; a model with a `pixel_spacing` resamples every scan to its own mm per pixel first. A third
run brightens the soft tissue as contrast does (`contrast_like`: +80 HU between -20 and 250 HU; in a
portal-venous CT liver, spleen and kidneys are 50-100 HU brighter than without contrast), the change
that defeated the single-CT model on an unseen contrast CT. Organ Dice on the three inputs, for each
weights folder given:

    python -m train.studies ct-scale --weights assets/weights/abdomen-ct-demo runs/abdomen_demo/weights
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from medconddiff import metrics
from medconddiff.hub import load_model
from medconddiff.pipeline import SamplingSettings, load_case, segment_volume

from . import data as D

FINE_MM = 0.73
CONTRAST_HU = 80.0
SOFT_TISSUE_HU = (-20.0, 250.0)


def contrast_like(scan_data: np.ndarray, shift: float = CONTRAST_HU) -> np.ndarray:
    """HU volume -> a copy whose soft tissue (SOFT_TISSUE_HU) is `shift` HU brighter; air, fat and bone
    keep their values. A crude, label-free stand-in for intravenous contrast."""
    out = scan_data.astype(np.float32, copy=True)
    lo, hi = SOFT_TISSUE_HU
    out[(out > lo) & (out < hi)] += shift
    return out


def resample_inplane(scan_data: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], target_mm: float):
    """(C, X, Y, Z) HU and (X, Y, Z) labels -> the same anatomy on a grid of `target_mm` pixels in X and Y."""
    zoom = (spacing[0] / target_mm, spacing[1] / target_mm)
    image = np.stack([ndimage.zoom(c, (*zoom, 1), order=1) for c in scan_data]).astype(np.float32)
    lab = ndimage.zoom(labels, (*zoom, 1), order=0)
    return image, lab, (target_mm, target_mm, *spacing[2:])


def run(weights: list[str], data_root: str, *, steps: int | None = None) -> dict:
    rows = {}
    for w in weights:
        model = load_model(w)
        config = model.config
        data = D.DataSettings(**json.loads((Path(w) / "training.json").read_text())["data"])
        data.root = data_root
        case = D.find_cases(data.root, data)[0]
        scan = load_case(case.images, config)
        truth = D.read_labels(case, data)
        a, b = data.val_range
        held = scan.data[..., a:b]
        truth = truth[..., a:b]
        settings = SamplingSettings.defaults_for(config)
        if steps:
            settings = SamplingSettings(**{**settings.__dict__, "steps": steps})
        fine, fine_truth, fine_spacing = resample_inplane(held, truth, scan.spacing, FINE_MM)
        row = {"pixel_spacing": config.pixel_spacing, "grids": {}}
        inputs = (
            ("stored", held, truth, scan.spacing),
            ("fine", fine, fine_truth, fine_spacing),
            ("contrast", contrast_like(held), truth, scan.spacing),
        )
        for name, img, lab, sp in inputs:
            pred = segment_volume(model, img, settings, kind="nifti", spacing=float(np.mean(sp[:2]))).labels
            r = metrics.evaluate_case(pred, lab, config.num_classes, spacing=sp)
            row["grids"][name] = {
                "shape": list(img.shape[1:3]),
                "mm_per_pixel": float(sp[0]),
                "dice": {config.class_names[k]: float(r["dice"][k]) for k in range(1, config.num_classes)},
                "dice_fg": float(r["dice_mean"]["foreground"]),
            }
        rows[str(w)] = row
    return rows


def markdown(rows: dict) -> str:
    first = next(iter(rows.values()))
    organs = list(first["grids"]["stored"]["dice"])
    lines = [
        f"Held-out slices of the abdominal CT: as stored (3 mm pixels), resampled in-plane to {FINE_MM} mm, and "
        f"as stored with the soft tissue ({SOFT_TISSUE_HU[0]:g} to {SOFT_TISSUE_HU[1]:g} HU) {CONTRAST_HU:g} HU "
        "brighter, as contrast makes it.",
        "",
        "| weights | model mm/pixel | grid | " + " | ".join(organs) + " | mean Dice (fg) |",
        "|---|---|---|" + "---|" * len(organs) + "---|",
    ]
    for w, row in rows.items():
        mm = f"{row['pixel_spacing']:g}" if row["pixel_spacing"] else "fit the crop"
        for name, g in row["grids"].items():
            grid = f"{name} {g['shape'][0]}x{g['shape'][1]} at {g['mm_per_pixel']:.2f} mm"
            if name == "contrast":
                grid += f", soft tissue +{CONTRAST_HU:g} HU"
            cells = " | ".join(f"{g['dice'][o]:.3f}" for o in organs)
            lines.append(f"| `{w}` | {mm} | {grid} | {cells} | {g['dice_fg']:.3f} |")
    return "\n".join(lines)
