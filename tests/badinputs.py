"""The bad-input corpus: every kind of input people will hand the library, the command line or the app.

Each `Kind` builds its files in a folder (generated here, never downloaded) and says what must
happen: either a typed `MedCondDiffError` whose message holds fragments naming the problem and
what is accepted, or a valid mask of a given shape (some "odd" inputs are fine: 16-bit, float,
RGBA, palette, non-square, one slice). `surfaces` says where the kind applies:

    library  load_model / load_case / read_labels / SamplingSettings / segment_*
    cli      python -m medconddiff segment ...   (exit code 2, one line `error: ...`)
    app      the app's `segment` API through gradio_client   (a gr.Error with the message)

The model the corpus is written for has 2 channels (FLAIR, T1c) and 5 classes, like the BraTS demo
and the tests' tiny model.
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medconddiff.errors import InputError, MedCondDiffError, SettingsError, WeightsError

ALL = frozenset({"library", "cli", "app"})
LIB_CLI = frozenset({"library", "cli"})
NUM_CLASSES = 5


@dataclass
class Inputs:
    """What one run is given."""

    files: list[Path]
    weights: Path | str | None = None  # None: the good (tiny) weights
    labels: Path | None = None  # ground truth, library only
    cli_args: list[str] = field(default_factory=list)  # extra command-line arguments
    settings: dict = field(default_factory=dict)  # SamplingSettings overrides (library and app)
    output: str | None = None  # command-line output name; default mask.png / mask.nii.gz


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable[[Path, Path], Inputs]  # (empty folder, good weights folder) -> Inputs
    error: type[MedCondDiffError] | None = None  # None: the input is valid and must segment
    fragments: tuple[str, ...] = ()  # all must appear in the message
    shape: tuple[int, ...] | None = None  # the mask's shape, for valid inputs
    surfaces: frozenset[str] = ALL
    xfail: tuple[tuple[str, str], ...] = ()  # (surface, reason): a known gap in code this corpus does not own

    @property
    def valid(self) -> bool:
        return self.error is None


# -- writers ------------------------------------------------------------------------------------


def brain(h: int = 48, w: int = 40, *, channels: int = 2, seed: int = 0) -> np.ndarray:
    """(C, H, W) float32: a noisy blob on a zero background, like a skull-stripped MRI slice."""
    rng = np.random.default_rng(seed)
    img = np.zeros((channels, h, w), np.float32)
    y0, y1, x0, x1 = h // 6, h - h // 6, w // 6, w - w // 6
    img[:, y0:y1, x0:x1] = rng.normal(1.0, 0.5, (channels, y1 - y0, x1 - x0)).clip(0.05, None)
    return img


def to_uint8(plane: np.ndarray) -> np.ndarray:
    return (plane / max(float(plane.max()), 1e-6) * 254).round().astype(np.uint8)


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, **kwargs)
    return path


def png_pair(d: Path, h: int = 48, w: int = 40, *, transform=to_uint8) -> list[Path]:
    """FLAIR and T1c slices as 8-bit PNGs (or whatever `transform` makes of each plane)."""
    img = brain(h, w)
    return [save_image(d / f"case_{m}.png", transform(img[i])) for i, m in enumerate(("flair", "t1c"))]


def nifti_bytes(data: np.ndarray, *, affine: np.ndarray | None = None) -> bytes:
    """An uncompressed single-file NIfTI-1 image, as bytes."""
    import nibabel as nib

    return nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_bytes()


def save_nifti(path: Path, data: np.ndarray, *, affine: np.ndarray | None = None) -> Path:
    raw = nifti_bytes(np.asarray(data), affine=affine)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.name.endswith(".gz") else raw)
    return path


def patch_header(raw: bytes, **fields) -> bytes:
    """Overwrite NIfTI-1 header fields in place, without nibabel's checks: a header that lies."""
    offsets = {
        "dim": (40, "<8h"),
        "pixdim": (76, "<8f"),
        "srow_x": (280, "<4f"),
        "sform_code": (254, "<h"),
        "qform_code": (252, "<h"),
        "scl_slope": (112, "<f"),
        "scl_inter": (116, "<f"),
    }
    buf = bytearray(raw)
    for name, value in fields.items():
        offset, fmt = offsets[name]
        values = value if isinstance(value, (list, tuple)) else [value]
        struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


AFFINE = np.diag([1.2, 1.1, 3.0, 1.0])


def volume(x: int = 48, y: int = 40, z: int = 3, *, seed: int = 0) -> np.ndarray:
    """(2, X, Y, Z) float32 two-modality volume."""
    return np.stack([brain(x, y, seed=seed + k) for k in range(z)], axis=-1)


