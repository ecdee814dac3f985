"""DICOM series in: a NIfTI volume written out as a DICOM series (tests/dicoms.py) reads back voxel for voxel
on the same world geometry, for axial, oblique and sagittal stacks; the command line segments a CT zip onto
the series' grid; --series picks one of several; zips are never extracted.
"""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from dicoms import AXIAL, OBLIQUE, REVERSED, SAGITTAL, ct_volume, write_series, zip_folder

from medconddiff import io
from medconddiff.dicom import list_series
from medconddiff.errors import InputError


@pytest.mark.parametrize("affine", [AXIAL, OBLIQUE, SAGITTAL], ids=["axial", "oblique", "sagittal"])
def test_nifti_to_dicom_and_back_keeps_voxels_and_geometry(affine, tmp_path):
    """NIfTI -> DICOM series (slices written shuffled, stored through slope/intercept) -> the same volume and affine."""
    vol = ct_volume()
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    src = nib.load(tmp_path / "ct.nii.gz")
    write_series(tmp_path / "series", np.asarray(src.dataobj, np.float32), src.affine, slope=0.5, intercept=-1024.0)
    scan = io.read_scan([tmp_path / "series"])
    assert scan.data.shape == (1, *vol.shape) and scan.kind == "nifti" and scan.origin == "dicom"
    np.testing.assert_array_equal(scan.data[0], vol)  # HU: the rescale applied
    np.testing.assert_allclose(scan.affine, src.affine, atol=1e-4)
    np.testing.assert_allclose(scan.spacing, np.linalg.norm(src.affine[:3, :3], axis=0), atol=1e-4)


def test_slices_against_the_normal_give_the_same_world(tmp_path):
    """Slices stored head to foot: the reader stacks them along the normal; every voxel keeps its place in the world."""
    vol = ct_volume()
    write_series(tmp_path / "series", vol, REVERSED)
    scan = io.read_scan([tmp_path / "series"])
    ijk = np.stack(np.meshgrid(*map(np.arange, vol.shape), indexing="ij"), -1).reshape(-1, 3)
    world = nib.affines.apply_affine(REVERSED, ijk)
    back = np.round(nib.affines.apply_affine(np.linalg.inv(scan.affine), world)).astype(int)
    np.testing.assert_array_equal(scan.data[0][tuple(back.T)], vol[tuple(ijk.T)])
    assert np.linalg.det(scan.affine[:3, :3]) * np.linalg.det(REVERSED[:3, :3]) < 0  # one axis flipped, as expected


def test_zip_reads_like_the_folder_and_is_not_extracted(tmp_path):
    write_series(tmp_path / "series", ct_volume(), OBLIQUE)
    (tmp_path / "up").mkdir()
    zip_folder(tmp_path / "series", tmp_path / "up" / "ct.zip", prefix="a/b/")
    before = sorted(p.name for p in (tmp_path / "up").rglob("*"))
    from_zip, from_folder = io.read_scan([tmp_path / "up" / "ct.zip"]), io.read_scan([tmp_path / "series"])
    np.testing.assert_array_equal(from_zip.data, from_folder.data)
    np.testing.assert_allclose(from_zip.affine, from_folder.affine)
    assert sorted(p.name for p in (tmp_path / "up").rglob("*")) == before == ["ct.zip"]


def test_several_series_are_listed_and_one_is_picked(tmp_path):
    a = write_series(tmp_path / "mix" / "a", ct_volume(z=4), AXIAL, description="soft tissue")
    b = write_series(tmp_path / "mix" / "b", ct_volume(z=3, seed=1), AXIAL, description="bone")
    zip_folder(tmp_path / "mix", tmp_path / "mix.zip")
    found = {s.description: s for s in list_series(tmp_path / "mix.zip")}
    assert {k: (v.modality, v.slices) for k, v in found.items()} == {"soft tissue": ("CT", 4), "bone": ("CT", 3)}
    with pytest.raises(InputError, match="holds 2 image series.*--series UID"):
        io.read_scan([tmp_path / "mix.zip"])
    scan = io.read_scan([tmp_path / "mix.zip"], series=found["bone"].uid)
    assert scan.data.shape == (1, 40, 36, 3) and scan.series[0].description == "bone"
    assert len(a) == 4 and len(b) == 3


