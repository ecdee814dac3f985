"""Volumes in any storage orientation: the same mask in world space, written back on the input's own grid.

The bundled BraTS slab is stored LPS. The same voxels saved RAS and sagittally (axes permuted to
P, S, L) go through the command line; each mask must come back with its input's shape and affine,
and, turned onto the LPS grid with nibabel, match the LPS input's mask. Training and the pipeline
turn volumes the same way (`io.reorient`), and pictures follow the radiological convention.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from medconddiff import io, viz
from medconddiff.config import MedCondDiffConfig

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
SLAB = [EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz"]


def stored_as(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same voxels and world positions, stored with array axes pointing along `codes`."""
    return img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(codes))))


def on_grid_of(img: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """`img`'s voxels on `reference`'s grid (both grids are permutations/flips of one another)."""
    turned = stored_as(img, "".join(nib.aff2axcodes(reference.affine)))
    np.testing.assert_allclose(turned.affine, reference.affine, atol=1e-4)  # the same voxels in the same place
    return np.asarray(turned.dataobj)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 0, b > 0
    return 2.0 * float((fa & fb).sum()) / max(1, int(fa.sum() + fb.sum()))


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    """{storage codes: (input image, mask image, agreement image)} from `python -m medconddiff segment`."""
    from medconddiff import hub
    from medconddiff.__main__ import main

    if "brats-demo" not in hub.bundled_models():
        pytest.skip("brats-demo weights are not bundled")
    d = tmp_path_factory.mktemp("orient")
    out = {}
    for codes in ("LPS", "RAS", "PSL"):
        files = []
        for src in SLAB:
            path = d / f"{codes}_{src.name}"
            nib.save(stored_as(nib.load(src), codes), path)
            files.append(str(path))
        mask, agree = d / f"{codes}_mask.nii.gz", d / f"{codes}_agree.nii.gz"
        with warnings.catch_warnings():
            code = main(
                ["segment", *files, "-o", str(mask), "--uncertainty", str(agree)]
                + ["--weights", "brats-demo", "--steps", "2", "--seed", "0", "--quiet", "--device", "cpu"]
            )
        assert code == 0
        out[codes] = (nib.load(files[0]), nib.load(mask), nib.load(agree))
    return out


def test_every_output_lies_on_its_input_grid(masks):
    for codes, (image, mask, agree) in masks.items():
        assert nib.aff2axcodes(image.affine) == tuple(codes)
        for written in (mask, agree):
            assert written.shape == image.shape, codes
            np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)


def test_the_same_volume_in_any_storage_gives_the_same_mask_in_world_space(masks):
    ref_img, ref_mask, _ = masks["LPS"]
    reference = np.asarray(ref_mask.dataobj)
    assert (reference > 0).sum() > 500  # the slab holds a tumour: an empty mask would match trivially
    for codes in ("RAS", "PSL"):
        turned = on_grid_of(masks[codes][1], ref_mask)
        assert dice(turned, reference) >= 0.99, codes
        assert (turned == reference).mean() >= 0.999, codes  # the classes agree too


def test_reorient_round_trips_and_undoes_exactly():
    scan = io.read_nifti([SLAB[0]])
    for codes in ("RAS", "LPS", "PLS", "ALI"):  # the slab is 6 slices thick: S/I stays the slicing axis
        turned = io.reorient(scan, codes)
        assert turned.axes == tuple(codes) and io.axis_codes(turned.affine) == tuple(codes)
        np.testing.assert_array_equal(turned.to_source(turned.data[0]), scan.data[0])
        i, j, k = 7, 100, 3  # a voxel of the file sits at the same world point in the turned array
        world = scan.affine @ [i, j, k, 1]
        ijk = np.rint(np.linalg.solve(turned.affine, world)[:3]).astype(int)
        assert turned.data[0][tuple(ijk)] == scan.data[0][i, j, k]


def test_a_sagittal_file_of_few_axial_slices_is_refused_by_its_axial_plane():
    img = nib.Nifti1Image(np.ones((40, 40, 40), np.float32)[:, :4, :], np.eye(4))  # A/P extent of 4 voxels
    with pytest.raises(io.InputError, match="turned to RAS slices: in-plane size 40x4 is not usable"):
        io.reorient(io.Scan(np.asarray(img.dataobj)[None], img.affine, None, (1.0,) * 3, "nifti"), "RAS")


def test_training_slices_are_turned_like_the_pipeline_turns_them(tmp_path):
    """train.data reads an LPS-stored and an RAS-stored copy of one case into identical training slices."""
    from train import data as D

    rng = np.random.default_rng(0)
    vol = np.zeros((24, 20, 3), np.float32)
    vol[4:20, 3:12] = rng.normal(2.0, 1.0, (16, 9, 3))
    lab = np.zeros(vol.shape, np.uint8)
    lab[6:10, 4:8] = 1  # off-centre, so a flip would show
    lps = nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0]))
    config = MedCondDiffConfig(
        image_channels=1, channel_names=["T1"], num_classes=2, class_names=["bg", "fg"], image_size=32
    )
    built = {}
    for codes in ("LPS", "RAS"):
        root = tmp_path / codes
        root.mkdir()
        nib.save(stored_as(lps, codes), root / "t1.nii.gz")
        nib.save(stored_as(nib.Nifti1Image(lab, lps.affine), codes), root / "seg.nii.gz")
        data = D.DataSettings(root=str(root), layout="single", channel_files=["t1.nii.gz"], label_file="seg.nii.gz")
        built[codes] = D.build_slices(D.find_cases(root, data), data, config)
    np.testing.assert_array_equal(built["LPS"].images.numpy(), built["RAS"].images.numpy())
    np.testing.assert_array_equal(built["LPS"].labels.numpy(), built["RAS"].labels.numpy())
    assert built["RAS"].labels.sum() > 0


def test_slices_are_shown_radiologically_with_letters_at_the_edges():
    """An axial slice stored LPS or RAS looks the same: patient's right on the viewer's left, anterior up."""
    lps = np.zeros((6, 4, 3), np.uint8)  # (X towards L, Y towards P)
    lps[0, 0] = 255  # the voxel most to the patient's right and most anterior
    ras = lps[::-1, ::-1]
    shown = viz.display_orientation(lps, "nifti", ("L", "P", "S"))
    np.testing.assert_array_equal(shown, viz.display_orientation(ras, "nifti", ("R", "A", "S")))
    assert shown.shape == (4, 6, 3) and shown[0, 0].tolist() == [255, 255, 255]  # top left: right-anterior
    assert viz.edge_letters(("L", "P", "S")) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert viz.edge_letters(("P", "S", "L")) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    marked = viz.for_viewer(np.zeros((64, 64, 3), np.uint8), "nifti", ("R", "A", "S"))
    assert marked[:, :12].any() and marked[:, -12:].any() and marked[:12].any() and marked[-14:].any()
    picture = np.zeros((5, 7, 3), np.uint8)
    assert viz.for_viewer(picture, "image", None) is picture  # 2D pictures are taken as they are
