"""`segment -i IN_DIR -o OUT_DIR`: every case of a folder with one model load, summary.csv, bad cases reported.

Two-channel model: nnU-Net-named NIfTI and PNG cases, one case missing a channel, one unreadable.
One-channel CT model: DICOM series as a sub-folder and as a zip, a NIfTI, and a zip that is not DICOM.
"""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
from badinputs import AFFINE, TEXT, png_pair, save_nifti, volume
from dicoms import AXIAL, ct_volume, write_series, zip_folder
from PIL import Image

from medconddiff.batch import find_cases


@pytest.fixture
def run(capfd, monkeypatch):
    from medconddiff.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDCONDDIFF_WEIGHTS", raising=False)

    def go(*argv: str):
        capfd.readouterr()
        code = main(["segment", *map(str, argv), "--steps", "2", "--quiet"])
        out = capfd.readouterr()
        return code, out.out, out.err

    return go


def rows(out_dir) -> dict[str, dict]:
    with (out_dir / "summary.csv").open() as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_mixed_folder_with_bad_cases(tmp_path, tiny_weights, run):
    cases = tmp_path / "in"
    cases.mkdir()
    vol = np.concatenate([np.zeros((2, 48, 40, 2), np.float32), volume()], axis=-1)  # 2 empty slices, then 3 of brain
    for i in range(2):
        save_nifti(cases / f"brain1_{i:04d}.nii.gz", vol[i], affine=AFFINE)
    flair, t1c = png_pair(tmp_path)
    shutil.copy(flair, cases / "slice2_0000.png")
    shutil.copy(t1c, cases / "slice2_0001.png")
    save_nifti(cases / "brain3_0000.nii.gz", vol[0], affine=AFFINE)  # T1c missing
    (cases / "brain4_0000.nii.gz").write_bytes(TEXT)  # unreadable
    save_nifti(cases / "brain4_0001.nii.gz", vol[1], affine=AFFINE)
    (cases / "dataset.json").write_text("{}")  # notes beside the scans are not cases
    out = tmp_path / "out"

    code, stdout, stderr = run("-i", cases, "-o", out, "--weights", tiny_weights)

    assert code == 0, stderr
    assert "segmented 2 of 4 case(s)" in stdout and "(2 failed)" in stdout
    assert "2 slice(s) held only background (not sampled)" in stdout
    table = rows(out)
    assert list(table) == ["brain1", "brain3", "brain4", "slice2"]
    assert {k: r["status"] for k, r in table.items()} == {
        "brain1": "ok",
        "brain3": "error",
        "brain4": "error",
        "slice2": "ok",
    }
    assert "missing brain3_0001 (T1c)" in table["brain3"]["error"]
    assert "brain4_0000.nii.gz: not a readable NIfTI file" in table["brain4"]["error"]
    assert stderr.count("failed: ") == 2
    # volumes in ml from the voxel spacing, areas in pixels for 2D, both from the written masks
    mask = np.asarray(nib.load(out / "brain1.nii.gz").dataobj)
    assert mask.shape == (48, 40, 5) and not mask[..., :2].any()  # the empty slices: background
    # what ran: the precision "auto" chose here, and the slices given background without sampling
    from medconddiff.precision import resolve

    assert {r["precision"] for r in table.values() if r["status"] == "ok"} == {resolve("auto", "cpu")}
    assert (table["brain1"]["slices"], table["brain1"]["skipped_slices"]) == ("5", "2")
    assert (table["slice2"]["slices"], table["slice2"]["skipped_slices"]) == ("1", "0")
    assert table["brain3"]["precision"] == ""
    np.testing.assert_allclose(nib.load(out / "brain1.nii.gz").affine, AFFINE)
    voxel_ml = 1.2 * 1.1 * 3.0 / 1000
    names = ["necrosis", "oedema", "non-enhancing tumour", "enhancing tumour"]
    for k, name in enumerate(names, start=1):
        assert float(table["brain1"][f"{name}_ml"]) == pytest.approx((mask == k).sum() * voxel_ml, abs=1e-3)
        assert table["brain1"][f"{name}_px"] == ""
    picture = np.asarray(Image.open(out / "slice2.png"))
    assert picture.shape == (48, 40)
    assert [int(table["slice2"][f"{n}_px"]) for n in names] == [int((picture == k).sum()) for k in range(1, 5)]
    assert float(table["brain1"]["total_s"]) > 0 and table["brain1"]["error"] == ""
    assert sorted(p.name for p in out.iterdir()) == ["brain1.nii.gz", "slice2.png", "summary.csv"]


