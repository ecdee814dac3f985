"""DICOM series (a folder, a .zip, or .dcm files) -> a volume in scanner units with a RAS affine.

One series is one volume: its slices are sorted by their position along the slice normal
(ImageOrientationPatient row x column cosines, dotted with ImagePositionPatient), the modality
LUT (RescaleSlope/Intercept: Hounsfield units for CT) is applied, and the affine is built from
the DICOM geometry in LPS and turned into RAS, nibabel's convention, so a mask written with it
lies on the series' grid. Voxel (i, j, k) is column i, row j of the k-th slice along the normal.

Zips are read in memory, never extracted: member names are checked (no absolute or `..` paths),
the entry count and the declared uncompressed total are bounded before anything is inflated
(zipfile never yields more than a member's declared size).
"""

from __future__ import annotations

import io as _bytes_io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ZIP_SUFFIXES = (".zip",)
MAX_DICOM_FILES = 10_000  # entries in a zip or files in a folder: several thousand-slice series fit
MAX_DICOM_BYTES = 2 * 1024**3  # uncompressed total of one zip or folder: refused above this, before reading
IMAGE_MODALITIES = ("CT", "MR")
NOT_IMAGES = {  # SOP classes people export beside (or instead of) the images
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM SEG (segmentation)",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RTSTRUCT (contours)",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RTDOSE (dose grid)",
    "1.2.840.10008.5.1.4.1.1.481.5": "an RTPLAN",
    "1.2.840.10008.1.3.10": "a DICOMDIR (media directory)",
}
NOT_IMAGE_MODALITIES = {"SEG": "a DICOM SEG (segmentation)", "RTSTRUCT": "an RTSTRUCT (contours)", "SR": "a report"}
ACCEPTED = "accepted: one CT or MR image series as a folder, a .zip or .dcm files"
_SKIP_NAMES = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def is_dicom_input(path: str | Path) -> bool:
    """A folder, a .zip or a .dcm/.dicom/.ima file: read as DICOM."""
    name = str(path).lower()
    return Path(path).is_dir() or name.endswith(ZIP_SUFFIXES + DICOM_SUFFIXES)


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in the input, for listing and choosing."""

    uid: str
    modality: str
    description: str
    slices: int

    def line(self) -> str:
        return f"{self.uid} ({self.modality}, {self.description or 'no description'}, {self.slices} slices)"


# -- gathering the files ---------------------------------------------------------------------------


def _member_name_ok(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")))


def _zip_members(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in the zip, read in memory after the name, count and size checks."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"{path.name}: not a readable zip file ({type(err).__name__}); {ACCEPTED}") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        bad = next((i.filename for i in infos if not _member_name_ok(i.filename)), None)
        if bad is not None:
            raise InputError(f"{path.name}: zip entry {bad!r} has an absolute or '..' path; refused, nothing extracted")
        if len(infos) > MAX_DICOM_FILES:
            raise InputError(f"{path.name}: {len(infos)} entries; accepted: at most {MAX_DICOM_FILES} files in a zip")
        total = sum(i.file_size for i in infos)
        if total > MAX_DICOM_BYTES:
            raise InputError(
                f"{path.name}: {total / 1024**3:.1f} GiB uncompressed (a zip bomb?); "
                f"accepted: at most {MAX_DICOM_BYTES / 1024**3:g} GiB in one zip"
            )
        out = []
        for info in infos:
            if any(s in info.filename for s in _SKIP_NAMES):
                continue
            try:
                out.append((info.filename, zf.read(info)))
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, NotImplementedError) as err:
                # RuntimeError: encrypted; NotImplementedError: an unsupported compression method
                raise InputError(
                    f"{path.name}: cannot read zip entry {info.filename!r} ({type(err).__name__}: "
                    f"{' '.join(str(err).split())}); accepted: an unencrypted zip (deflate or stored)"
                ) from None
    return out


def _folder_files(path: Path) -> list[tuple[str, Path]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) > MAX_DICOM_FILES:
        raise InputError(f"{path.name}: {len(files)} files; accepted: at most {MAX_DICOM_FILES} files in a folder")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_DICOM_BYTES:
        raise InputError(
            f"{path.name}: {total / 1024**3:.1f} GiB of files; accepted: at most {MAX_DICOM_BYTES / 1024**3:g} GiB"
        )
    return [(str(p.relative_to(path)), p) for p in files]


def _parse(name: str, source) -> object | None:
    """A pydicom Dataset, or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    raw = source if isinstance(source, bytes) else None
    try:
        fp = _bytes_io.BytesIO(raw) if raw is not None else str(source)
        return pydicom.dcmread(fp)
    except InvalidDicomError:
        if raw is not None:
            head = raw[:2]
        else:
            with open(source, "rb") as f:
                head = f.read(2)
        if head not in (b"\x08\x00", b"\x02\x00"):  # a DICOM stream without preamble starts at group 0008/0002
            return None
        try:
            return pydicom.dcmread(_bytes_io.BytesIO(raw) if raw is not None else str(source), force=True)
        except Exception:  # noqa: BLE001 - pydicom raises many types on garbage; that just means "not DICOM"
            return None
    except Exception:  # noqa: BLE001 - a damaged file raises anything from struct to codecs errors: not a usable slice
        return None


