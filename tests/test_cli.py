"""The command line: info, segmenting 2D and NIfTI input, and exit code 2 with one clear line on bad input.

Every case calls `medconddiff.__main__.main` in this process; one test starts a real `python -m
medconddiff` (tests/test_bad_inputs.py has another for a bad file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """`python -m medconddiff ARGS` as `main(ARGS)` in this process (the same code, without a new interpreter)."""
    from medconddiff.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")  # main() would set it for the whole test session
    monkeypatch.delenv("MEDCONDDIFF_WEIGHTS", raising=False)

    def run(command: str) -> Ran:
        """`command`: the arguments as a shell line (the test paths hold no spaces)."""
        capfd.readouterr()
        with warnings.catch_warnings():  # main() silences library warnings: keep that to this call
            code = main(command.split())
        out = capfd.readouterr()
        return Ran(code, out.out, out.err)

    return run


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A two-modality NIfTI volume and the same middle slice as two PNGs."""
    d = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    vol = np.zeros((2, 48, 40, 3), np.float32)
    vol[:, 8:40, 6:34] = rng.normal(0, 1, (2, 32, 28, 3)) + 0.5
    aff = np.diag([1.2, 1.2, 3.0, 1.0])
    for i, name in enumerate(["flair", "t1c"]):
        nib.save(nib.Nifti1Image(vol[i], aff), d / f"{name}.nii.gz")
        png = (np.clip(vol[i, ..., 1], -3, 6) + 3) / 9 * 254 + 1
        png[vol[i, ..., 1] == 0] = 0
        Image.fromarray(png.astype(np.uint8)).save(d / f"{name}.png")
    return d