def nifti_pair(d: Path, vol: np.ndarray | None = None, *, affine: np.ndarray = AFFINE) -> list[Path]:
    vol = volume() if vol is None else vol
    return [save_nifti(d / f"case_{m}.nii.gz", vol[i], affine=affine) for i, m in enumerate(("flair", "t1c"))]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@functools.lru_cache(maxsize=1)
def bomb_png(side: int = 20000) -> bytes:
    """A valid side x side 8-bit grey PNG of zeros: about 0.4 MB on disk, 400 MB once decoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    rows_per_block = 256
    parts = [comp.compress(row * rows_per_block) for _ in range(side // rows_per_block)]
    parts += [comp.compress(row * (side % rows_per_block)), comp.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# -- weights ------------------------------------------------------------------------------------


def weights_copy(d: Path, good: Path, *, config: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the good weights folder, with config.json edited (`config`) or fields dropped."""
    out = d / "weights"
    shutil.copytree(good, out)
    cfg = json.loads((good / "config.json").read_text())
    cfg.update(config or {})
    for name in drop:
        cfg.pop(name)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def other_shape_weights(d: Path, good: Path) -> Path:
    """The good config.json next to a safetensors file written for a 3-class model."""
    import torch
    from safetensors.torch import save_file

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.model import MedCondDiff

    out = weights_copy(d, good)
    cfg = MedCondDiffConfig.from_json(good / "config.json").to_dict()
    cfg.update(num_classes=3, class_names=["a", "b", "c"])
    torch.manual_seed(0)
    state = MedCondDiff(MedCondDiffConfig.from_dict(cfg)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    return out


def pickled_weights(d: Path, good: Path, *, name: str) -> Path:
    """The good config.json with a torch.save pickle as `name` (model.safetensors or pytorch_model.bin)."""
    import torch
    from safetensors.torch import load_file

    out = weights_copy(d, good)
    state = load_file(str(good / "model.safetensors"))
    (out / "model.safetensors").unlink()
    torch.save(state, out / name)
    return out


def missing_tensor_weights(d: Path, good: Path) -> Path:
    from safetensors.torch import load_file, save_file

    out = weights_copy(d, good)
    state = load_file(str(good / "model.safetensors"))
    state.pop(sorted(state)[-1])
    save_file(state, str(out / "model.safetensors"))
    return out


# -- DICOM ---------------------------------------------------------------------------------------


def dicom_series(
    d: Path, name: str = "series", *, z: int = 5, modality: str = "MR", shuffle: bool = False, **kw
) -> Path:
    """A folder of one MR (or CT) series of the FLAIR plane stack, slices written in order (slice_000.dcm, ...)."""
    from dicoms import write_series

    vol = np.round(volume(z=z)[0] * 100)
    write_series(d / name, vol, AFFINE, modality=modality, intercept=0.0, shuffle=shuffle, **kw)
    return d / name


def dicom_pair(d: Path, *, zipped: bool = True) -> list[Path]:
    """FLAIR and T1c as two MR series on one grid (as zips, or folders), integer values."""
    from dicoms import write_series, zip_folder

    vol = np.round(volume() * 100)
    out = []
    for i, m in enumerate(("flair", "t1c")):
        folder = d / f"case_{m}"
        write_series(folder, vol[i], AFFINE, modality="MR", intercept=0.0, description=m.upper())
        out.append(zip_folder(folder, d / f"case_{m}.zip") if zipped else folder)
    return out


def edit_slices(folder: Path, edit: Callable) -> Path:
    """Re-save every slice after `edit(dataset)`."""
    import pydicom

    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
    return folder


def zipped(d: Path, folder: Path) -> Path:
    from dicoms import zip_folder

    return zip_folder(folder, d / f"{folder.name}.zip")


def zip_of(path: Path, entries: dict[str, bytes], *, rename: dict[bytes, bytes] | None = None) -> Path:
    """A zip of `entries`; `rename` then patches names in the raw bytes (same length): names zipfile would not write."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    raw = path.read_bytes()
    for old, new in (rename or {}).items():
        raw = raw.replace(old, new)
    return write(path, raw)


def one_slice_bytes(d: Path) -> bytes:
    return sorted(dicom_series(d, "one", z=2).glob("*.dcm"))[0].read_bytes()


def zip_claiming_size(path: Path, size: int) -> Path:
    """A zip whose central directory says its one member inflates to `size` bytes (a zip bomb's header)."""
    zip_of(path, {"slice.dcm": b"x" * 100})
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, at + 24, size)  # uncompressed size
    return write(path, bytes(raw))


def zip_many_entries(path: Path, n: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"s{i:05d}.dcm", b"")
    return path


def _drop_pixels(ds) -> None:
    del ds.PixelData


def _as_seg(ds) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.Modality = "SEG"


def _as_rtstruct(ds) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.Modality = "RTSTRUCT"
    del ds.PixelData


def _jpeg_ls(ds) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 64])
    ds["PixelData"].VR = "OB"


