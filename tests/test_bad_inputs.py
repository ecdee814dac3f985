"""The bad-input corpus (tests/badinputs.py) through the library, the command line and the app's API.

Library: each bad kind raises its typed `MedCondDiffError` subclass with a message naming the
problem and what is accepted; each valid odd kind segments to a mask of the input's shape.
Command line (every kind through `main()` in this process, one smoke test through a real
subprocess): exit code 2 and exactly one line `error: ...` on stderr (no traceback) for bad kinds;
exit code 0 and a label map on the input's grid (with the input's affine) for valid ones.
App: every app kind through the `segment` API of the session's shared server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from badinputs import NUM_CLASSES, Kind, kinds
from PIL import Image
from scripts import benchmark_script

from medconddiff.errors import MedCondDiffError
from medconddiff.hub import load_folder, resolve
from medconddiff.io import IMAGE_SUFFIXES, read_labels, read_scan
from medconddiff.pipeline import SamplingSettings, load_case, segment_image, segment_volume

REPO = Path(__file__).resolve().parent.parent
STEPS = 2


def _ids(ks: list[Kind], surface: str) -> list:
    """One named test per kind; a known gap in code this corpus does not own is a strict xfail."""
    params = []
    for k in ks:
        reasons = [reason for where, reason in k.xfail if where == surface]
        marks = [pytest.mark.xfail(strict=True, reason=reasons[0])] if reasons else []
        params.append(pytest.param(k, id=k.name, marks=marks))
    return params


@pytest.fixture(scope="module")
def good_model(tiny_weights):
    return load_folder(tiny_weights)


def run_library(kind: Kind, folder: Path, good_weights: Path, good_model) -> np.ndarray:
    """The data path the CLI and the app use, step by step: weights, settings, files, labels, segmenting."""
    given = kind.build(folder, good_weights)
    model = good_model if given.weights is None else load_folder(resolve(given.weights))
    settings = SamplingSettings.defaults_for(model.config, **{"steps": STEPS, **given.settings})
    scan = load_case(given.files, model.config)
    if given.labels is not None:
        read_labels(given.labels, shape=scan.data.shape[1:], num_classes=model.config.num_classes)
    if scan.is_volume:
        return segment_volume(model, scan.data, settings, kind=scan.kind).labels
    return segment_image(model, scan.data, settings, kind=scan.kind, keep_trajectory=False).labels


def assert_valid_mask(labels: np.ndarray, shape: tuple[int, ...]) -> None:
    assert labels.shape == shape
    assert np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES


@pytest.mark.parametrize("kind", _ids(kinds("library"), "library"))
def test_library(kind: Kind, tmp_path, tiny_weights, good_model):
    if kind.valid:
        assert_valid_mask(run_library(kind, tmp_path, tiny_weights, good_model), kind.shape)
        return
    with pytest.raises(MedCondDiffError) as info:
        run_library(kind, tmp_path, tiny_weights, good_model)
    assert type(info.value) is kind.error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in kind.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def cli_args(kind: Kind, folder: Path, good_weights: Path) -> tuple[list[str], Path, list[Path]]:
    """(argv for `python -m medconddiff`, the output path, the input files) for one kind."""
    given = kind.build(folder, good_weights)
    nifti = not str(given.files[0]).lower().endswith(IMAGE_SUFFIXES)  # NIfTI or DICOM in: a NIfTI mask out
    out = folder / (given.output or ("mask.nii.gz" if nifti else "mask.png"))
    weights = str(given.weights or good_weights)
    argv = ["segment", *map(str, given.files), "-o", str(out), "--weights", weights, "--steps", str(STEPS), "--quiet"]
    return argv + given.cli_args, out, given.files


def check_cli_outcome(kind: Kind, code: int, stdout: str, stderr: str, out: Path, files: list[Path]) -> None:
    assert "Traceback" not in stderr, stderr
    if kind.valid:
        assert code == 0, stderr
        assert stderr == "", stderr  # nothing but the result line, on stdout
        assert stdout.startswith(f"wrote {out}"), stdout
        if out.name.endswith((".nii", ".nii.gz")):
            img = nib.load(out)
            assert_valid_mask(np.asarray(img.dataobj).astype(np.int64), kind.shape)
            if str(files[0]).endswith((".nii", ".nii.gz")):
                np.testing.assert_allclose(img.affine, nib.load(files[0]).affine)  # on the input's grid
            else:  # DICOM: the series' geometry (tests/test_dicom.py checks it against the truth)
                np.testing.assert_allclose(img.affine, read_scan(files).affine, atol=1e-6)
        else:
            assert_valid_mask(np.asarray(Image.open(out)).astype(np.int64), kind.shape)
        return
    assert code == 2, (code, stdout, stderr)
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for fragment in kind.fragments:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("kind", _ids(kinds("cli"), "cli"))
def test_cli(kind: Kind, tmp_path, tiny_weights, capfd, monkeypatch):
    """The command line's `main` in this process (fast; the same code as `python -m medconddiff`)."""
    from medconddiff.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")  # main() would set it for the whole test session
    monkeypatch.delenv("MEDCONDDIFF_WEIGHTS", raising=False)
    argv, out, files = cli_args(kind, tmp_path, tiny_weights)
    capfd.readouterr()
    code = main(argv)
    captured = capfd.readouterr()
    check_cli_outcome(kind, code, captured.out, captured.err, out, files)


