"""Writing small, valid DICOM series for tests: a volume on a RAS affine -> one CT/MR file per slice.

The geometry is the inverse of `medconddiff.dicom`: the affine goes to LPS, its first two columns
give ImageOrientationPatient (row then column cosines) and PixelSpacing, its third the step between
slice positions. Voxel (i, j, k) is column i, row j of slice k. Values are stored as int16 through
RescaleSlope/Intercept, so choose volumes those represent exactly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _ds(value: float) -> str:
    return f"{value:.10g}"


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(4, 4) rotation about x, y or z."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    out = np.eye(4)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


def dataset(
    plane: np.ndarray,
    *,
    affine: np.ndarray,
    k: int,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    description: str = "test series",
    transfer_syntax: str | None = None,
):
    """One slice (X, Y) of the volume as a pydicom FileDataset (not yet written)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    lps = LPS @ np.asarray(affine, dtype=np.float64)
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # along i (next column), along j (next row)
    sop = CT_STORAGE if modality == "CT" else MR_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.Modality, ds.SeriesDescription, ds.PatientName, ds.PatientID = modality, description, "Test^Phantom", "0"
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = [
        _ds(v) for v in (*(col_step / np.linalg.norm(col_step)), *(row_step / np.linalg.norm(row_step)))
    ]
    ds.ImagePositionPatient = [_ds(v) for v in (lps[:3, 3] + k * lps[:3, 2])]
    ds.PixelSpacing = [_ds(np.linalg.norm(row_step)), _ds(np.linalg.norm(col_step))]
    ds.SliceThickness = _ds(np.linalg.norm(lps[:3, 2]))
    stored = np.round((plane.T - intercept) / slope).astype(np.int16)  # (rows, cols) = (Y, X)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
    ds.PixelData = stored.tobytes()
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    description: str = "test series",
    shuffle: bool = True,
    series_uid: str | None = None,
) -> list[Path]:
    """(X, Y, Z) volume on `affine` -> folder/slice_NNN.dcm, written in a shuffled order (readers must sort)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uids = dict(series_uid=series_uid or generate_uid(), study_uid=generate_uid(), frame_uid=generate_uid())
    order = np.random.default_rng(0).permutation(volume.shape[2]) if shuffle else range(volume.shape[2])
    paths = []
    for n, k in enumerate(order):
        ds = dataset(
            volume[:, :, k],
            affine=affine,
            k=int(k),
            modality=modality,
            slope=slope,
            intercept=intercept,
            description=description,
            **uids,
        )
        path = folder / f"slice_{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_folder(folder: Path, out: Path, *, prefix: str = "") -> Path:
    """Every file under `folder` into the zip `out` (names relative to `folder`, under `prefix`)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(folder)))
    return out


def ct_volume(x: int = 40, y: int = 36, z: int = 6, *, seed: int = 0) -> np.ndarray:
    """(X, Y, Z) integer Hounsfield units: air around a soft-tissue body with a bright blob."""
    rng = np.random.default_rng(seed)
    vol = np.full((x, y, z), -1000.0, np.float32)
    vol[x // 6 : x - x // 6, y // 6 : y - y // 6] = rng.integers(0, 80, (x - 2 * (x // 6), y - 2 * (y // 6), z))
    vol[x // 3 : x // 2, y // 3 : y // 2] = 300.0
    return vol


AXIAL = np.array([[0.8, 0, 0, -20.0], [0, 0.7, 0, 15.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
OBLIQUE = rotation("x", 25) @ rotation("z", -30) @ AXIAL
SAGITTAL = np.array([[0, 0, -2.0, 10.0], [0.9, 0, 0, -30.0], [0, -0.9, 0, 40.0], [0, 0, 0, 1]])  # i->A, j->I, k->L
REVERSED = AXIAL @ np.diag([1.0, 1.0, -1.0, 1.0])  # slices written head to foot: k against the normal
