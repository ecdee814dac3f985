"""Reading and writing scans, intensity normalisation, and the model-grid geometry.

Shapes: a 2D image is (C, H, W); a volume is (C, X, Y, Z) with slices taken along Z; a label
map is (H, W) or (X, Y, Z). Everything read here is float32 and finite, or an `InputError`.
"""

from __future__ import annotations

import gzip
import math
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import CT_WINDOWS, MedCondDiffConfig, check_axes
from .errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".zip", ".dcm", ".dicom", ".ima")  # or a folder: one DICOM series (medconddiff/dicom.py)
UPLOAD_SUFFIXES = (*IMAGE_SUFFIXES, *NIFTI_SUFFIXES, ".gz", *DICOM_SUFFIXES)  # what the app's uploads accept
MAX_IMAGE_PIXELS = 4096 * 4096  # a 2D upload larger than this is refused before decoding
MAX_VOLUME_VOXELS = 1024 * 1024 * 1024 // 4  # 1 GiB of float32 for everything in one file
MIN_SIDE = 8  # smaller images carry nothing the model can segment
MAX_SIDE = 4096  # the maps are resized back onto a square of the longer side: bound its memory
MAX_SPACING_MM = 100.0


def _nibabel():
    """The nibabel package, imported the first time without its optional pydicom support.

    nibabel imports pydicom, when installed, to parse DICOM extensions of NIfTI headers: a fifth of a
    second of start-up that reading and writing voxels never uses. Such extensions are then kept as
    the raw bytes they are (and written back unchanged); `medconddiff.dicom` imports pydicom itself
    when DICOM input is read. Once nibabel is loaded (by this or by anyone else) it is returned as is.
    """
    if "nibabel" not in sys.modules and "pydicom" not in sys.modules:
        sys.modules["pydicom"] = None  # `import pydicom` raises ImportError while nibabel loads
        try:
            import nibabel
        finally:
            del sys.modules["pydicom"]
    import nibabel

    return nibabel


def kind_of(path: str | Path) -> str:
    """'nifti', 'image' or 'dicom' (a folder, .zip or .dcm) from the name; `InputError` for anything else."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(DICOM_SUFFIXES) or Path(path).is_dir():
        return "dicom"
    raise InputError(
        f"{Path(path).name}: unsupported file type; accepted: NIfTI ({', '.join(NIFTI_SUFFIXES)}), "
        f"2D images ({', '.join(IMAGE_SUFFIXES)}) or a DICOM series (a folder, .zip or .dcm files)"
    )


@dataclass(frozen=True)
class SourceGrid:
    """Where a reoriented volume came from: enough to put any (X, Y, Z) map back on the file's grid."""

    shape: tuple[int, int, int]  # (X, Y, Z) of the file's array
    affine: np.ndarray  # (4, 4) the file's voxel -> world affine
    to_canonical: np.ndarray  # (3, 2) nibabel orientation transform, file axes -> canonical axes
    axes: tuple[str, str, str]  # the file's axis codes, e.g. ("P", "S", "L") for sagittal storage


