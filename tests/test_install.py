"""Installing the package: `pip install .` and `pip install -e .` give a `medconddiff` command that finds the
bundled weights from any working directory.

Both installs are made from a copy of the package's files in a temp folder (nothing is written into the
repository, nothing reaches the registry: --no-deps, --no-build-isolation), and every command runs from
another temp folder, outside both the repository and the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicoms import write_series, zip_folder

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
pytestmark = pytest.mark.slow


def _source(tmp: Path) -> Path:
    """What `pip install .` reads: pyproject.toml, the package, the bundled weights and the models catalogue."""
    if not (REPO / "assets" / "weights" / "brats-demo" / "model.safetensors").is_file():
        pytest.skip("the bundled weights are not in this checkout")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "medconddiff", src / "medconddiff", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "assets" / "weights", src / "assets" / "weights")
    shutil.copy(REPO / "assets" / "models.toml", src / "assets" / "models.toml")
    return src


def _pip(python: str, *args: str, cwd: Path) -> None:
    r = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _run(command: list[str], *, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    env = {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MEDCONDDIFF_WEIGHTS", None)
    env.pop("MEDCONDDIFF_WEIGHTS_DIR", None)
    r = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return r


def test_pip_install_ships_the_weights_and_segments_a_dicom_zip(tmp_path):
    """Non-editable: the weights come with the package (medconddiff/weights/); the checkout is not needed."""
    src = _source(tmp_path)
    target = tmp_path / "site"
    _pip(sys.executable, "--target", str(target), str(src), cwd=tmp_path)
    shutil.rmtree(src)  # the installed copy must stand on its own
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = str(target / "bin" / "medconddiff")

    info = _run([command, "info", "--weights", "brats-demo"], cwd=work, env=env)
    assert f"weights:    {target / 'medconddiff' / 'weights' / 'brats-demo'}" in info.stdout
    assert "FLAIR, T1c" in info.stdout

    ct = nib.load(EXAMPLES / "ct_slab.nii.gz")
    write_series(work / "series", np.asarray(ct.dataobj, np.float32), ct.affine)
    zip_folder(work / "series", work / "ct.zip")
    args = ["segment", "ct.zip", "-o", "ct_mask.nii.gz", "--weights", "abdomen-ct-demo", "--steps", "1", "--quiet"]
    _run([command, *args], cwd=work, env=env)
    mask = nib.load(work / "ct_mask.nii.gz")
    assert mask.shape == ct.shape
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-4)


def test_editable_install_segments_nifti_and_png_from_anywhere(tmp_path):
    """Editable, into a venv that sees the system's packages: NIfTI and PNG cases from a folder outside the source."""
    src = _source(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = str(env_dir / "bin" / "python")
    # "the system's packages" are those of the environment running the tests (a venv's own site-packages
    # are not the base interpreter's): a .pth file puts them on the new venv's path
    import sysconfig

    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_outer_env.pth").write_text("\n".join(paths) + "\n")
    _pip(python, "-e", str(src), cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    for name in ("brats_pat0004_slab_flair.nii.gz", "brats_pat0004_slab_t1c.nii.gz"):
        shutil.copy(EXAMPLES / name, work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = str(env_dir / "bin" / "medconddiff")

    nifti = ["brats_pat0004_slab_flair.nii.gz", "brats_pat0004_slab_t1c.nii.gz", "-o", "brain.nii.gz"]
    r = _run([command, "segment", *nifti, "--weights", "brats-demo", "--steps", "1", "--quiet"], cwd=work, env=env)
    assert r.stdout.startswith("wrote brain.nii.gz (240x240x6;")
    pngs = [str(EXAMPLES / f"brats_pat0003_z080_{m}.png") for m in ("flair", "t1c")]
    r = _run([command, "segment", *pngs, "-o", "slice.png", "--steps", "1", "--quiet"], cwd=work, env=env)
    assert r.stdout.startswith("wrote slice.png (240x240;")
    imported = subprocess.run(
        [python, "-c", "import medconddiff, sys; print(medconddiff.__file__)"], cwd=work, capture_output=True, text=True
    )
    assert imported.stdout.strip() == str(src / "medconddiff" / "__init__.py")  # the editable copy, not the repo
