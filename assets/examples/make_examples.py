"""Make the demo's example files from ../shared/data (run from the repository root).

    python assets/examples/make_examples.py [--data ../shared/data]

BraTS slices come from the VALIDATION patients only (the shipped model never trained on them);
Kvasir-SEG, PH2 and ACDC examples come from the TEST parts of the committed splits (train/splits/).
Every output is small: 8-bit PNG slices, the photographs as stored, and few-slice NIfTI slabs.
Re-running gives identical files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for `medconddiff`

from medconddiff.io import window_to_display  # noqa: E402

BRATS_SLICES = [("brats_2013_pat0003_1", 80), ("brats_2013_pat0003_1", 88), ("brats_2013_pat0004_1", 96)]
BRATS_SLAB = ("brats_2013_pat0004_1", 93)  # first of 6 slices through the tumour
BRATS_MODALITIES = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1c": "T1c_subtrMeanDivStd.nii.gz"}
# the shipped BraTS model predicts the BraTS 2017+ classes: 2015's labels 1 (necrosis) and 3 (non-enhancing
# tumour) are both class 1, oedema stays 2, enhancing tumour (label 4) is class 3
BRATS_LABELS = np.array([0, 1, 2, 1, 3], np.uint8)
Z_RANGE = (-3.0, 6.0)  # z-scores are clipped to this range before mapping brain pixels to 1..255
CT_SLICES = [88, 96]
CT_SLAB = 90  # first of 6 slices: liver, kidneys, spleen and pancreas all present
SLAB = 6
# AbdomenCT-1K classes from the TotalSegmentator label names in labels.json
CT_CLASSES = {"liver": 1, "kidney_right": 2, "kidney_left": 2, "spleen": 3, "pancreas": 4}


def short(patient: str) -> str:
    """brats_2013_pat0003_1 -> pat0003."""
    return patient.split("_")[2]


def display(slice2d: np.ndarray) -> np.ndarray:
    """(X, Y) array slice -> display orientation (rows top to bottom)."""
    return np.ascontiguousarray(np.rot90(slice2d))


def mri_to_uint8(z: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """z-scored slice (H, W) -> uint8: outside the brain 0, brain pixels linearly 1..255."""
    lo, hi = Z_RANGE
    scaled = 1.0 + (np.clip(z, lo, hi) - lo) / (hi - lo) * 254.0
    return np.where(brain, np.round(scaled), 0).astype(np.uint8)


def save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path, optimize=True)


def save_slab(data: np.ndarray, affine: np.ndarray, z0: int, path: Path, dtype) -> None:
    """Slices z0..z0+SLAB-1 of (X, Y, Z) data, with the affine moved to the slab's first slice."""
    shift = np.eye(4)
    shift[2, 3] = z0
    img = nib.Nifti1Image(np.asarray(data[..., z0 : z0 + SLAB], dtype=dtype), affine @ shift)
    img.set_data_dtype(dtype)
    nib.save(img, str(path))


def make_brats(root: Path) -> None:
    for patient, z in BRATS_SLICES:
        folder = root / "brats2015" / "validation" / patient
        brain = np.asarray(nib.load(str(folder / "brainmask.nii.gz")).dataobj)[..., z] > 0
        stem = f"brats_{short(patient)}_z{z:03d}"
        for name, file in BRATS_MODALITIES.items():
            vol = nib.load(str(folder / file))
            save_png(display(mri_to_uint8(np.asarray(vol.dataobj)[..., z], brain)), HERE / f"{stem}_{name}.png")
        seg = np.asarray(nib.load(str(folder / "OTMultiClass.nii.gz")).dataobj)[..., z]
        save_png(display(BRATS_LABELS[np.rint(seg).astype(np.int64)]), HERE / f"{stem}_seg.png")
    patient, z0 = BRATS_SLAB
    folder = root / "brats2015" / "validation" / patient
    for name, file in {**BRATS_MODALITIES, "seg": "OTMultiClass.nii.gz"}.items():
        vol = nib.load(str(folder / file))
        dtype = np.uint8 if name == "seg" else np.float32
        data = np.asarray(vol.dataobj)
        save_slab(
            BRATS_LABELS[np.rint(data).astype(np.int64)] if name == "seg" else data,
            vol.affine,
            z0,
            HERE / f"brats_{short(patient)}_slab_{name}.nii.gz",
            dtype,
        )
    shutil.copyfile(folder / "License_CC_BY_NC_SA_3.0.txt", HERE / "LICENSE-BraTS-CC-BY-NC-SA-3.0.txt")


