"""Reading/writing scans, normalisation, and the model-grid geometry (exactly back to the original grid)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medconddiff import io
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import InputError


def _affine():
    a = np.diag([0.9, 1.1, 2.5, 1.0])
    a[:3, 3] = [-10.0, 20.0, 5.5]
    return a


def test_match_channels_matches_modalities_by_name():
    assert io.match_channels(["/u/b_T1c.nii.gz", "/u/a_flair.nii.gz"], ["FLAIR", "T1c"]) == [
        "/u/a_flair.nii.gz",
        "/u/b_T1c.nii.gz",
    ]
    assert io.match_channels(["/u/x_t1c.png", "/u/x_t1.png"], ["T1", "T1c"]) == ["/u/x_t1.png", "/u/x_t1c.png"]
    assert io.match_channels(["/u/one.png", "/u/two.png"], ["FLAIR", "T1c"]) == ["/u/one.png", "/u/two.png"]


def test_slice_affine_places_slice_z_where_the_volume_has_it():
    z = 4
    world = _affine() @ np.array([3.0, 7.0, z, 1.0])  # voxel (3, 7, z) of the volume
    np.testing.assert_allclose(io.slice_affine(_affine(), z) @ np.array([3.0, 7.0, 0.0, 1.0]), world)


def test_uncertainty_maps_round_trip(tmp_path):
    agreement = np.random.default_rng(1).random((13, 17, 5)).astype(np.float32)
    io.write_nifti_map(agreement, tmp_path / "a.nii.gz", affine=_affine())
    img = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(img.affine, _affine())
    np.testing.assert_array_equal(np.asarray(img.dataobj), agreement)
    io.write_png_map(agreement[..., 0], tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), (agreement[..., 0] * 255).round())


def test_nifti_labels_round_trip_keeps_affine_and_shape(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (13, 17, 5))
    io.write_nifti_labels(labels, tmp_path / "m.nii.gz", affine=_affine())
    img = nib.load(tmp_path / "m.nii.gz")
    assert img.shape == (13, 17, 5)
    np.testing.assert_allclose(img.affine, _affine())
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)


def test_read_nifti_multi_file_and_4d_agree(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 12, 10, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(a, _affine()), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(b, _affine()), tmp_path / "b.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([a, b], -1), _affine()), tmp_path / "ab.nii.gz")
    two = io.read_nifti([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    one = io.read_nifti([tmp_path / "ab.nii.gz"])
    assert two.data.shape == one.data.shape == (2, 12, 10, 4)
    np.testing.assert_array_equal(two.data, one.data)
    np.testing.assert_allclose(two.affine, _affine())
    assert two.spacing == pytest.approx((0.9, 1.1, 2.5))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P"])
def test_read_image_modes(tmp_path, mode):
    grey = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 200)
    elif mode in ("RGB", "RGBA"):
        img = Image.fromarray(np.stack([grey] * (3 if mode == "RGB" else 4), -1), mode=mode)
    else:
        img = Image.fromarray(grey).convert(mode)
    img.save(tmp_path / "x.png")
    arr = io.read_image(tmp_path / "x.png")
    assert arr.shape == (1, 20, 30)  # equal RGB channels are read as grey; alpha dropped
    assert arr.dtype == np.float32


@pytest.mark.parametrize(("h", "w"), [(240, 240), (101, 122), (37, 211), (300, 64), (64, 64)])
def test_model_grid_round_trip_returns_the_original_grid(h, w):
    cfg = MedCondDiffConfig(image_size=64, image_channels=1, channel_names=["x"])
    img = np.zeros((1, h, w), np.float32)
    img[0, h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = 1.0
    geom = io.plan_geometry(img, cfg)
    grid = io.to_model_grid(img, geom, background=0.0)
    assert grid.shape == (1, 64, 64)
    back = io.from_model_grid(grid, geom, fill=torch.zeros(1))
    assert back.shape == (1, h, w)
    # a smooth image survives the round trip closely; its support lands on the same pixels
    inner = img[0] > 0
    assert (back[0].numpy()[inner] > 0.4).mean() > 0.97


def test_label_grid_matches_image_grid():
    cfg = MedCondDiffConfig(image_size=64, image_channels=1, channel_names=["x"])
    img = np.zeros((1, 200, 150), np.float32)
    img[0, 50:150, 30:120] = 1.0
    labels = (img[0] > 0).astype(np.int64)
    geom = io.plan_geometry(img, cfg)
    g_img = io.to_model_grid(img, geom, background=0.0)[0]
    g_lab = io.labels_to_model_grid(labels, geom)
    assert ((g_img > 0.5) == (g_lab == 1)).float().mean() > 0.97


def test_normalise_mri_and_ct():
    mri = MedCondDiffConfig(image_size=64)
    data = np.zeros((2, 20, 20), np.float32)
    data[:, 5:15, 5:15] = np.random.default_rng(0).normal(100, 20, (2, 10, 10))
    out = io.normalise(data, mri, kind="nifti")
    fg = out[0, 5:15, 5:15]
    assert abs(fg.mean()) < 1e-4 and abs(fg.std() - 1) < 1e-3 and (out[:, :5] == 0).all()
    # z-scored volumes whose background is a negative constant (BraTS) normalise like zero-background ones
    shifted = np.where(data == 0, np.float32(-3.2), (data - 100) / 20)
    np.testing.assert_allclose(io.normalise(shifted, mri, kind="nifti"), out, atol=1e-5)
    ct = MedCondDiffConfig(image_size=64, image_channels=1, channel_names=["CT"], modality="ct")
    hu = np.array([[[-1000.0, 40.0, 240.0, 3000.0]]], np.float32)
    np.testing.assert_allclose(io.normalise(hu, ct, kind="nifti"), [[[-1.0, 0.0, 1.0, 1.0]]])
    np.testing.assert_allclose(io.normalise(np.array([[[0.0, 255.0]]]), ct, kind="image"), [[[-1.0, 1.0]]])
    with pytest.raises(InputError, match="expects 1 modality"):
        io.normalise(np.zeros((2, 4, 4)), ct, kind="image")


def test_kind_of_refuses_other_types(tmp_path):
    assert io.kind_of("a.NII.GZ") == "nifti" and io.kind_of("x.png") == "image"
    assert io.kind_of("scan.dcm") == io.kind_of("series.ZIP") == io.kind_of(tmp_path) == "dicom"
    with pytest.raises(InputError, match="accepted"):
        io.kind_of("scan.mha")