@dataclass
class Scan:
    """What was read from disk, before normalisation.

    A volume from `reorient` holds its data in the model's canonical orientation (`axes`), with
    `affine` describing that array; `source` remembers the file's own grid so that every output
    map is written back there (`to_source`, `write_scan_labels(..., scan=)`).
    """

    data: np.ndarray  # (C, H, W) for 2D images, (C, X, Y, Z) for volumes; float32
    affine: np.ndarray | None  # (4, 4) voxel -> world (RAS) of `data` for volumes; None for 2D images
    header: object | None  # the nibabel header of the first file (kept for writing back); None for DICOM
    spacing: tuple[float, ...]  # mm per voxel along each spatial axis of `data` (1.0 for 2D images)
    kind: str  # "nifti": a volume in scanner units with an affine (NIfTI or DICOM), written back as NIfTI; or "image"
    origin: str = ""  # what was read: "nifti", "dicom" or "image" ("" = kind)
    series: tuple = ()  # DICOM: the `dicom.SeriesInfo` of each channel
    axes: tuple[str, ...] | None = None  # axis codes of `data` (nibabel letters: where each axis points)
    source: SourceGrid | None = None  # the file's grid, when `data` was reoriented from it
    full_size: tuple[int, int] | None = None  # (H, W) of a 2D file that was reduced at read time

    @property
    def is_volume(self) -> bool:
        return self.data.ndim == 4

    @property
    def slice_spacing(self) -> float | None:
        """Mean mm per pixel within a slice (its rows and columns) of a volume; None for 2D pictures."""
        if self.kind != "nifti" or len(self.spacing) < 2:
            return None
        value = float(np.mean(self.spacing[:2]))
        return value if math.isfinite(value) and value > 0 else None

    @property
    def source_affine(self) -> np.ndarray | None:
        """The affine of the file as read: the one every written output map carries."""
        return self.affine if self.source is None else self.source.affine

    @property
    def source_shape(self) -> tuple[int, ...]:
        """The spatial shape of the file's array (that of `data` unless reoriented or reduced)."""
        if self.full_size is not None:
            return self.full_size
        return tuple(self.data.shape[1:]) if self.source is None else self.source.shape

    def to_canonical(self, values: np.ndarray) -> np.ndarray:
        """(X, Y, Z, ...) or (H, W) on the file's grid (e.g. its ground truth) -> on the grid of `data`."""
        if self.full_size is not None:
            return resize_nearest(values, tuple(self.data.shape[1:]))
        if self.source is None:
            return values
        apply_orientation = _nibabel().orientations.apply_orientation

        return np.ascontiguousarray(apply_orientation(values, self.source.to_canonical))

    def to_source(self, values: np.ndarray) -> np.ndarray:
        """(X, Y, Z, ...) or (H, W) on the grid of `data` (a mask, a map) -> on the file's own grid.

        A 2D picture reduced at read time (`full_size`) comes back to its size by nearest neighbour.
        """
        if self.full_size is not None:
            return resize_nearest(values, self.full_size)
        if self.source is None:
            return values
        ornt = _nibabel().orientations
        apply_orientation, axcodes2ornt, ornt_transform = ornt.apply_orientation, ornt.axcodes2ornt, ornt.ornt_transform

        back = ornt_transform(axcodes2ornt(self.axes), axcodes2ornt(self.source.axes))
        return np.ascontiguousarray(apply_orientation(values, back))