def _datasets(paths: list[Path]) -> tuple[list[tuple[str, object]], int, str]:
    """Every DICOM dataset in the given source(s): (name, dataset) pairs, the count of other files, a label."""
    if len(paths) == 1 and paths[0].is_dir():
        entries, label = _folder_files(paths[0]), paths[0].name
    elif len(paths) == 1 and paths[0].name.lower().endswith(ZIP_SUFFIXES):
        if not paths[0].is_file():
            raise InputError(f"{paths[0]}: file not found")
        entries, label = _zip_members(paths[0]), paths[0].name
    else:
        for p in paths:
            if not p.is_file():
                raise InputError(f"{p}: file not found" if not p.exists() else f"{p}: is a folder; {ACCEPTED}")
            if p.name.lower().endswith(ZIP_SUFFIXES) or not p.name.lower().endswith(DICOM_SUFFIXES):
                raise InputError(f"{p.name}: give a folder or a zip on its own, or only .dcm files; {ACCEPTED}")
        entries, label = [(p.name, p) for p in paths], paths[0].name
    if not entries:
        raise InputError(f"{label}: holds no files; {ACCEPTED}")
    found, other = [], 0
    for name, source in entries:
        ds = _parse(name, source)
        if ds is None:
            other += 1
        else:
            found.append((name, ds))
    if not found:
        example = Path(entries[0][0]).name
        raise InputError(f"{label}: none of its {len(entries)} file(s) is DICOM (e.g. {example!r}); {ACCEPTED}")
    return found, other, label


# -- series ----------------------------------------------------------------------------------------


def _what_it_is(ds) -> str | None:
    """A phrase for a dataset that is not an image (SEG, RTSTRUCT, ...), else None."""
    sop = str(getattr(ds, "SOPClassUID", ""))
    return NOT_IMAGES.get(sop) or NOT_IMAGE_MODALITIES.get(str(getattr(ds, "Modality", "")).upper())


def _has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _group(found: list[tuple[str, object]]) -> dict[str, list[tuple[str, object]]]:
    series: dict[str, list[tuple[str, object]]] = {}
    for name, ds in found:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "") or "(no SeriesInstanceUID)"), []).append((name, ds))
    return series


def _info(uid: str, members: list[tuple[str, object]]) -> SeriesInfo:
    ds = members[0][1]
    return SeriesInfo(
        uid=uid,
        modality=str(getattr(ds, "Modality", "") or "?"),
        description=" ".join(str(getattr(ds, "SeriesDescription", "") or "").split()),
        slices=len(members),
    )