def _move_last_slice(folder: Path, mm: float) -> Path:
    """Shift the last slice along the stack: the spacing is no longer constant."""
    import pydicom

    last = sorted(folder.glob("*.dcm"))[-1]
    ds = pydicom.dcmread(last)
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + mm]
    ds.save_as(last, enforce_file_format=True)
    return folder


def _remove(path: Path) -> Path:
    path.unlink()
    return path.parent


def _two_series(d: Path) -> Path:
    dicom_series(d / "both", "flair", description="FLAIR")
    dicom_series(d / "both", "t1c", description="T1c")
    return zipped(d, d / "both")


# -- the corpus ---------------------------------------------------------------------------------


def _k(name, build, error=None, fragments=(), shape=None, surfaces=ALL, xfail=()) -> Kind:
    return Kind(name, build, error, tuple(fragments), shape, frozenset(surfaces), tuple(xfail))


TEXT = b"patient: anonymous\nthis is a text file, not a scan\n" * 8

KINDS: list[Kind] = [
    # --- files that are not what their name says
    _k(
        "empty_nifti",
        lambda d, w: Inputs([write(d / "a.nii.gz", b""), write(d / "b.nii.gz", b"")]),
        InputError,
        ["the file is empty", "accepted: a .nii or .nii.gz"],
    ),
    _k(
        "empty_png",
        lambda d, w: Inputs([write(d / "a.png", b""), write(d / "b.png", b"")]),
        InputError,
        ["the file is empty", "accepted: PNG/JPG/BMP/TIFF"],
    ),
    _k(
        "text_renamed_nii_gz",
        lambda d, w: Inputs([write(d / f"{m}.nii.gz", TEXT) for m in "ab"]),
        InputError,
        ["not a readable NIfTI file", "accepted: .nii or .nii.gz"],
    ),
    _k(
        "text_renamed_png",
        lambda d, w: Inputs([write(d / f"{m}.png", TEXT) for m in "ab"]),
        InputError,
        ["not a readable image", "accepted: PNG/JPG/BMP/TIFF"],
    ),
    _k(
        "truncated_gzip",
        lambda d, w: Inputs([write(p, p.read_bytes()[: p.stat().st_size // 2]) for p in nifti_pair(d)]),
        InputError,
        ["not a readable NIfTI file", "EOFError", "accepted: .nii or .nii.gz"],
    ),
    _k(
        "truncated_png",
        lambda d, w: Inputs([write(p, p.read_bytes()[: p.stat().st_size // 2]) for p in png_pair(d, 96, 96)]),
        InputError,
        ["not a readable image", "accepted: PNG/JPG/BMP/TIFF"],
    ),
    _k(
        "nifti_header_larger_than_data",
        lambda d, w: Inputs(
            [
                write(
                    d / f"{m}.nii.gz",
                    gzip.compress(patch_header(nifti_bytes(volume()[0]), dim=[3, 480, 400, 30, 1, 1, 1, 1])),
                )
                for m in "ab"
            ]
        ),
        InputError,
        ["not a readable NIfTI file", "Expected", "accepted: .nii or .nii.gz"],
    ),
    _k(
        "nifti_header_claims_huge_4d",
        lambda d, w: Inputs(
            [
                write(
                    d / "a.nii.gz",
                    gzip.compress(patch_header(nifti_bytes(volume()[0]), dim=[4, 100, 100, 100, 30000, 1, 1, 1])),
                )
            ]
        ),
        InputError,
        ["claims shape (100, 100, 100, 30000)", "accepted: at most"],
    ),
    _k(
        "unsupported_extension",
        lambda d, w: Inputs([write(d / "a.mha", TEXT), write(d / "b.mha", TEXT)]),
        InputError,
        ["unsupported file type", "accepted: NIfTI (.nii, .nii.gz), 2D images", "or a DICOM series"],
    ),
    _k(
        "missing_file",
        lambda d, w: Inputs([d / "nope_flair.nii.gz", d / "nope_t1c.nii.gz"]),
        InputError,
        ["file not found"],
        surfaces=LIB_CLI,
    ),  # the app only ever sees uploaded files
    _k(
        "folder_as_input",
        lambda d, w: Inputs([_folder(d / "x.nii.gz"), _folder(d / "y.nii.gz")]),
        InputError,
        ["is a folder, not a file", "accepted: a .nii or .nii.gz"],
        surfaces=LIB_CLI,
    ),
    _k(
        "mixed_nifti_and_png",
        lambda d, w: Inputs([nifti_pair(d)[0], png_pair(d)[1]]),
        InputError,
        ["mixed NIfTI and 2D image inputs", "one kind per case"],
    ),
    # --- volumes of the wrong dimensionality or size
    _k(
        "4d_modalities_last",
        lambda d, w: Inputs([save_nifti(d / "both.nii.gz", np.moveaxis(volume(), 0, -1), affine=AFFINE)]),
        shape=(48, 40, 3),
    ),
    _k(
        "4d_time_series",
        lambda d, w: Inputs([save_nifti(d / "bold.nii.gz", np.stack([volume()[0]] * 7, -1))]),
        InputError,
        ["expects 2 modality channel(s)", "got 7", "one file per modality"],
    ),
    _k(
        "4d_with_other_files",
        lambda d, w: Inputs([save_nifti(d / "both.nii.gz", np.moveaxis(volume(), 0, -1)), nifti_pair(d)[1]]),
        InputError,
        ["4-D volume given with other files", "give one 4-D file or one 3-D file per modality"],
    ),
    _k(
        "5d_volume",
        lambda d, w: Inputs(
            [save_nifti(d / "five.nii.gz", np.random.default_rng(0).random((16, 16, 3, 2, 2), dtype=np.float32))]
        ),
        InputError,
        ["5-D data", "accepted: 3-D volumes or one 4-D volume"],
    ),
    _k(
        "one_voxel_volume",
        lambda d, w: Inputs(nifti_pair(d, np.ones((2, 1, 1, 1), np.float32))),
        InputError,
        ["in-plane size 1x1", "accepted: each side between 8 and 4096"],
    ),
    _k("one_slice_volume", lambda d, w: Inputs(nifti_pair(d, volume(z=1))), shape=(48, 40, 1)),
    _k(
        "2d_nifti",
        lambda d, w: Inputs([save_nifti(d / f"{m}.nii.gz", brain()[i]) for i, m in enumerate("ab")]),
        shape=(48, 40, 1),
    ),
    _k("non_square_odd_volume", lambda d, w: Inputs(nifti_pair(d, volume(37, 211, 2))), shape=(37, 211, 2)),
    _k(
        "nan_voxels",
        lambda d, w: Inputs(nifti_pair(d, np.where(volume() > 1.4, np.nan, volume()))),
        InputError,
        ["NaN/Inf value(s)", "accepted: finite intensities only"],
    ),
    _k(
        "inf_voxels",
        lambda d, w: Inputs(nifti_pair(d, np.where(volume() > 1.4, np.inf, volume()))),
        InputError,
        ["NaN/Inf value(s)", "accepted: finite intensities only"],
    ),
    _k(
        "constant_volume",
        lambda d, w: Inputs(nifti_pair(d, np.full((2, 48, 40, 3), 7.0, np.float32))),
        InputError,
        ["every pixel has the same value (7)", "accepted: a scan with some contrast"],
    ),
    _k(
        "all_zero_volume",
        lambda d, w: Inputs(nifti_pair(d, np.zeros((2, 48, 40, 3), np.float32))),
        InputError,
        ["every pixel has the same value (0)", "accepted: a scan with some contrast"],
    ),
    _k(
        "negative_spacing_taken_as_abs",  # nibabel reads |pixdim|; the affine carries the orientation
        lambda d, w: Inputs(
            [
                write(
                    d / f"{m}.nii",
                    patch_header(nifti_bytes(volume()[i], affine=AFFINE), pixdim=[1, -1.2, -1.1, -3.0, 1, 1, 1, 1]),
                )
                for i, m in enumerate("ab")
            ]
        ),
        shape=(48, 40, 3),
    ),
    _k(
        "huge_spacing",
        lambda d, w: Inputs(nifti_pair(d, affine=np.diag([1e6, 1.0, 1.0, 1.0]))),
        InputError,
        ["voxel spacing (1000000.0, 1.0, 1.0) mm is not usable", "accepted: each in (0, 100] mm"],
    ),
    _k(
        "nan_affine",
        lambda d, w: Inputs(
            [
                write(
                    d / f"{m}.nii",
                    patch_header(nifti_bytes(volume()[i]), qform_code=0, sform_code=1, srow_x=[float("nan"), 0, 0, 0]),
                )
                for i, m in enumerate("ab")
            ]
        ),
        InputError,
        ["the affine contains NaN/Inf", "accepted: a finite voxel-to-world affine"],
    ),
    _k(
        "rgb_nifti",
        lambda d, w: Inputs(
            [
                save_nifti(d / f"{m}.nii.gz", np.zeros((16, 16, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))
                for m in "ab"
            ]
        ),
        InputError,
        ["RGB/structured voxels", "accepted: one real intensity per voxel"],
    ),
    _k(
        "complex_nifti",
        lambda d, w: Inputs([save_nifti(d / f"{m}.nii.gz", volume()[0].astype(np.complex64)) for m in "ab"]),
        InputError,
        ["complex voxels", "accepted: one real intensity per voxel"],
    ),
    # --- modality files that do not fit the model or each other
    _k(
        "modality_count_one_file_for_two",
        lambda d, w: Inputs(nifti_pair(d)[:1]),
        InputError,
        ["the model expects 2 modality channel(s) (FLAIR, T1c)", "got 1", "one file per modality"],
    ),
    _k(
        "modality_count_three_files",
        lambda d, w: Inputs(png_pair(d) + [save_image(d / "extra.png", to_uint8(brain(seed=3)[0]))]),
        InputError,
        ["the model expects 2 modality channel(s)", "got 3"],
    ),
    _k(
        "mismatched_modality_shapes_nifti",
        lambda d, w: Inputs([nifti_pair(d)[0], save_nifti(d / "t1c_small.nii.gz", volume(40, 40)[1])]),
        InputError,
        ["differs from", "all modality files must share one grid"],
    ),
    _k(
        "mismatched_modality_sizes_png",
        lambda d, w: Inputs([png_pair(d)[0], save_image(d / "t1c_small.png", to_uint8(brain(30, 30)[1]))]),
        InputError,
        ["modality images differ in size", "accepted: images of one size"],
    ),
    # --- 2D pictures: size, bit depth, colour
    _k(
        "decompression_bomb_png_20000x20000",
        lambda d, w: Inputs([write(d / f"{m}.png", bomb_png()) for m in "ab"]),
        InputError,
        ["too large to decode safely", "accepted: at most 16777216 pixels"],
    ),
    _k(
        "oversized_png_5000x5000",
        lambda d, w: Inputs([save_image(d / f"{m}.png", np.zeros((5000, 5000), np.uint8)) for m in "ab"]),
        InputError,
        ["5000x5000 pixels is too large", "accepted: at most 16777216 pixels"],
    ),
    _k(
        "extreme_aspect_png_8x5000",
        lambda d, w: Inputs(png_pair(d, 8, 5000)),
        InputError,
        ["in-plane size 8x5000 is not usable", "accepted: each side between 8 and 4096"],
    ),
    _k(
        "one_pixel_png",
        lambda d, w: Inputs([save_image(d / f"{m}.png", np.full((1, 1), 9, np.uint8)) for m in "ab"]),
        InputError,
        ["in-plane size 1x1 is not usable", "accepted: each side between 8 and 4096"],
    ),
    _k(
        "constant_png",
        lambda d, w: Inputs([save_image(d / f"{m}.png", np.full((48, 40), 9, np.uint8)) for m in "ab"]),
        InputError,
        ["every pixel has the same value (9)", "accepted: a scan with some contrast"],
    ),
    _k(
        "sixteen_bit_png",
        lambda d, w: Inputs(png_pair(d, transform=lambda p: (p / p.max() * 60000).astype(np.uint16))),
        shape=(48, 40),
    ),
    _k(
        "float_tiff",
        lambda d, w: Inputs([save_image(d / f"{m}.tif", brain()[i] * 317.5 - 20.0) for i, m in enumerate("ab")]),
        shape=(48, 40),
    ),
    _k(
        "nan_float_tiff",
        lambda d, w: Inputs(
            [save_image(d / f"{m}.tif", np.where(brain()[i] > 1.4, np.nan, brain()[i])) for i, m in enumerate("ab")]
        ),
        InputError,
        ["NaN/Inf value(s)", "accepted: finite intensities only"],
    ),
    _k(
        "rgba_grey_png",
        lambda d, w: Inputs(
            png_pair(d, transform=lambda p: np.stack([to_uint8(p)] * 3 + [np.full(p.shape, 255, np.uint8)], -1))
        ),
        shape=(48, 40),
    ),
    _k(
        "rgba_colour_single_file",
        lambda d, w: Inputs(
            [
                save_image(
                    d / "rgba.png",
                    np.stack(
                        [
                            to_uint8(brain()[0]),
                            to_uint8(brain()[1]),
                            to_uint8(brain(seed=5)[0]),
                            np.full((48, 40), 255, np.uint8),
                        ],
                        -1,
                    ),
                )
            ]
        ),
        InputError,
        ["the model expects 2 modality channel(s)", "got 3"],
    ),
    _k("palette_grey_png", lambda d, w: Inputs([_to_palette(p, colour=False) for p in png_pair(d)]), shape=(48, 40)),
    _k(
        "palette_colour_png_in_pair",
        lambda d, w: Inputs([png_pair(d)[0], _to_palette(png_pair(d)[1], colour=True)]),
        InputError,
        ["colour image given as one of several modality files", "accepted: one greyscale image"],
    ),
    _k(
        "multi_frame_tiff",
        lambda d, w: Inputs([_multi_frame(d / f"{m}.tif") for m in "ab"]),
        InputError,
        ["has 2 frames", "accepted: a single 2D image"],
    ),
    _k("non_square_odd_png_37x211", lambda d, w: Inputs(png_pair(d, 37, 211)), shape=(37, 211)),
    _k("tiny_odd_png_9x13", lambda d, w: Inputs(png_pair(d, 9, 13)), shape=(9, 13)),
    _k(
        "jpeg_pair",
        lambda d, w: Inputs(
            [save_image(p.with_suffix(".jpg"), to_uint8(brain()[i]), quality=90) for i, p in enumerate(png_pair(d))]
        ),
        shape=(48, 40),
    ),
    # --- ground truth (library: the app's and evaluation's reader)
    _k(
        "ground_truth_shape_mismatch",
        lambda d, w: Inputs(png_pair(d), labels=save_image(d / "seg.png", np.zeros((40, 48), np.uint8))),
        InputError,
        ["ground truth shape (40, 48) does not match the image (48, 40)", "accepted: a label map on"],
        surfaces={"library"},
    ),
    _k(
        "ground_truth_unknown_labels",
        lambda d, w: Inputs(
            nifti_pair(d),
            labels=save_nifti(d / "seg.nii.gz", np.where(volume()[0] > 1.2, 7, 0).astype(np.uint8), affine=AFFINE),
        ),
        InputError,
        ["unknown label value(s) [7]", "accepted: this model's classes 0..4"],
        surfaces={"library"},
    ),
    _k(
        "ground_truth_non_integer",
        lambda d, w: Inputs(nifti_pair(d), labels=save_nifti(d / "seg.nii.gz", volume()[0] / 3.0, affine=AFFINE)),
        InputError,
        ["non-integer values", "accepted: integer class indices"],
        surfaces={"library"},
    ),
    _k(
        "ground_truth_text_file",
        lambda d, w: Inputs(nifti_pair(d), labels=write(d / "seg.nii.gz", TEXT)),
        InputError,
        ["not a readable NIfTI label map", "accepted: .nii or .nii.gz"],
        surfaces={"library"},
    ),
    # --- weights and config.json (the app takes a model name: see test_safety for what it accepts)
    _k(
        "weights_pickle_named_safetensors",
        lambda d, w: Inputs(png_pair(d), weights=pickled_weights(d, w, name="model.safetensors")),
        WeightsError,
        ["model.safetensors: not a valid safetensors file", "accepted: weights written by save_model"],
        surfaces=LIB_CLI,
    ),
    _k(
        "weights_only_pytorch_model_bin",
        lambda d, w: Inputs(png_pair(d), weights=pickled_weights(d, w, name="pytorch_model.bin")),
        WeightsError,
        ["model.safetensors not found", "pickled weights are never loaded", "accepted: a folder with"],
        surfaces=LIB_CLI,
    ),
    _k(
        "weights_path_is_a_file",
        lambda d, w: Inputs(png_pair(d), weights=w / "model.safetensors"),
        WeightsError,
        ["is a file", "--weights takes a folder with config.json and model.safetensors"],
        surfaces=LIB_CLI,
    ),
    _k(
        "weights_text_named_safetensors",
        lambda d, w: Inputs(png_pair(d), weights=_with_file(weights_copy(d, w), "model.safetensors", TEXT)),
        WeightsError,
        ["not a valid safetensors file", "accepted:"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_missing_field",
        lambda d, w: Inputs(png_pair(d), weights=weights_copy(d, w, drop=("fusion",))),
        WeightsError,
        ["missing field(s) fusion", "accepted: a config.json with every field"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_unknown_fusion_mode",
        lambda d, w: Inputs(png_pair(d), weights=weights_copy(d, w, config={"fusion": "multiply"})),
        WeightsError,
        ["fusion must be one of add, concat, none; got 'multiply'"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_unknown_field",
        lambda d, w: Inputs(png_pair(d), weights=weights_copy(d, w, config={"dropout": 0.1})),
        WeightsError,
        ["unknown field(s) dropout", "accepted: backbone"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_wrong_type",
        lambda d, w: Inputs(png_pair(d), weights=weights_copy(d, w, config={"image_channels": "two"})),
        WeightsError,
        ["image_channels must be int, got str"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_not_json",
        lambda d, w: Inputs(png_pair(d), weights=_with_file(weights_copy(d, w), "config.json", TEXT)),
        WeightsError,
        ["not valid JSON", "accepted: the config.json saved with the weights"],
        surfaces=LIB_CLI,
    ),
    _k(
        "config_unknown_backbone",
        lambda d, w: Inputs(png_pair(d), weights=weights_copy(d, w, config={"backbone": "resnet9000"})),
        WeightsError,
        ["backbone 'resnet9000' is not a timm model", "accepted: a timm model name"],
        surfaces=LIB_CLI,
    ),
    _k(
        "safetensors_for_a_different_shape",
        lambda d, w: Inputs(png_pair(d), weights=other_shape_weights(d, w)),
        WeightsError,
        ["does not match its config.json", "with the wrong shape", "accepted: the model.safetensors saved"],
        surfaces=LIB_CLI,
    ),
    _k(
        "safetensors_missing_a_tensor",
        lambda d, w: Inputs(png_pair(d), weights=missing_tensor_weights(d, w)),
        WeightsError,
        ["does not match its config.json", "1 tensor(s) missing", "accepted: the model.safetensors saved"],
        surfaces=LIB_CLI,
    ),
    _k(
        "weights_folder_missing",
        lambda d, w: Inputs(png_pair(d), weights=d / "no-such-weights"),
        WeightsError,
        ["no such weights folder", "Offered models: brats-demo"],
        surfaces=LIB_CLI,
    ),
    # --- settings
    _k(
        "steps_zero",
        lambda d, w: Inputs(png_pair(d), cli_args=["--steps", "0"], settings={"steps": 0}),
        SettingsError,
        ["steps must be between 1 and"],
        surfaces=LIB_CLI,
    ),
    _k(
        "ensemble_too_large",
        lambda d, w: Inputs(png_pair(d), cli_args=["--ensemble", "1000"], settings={"ensemble": 1000}),
        SettingsError,
        ["ensemble must be between 1 and"],
    ),
    _k(
        "unknown_consensus",
        lambda d, w: Inputs(png_pair(d), settings={"consensus": "vote_by_mood"}),
        SettingsError,
        ["unknown consensus 'vote_by_mood'", "accepted: mean_logits"],
        surfaces={"library", "app"},
    ),  # the command line's argparse `choices` refuses it first
    _k(
        "seed_out_of_range",
        lambda d, w: Inputs(png_pair(d), cli_args=["--seed", str(2**70)], settings={"seed": 2**70}),
        SettingsError,
        ["seed must be between 0 and"],
    ),
    # --- DICOM: series as zips, folders or .dcm files
    _k("dicom_two_mr_zips", lambda d, w: Inputs(dicom_pair(d)), shape=(48, 40, 3)),
    _k("dicom_two_mr_folders", lambda d, w: Inputs(dicom_pair(d, zipped=False)), shape=(48, 40, 3), surfaces=LIB_CLI),
    _k(
        "dicom_text_renamed_dcm",
        lambda d, w: Inputs([write(d / "a.dcm", TEXT), write(d / "b.dcm", TEXT)]),
        InputError,
        ["none of its 2 file(s) is DICOM", "accepted: one CT or MR image series"],
    ),
    _k(
        "dicom_zip_of_text_files",
        lambda d, w: Inputs([zip_of(d / "notes.zip", {"a.txt": TEXT, "b/report.pdf": TEXT})]),
        InputError,
        ["notes.zip: none of its 2 file(s) is DICOM", "accepted: one CT or MR image series"],
    ),
    _k(
        "dicom_text_renamed_zip",
        lambda d, w: Inputs([write(d / "scan.zip", TEXT)]),
        InputError,
        ["scan.zip: not a readable zip file", "accepted: one CT or MR image series"],
    ),
    _k(
        "dicom_zip_slip_parent_path",
        lambda d, w: Inputs(
            [zip_of(d / "slip.zip", {"xx/xx/evil.dcm": one_slice_bytes(d)}, rename={b"xx/xx/evil": b"../../evil"})]
        ),
        InputError,
        ["zip entry '../../evil.dcm' has an absolute or '..' path", "nothing extracted"],
    ),
    _k(
        "dicom_zip_slip_absolute_path",
        lambda d, w: Inputs(
            [zip_of(d / "abs.zip", {"xtmp/evil.dcm": one_slice_bytes(d)}, rename={b"xtmp/": b"/tmp/"})]
        ),
        InputError,
        ["zip entry '/tmp/evil.dcm' has an absolute or '..' path"],
    ),
    _k(
        "dicom_zip_bomb",
        lambda d, w: Inputs([zip_claiming_size(d / "bomb.zip", 3 * 1024**3)]),
        InputError,
        ["3.0 GiB uncompressed (a zip bomb?)", "accepted: at most 2 GiB in one zip"],
    ),
    _k(
        "dicom_zip_too_many_entries",
        lambda d, w: Inputs([zip_many_entries(d / "many.zip", 10_001)]),
        InputError,
        ["10001 entries", "accepted: at most 10000 files in a zip"],
    ),
    _k(
        "dicom_two_series_in_one_zip",
        lambda d, w: Inputs([_two_series(d)]),
        InputError,
        ["holds 2 image series", "MR, FLAIR, 5 slices", "MR, T1c, 5 slices", "--series UID"],
    ),
    _k(
        "dicom_missing_slice",
        lambda d, w: Inputs([zipped(d, _remove(dicom_series(d) / "slice_002.dcm"))]),
        InputError,
        ["1 slice(s) missing between", "spacing 3.000 mm", "accepted: a complete series"],
    ),
    _k(
        "dicom_duplicated_slice",
        lambda d, w: Inputs(
            [zipped(d, _with_file(dicom_series(d), "copy.dcm", (d / "series/slice_001.dcm").read_bytes()))]
        ),
        InputError,
        ["duplicated slice", "lie at the same position", "accepted: one file per slice position"],
    ),
    _k(
        "dicom_inconsistent_spacing",
        lambda d, w: Inputs([zipped(d, _move_last_slice(dicom_series(d), 1.3))]),
        InputError,
        ["inconsistent slice spacing (3.000 to 4.300 mm", "accepted: equally spaced slices"],
    ),
    _k(
        "dicom_no_pixel_data",
        lambda d, w: Inputs([zipped(d, edit_slices(dicom_series(d), _drop_pixels))]),
        InputError,
        ["has no pixel data", "accepted: one CT or MR image series"],
    ),
    _k(
        "dicom_seg_instead_of_image",
        lambda d, w: Inputs([zipped(d, edit_slices(dicom_series(d), _as_seg))]),
        InputError,
        ["is a DICOM SEG (segmentation), not an image series"],
    ),
    _k(
        "dicom_rtstruct_instead_of_image",
        lambda d, w: Inputs([zipped(d, edit_slices(dicom_series(d, z=1), _as_rtstruct))]),
        InputError,
        ["is an RTSTRUCT (contours), not an image series"],
    ),
    _k(
        "dicom_ultrasound",
        lambda d, w: Inputs([zipped(d, dicom_series(d, modality="US"))]),
        InputError,
        ["modality US", "accepted: CT or MR image series"],
    ),
    _k(
        "dicom_compressed_without_decoder",
        lambda d, w: Inputs([zipped(d, edit_slices(dicom_series(d), _jpeg_ls))]),
        InputError,
        ["compressed as 'JPEG-LS Lossless Image Compression'", "no installed decoder", "give uncompressed DICOM"],
    ),
    _k(
        "dicom_mixed_with_nifti",
        lambda d, w: Inputs([dicom_pair(d)[0], nifti_pair(d)[1]]),
        InputError,
        ["mixed NIfTI and DICOM inputs", "one kind per case"],
    ),
    _k(
        "dicom_series_uid_not_in_zip",
        lambda d, w: Inputs([zipped(d, dicom_series(d))], cli_args=["--series", "1.2.3.4"]),
        InputError,
        ["no series '1.2.3.4'", "it holds:", "(MR, test series, 5 slices)"],
        surfaces={"cli"},
    ),
    _k(
        "no_input_files",
        lambda d, w: Inputs([]),
        InputError,
        ["no input file"],
        surfaces={"library", "app"},  # the command line's argparse asks for at least one INPUT
    ),
    _k(
        "batch_size_zero",
        lambda d, w: Inputs(nifti_pair(d), cli_args=["--batch-size", "0"]),
        SettingsError,
        ["--batch-size must be >= 1"],
        surfaces={"cli"},
    ),
    _k(
        "output_png_for_nifti_input",
        lambda d, w: Inputs(nifti_pair(d), output="mask.png"),
        InputError,
        ["NIfTI input gives a NIfTI label map", "name the output .nii or .nii.gz"],
        surfaces={"cli"},
    ),
    _k(
        "output_in_unwritable_place",
        lambda d, w: Inputs(png_pair(d), output=str(write(d / "file", b"x") / "m.png")),
        InputError,
        ["cannot create its folder", "give a writable path"],
        surfaces={"cli"},
    ),
]


def _to_palette(path: Path, *, colour: bool) -> Path:
    """Re-save a grey PNG as a palette ("P") PNG: a grey palette, or a false-colour one."""
    from PIL import Image

    grey = np.asarray(Image.open(path))
    if colour:
        rgb = np.stack([grey, 255 - grey, (grey.astype(np.int32) * 7 % 256).astype(np.uint8)], -1)
        img = Image.fromarray(rgb).quantize(64)
    else:
        img = Image.fromarray(grey).convert("P")
    out = path.with_name(path.stem + "_palette.png")
    img.save(out)
    return out


def _multi_frame(path: Path) -> Path:
    from PIL import Image

    frames = [Image.fromarray(to_uint8(brain(seed=s)[0])) for s in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _with_file(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder


def kinds(surface: str) -> list[Kind]:
    return [k for k in KINDS if surface in k.surfaces]


assert len({k.name for k in KINDS}) == len(KINDS), "corpus names must be unique"