def resize_nearest(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (h, w) by nearest neighbour (pixel centres), its dtype kept."""
    h, w = values.shape[:2]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(values[rows][:, cols])


def axis_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """(4, 4) voxel -> world affine -> the closest axis codes, e.g. ("L", "P", "S") (nibabel's letters)."""
    nib = _nibabel()

    return tuple(nib.aff2axcodes(affine))


def reorient(scan: Scan, axes: str) -> Scan:
    """A volume `Scan` as read -> the same voxels in the orientation `axes` (e.g. "RAS"), sliced along Z.

    Only axis permutations and flips (nibabel's `io_orientation` / `ornt_transform`): no voxel is
    resampled, so `Scan.to_source` undoes it exactly. The axis closest to `axes[2]` (S/I for an
    axial model) becomes the slicing axis, whatever plane the file was stored in. 2D images and
    scans already reoriented come back unchanged.
    """
    if not scan.is_volume or scan.source is not None:
        return scan
    o = _nibabel().orientations
    apply_orientation, axcodes2ornt, inv_ornt_aff = o.apply_orientation, o.axcodes2ornt, o.inv_ornt_aff
    io_orientation, ornt_transform = o.io_orientation, o.ornt_transform

    target = check_axes(axes)
    shape = tuple(int(n) for n in scan.data.shape[1:])
    xf = ornt_transform(io_orientation(scan.affine), axcodes2ornt(target))
    data = np.stack([apply_orientation(c, xf) for c in scan.data])  # (C, X', Y', Z')
    affine = scan.affine @ inv_ornt_aff(xf, shape)
    spacing = [0.0, 0.0, 0.0]
    for src_axis, (dst_axis, _) in enumerate(xf):
        spacing[int(dst_axis)] = scan.spacing[src_axis]
    source = SourceGrid(shape=shape, affine=scan.affine, to_canonical=xf, axes=axis_codes(scan.affine))
    _check_side(data.shape[1:3], f"the volume turned to {''.join(target)} slices")  # the plane the model sees
    return Scan(
        data=np.ascontiguousarray(data),
        affine=affine,
        header=scan.header,
        spacing=tuple(spacing),
        kind=scan.kind,
        origin=scan.origin,
        series=scan.series,
        axes=target,
        source=source,
    )


def _one_line(err: BaseException) -> str:
    """An exception's text on one line (nibabel's and Pillow's messages may span several)."""
    return " ".join(str(err).split())


def _check_values(data: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(
            f"{name}: contains {int(bad.sum())} NaN/Inf value(s); accepted: finite intensities only "
            "(fill or mask them before segmenting)"
        )
    if data.size and float(data.max()) == float(data.min()):
        raise InputError(
            f"{name}: every pixel has the same value ({float(data.min()):g}): a blank image has nothing to segment; "
            "accepted: a scan with some contrast"
        )


def _check_side(shape: tuple[int, int], name: str) -> None:
    """(H, W) in-plane size within [MIN_SIDE, MAX_SIDE] on both axes."""
    if min(shape) < MIN_SIDE or max(shape) > MAX_SIDE:
        raise InputError(
            f"{name}: in-plane size {shape[0]}x{shape[1]} is not usable; accepted: each side between "
            f"{MIN_SIDE} and {MAX_SIDE} pixels"
        )


def _load_nifti(path: Path, what: str = "NIfTI file"):
    """nib.load with the checks every NIfTI read needs: a non-empty file, a sane size, scalar real data.

    Returns the nibabel image; its data has not been read yet.
    """
    nib = _nibabel()

    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a file; accepted: a .nii or .nii.gz {what}")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty; accepted: a .nii or .nii.gz {what}")
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        dtype = np.dtype(img.get_data_dtype())
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(
            f"{path.name}: not a readable {what} ({type(err).__name__}: {_one_line(err)}); accepted: .nii or .nii.gz"
        ) from None
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOLUME_VOXELS:  # every axis: a 4-D header can claim a lot too
        raise InputError(
            f"{path.name}: its header claims shape {shape}, more than {MAX_VOLUME_VOXELS} voxels; "
            f"accepted: at most {MAX_VOLUME_VOXELS} voxels in one file"
        )
    if dtype.fields is not None or dtype.kind == "c":
        kind = "complex" if dtype.kind == "c" else "RGB/structured"
        raise InputError(f"{path.name}: {kind} voxels ({dtype}); accepted: one real intensity per voxel")
    return img


def _read_dataobj(img, path: Path, what: str = "NIfTI file") -> np.ndarray:
    """The voxels as float32; a file shorter than its header says (or a broken gzip) is an `InputError`."""
    nib = _nibabel()

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf from a broken scale factor are checked later
            return np.asarray(img.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(
            f"{path.name}: not a readable {what} ({type(err).__name__}: {_one_line(err)}); accepted: .nii or .nii.gz"
        ) from None


def read_nifti_voxels(path: str | Path, what: str = "NIfTI file") -> np.ndarray:
    """One NIfTI file's voxels as float32, as they are stored (no reorientation, no value checks);
    a missing, empty or unreadable file is an `InputError` naming it."""
    path = Path(path)
    return _read_dataobj(_load_nifti(path, what), path, what)


def _read_nifti_file(path: Path) -> tuple[np.ndarray, np.ndarray, object, tuple[float, ...]]:
    img = _load_nifti(path)
    data = _read_dataobj(img, path)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))  # a 2-D file has two
    return data, np.asarray(img.affine, dtype=np.float64), img.header, zooms


def read_nifti(paths: list[str | Path]) -> Scan:
    """One file per modality (each 3-D), or one 4-D file with modalities on the last axis.

    Returns a `Scan` with data (C, X, Y, Z). The affine and header are those of the first file.
    """
    paths = [Path(p) for p in paths]
    arrays, affine, header, zooms = [], None, None, None
    for path in paths:
        data, aff, hdr, zz = _read_nifti_file(path)
        while data.ndim > 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim == 3:
            data = data[None]
        elif data.ndim == 4:
            if len(paths) > 1:
                raise InputError(
                    f"{path.name}: 4-D volume given with other files; give one 4-D file or one 3-D file per modality"
                )
            data = np.moveaxis(data, -1, 0)  # (X, Y, Z, C) -> (C, X, Y, Z)
        else:
            raise InputError(
                f"{path.name}: {data.ndim}-D data of shape {data.shape}; accepted: 3-D volumes or one 4-D volume with modalities last"
            )
        if arrays and data.shape[1:] != arrays[0].shape[1:]:
            raise InputError(
                f"{path.name}: shape {data.shape[1:]} differs from {paths[0].name} {arrays[0].shape[1:]}; "
                "all modality files must share one grid"
            )
        if affine is None:
            affine, header, zooms = aff, hdr, zz
        arrays.append(data)
    vol = np.concatenate(arrays, axis=0)
    # the slicing plane is known only after `reorient` (which checks it again): here the two longest
    # axes, so that a sagittal file of a few axial slices' extent still reads
    _check_side(tuple(sorted(vol.shape[1:])[-2:][::-1]), paths[0].name)
    if any(not (0 < z <= MAX_SPACING_MM) for z in zooms):
        raise InputError(
            f"{paths[0].name}: voxel spacing {zooms} mm is not usable; accepted: each in (0, {MAX_SPACING_MM:g}] mm"
        )
    if not np.isfinite(affine).all():
        raise InputError(f"{paths[0].name}: the affine contains NaN/Inf; accepted: a finite voxel-to-world affine")
    _check_values(vol, paths[0].name)
    return Scan(data=vol, affine=affine, header=header, spacing=zooms, kind="nifti", origin="nifti")


def _reduce(img, max_side: int):
    """A Pillow image whose longer side exceeds `max_side` -> one about `max_side` long (area average).

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale straight away (`Image.draft`), so a large photograph
    never exists at full size in memory; the rest is `reduce` (whole factors) and a BOX resize.
    """
    from PIL import Image

    w, h = img.size
    scale = max(max_side / max(w, h), MIN_SIDE / min(w, h))
    if scale >= 1.0:
        return img
    size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
    if img.format == "JPEG" and img.mode in ("L", "RGB"):
        img.draft(img.mode, size)  # the smallest DCT scale that still covers `size`
    if img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):  # 16-bit grey: resample as 32-bit
        img = img.convert("I")
    return img.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def read_image(path: str | Path, *, max_side: int | None = None) -> np.ndarray:
    """A 2D picture -> (C, H, W) float32 in its own units (0-255, 0-65535, or float).

    Grey, palette, RGB, RGBA (alpha dropped), 16-bit and float images are accepted; an RGB image
    whose three channels are equal is read as grey. `max_side`: a picture with a longer side is
    reduced while it is decoded (`_reduce`), before any float copy exists.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a file; accepted: PNG/JPG/BMP/TIFF images")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty; accepted: PNG/JPG/BMP/TIFF images")
    too_large = f"accepted: at most {MAX_IMAGE_PIXELS} pixels (e.g. 4096x4096)"
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(f"{path.name}: {w}x{h} pixels is too large; {too_large}")
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"{path.name}: has {img.n_frames} frames; accepted: a single 2D image")
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode == "1" else "RGB")
            if max_side is not None:
                _check_side((h, w), path.name)
                img = _reduce(img, max_side)
            arr = np.asarray(img)
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, for images far beyond our limit
        raise InputError(f"{path.name}: too large to decode safely (a decompression bomb?); {too_large}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(
            f"{path.name}: not a readable image ({type(err).__name__}); accepted: PNG/JPG/BMP/TIFF"
        ) from None
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)  # (H, W, C) -> (C, H, W)
        if arr.shape[0] in (2, 4):  # grey+alpha or RGBA: drop alpha
            arr = arr[:-1]
        if arr.shape[0] == 3 and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[1], arr[2]):
            arr = arr[:1]
    else:
        raise InputError(f"{path.name}: image array of shape {arr.shape} is not 2D; accepted: a single 2D image")
    _check_side(arr.shape[1:], path.name)
    return arr


def read_dicom(paths: list[str | Path], *, series: str | None = None) -> Scan:
    """DICOM input of one case -> a volume `Scan` (C, X, Y, Z) with kind "nifti" and a RAS affine.

    .dcm files together are one series (one channel); each folder or zip is one series, one channel
    per folder or zip (in the model's channel order), all on one grid.
    """
    from . import dicom

    paths = [Path(p) for p in paths]
    loose = [p for p in paths if p.name.lower().endswith(dicom.DICOM_SUFFIXES) and not p.is_dir()]
    sources = [paths] if loose else [[p] for p in paths]
    if loose and len(loose) != len(paths):
        raise InputError("mixed .dcm files with folders or zips; give .dcm files of one series, or folders/zips")
    arrays, affine, spacing, infos = [], None, None, []
    for src in sources:
        vol, aff, zooms, info = dicom.read_dicom_series(src, series=series)
        name = src[0].name
        if arrays and (vol.shape != arrays[0].shape[1:] or np.abs(aff - affine).max() > 1e-3):
            raise InputError(
                f"{name}: series grid {vol.shape} differs from {sources[0][0].name} {arrays[0].shape[1:]}; "
                "all modality series must share one grid"
            )
        if affine is None:
            affine, spacing = aff, zooms
        arrays.append(vol[None])
        infos.append(info)
    data = np.concatenate(arrays, axis=0)
    first = sources[0][0].name
    _check_side(data.shape[1:3], first)
    if any(not (0 < z <= MAX_SPACING_MM) for z in spacing):
        raise InputError(
            f"{first}: voxel spacing {spacing} mm is not usable; accepted: each in (0, {MAX_SPACING_MM:g}] mm"
        )
    _check_values(data, first)
    return Scan(
        data=data, affine=affine, header=None, spacing=spacing, kind="nifti", origin="dicom", series=tuple(infos)
    )


def read_scan(paths: list[str | Path], *, series: str | None = None, max_side: int | None = None) -> Scan:
    """Read the input files of one case: NIfTI file(s), one 2D image per modality, or DICOM series.

    `series`: for DICOM input holding several series, the SeriesInstanceUID to read.
    `max_side`: 2D images with a longer side are reduced at read time (`read_image`); the scan
    then remembers their `full_size`, and `Scan.to_source` brings maps back to it.
    """
    if not paths:
        raise InputError(
            "no input file given; accepted: one file per modality (NIfTI volumes or 2D images), or a DICOM series"
        )
    kinds = {kind_of(p) for p in paths}
    if len(kinds) > 1:
        names = {"nifti": "NIfTI", "image": "2D image", "dicom": "DICOM"}
        raise InputError(
            f"mixed {' and '.join(v for k, v in names.items() if k in kinds)} inputs; give one kind per case"
        )
    if series is not None and kinds != {"dicom"}:
        raise InputError(
            "a series UID was given for input that is not DICOM; --series applies to DICOM folders or zips"
        )
    if kinds == {"nifti"}:
        return read_nifti(paths)
    if kinds == {"dicom"}:
        return read_dicom(paths, series=series)
    chans = [read_image(p, max_side=max_side) for p in paths]
    sizes = [_image_size(p) for p in paths] if max_side is not None else []  # each file read fine above
    if len(chans) > 1:
        colour = [Path(p).name for p, c in zip(paths, chans, strict=True) if c.shape[0] != 1]
        if colour:
            raise InputError(
                f"{', '.join(colour)}: colour image given as one of several modality files; "
                "accepted: one greyscale image per modality"
            )
        if len({c.shape for c in chans}) > 1:
            sizes = ", ".join(f"{Path(p).name} {c.shape[2]}x{c.shape[1]}" for p, c in zip(paths, chans, strict=True))
            raise InputError(f"modality images differ in size ({sizes}); accepted: images of one size")
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{Path(p).name} {w}x{h}" for p, (h, w) in zip(paths, sizes, strict=True))
        raise InputError(f"modality images differ in size ({listed}); accepted: images of one size")
    data = np.concatenate(chans, axis=0)
    _check_values(data, Path(paths[0]).name)
    full = sizes[0] if sizes and sizes[0] != tuple(data.shape[1:]) else None
    return Scan(data=data, affine=None, header=None, spacing=(1.0, 1.0), kind="image", origin="image", full_size=full)


def _image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a 2D picture that `read_image` has read, from its header alone (no pixels decoded)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size[1], img.size[0]


def read_labels(path: str | Path, *, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """A ground-truth label map (NIfTI or PNG) checked against the image grid and the classes."""
    path = Path(path)
    if kind_of(path) == "nifti":
        img = _load_nifti(path, "NIfTI label map")
        arr = _read_dataobj(img, path, "NIfTI label map")
        arr = np.squeeze(arr) if arr.ndim > len(shape) else arr
    else:
        arr = read_image(path)
        if arr.shape[0] != 1:
            raise InputError(f"{path.name}: a colour label image; accepted: greyscale, one class index per pixel")
        arr = arr[0]
    if tuple(arr.shape) != tuple(shape):
        raise InputError(
            f"{path.name}: ground truth shape {tuple(arr.shape)} does not match the image {tuple(shape)}; "
            "accepted: a label map on the image's grid"
        )
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise InputError(f"{path.name}: ground truth holds non-integer values; accepted: integer class indices")
    labels = arr.astype(np.int64)
    bad = np.setdiff1d(np.unique(labels), np.arange(num_classes))
    if bad.size:
        raise InputError(
            f"{path.name}: unknown label value(s) {bad[:8].tolist()}; accepted: this model's classes 0..{num_classes - 1}"
        )
    return labels


def match_channels(paths: list[str], channel_names: list[str]) -> list[str]:
    """Files in the model's channel order, matched by file name ('x_flair.png' -> FLAIR), the rest in the given order.

    Longer channel names are matched first, so 't1c' claims 'x_t1c.png' before 't1' can. With as
    many files as channels the result is a permutation of `paths`.
    """

    def key(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    left, picked = list(paths), {}
    for c in sorted(range(len(channel_names)), key=lambda c: -len(channel_names[c])):
        name = key(channel_names[c])
        match = next((p for p in left if name and name in key(Path(p).name)), None)
        if match is not None:
            picked[c] = match
            left.remove(match)
    return [picked[c] if c in picked else left.pop(0) for c in range(len(channel_names)) if c in picked or left]


def slice_affine(affine: np.ndarray, z: int) -> np.ndarray:
    """A volume's (4, 4) voxel -> world affine -> that of its slice z, as a one-slice volume in the same place."""
    shift = np.eye(4)
    shift[2, 3] = z
    return np.asarray(affine, dtype=np.float64) @ shift


def write_nifti_labels(labels: np.ndarray, path: str | Path, *, affine: np.ndarray, header=None) -> None:
    """(X, Y, Z) labels -> a uint8 NIfTI on the source grid, keeping the source affine."""
    nib = _nibabel()

    img = nib.Nifti1Image(labels.astype(np.uint8), affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    nib.save(img, str(path))


def write_scan_labels(labels: np.ndarray, path: str | Path, *, scan: Scan) -> None:
    """(X, Y, Z) labels on the grid of `scan.data` -> a uint8 NIfTI on the file's own grid, shape and affine."""
    write_nifti_labels(scan.to_source(labels), path, affine=scan.source_affine, header=scan.header)


def write_scan_map(values: np.ndarray, path: str | Path, *, scan: Scan) -> None:
    """(X, Y, Z) float map on the grid of `scan.data` -> a float32 NIfTI on the file's own grid and affine."""
    write_nifti_map(scan.to_source(values), path, affine=scan.source_affine)


def write_png_labels(labels: np.ndarray, path: str | Path) -> None:
    """(H, W) labels -> an 8-bit PNG whose pixel values are the class indices."""
    from PIL import Image

    Image.fromarray(labels.astype(np.uint8), mode="L").save(str(path))


def write_nifti_map(values: np.ndarray, path: str | Path, *, affine: np.ndarray) -> None:
    """(X, Y, Z) float map (e.g. the agreement of steps and members, in [0, 1]) -> a float32 NIfTI with `affine`."""
    nib = _nibabel()

    nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(path))


def write_png_map(values: np.ndarray, path: str | Path) -> None:
    """(H, W) map in [0, 1] (e.g. the agreement map) -> an 8-bit grey PNG, 0..1 -> 0..255."""
    from PIL import Image

    Image.fromarray((np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8), mode="L").save(str(path))


# -- normalisation ----------------------------------------------------------------------------


def background_value(config: MedCondDiffConfig) -> float:
    """The normalised value of empty space (air outside the head or body): used for padding."""
    return -1.0 if config.modality == "ct" else 0.0


def mri_foreground(data: np.ndarray, *, min_fill: float = 0.05) -> np.ndarray:
    """(C, ...) MRI -> boolean foreground (...): pixels where any channel differs from its background.

    A channel's background is a constant fill shared by at least `min_fill` of the pixels: 0 for raw
    scans and pictures, or the channel's minimum for volumes z-scored before the skull-stripped
    background was filled in (the BraTS files used here), whichever covers more pixels. Without such
    a fill the whole image counts as foreground.
    """
    fg = np.zeros(data.shape[1:], bool)
    for channel in data:
        fills = [channel == 0, channel == channel.min()]
        fill = max(fills, key=lambda f: f.mean())
        fg |= ~fill if fill.mean() >= min_fill else True
    return fg


def normalise(data: np.ndarray, config: MedCondDiffConfig, *, kind: str, ct_window: str | None = None) -> np.ndarray:
    """Scanner or picture intensities (C, ...) -> the model's input range, float32.

    mri: z-score of each channel inside the foreground (`mri_foreground`: inside the head), 0 outside.
    ct:  NIfTI in Hounsfield units is clipped to a window and mapped to [-1, 1]; a 2D picture is
         taken as already windowed and its 0..max range mapped to [-1, 1].
    natural: 0..max -> [0, 1].
    """
    data = data.astype(np.float32, copy=False)
    if data.shape[0] != config.image_channels:
        raise InputError(
            f"the model expects {config.image_channels} modality channel(s) "
            f"({', '.join(config.channel_names)}), got {data.shape[0]}"
        )
    if config.modality == "mri":
        fg = mri_foreground(data)
        out = np.zeros_like(data)
        if fg.sum() < 2:  # an empty slice (outside the head) stays empty
            return out
        for c in range(data.shape[0]):
            vals = data[c][fg]
            std = float(vals.std())
            out[c][fg] = (vals - float(vals.mean())) / (std if std > 0 else 1.0)
        return out
    top = float(np.abs(data).max()) or 1.0
    picture_max = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    if config.modality == "ct":
        if kind == "nifti":
            name = ct_window or config.ct_window
            if name not in CT_WINDOWS:
                raise InputError(f"unknown CT window {name!r}; accepted: {', '.join(CT_WINDOWS)}")
            level, width = CT_WINDOWS[name]
            lo = level - width / 2
            return (np.clip((data - lo) / width, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)
        return (np.clip(data / picture_max, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)
    return np.clip(data / picture_max, 0.0, 1.0).astype(np.float32)


def window_to_display(hu: np.ndarray, window: str) -> np.ndarray:
    """Hounsfield units -> uint8 picture with a named window (for example slices and overlays)."""
    level, width = CT_WINDOWS[window]
    return (np.clip((hu - (level - width / 2)) / width, 0, 1) * 255).round().astype(np.uint8)


# -- model-grid geometry ----------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How one slice was cropped, padded to a square and resized; inverted exactly by `from_model_grid`."""

    shape: tuple[int, int]  # (H, W) of the original slice
    box: tuple[int, int, int, int]  # crop (y0, y1, x0, x1) in the original slice
    pad: tuple[int, int, int, int]  # (top, bottom, left, right) to make the crop square
    side: int  # side of the padded square, before resizing
    size: int  # the model's image size


def foreground_box(image: np.ndarray, background: float, *, margin: int = 8) -> tuple[int, int, int, int]:
    """(C, H, W) -> (y0, y1, x0, x1) bounding the pixels that differ from `background`, plus a margin."""
    fg = (np.abs(image - background) > 1e-6).any(axis=0)
    h, w = fg.shape
    if not fg.any():
        return 0, h, 0, w
    ys, xs = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    return max(0, ys[0] - margin), min(h, ys[-1] + 1 + margin), max(0, xs[0] - margin), min(w, xs[-1] + 1 + margin)


def plan_geometry(image: np.ndarray, config: MedCondDiffConfig, *, spacing: float | None = None) -> Geometry:
    """Choose the crop and padding for a normalised (C, H, W) slice.

    `spacing`: the slice's mm per pixel, when known. With it and a model `pixel_spacing`, the
    padded square covers image_size x pixel_spacing mm centred on the crop (cropping a crop that
    is wider), so the network sees every scan at one scale; otherwise the crop is fitted to the grid.
    """
    _, h, w = image.shape
    y0, y1, x0, x1 = foreground_box(image, background_value(config)) if config.crop_foreground else (0, h, 0, w)
    if config.pixel_spacing > 0 and spacing is not None and math.isfinite(spacing) and spacing > 0:
        side = max(1, round(config.image_size * config.pixel_spacing / spacing))
        y0, y1 = _centre_window(y0, y1, side)
        x0, x1 = _centre_window(x0, x1, side)
    else:
        side = max(y1 - y0, x1 - x0)
    ch, cw = y1 - y0, x1 - x0
    top, left = (side - ch) // 2, (side - cw) // 2
    return Geometry(
        shape=(h, w),
        box=(y0, y1, x0, x1),
        pad=(top, side - ch - top, left, side - cw - left),
        side=side,
        size=config.image_size,
    )


def _centre_window(lo: int, hi: int, side: int) -> tuple[int, int]:
    """Shrink [lo, hi) to at most `side` pixels about its centre."""
    if hi - lo <= side:
        return lo, hi
    start = lo + (hi - lo - side) // 2
    return start, start + side


def to_model_grid(image: np.ndarray, geometry: Geometry, *, background: float) -> torch.Tensor:
    """(C, H, W) normalised slice -> (C, size, size) tensor: crop, pad to square, resize (bilinear)."""
    y0, y1, x0, x1 = geometry.box
    t = torch.from_numpy(np.ascontiguousarray(image[:, y0:y1, x0:x1], dtype=np.float32))
    top, bottom, left, right = geometry.pad
    t = F.pad(t, (left, right, top, bottom), value=background)  # (C, side, side)
    if geometry.side != geometry.size:
        t = F.interpolate(
            t[None],
            size=(geometry.size, geometry.size),
            mode="bilinear",
            align_corners=False,
            antialias=geometry.side > geometry.size,
        )[0]
    return t


def labels_to_model_grid(labels: np.ndarray, geometry: Geometry) -> torch.Tensor:
    """(H, W) labels -> (size, size) int64 labels on the model grid (nearest neighbour)."""
    y0, y1, x0, x1 = geometry.box
    t = torch.from_numpy(np.ascontiguousarray(labels[y0:y1, x0:x1])).float()
    top, bottom, left, right = geometry.pad
    t = F.pad(t, (left, right, top, bottom), value=0.0)
    t = F.interpolate(t[None, None], size=(geometry.size, geometry.size), mode="nearest-exact")[0, 0]
    return t.long()


def from_model_grid(maps: torch.Tensor, geometry: Geometry, *, fill: torch.Tensor) -> torch.Tensor:
    """(N, size, size) maps on the model grid -> (N, H, W) on the original grid (bilinear).

    Pixels outside the crop box get `fill` (N,): e.g. probability 1 for background, 0 otherwise.
    """
    top, bottom, left, right = geometry.pad
    m = maps.float()
    if geometry.side != geometry.size:
        m = F.interpolate(m[None], size=(geometry.side, geometry.side), mode="bilinear", align_corners=False)[0]
    m = m[:, top : geometry.side - bottom, left : geometry.side - right]  # (N, crop_h, crop_w)
    h, w = geometry.shape
    out = fill.float().reshape(-1, 1, 1).expand(m.shape[0], h, w).clone()
    y0, y1, x0, x1 = geometry.box
    out[:, y0:y1, x0:x1] = m
    return out