def make_ct(root: Path) -> None:
    folder = root / "abdomen-ct"
    ct = nib.load(str(folder / "ct.nii.gz"))
    hu = np.asarray(ct.dataobj)
    source = np.asarray(nib.load(str(folder / "labels.nii.gz")).dataobj).astype(np.int64)
    names = json.loads((folder / "labels.json").read_text())
    lut = np.zeros(max(int(k) for k in names) + 1, np.uint8)
    for number, name in names.items():
        lut[int(number)] = CT_CLASSES.get(name, 0)
    labels = lut[source]
    for z in CT_SLICES:
        save_png(display(window_to_display(hu[..., z], "abdomen")), HERE / f"ct_z{z:03d}.png")
        save_png(display(labels[..., z]), HERE / f"ct_z{z:03d}_seg.png")
    save_slab(hu, ct.affine, CT_SLAB, HERE / "ct_slab.nii.gz", np.int16)
    save_slab(labels, ct.affine, CT_SLAB, HERE / "ct_slab_seg.nii.gz", np.uint8)


# the first two test cases of each committed split (train/splits/*.json): not picked by eye
KVASIR_TEST = ["cju0roawvklrq0799vmjorwfv", "cju0s2a9ekvms080138tjjpxr"]
PH2_TEST = ["IMD002", "IMD085"]
ACDC_SLICES = [("patient002_frame01", 5), ("patient019_frame01", 5)]
ACDC_SLAB = ("patient002_frame01", 3, 4)  # first slice, number of slices


def binary_mask(path: Path) -> np.ndarray:
    """A 0/255 (or JPEG-blurred) mask -> class indices 0 / 1."""
    return (np.asarray(Image.open(path).convert("L")) > 127).astype(np.uint8)


def make_photos(root: Path) -> None:
    for name in KVASIR_TEST:
        shutil.copyfile(root / "kvasir-seg" / "images" / f"{name}.jpg", HERE / f"kvasir_{name[:8]}.jpg")
        save_png(binary_mask(root / "kvasir-seg" / "masks" / f"{name}.jpg"), HERE / f"kvasir_{name[:8]}_seg.png")
    for name in PH2_TEST:
        shutil.copyfile(root / "ph2" / "images" / f"{name}.png", HERE / f"ph2_{name}.png")
        save_png(binary_mask(root / "ph2" / "masks" / f"{name}.png"), HERE / f"ph2_{name}_seg.png")


def make_acdc(root: Path) -> None:
    folder = root / "acdc"
    for case, z in ACDC_SLICES:
        image = np.asarray(nib.load(str(folder / "imagesTr" / f"{case}_0000.nii.gz")).dataobj)[..., z]
        labels = np.asarray(nib.load(str(folder / "labelsTr" / f"{case}.nii.gz")).dataobj)[..., z]
        grey = np.round(image.astype(np.float64) / 257.0)  # uint16 (x 65535 of [0, 1]) -> 8 bit
        save_png(display(grey), HERE / f"acdc_{case[:10]}_z{z:02d}.png")
        save_png(display(np.rint(labels)), HERE / f"acdc_{case[:10]}_z{z:02d}_seg.png")
    case, z0, n = ACDC_SLAB
    for src, dst, dtype in (
        (folder / "imagesTr" / f"{case}_0000.nii.gz", f"acdc_{case[:10]}_slab.nii.gz", np.uint16),
        (folder / "labelsTr" / f"{case}.nii.gz", f"acdc_{case[:10]}_slab_seg.nii.gz", np.uint8),
    ):
        vol = nib.load(str(src))
        shift = np.eye(4)
        shift[2, 3] = z0
        img = nib.Nifti1Image(np.asarray(vol.dataobj)[..., z0 : z0 + n].astype(dtype), vol.affine @ shift)
        img.set_data_dtype(dtype)
        nib.save(img, str(HERE / dst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    make_brats(args.data)
    make_ct(args.data)
    make_photos(args.data)
    make_acdc(args.data)
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.is_file())
    print(f"wrote {HERE} ({total / 1024:.0f} KiB in all)")


if __name__ == "__main__":
    main()