@pytest.fixture(scope="module")
def ct_weights(tmp_path_factory):
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.hub import save_model
    from medconddiff.model import MedCondDiff

    torch.manual_seed(0)
    config = MedCondDiffConfig(image_size=64, image_channels=1, channel_names=["CT"], modality="ct")
    return save_model(MedCondDiff(config).eval(), tmp_path_factory.mktemp("w") / "ct")


def test_dicom_folders_and_zips_are_cases(tmp_path, ct_weights, run):
    cases = tmp_path / "in"
    write_series(cases / "patient_a", ct_volume(), AXIAL)
    write_series(tmp_path / "b", ct_volume(z=4, seed=1), AXIAL)
    zip_folder(tmp_path / "b", cases / "patient_b.zip")
    nib.save(nib.Nifti1Image(ct_volume(z=3), AXIAL), cases / "patient_c_0000.nii.gz")
    (cases / "patient_d.zip").write_bytes(TEXT)
    out = tmp_path / "out"

    code, stdout, stderr = run("-i", cases, "-o", out, "--weights", ct_weights)

    assert code == 0, stderr
    table = rows(out)
    assert {k: r["status"] for k, r in table.items()} == {
        "patient_a": "ok",
        "patient_b": "ok",
        "patient_c": "ok",
        "patient_d": "error",
    }
    assert "not a readable zip file" in table["patient_d"]["error"]
    assert table["patient_b"]["shape"] == "40x36x4" and table["patient_b"]["spacing_mm"] == "0.8x0.7x2.5"
    for name, depth in (("patient_a", 6), ("patient_b", 4), ("patient_c", 3)):
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == (40, 36, depth)
        np.testing.assert_allclose(mask.affine, AXIAL, atol=1e-4)


def test_all_cases_failing_exits_2(tmp_path, tiny_weights, run):
    cases = tmp_path / "in"
    cases.mkdir()
    (cases / "x_0000.nii.gz").write_bytes(TEXT)
    (cases / "x_0001.nii.gz").write_bytes(TEXT)
    code, _, stderr = run("-i", cases, "-o", tmp_path / "out", "--weights", tiny_weights)
    assert code == 2
    assert stderr.splitlines()[-1].startswith("error: none of the 1 case(s)")
    assert rows(tmp_path / "out")["x"]["status"] == "error"


def test_empty_folder_and_output_inside_input_are_refused(tmp_path, tiny_weights, run):
    cases = tmp_path / "in"
    cases.mkdir()
    (cases / "notes.txt").write_text("nothing to see")
    code, _, stderr = run("-i", cases, "-o", tmp_path / "out", "--weights", tiny_weights)
    assert code == 2 and stderr.startswith("error: ") and "holds no case" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    code, _, stderr = run("-i", cases, "-o", cases / "masks", "--weights", tiny_weights)
    assert code == 2 and "lies inside the input folder" in stderr


def test_one_file_per_case_for_one_channel_models(tmp_path):
    for name in ("a_0000.nii.gz", "b.nii.gz", "c.png", "d_0001.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    cases = find_cases(tmp_path, channels=1, channel_names=["CT"], one_file_per_case=True)
    assert [(c.name, [p.name for p in c.paths], c.problem) for c in cases] == [
        ("a", ["a_0000.nii.gz"], None),
        ("b", ["b.nii.gz"], None),
        ("c", ["c.png"], None),
        ("d_0001", ["d_0001.nii.gz"], None),
    ]
    grouped = find_cases(tmp_path, channels=2, channel_names=["FLAIR", "T1c"], one_file_per_case=False)
    assert [(c.name, c.problem is None) for c in grouped] == [("a", False), ("b", False), ("c", False), ("d", False)]
