"""The training commands on a missing or malformed data folder: one line on stderr, exit code 2.

Each line says what is missing, where it looked and which layout is expected. The commands are
called in this process (`main(argv)`, what `python -m train.X` runs); one case starts a real
`python -m train.prepare` to check the exit code and that no traceback is printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BRATS = REPO / "train" / "configs" / "brats2015.toml"
ACDC = REPO / "train" / "configs" / "acdc_demo.toml"
KVASIR = REPO / "train" / "configs" / "kvasir_demo.toml"


def one_line(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(128, dtype=np.float32).reshape(8, 8, 2), np.eye(4)), path)


def prepare(config: Path, root: Path, tmp_path: Path) -> int:
    from train.prepare import main

    return main(["--config", str(config), "--set", f'data.root="{root}"', "--cache", str(tmp_path / "cache")])


def test_a_missing_data_folder(tmp_path, capfd):
    assert prepare(BRATS, tmp_path / "nowhere", tmp_path) == 2
    err = one_line(capfd)
    assert err.startswith("error: data folder") and "not found" in err
    assert f"looked in {(tmp_path / 'nowhere').resolve()}" in err
    assert "expected the 'brats' layout: one folder per case under the root" in err
    assert "Flair_subtrMeanDivStd.nii.gz" in err and not (tmp_path / "cache").exists()


def test_a_brats_case_without_one_of_its_modalities(tmp_path, capfd):
    case = tmp_path / "data" / "pat1"
    nifti(case / "Flair_subtrMeanDivStd.nii.gz")
    nifti(case / "OTMultiClass.nii.gz")
    assert prepare(BRATS, tmp_path / "data", tmp_path) == 2
    assert "case pat1 lacks T1c_subtrMeanDivStd.nii.gz" in one_line(capfd)


def test_an_empty_folder_and_a_missing_nnunet_part(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    assert prepare(BRATS, tmp_path / "empty", tmp_path) == 2
    assert "no cases found under" in one_line(capfd)
    nifti(tmp_path / "acdc" / "imagesTr" / "p1_0000.nii.gz")
    assert prepare(ACDC, tmp_path / "acdc", tmp_path) == 2
    err = one_line(capfd)
    assert "no labelsTr/ folder" in err and "imagesTr/CASE_0000.nii.gz" in err


def test_images_without_masks_and_a_broken_label_file(tmp_path, capfd):
    from PIL import Image

    (tmp_path / "kv" / "images").mkdir(parents=True)
    (tmp_path / "kv" / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "kv" / "images" / "a.jpg")
    assert prepare(KVASIR, tmp_path / "kv", tmp_path) == 2
    assert "1 image(s) without a mask, e.g. images/a.*" in one_line(capfd)
    case = tmp_path / "bad" / "pat1"
    nifti(case / "Flair_subtrMeanDivStd.nii.gz")
    nifti(case / "T1c_subtrMeanDivStd.nii.gz")
    (case / "OTMultiClass.nii.gz").write_bytes(b"not a nifti")
    assert prepare(BRATS, tmp_path / "bad", tmp_path) == 2
    err = one_line(capfd)
    assert "case pat1 (" in err and "OTMultiClass.nii.gz: not a readable NIfTI label map" in err


def test_a_split_file_that_names_other_cases(tmp_path, capfd):
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / "kv" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "kv" / sub / "x.png")
    assert prepare(KVASIR, tmp_path / "kv", tmp_path) == 2
    assert "training cases named in train/splits/kvasir-seg.json" in one_line(capfd)


def test_train_and_evaluate_say_the_same(tmp_path, capfd):
    from train.evaluate import main as evaluate
    from train.train import main as train

    code = train(["--config", str(BRATS), "--set", f'data.root="{tmp_path / "x"}"', "--out", str(tmp_path / "run")])
    assert code == 2 and "expected the 'brats' layout" in one_line(capfd)
    code = evaluate(["--weights", "brats-demo", "--data", str(tmp_path / "x"), "--out", str(tmp_path / "r.json")])
    assert code == 2 and f"data folder {tmp_path / 'x'} not found" in one_line(capfd)
    assert not (tmp_path / "r.json").exists()


def test_python_dash_m_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "train.prepare", "--config", str(BRATS), "--set", f'data.root="{tmp_path / "no"}"']
        + ["--cache", str(tmp_path / "cache")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "not found" in done.stderr


@pytest.mark.parametrize("layout", ["brats", "nnunet", "single", "images"])
def test_every_layout_has_words(layout):
    from train.data import DataSettings, expected_layout

    text = expected_layout(DataSettings(layout=layout, channel_files=["a.nii.gz"], label_file="seg.nii.gz"))
    assert "one of the layouts" not in text and len(text) > 20