SUBPROCESS_KIND = "truncated_gzip"  # one bad file through a real `python -m medconddiff` process


def test_cli_subprocess_smoke(tmp_path, tiny_weights):
    """What a user's shell sees (stray warnings and log lines included): exit 2 and one line, no traceback.

    Every kind runs through `main()` in this process (`test_cli`); this checks that a real process
    behaves the same, e.g. that no library prints to stderr before our one line.
    """
    kind = next(k for k in kinds("cli") if k.name == SUBPROCESS_KIND)
    argv, out, files = cli_args(kind, tmp_path, tiny_weights)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MEDCONDDIFF_WEIGHTS", None)
    r = subprocess.run(
        [sys.executable, "-m", "medconddiff", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    check_cli_outcome(kind, r.returncode, r.stdout, r.stderr, out, files)


# -- the app: the same corpus through the public `segment` API --------------------------------------


load = benchmark_script("load")  # benchmarks/load.py: `unexpected_tracebacks` reads the server log


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, app_server):
    """A gradio_client Client of the session's shared `python app.py` server (its default model)."""
    from gradio_client import Client

    downloads = tmp_path_factory.mktemp("downloads")
    return Client(app_server.url, verbose=False, download_files=str(downloads)), app_server


@pytest.mark.parametrize("kind", _ids(kinds("app"), "app"))
def test_app(kind: Kind, tmp_path, tiny_weights, app_client):
    """A gr.Error with the library's message for bad kinds, a mask of the (middle) slice's size for valid ones."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, server = app_client
    given = kind.build(tmp_path, tiny_weights)
    s = {"steps": STEPS, "ensemble": 1, "consensus": "", "seed": 0, **given.settings}
    args = ([handle_file(str(p)) for p in given.files], "", s["steps"], s["ensemble"], s["consensus"], s["seed"])
    log_start = len(server.log())
    if kind.valid:
        mask, summary = client.predict(*args, api_name="/segment")
        labels = np.asarray(Image.open(mask)).astype(np.int64)
        assert_valid_mask(labels, kind.shape[:2])  # a volume's middle slice
        assert tuple(summary["shape"]) == kind.shape[:2]
    else:
        with pytest.raises(AppError) as info:
            client.predict(*args, api_name="/segment")
        for fragment in kind.fragments:
            assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    assert server.alive()
    new_log = server.log()[log_start:]
    assert load.unexpected_tracebacks(new_log) == [], "the server logged an error other than a gr.Error"
