"""The demo as a teaching and checking tool: honest scores, the forward process, the schedule, uncertainty
with a scale, ensemble members, the play control, volume-level Dice, request-sized GPU slots.

Library functions are checked against `medconddiff.metrics` / `medconddiff.diffusion` directly; the
app's handlers are called as Gradio calls them, with the bundled weights and short runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medconddiff import metrics, teaching, viz
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import InputError, SettingsError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
BRATS_PNG = [EXAMPLES / "brats_pat0003_z080_flair.png", EXAMPLES / "brats_pat0003_z080_t1c.png"]
BRATS_SEG = EXAMPLES / "brats_pat0003_z080_seg.png"
SLAB = [EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz"]
SLAB_SEG = EXAMPLES / "brats_pat0004_slab_seg.nii.gz"
BRATS_NAMES = ["background", "necrosis", "oedema", "non-enhancing tumour", "enhancing tumour"]
STEPS = 3


# -- scores that mean what they say --------------------------------------------------------------------


def test_a_class_in_neither_map_is_not_scored_and_not_averaged():
    rng = np.random.default_rng(0)
    pred, truth = rng.integers(0, 3, (2, 40, 40))  # classes 0..2 only: 3 and 4 are in neither
    truth[:5] = 1
    s = metrics.scored(pred, truth, BRATS_NAMES)
    dices = {name: d for name, d, _, _ in s["classes"]}
    assert dices["non-enhancing tumour"] is None and dices["enhancing tumour"] is None and s["absent"] == 2
    for c, name in ((1, "necrosis"), (2, "oedema")):  # the same Dice as metrics.dice where defined
        assert dices[name] == pytest.approx(metrics.dice(pred == c, truth == c))
    assert s["mean"] == pytest.approx(np.mean([dices["necrosis"], dices["oedema"]]))
    assert metrics.per_class(pred, truth, 5)["dice"][4] == 1.0  # what the old table showed for an absent class
    table = viz.dice_table(pred, truth, BRATS_NAMES)
    assert f"| enhancing tumour | {viz.NOT_SCORED} | 0 | 0 |" in table
    assert f"**{s['mean']:.3f}**" in table and "left out of the mean (2 class(es))" in table


def test_brats_regions_follow_the_class_names_and_match_metrics():
    assert metrics.regions_for(BRATS_NAMES) == metrics.BRATS_REGIONS
    assert metrics.regions_for(["background", "necrosis", "edema", "non-enhancing", "enhancing tumor"])
    assert metrics.regions_for(["background", "liver", "kidney", "spleen", "pancreas"]) == {}
    assert metrics.regions_for(["background", "polyp"]) == {}
    rng = np.random.default_rng(1)
    pred, truth = rng.integers(0, 5, (2, 30, 30))
    regions = dict(metrics.scored(pred, truth, BRATS_NAMES)["regions"])
    for name, got in metrics.brats_regions(pred, truth).items():
        assert regions[name] == pytest.approx(got["dice"])
    table = viz.dice_table(pred, truth, BRATS_NAMES)
    assert "| WT |" in table and "| ET |" in table
    assert "BraTS region" not in viz.dice_table(pred, truth, ["background", "a", "b", "c", "d"])
    assert "WT whole tumour (classes 1-4), TC tumour core (classes 1, 3, 4), ET enhancing tumour (class 4)." in table
    four = ["background", "necrotic / non-enhancing core", "oedema", "enhancing tumour"]  # 2017+ classes
    merged = viz.dice_table(pred % 4, truth % 4, four)
    assert "WT whole tumour (classes 1-3), TC tumour core (classes 1, 3), ET enhancing tumour (class 3)." in merged
    empty = np.zeros((8, 8), np.int64)
    assert dict(metrics.scored(empty, empty, BRATS_NAMES)["regions"])["WT"] is None
    assert metrics.scored(empty, empty, BRATS_NAMES)["mean"] is None


# -- teaching pictures -------------------------------------------------------------------------------


def test_forward_process_is_q_sample_of_the_schedule():
    config = MedCondDiffConfig(image_size=128)
    labels = np.zeros((32, 32), np.int64)
    labels[8:20, 8:20] = 2
    clean = teaching.forward_noised(labels, 0.0, config)
    x0 = 2 * np.eye(5)[labels].transpose(2, 0, 1) - 1
    assert clean.shape == (5, 32, 32) and np.array_equal(np.sign(clean), x0)  # t = 0: the clean mask
    a, logsnr = teaching.signal(config, 0.5)
    alpha, _ = teaching.schedule(config).alpha_sigma(torch.tensor([0.5]))
    assert a == pytest.approx(float(alpha[0]), abs=1e-6) and a == pytest.approx(math.sqrt(1 / (1 + math.exp(-logsnr))))
    noise = (teaching.forward_noised(labels, 0.5, config) - a * x0) / math.sqrt(1 - a * a)
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(1.0, abs=0.05)  # the rest is N(0, 1)
    np.testing.assert_array_equal(
        teaching.forward_noised(labels, 0.5, config), teaching.forward_noised(labels, 0.5, config)
    )
    assert teaching.signal(config, 0.2)[0] > teaching.signal(config, 0.8)[0]  # less signal as t grows
    with pytest.raises(InputError, match="accepted: 0 <= t <= 1"):
        teaching.forward_noised(labels, 1.5, config)
    picture, text = teaching.forward_picture(labels, 0.3, config, kind="image")
    assert picture.shape[0] >= 160 and picture.dtype == np.uint8 and "√ᾱ_t" in text and "t = 0.30" in text


def test_schedule_plot_marks_the_current_step():
    config = MedCondDiffConfig(image_size=128)
    plain = teaching.schedule_picture(config, [1.0, 0.8, 0.6, 0.4, 0.2])
    marked = teaching.schedule_picture(config, [1.0, 0.8, 0.6, 0.4, 0.2], current=2)
    assert plain.ndim == 3 and plain.shape == marked.shape and not np.array_equal(plain, marked)


def test_uncertainty_map_has_a_scale_and_a_perceptually_uniform_colour_map():
    from matplotlib import colormaps

    values = np.array([[0.0, 0.1], [0.2, 0.3]], np.float32)
    assert teaching.nice_scale(values) == 0.5 and teaching.nice_scale(np.zeros((2, 2))) == 0.01
    assert teaching.nice_scale(np.ones((2, 2))) == 1.0
    picture, vmax = teaching.uncertainty_picture(values)
    assert vmax == 0.5
    np.testing.assert_array_equal(picture[0, 0], np.round(np.array(colormaps["viridis"](0.0)[:3]) * 255))
    np.testing.assert_array_equal(picture[1, 0], np.round(np.array(colormaps["viridis"](0.4)[:3]) * 255))
    over, _ = teaching.uncertainty_picture(values, np.full((2, 2, 3), 200, np.uint8))
    assert not np.array_equal(over, picture)
    bar = teaching.colourbar_html(0.5, "entropy")
    assert "linear-gradient" in bar and "<span>0.25</span>" in bar and "0 to 0.5" in bar


# -- the demo's handlers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    from medconddiff import hub

    if "brats-demo" not in hub.bundled_models():
        pytest.skip("no brats-demo weights bundled")
    import app as app_module

    return app_module


def _run(app, *, ensemble: int, truth=BRATS_SEG):
    unc = next(iter(app.UNCERTAINTY))
    return list(
        app.run_segment(
            [str(f) for f in BRATS_PNG],
            "brats-demo",
            "",
            0,
            None,
            truth and str(truth),
            STEPS,
            "DDIM (deterministic)",
            ensemble,
            "mean_logits",
            0,
            0.5,
            unc,
            None,
            None,
            None,
            None,
            None,
        )  # fmt: skip
    )[-1]


def test_a_run_shows_truth_beside_members_animation_schedule_and_scale(app, monkeypatch):
    final = _run(app, ensemble=2)
    run = final[app.run_state]
    assert final[app.truth_image].visible and Path(final[app.truth_image].value["path"]).is_file()
    members = final[app.members]
    assert members.visible and len(members.value) == 2  # E = 2: both members
    with Image.open(final[app.animation]) as gif:
        assert gif.format == "GIF" and gif.n_frames == STEPS and gif.is_animated
    assert Image.open(final[app.schedule_plot]).size[0] > 100
    assert "disagreement: 0 to" in final[app.colourbar]
    assert "x0-hat" in run.captions[-1] and "last step" in run.captions[-1]

    first = app.show_step(run, 1)
    assert first[4] != app.show_step(run, STEPS)[4]  # the schedule highlights the step shown
    monkeypatch.setattr(app.server, "PLAY_SECONDS", 0.0)
    played = list(app.play(run))
    assert [p[0].value for p in played] == list(range(1, STEPS + 1))
    assert [p[1] for p in played] == [f[0] for f in run.step_files]

    low, high = app.show_forward(run, 0.1), app.show_forward(run, 0.9)
    assert low[0] != high[0] and "Noising the ground truth" in low[1] and "t = 0.10" in low[1]
    assert not np.array_equal(np.asarray(Image.open(low[0])), np.asarray(Image.open(high[0])))

    alone = _run(app, ensemble=1, truth=None)
    assert not alone[app.members].visible and not alone[app.truth_image].visible
    assert "fused mask (no ground truth given)" in app.show_forward(alone[app.run_state], 0.5)[1]


def test_volume_run_with_truth_gives_volume_level_dice(app):
    import nibabel as nib

    path, note = app.run_volume(
        [str(p) for p in SLAB], "brats-demo", "", None, 2, "DDIM (deterministic)", 1, "mean_logits", 0,
        None, None, None, None, str(SLAB_SEG),
    )  # fmt: skip
    pred = np.asarray(nib.load(path).dataobj).astype(np.int64)
    truth = np.asarray(nib.load(str(SLAB_SEG)).dataobj).astype(np.int64)
    assert "Volume-level Dice" in note
    from medconddiff import hub

    regions = metrics.regions_for(hub.load_model("brats-demo").config.class_names)  # the model's own classes
    assert regions
    for name, labels in regions.items():  # the numbers are metrics' on the whole volume
        assert f"| {name} | {metrics.dice(np.isin(pred, labels), np.isin(truth, labels)):.3f} |" in note
    oedema = metrics.dice(pred == 2, truth == 2)
    assert f"| oedema | {oedema:.3f} | {(pred == 2).sum()} | {(truth == 2).sum()} |" in note
    _, bare = app.run_volume(
        [str(p) for p in SLAB], "brats-demo", "", None, 2, "DDIM (deterministic)", 1, "mean_logits", 0,
        None, None, None, None,
    )  # fmt: skip
    assert "Give a ground-truth volume" in bare


def test_limits_are_said_up_front_and_bound_volume_work(app):
    server = app.server
    assert str(server.MAX_STEPS) in server.LIMITS and str(server.MAX_VOLUME_WORK) in server.LIMITS
    config = MedCondDiffConfig()
    server.settings(config, 10, "ddim", 2, "mean_logits", 0, slices=100)  # 2000: fine
    with pytest.raises(SettingsError, match="steps x members x slices"):
        server.settings(config, 10, "ddim", 8, "mean_logits", 0, slices=100)


def test_gpu_slot_is_sized_from_each_request(app, monkeypatch):
    server = app.server
    assert server.gpu_seconds(5, 1) < server.gpu_seconds(50, 2) <= server.GPU_SECONDS_MAX
    assert server.gpu_seconds(10, 1, slices=6) < server.gpu_seconds(10, 1, slices=155)
    assert server.gpu_seconds(0, 0) == server.gpu_seconds(server.MAX_STEPS, server.MAX_ENSEMBLE)
    asked = []

    class FakeSpaces:  # what `spaces.GPU(fn, duration=...)` receives on ZeroGPU
        @staticmethod
        def GPU(fn, *, duration):
            def call(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)

            return call

    monkeypatch.setattr(server, "spaces", FakeSpaces)

    def run_volume(files, choice, custom, ct_window, steps, sampler, ensemble, *rest):
        return "ran"

    def run_segment(files, choice, custom, slice_index, ct_window, truth, steps, sampler, ensemble, *rest):
        return "ran"

    assert server.gpu(volume=True)(run_volume)([str(SLAB[0])], "", "", None, 10, "", 2) == "ran"
    assert server.gpu(run_segment)([], "", "", 0, None, None, 10, "", 2) == "ran"
    assert asked == [server.gpu_seconds(10, 2, slices=6), server.gpu_seconds(10, 2)]


def test_model_picker_says_what_each_model_is_for(app):
    from medconddiff import hub

    labels = dict((v, k) for k, v in app.server.model_labels())
    for name in app.server.model_choices():
        config = MedCondDiffConfig.from_json(hub.resolve(name) / hub.CONFIG_NAME)
        assert labels[name].startswith(name) and ", ".join(config.channel_names) in labels[name]
        assert config.class_names[-1] in labels[name]


def test_every_example_selects_its_own_model(app):
    import gradio as gr

    offered = app.server.model_choices()
    for i, ex in enumerate(app.EXAMPLES):
        files, truth, dropdown, custom = app.select_example(gr.SelectData(None, {"index": i, "value": None}))
        if ex.model in offered:
            assert dropdown["value"] == ex.model and custom == "", ex.caption
        assert list(files) == list(ex.files) and truth == ex.truth