def test_loose_dcm_files_are_one_series(tmp_path):
    files = write_series(tmp_path / "s", ct_volume(z=3), AXIAL)
    scan = io.read_scan(files)
    np.testing.assert_array_equal(scan.data[0], ct_volume(z=3))


def test_a_zip_member_inflating_past_its_declared_size_is_refused(tmp_path):
    """zipfile never yields more than the declared size: a member lying about it fails its check, not our memory."""
    files = write_series(tmp_path / "s", ct_volume(z=2), AXIAL)
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    raw[at + 24 : at + 28] = (100).to_bytes(4, "little")  # the first member claims 100 bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="cannot read zip entry"):
        io.read_scan([path])


@pytest.fixture(scope="module")
def ct_weights(tmp_path_factory):
    """A tiny one-channel CT model (random weights) at 64 px."""
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.hub import save_model
    from medconddiff.model import MedCondDiff

    torch.manual_seed(0)
    config = MedCondDiffConfig(image_size=64, image_channels=1, channel_names=["CT"], modality="ct")
    return save_model(MedCondDiff(config).eval(), tmp_path_factory.mktemp("w") / "ct")


def test_cli_segments_a_dicom_zip_onto_the_series_grid(tmp_path, ct_weights, capsys, monkeypatch):
    from medconddiff.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_series(tmp_path / "series", ct_volume(), OBLIQUE)
    zip_folder(tmp_path / "series", tmp_path / "ct.zip")
    out = tmp_path / "out" / "mask.nii.gz"
    code = main(
        ["segment", str(tmp_path / "ct.zip"), "-o", str(out), "--weights", str(ct_weights), "--steps", "2", "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    mask = nib.load(out)
    assert mask.shape == (40, 36, 6)
    np.testing.assert_allclose(mask.affine, OBLIQUE, atol=1e-4)
    assert capsys.readouterr().out.startswith(f"wrote {out}")


# -- real files: the small test files that ship inside pydicom (scanner output, not written by us) ---------------


def _pydicom_file(name: str):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not among pydicom's bundled test files")
    return path


def test_a_real_ct_slice_follows_the_standards_pixel_to_patient_mapping():
    """DICOM PS3.3 C.7.6.2.1.1: P = IPP + column * dc * X + row * dr * Y (LPS); nibabel's RAS negates x and y."""
    import pydicom

    path = _pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = io.read_scan([path])
    assert scan.data.shape == (1, ds.Columns, ds.Rows, 1)
    x, y = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    for row, col in ((0, 0), (7, 5), (100, 31)):
        lps = np.array(ds.ImagePositionPatient, float) + col * dc * x + row * dr * y
        np.testing.assert_allclose(nib.affines.apply_affine(scan.affine, [col, row, 0]), lps * [-1, -1, 1], atol=1e-6)
        hu = float(ds.pixel_array[row, col]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert scan.data[0, col, row, 0] == hu
    assert scan.data.min() < -800  # air in Hounsfield units: the rescale is applied


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_real_mr_encodings_give_the_same_voxels(name):
    from pydicom.uid import JPEG2000Lossless

    from medconddiff.dicom import _decoder_available

    if "jp2k" in name and not _decoder_available(JPEG2000Lossless):
        pytest.skip("no JPEG 2000 decoder installed")
    reference = io.read_scan([_pydicom_file("MR_small.dcm")])
    scan = io.read_scan([_pydicom_file(name)])
    np.testing.assert_array_equal(scan.data, reference.data)
    np.testing.assert_allclose(scan.affine, reference.affine)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("rtstruct.dcm", "is an RTSTRUCT (contours), not an image series"),
        ("rtdose.dcm", "is an RTDOSE (dose grid), not an image series"),
        ("liver_1frame.dcm", "is a DICOM SEG (segmentation), not an image series"),
        ("reportsi.dcm", "is a report, not an image series"),
        ("MR_truncated.dcm", "cannot decode the Explicit VR Little Endian pixel data"),
        ("MR_small_jpeg_ls_lossless.dcm", "compressed as 'JPEG-LS Lossless Image Compression'"),
    ],
)
def test_real_files_that_are_not_usable_images(name, fragment):
    from pydicom.uid import JPEGLSLossless

    from medconddiff.dicom import _decoder_available

    if "jpeg_ls" in name and _decoder_available(JPEGLSLossless):
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(InputError) as info:
        io.read_scan([_pydicom_file(name)])
    assert fragment in str(info.value) and "\n" not in str(info.value)