def test_info_in_a_real_process_default_config_parameter_count():
    """The one subprocess run: `python -m medconddiff` as a shell starts it (the rest call `main` in-process)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "medconddiff", "info"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    total = float(r.stdout.split("total ")[1].split("M")[0])
    assert 24.0 <= total <= 25.5
    assert "classes:" in r.stdout


def test_segment_nifti_keeps_grid_and_affine(run_cli, case, tiny_weights, tmp_path):
    out = tmp_path / "mask.nii.gz"
    r = run_cli(f"segment {case}/flair.nii.gz {case}/t1c.nii.gz -o {out} --weights {tiny_weights} --steps 2 --quiet")
    assert r.returncode == 0, r.stderr
    img = nib.load(out)
    assert img.shape == (48, 40, 3)
    np.testing.assert_allclose(img.affine, np.diag([1.2, 1.2, 3.0, 1.0]))
    assert set(np.unique(np.asarray(img.dataobj))) <= set(range(5))


def test_uncertainty_maps_are_written_on_the_input_grid(run_cli, case, tiny_weights, tmp_path):
    nii, unc = tmp_path / "mask.nii.gz", tmp_path / "agreement.nii.gz"
    settings = f"--weights {tiny_weights} --steps 2 --ensemble 2 --quiet"
    r = run_cli(f"segment {case}/flair.nii.gz {case}/t1c.nii.gz -o {nii} --uncertainty {unc} {settings}")
    assert r.returncode == 0, r.stderr
    img = nib.load(unc)
    assert img.shape == (48, 40, 3) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, np.diag([1.2, 1.2, 3.0, 1.0]))
    values = np.asarray(img.dataobj)
    assert values.min() >= 0.0 and values.max() == 1.0  # 1 = every step and member agrees (e.g. outside the head)
    png, unc_png = tmp_path / "mask.png", tmp_path / "agreement.png"
    r = run_cli(f"segment {case}/flair.png {case}/t1c.png -o {png} --uncertainty {unc_png} {settings}")
    assert r.returncode == 0, r.stderr
    agreement = np.asarray(Image.open(unc_png))
    assert agreement.shape == (48, 40) and agreement.dtype == np.uint8 and agreement.max() == 255


def test_segment_png(run_cli, case, tiny_weights, tmp_path):
    out = tmp_path / "mask.png"
    settings = f"--weights {tiny_weights} --steps 2 --ensemble 2 --consensus majority_vote"
    r = run_cli(f"segment {case}/flair.png {case}/t1c.png -o {out} {settings}")
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(out)).shape == (48, 40)


BAD = {
    "wrong file type": (lambda d: [_write(d / "scan.txt", b"hello")], "unsupported file type"),
    "empty file": (lambda d: [_write(d / "empty.nii.gz", b"")], "empty"),
    "text renamed .nii.gz": (lambda d: [_write(d / "fake.nii.gz", b"not a nifti at all" * 20)], "not a readable NIfTI"),
    "corrupt png": (lambda d: [_write(d / "x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50)], "not a readable image"),
    "modality count": (lambda d: [_nifti(d / "one.nii.gz", np.ones((20, 20, 2)) * np.arange(2))], "expects 2 modality"),
    "5-D volume": (lambda d: [_nifti(d / "five.nii.gz", np.random.rand(10, 10, 3, 2, 2))], "5-D"),
    "NaN voxels": (lambda d: [_nifti(d / f"{n}.nii.gz", _nan_vol()) for n in ("a", "b")], "NaN"),
    "missing file": (lambda d: [d / "nope.nii.gz"], "not found"),
}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _nifti(p: Path, arr) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.eye(4)), p)
    return p


def _nan_vol():
    v = np.random.rand(16, 16, 2).astype(np.float32)
    v[3, 3, 0] = np.nan
    return v


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_exit_code_2_and_one_clear_line(run_cli, kind, tmp_path, tiny_weights):
    make, fragment = BAD[kind]
    inputs = make(tmp_path)
    out = "out.png" if str(inputs[0]).endswith(".png") else "out.nii.gz"
    r = run_cli(f"segment {' '.join(map(str, inputs))} -o {tmp_path / out} --weights {tiny_weights} --quiet")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert fragment in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_bad_settings_and_weights(run_cli, case, tmp_path, tiny_weights):
    r = run_cli(f"segment {case}/flair.png {case}/t1c.png -o {tmp_path}/m.nii.gz")
    assert r.returncode == 2 and "name the output .png" in r.stderr
    r = run_cli(f"info --weights {tmp_path}/does-not-exist")
    assert r.returncode == 2 and "no such weights folder" in r.stderr
    r = run_cli(f"segment {case}/flair.png {case}/t1c.png -o {tmp_path}/m.png --steps 0 --weights {tiny_weights}")
    assert r.returncode == 2 and "steps must be between" in r.stderr


# -- precision ----------------------------------------------------------------------------------------


def test_precision_auto_is_the_default_and_said(run_cli, case, tiny_weights, tmp_path):
    from medconddiff.precision import resolve

    out = tmp_path / "mask.nii.gz"
    r = run_cli(f"segment {case}/flair.nii.gz {case}/t1c.nii.gz -o {out} --weights {tiny_weights} --steps 1 --quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(f"; precision {resolve('auto', 'cpu')}") and r.stderr == ""
    r = run_cli(f"info --weights {tiny_weights}")
    native = "native bf16" if resolve("auto", "cpu") == "bf16" else "no native bf16"
    assert f"precision:  {resolve('auto', 'cpu')} (auto on cpu: {native})" in r.stdout
    r = run_cli(f"info --weights {tiny_weights} --precision fp32")
    assert "precision:  fp32 (as asked, on cpu)" in r.stdout


def test_unknown_precision_is_one_line_listing_the_accepted_ones(run_cli, case, tiny_weights, tmp_path):
    for command in (f"segment {case}/flair.png {case}/t1c.png -o {tmp_path}/m.png", "info"):
        r = run_cli(f"{command} --weights {tiny_weights} --precision fp8")
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr == "error: unknown precision 'fp8'; accepted: auto, fp32, bf16, fp16\n"


def test_bf16_forced_without_native_support_runs_with_one_warning(run_cli, case, tiny_weights, tmp_path, monkeypatch):
    from medconddiff import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", "cpu") == "fp32"  # what auto picks on such a CPU
    out = tmp_path / "mask.png"
    r = run_cli(f"segment {case}/flair.png {case}/t1c.png -o {out} --weights {tiny_weights} --steps 1 --precision bf16")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning: precision bf16 on a CPU without native")
    assert "slower" in r.stderr and r.stdout.rstrip().endswith("; precision bf16") and out.is_file()


def test_a_nifti_segment_imports_neither_gradio_matplotlib_nor_pydicom(case, tiny_weights, tmp_path):
    """Start-up is most of a small volume's time: the command imports what it uses (check with `python -X
    importtime -m medconddiff segment ...`). pydicom stays importable for DICOM input afterwards."""
    code = (
        "import sys; from medconddiff.__main__ import main; "
        f"code = main(['segment', '{case}/flair.nii.gz', '{case}/t1c.nii.gz', '-o', '{tmp_path}/m.nii.gz', "
        f"'--weights', '{tiny_weights}', '--steps', '1', '--quiet']); "
        "loaded = sorted(m for m in ('gradio', 'matplotlib', 'pydicom', 'nibabel') if m in sys.modules); "
        "import pydicom; print(code, loaded)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 ['nibabel']"
