"""One file, one seed, one mask: the library, the command line, the app and the evaluation agree exactly.

Each entry point is called in this process with the bundled brats-demo weights on a bundled
example, with the same settings (the model's defaults, 2 ensemble members, seed 7):
    library     pipeline.read_case + segment_slices / segment_volume
    CLI         medconddiff.__main__.main(["segment", ...]) (what `python -m medconddiff segment` runs)
    app         app.segment_api (the `segment` API) for a slice, app.run_volume for a whole volume
    evaluation  train.evaluate.predict_case (the prediction `evaluate` scores), at the precision the library
                resolved "auto" to (evaluate itself defaults to fp32, so that reported numbers do not depend on
                the machine)
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
SLICE = [EXAMPLES / "brats_pat0003_z080_flair.png", EXAMPLES / "brats_pat0003_z080_t1c.png"]
SLAB = [EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz"]
MODEL, ENSEMBLE, SEED = "brats-demo", 2, 7


@pytest.fixture(scope="module")
def model():
    from medconddiff import hub

    if MODEL not in hub.bundled_models():
        pytest.skip(f"{MODEL} weights are not bundled")
    return hub.load_model(MODEL)


@pytest.fixture(scope="module")
def settings(model):
    from medconddiff.pipeline import SamplingSettings

    return SamplingSettings.defaults_for(model.config, ensemble=ENSEMBLE, seed=SEED)


def _cli(files: list[Path], out: Path, monkeypatch) -> np.ndarray:
    import warnings

    from medconddiff.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_VERBOSITY", "error")
    settings = ["--weights", MODEL, "--ensemble", str(ENSEMBLE), "--seed", str(SEED), "--quiet"]
    with warnings.catch_warnings():  # main() silences library warnings: keep that to this call
        code = main(["segment", *map(str, files), "-o", str(out), *settings])
    assert code == 0
    return np.asarray(nib.load(out).dataobj) if out.name.endswith(".nii.gz") else np.asarray(Image.open(out))


def test_a_slice_gives_one_mask_through_library_cli_app_and_evaluation(model, settings, tmp_path, monkeypatch):
    import app
    from medconddiff.pipeline import load_case, read_case, segment_slices
    from train.evaluate import predict_case

    case = read_case([str(p) for p in SLICE], model.config)
    result = segment_slices(model, [case.image], settings, kind=case.scan.kind)[0]
    library = result.labels
    cli = _cli(SLICE, tmp_path / "mask.png", monkeypatch)
    mask, summary = app.segment_api([str(p) for p in SLICE], MODEL, 0, ENSEMBLE, "", SEED)
    api = np.asarray(Image.open(mask))
    evaluation = predict_case(model, load_case(SLICE, model.config), settings, precision=result.precision)
    assert summary["steps"] == settings.steps and summary["consensus"] == settings.consensus
    assert library.shape == (240, 240) and (library > 0).sum() > 500  # a real tumour mask, not an empty one
    for name, labels in {"CLI": cli, "app API": api, "evaluation": evaluation}.items():
        np.testing.assert_array_equal(labels, library, err_msg=f"{name} differs from the library")


def test_a_volume_gives_one_mask_through_library_cli_app_and_evaluation(model, settings, tmp_path, monkeypatch):
    import app
    from medconddiff.pipeline import load_case, segment_volume
    from train.evaluate import predict_case

    scan = load_case(SLAB, model.config)
    result = segment_volume(model, scan.data, settings, kind=scan.kind)
    library = result.labels
    cli = _cli(SLAB, tmp_path / "mask.nii.gz", monkeypatch)
    sampler = next(label for label, name in app.SAMPLERS.items() if name == settings.sampler)
    path, _ = app.run_volume([str(p) for p in SLAB], MODEL, "", None, 0, sampler, ENSEMBLE, "", SEED, *[None] * 4)
    ui = np.asarray(nib.load(path).dataobj)
    evaluation = predict_case(model, scan, settings, precision=result.precision)
    assert library.shape == (240, 240, 6) and (library > 0).sum() > 1000
    for name, labels in {"CLI": cli, "app (whole volume)": ui, "evaluation": evaluation}.items():
        np.testing.assert_array_equal(labels, library, err_msg=f"{name} differs from the library")