def list_series(path: str | Path) -> list[SeriesInfo]:
    """The series in a folder, zip or .dcm file (image series and others alike)."""
    found, _, _ = _datasets([Path(path)])
    return [_info(uid, m) for uid, m in _group(found).items()]


def _pick_series(found, label: str, series: str | None) -> tuple[str, list[tuple[str, object]]]:
    groups = _group(found)
    if series is not None:
        if series not in groups:
            listed = "; ".join(_info(u, m).line() for u, m in groups.items())
            raise InputError(f"{label}: no series {series!r}; it holds: {listed}")
        return series, groups[series]
    images = {u: m for u, m in groups.items() if _what_it_is(m[0][1]) is None}
    if not images:
        uid, members = next(iter(groups.items()))
        what = _what_it_is(members[0][1])
        raise InputError(f"{label}: is {what}, not an image series; {ACCEPTED}")
    if len(images) > 1:
        listed = "; ".join(_info(u, m).line() for u, m in images.items())
        raise InputError(
            f"{label}: holds {len(images)} image series: {listed}. Give one series "
            "(a folder or zip per series, or --series UID on the command line)"
        )
    return next(iter(images.items()))


def _floats(ds, keyword: str, n: int, name: str) -> np.ndarray:
    value = getattr(ds, keyword, None)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
        raise InputError(f"{name}: missing or malformed {keyword}; accepted: CT/MR slices with full geometry")
    return arr


def _decoder_available(syntax) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (ImportError, NotImplementedError, ValueError, KeyError):
        return False


