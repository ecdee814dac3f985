"""Every bundled model describes itself and segments its own gallery examples through the CLI and the app.

One parametrised case per model named in assets/examples/examples.json (skipped, with the reason,
where the weights are not bundled). Each model's first 2D example goes through the command line
and through the app's `segment` API with the same settings: the two masks are identical, keep the
picture's grid, and find the structure the example's manual label marks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from medconddiff import examples, hub, metrics

STEPS, ENSEMBLE, SEED = 2, 1, 0
CATALOGUE = examples.load_examples()
MODELS = sorted({e.model for e in CATALOGUE})


def _first_picture(model: str) -> examples.Example:
    pictures = [e for e in CATALOGUE if e.model == model and not e.files[0].endswith((".nii", ".nii.gz"))]
    if not pictures:
        pytest.skip(f"no 2D example for {model}")
    return pictures[0]


@pytest.mark.parametrize("model", MODELS)
def test_a_bundled_model_describes_itself(model, capsys):
    if model not in hub.bundled_models():
        pytest.skip(f"{model} weights are not bundled")
    from medconddiff.__main__ import main

    assert main(["info", "--weights", model]) == 0
    out = capsys.readouterr().out
    config = hub.load_model(model).config
    assert all(name in out for name in config.class_names) and config.modality in out


@pytest.mark.parametrize("model", MODELS)
def test_a_bundled_model_segments_its_own_example_alike_in_the_cli_and_the_app(model, tmp_path, monkeypatch):
    if model not in hub.bundled_models():
        pytest.skip(f"{model} weights are not bundled")
    import app
    from medconddiff.__main__ import main

    example = _first_picture(model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "mask.png"
    args = ["--weights", model, "--steps", str(STEPS), "--ensemble", str(ENSEMBLE), "--seed", str(SEED), "--quiet"]
    with warnings.catch_warnings():
        assert main(["segment", *example.files, "-o", str(out), *args]) == 0
    cli = np.asarray(Image.open(out))
    mask, summary = app.segment_api(list(example.files), model, STEPS, ENSEMBLE, "", SEED)
    api = np.asarray(Image.open(mask))
    np.testing.assert_array_equal(api, cli, err_msg="the app's mask differs from the command line's")
    truth = np.asarray(Image.open(example.truth))
    assert cli.shape == truth.shape == tuple(summary["shape"])
    k = hub.load_model(model).config.num_classes
    assert cli.max() < k
    # the structure the manual label marks is found: foreground against background
    assert metrics.dice(cli > 0, truth > 0) > 0.5, f"{model} misses its own example {example.caption}"
