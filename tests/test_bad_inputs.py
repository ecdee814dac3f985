"""The bad-input corpus (tests/badinputs.py) through the library and the command line.

Library: each bad kind raises its typed `MedCondDiffError` subclass with a message naming the
problem and what is accepted; each valid odd kind segments to a mask of the input's shape.
Command line (every kind through `main()`, a sample through a real subprocess): exit code 2 and exactly one line `error: ...` on stderr (no traceback) for bad
kinds; exit code 0 and a label map on the input's grid (with the input's affine) for valid ones.
The app's side of the corpus is in test_app_bad_inputs.py.
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
from support.appserver import AppServer, unexpected_tracebacks

from medconddiff.errors import MedCondDiffError
from medconddiff.hub import load_folder, resolve
from medconddiff.io import read_labels
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
    nifti = str(given.files[0]).endswith((".nii", ".nii.gz"))
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
            np.testing.assert_allclose(img.affine, nib.load(files[0]).affine)  # on the input's grid
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


# One kind per error class and per input type, through a real `python -m medconddiff` process: what a
# user's shell sees, stray warnings and log lines included.
SUBPROCESS_KINDS = [
    "truncated_gzip",
    "nifti_header_larger_than_data",
    "negative_spacing_taken_as_abs",
    "decompression_bomb_png_20000x20000",
    "sixteen_bit_png",
    "config_unknown_fusion_mode",
    "seed_out_of_range",
    "output_in_unwritable_place",
]


@pytest.mark.parametrize("kind", _ids([k for k in kinds("cli") if k.name in SUBPROCESS_KINDS], "cli"))
def test_cli_subprocess(kind: Kind, tmp_path, tiny_weights):
    argv, out, files = cli_args(kind, tmp_path, tiny_weights)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MEDCONDDIFF_WEIGHTS", None)
    r = subprocess.run(
        [sys.executable, "-m", "medconddiff", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    check_cli_outcome(kind, r.returncode, r.stdout, r.stderr, out, files)


def test_corpus_covers_the_issue():
    """At least 25 kinds, each surface well covered, the valid odd kinds named."""
    assert len(SUBPROCESS_KINDS) == len([k for k in kinds("cli") if k.name in SUBPROCESS_KINDS])
    assert len(kinds("library")) >= 25 and len(kinds("cli")) >= 25 and len(kinds("app")) >= 25
    names = {k.name for k in kinds("library")}
    for needed in (
        "empty_nifti",
        "text_renamed_nii_gz",
        "truncated_gzip",
        "nifti_header_larger_than_data",
        "4d_time_series",
        "5d_volume",
        "one_voxel_volume",
        "one_slice_volume",
        "decompression_bomb_png_20000x20000",
        "sixteen_bit_png",
        "float_tiff",
        "rgba_grey_png",
        "palette_grey_png",
        "nan_voxels",
        "inf_voxels",
        "constant_volume",
        "negative_spacing_taken_as_abs",
        "huge_spacing",
        "non_square_odd_png_37x211",
        "modality_count_one_file_for_two",
        "mismatched_modality_shapes_nifti",
        "ground_truth_shape_mismatch",
        "ground_truth_unknown_labels",
        "weights_pickle_named_safetensors",
        "config_missing_field",
        "config_unknown_fusion_mode",
        "safetensors_for_a_different_shape",
    ):
        assert needed in names, needed


# -- the app: the same corpus through the public `segment` API --------------------------------------


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, tiny_weights):
    """A gradio_client Client of `python app.py` on 127.0.0.1 serving the tiny weights (stopped with SIGTERM)."""
    from gradio_client import Client

    server = AppServer(tmp_path_factory.mktemp("app"), weights=str(tiny_weights)).start()
    downloads = tmp_path_factory.mktemp("downloads")
    try:
        yield Client(server.url, verbose=False, download_files=str(downloads)), server
    finally:
        server.stop()


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
    assert unexpected_tracebacks(new_log) == [], "the server logged an error other than a gr.Error"