def _pixels(ds, name: str) -> np.ndarray:
    """(rows, cols) float32 in modality units (the rescale applied)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed and not _decoder_available(syntax):
        raise InputError(
            f"{name}: pixel data is compressed as {syntax.name!r} and no installed decoder reads it; install one "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or give uncompressed DICOM"
        )
    try:
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoders raise many types on broken pixel data
        what = f"{syntax.name} " if syntax is not None else ""
        raise InputError(
            f"{name}: cannot decode the {what}pixel data ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
            f"{ACCEPTED}"
        ) from None
    if arr.ndim != 2:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        what = f"{frames} frames in one file (enhanced/multi-frame)" if frames > 1 else f"pixel array {arr.shape}"
        raise InputError(f"{name}: {what}; accepted: classic CT/MR series, one greyscale slice per file")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _stack(members: list[tuple[str, object]], label: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The slices of one series -> (X, Y, Z) float32 volume, (4, 4) RAS affine, spacing (mm)."""
    from .io import MAX_VOLUME_VOXELS

    first_name, first = members[0]
    for name, ds in members:
        if not _has_pixels(ds):
            raise InputError(f"{label}: {name} has no pixel data; {ACCEPTED}")
    modality = str(getattr(first, "Modality", "") or "?").upper()
    if modality not in IMAGE_MODALITIES:
        raise InputError(f"{label}: modality {modality}; accepted: {' or '.join(IMAGE_MODALITIES)} image series")
    rows, cols = int(getattr(first, "Rows", 0) or 0), int(getattr(first, "Columns", 0) or 0)
    if rows * cols * len(members) > MAX_VOLUME_VOXELS:
        raise InputError(
            f"{label}: {cols}x{rows}x{len(members)} voxels; accepted: at most {MAX_VOLUME_VOXELS} voxels in one series"
        )
    iop = _floats(first, "ImageOrientationPatient", 6, first_name)
    row_dir, col_dir = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-3
        or abs(np.linalg.norm(col_dir) - 1) > 1e-3
        or abs(row_dir @ col_dir) > 1e-3
    ):
        raise InputError(f"{first_name}: ImageOrientationPatient {iop.tolist()} is not two unit, orthogonal vectors")
    normal = np.cross(row_dir, col_dir)
    spacing_rc = _floats(first, "PixelSpacing", 2, first_name)  # (between rows, between columns)
    slices = []
    for name, ds in members:
        if (int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)) != (rows, cols):
            raise InputError(
                f"{label}: {name} is {ds.Columns}x{ds.Rows}, {first_name} {cols}x{rows}; slices must share a size"
            )
        if np.abs(_floats(ds, "ImageOrientationPatient", 6, name) - iop).max() > 1e-4:
            raise InputError(
                f"{label}: {name} has another orientation than {first_name}; accepted: one stack of slices"
            )
        if np.abs(_floats(ds, "PixelSpacing", 2, name) - spacing_rc).max() > 1e-4:
            raise InputError(f"{label}: {name} has another pixel spacing than {first_name}; slices must share one")
        ipp = _floats(ds, "ImagePositionPatient", 3, name)
        slices.append((float(ipp @ normal), ipp, name, ds))
    slices.sort(key=lambda s: s[0])
    where = np.array([s[0] for s in slices])
    gaps = np.diff(where)
    if gaps.size:
        dup = int(np.argmin(gaps))
        if gaps[dup] < 1e-3:
            raise InputError(
                f"{label}: duplicated slice: {slices[dup][2]} and {slices[dup + 1][2]} lie at the same position "
                f"({where[dup]:.3f} mm along the normal); accepted: one file per slice position"
            )
        step = float(np.median(gaps))
        off = np.abs(gaps - step) > max(0.01, 0.02 * step)
        if off.any():
            k = int(np.argmax(np.abs(gaps - step)))
            missing = round(gaps[k] / step) - 1
            if missing >= 1 and abs(gaps[k] - (missing + 1) * step) <= max(0.01, 0.02 * step):
                raise InputError(
                    f"{label}: {missing} slice(s) missing between {slices[k][2]} and {slices[k + 1][2]} "
                    f"(gap {gaps[k]:.3f} mm, spacing {step:.3f} mm); accepted: a complete series"
                )
            raise InputError(
                f"{label}: inconsistent slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm along the normal); "
                "accepted: equally spaced slices"
            )
        ipps = np.stack([s[1] for s in slices])
        offsets = ipps - ipps[0]
        sheared = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
        if sheared > max(0.01, 0.02 * step):
            raise InputError(
                f"{label}: slices are not stacked along their normal (shifted {sheared:.2f} mm in-plane: a tilted "
                "gantry?); accepted: slices perpendicular to the stacking direction"
            )
        step_vec = (ipps[-1] - ipps[0]) / (len(slices) - 1)
    else:
        thickness = float(getattr(first, "SliceThickness", 0) or 0)
        step_vec = normal * (thickness if thickness > 0 else 1.0)
    vol = np.stack([_pixels(s[3], s[2]).T for s in slices], axis=-1)  # (cols, rows, Z): voxel i is a column
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing_rc[1]
    lps[:3, 1] = col_dir * spacing_rc[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = slices[0][1]
    spacing = (float(spacing_rc[1]), float(spacing_rc[0]), float(np.linalg.norm(step_vec)))
    return vol, LPS_TO_RAS @ lps, spacing


def read_dicom_series(path_or_paths, *, series: str | None = None):
    """One DICOM series (a folder, a zip, or .dcm files of one series) -> `io.Scan` (1, X, Y, Z) with its RAS affine.

    `series`: the SeriesInstanceUID to read where the input holds several.
    """
    paths = [Path(p) for p in (path_or_paths if isinstance(path_or_paths, list | tuple) else [path_or_paths])]
    found, _, label = _datasets(paths)
    _, members = _pick_series(found, label, series)
    what = _what_it_is(members[0][1])
    if what is not None:
        raise InputError(f"{label}: series {series} is {what}, not an image series; {ACCEPTED}")
    vol, affine, spacing = _stack(members, label)
    return vol, affine, spacing, _info(str(getattr(members[0][1], "SeriesInstanceUID", "")), members)
