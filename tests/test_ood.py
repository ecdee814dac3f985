"""The out-of-domain warning: training-input statistics in config.json, a plain warning at inference.

The check never refuses an input and never changes a mask (tests/test_regression_masks.py runs the
shipped models, whose config.json files carry `input_stats`). Here: the rule on made-up features,
`train.input_stats` writing a loadable config.json, and the command line's warning on a picture unlike
the BraTS model's training slices, silent on a BraTS slice.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medconddiff import ood
from medconddiff.config import MedCondDiffConfig

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"


def made_up_stats(config: MedCondDiffConfig, rng) -> dict:
    names = ood.feature_names(config.image_channels)
    feats = rng.normal(0.0, 1.0, (400, len(names)))
    return ood.summarise(feats, rng.uniform(0.0, 0.02, 50), description="test MRI", foreground_fraction=0.1)


def test_features_inside_the_ranges_pass_and_far_outside_warn():
    rng = np.random.default_rng(0)
    config = MedCondDiffConfig(image_size=64)
    config.input_stats = made_up_stats(config, rng)
    names = ood.feature_names(2)
    assert list(config.input_stats["features"]) == names and config.input_stats["entropy"]["limit"] >= 0.05
    inside = [rng.normal(0.0, 0.5, len(names)) for _ in range(5)]
    quiet = ood.assess(config, inside, [0.01] * 5)
    assert quiet.message is None and not quiet.unusual_input and not quiet.uncertain
    far = [f + 10.0 for f in inside]
    loud = ood.assess(config, far, [0.01] * 5)
    assert loud.unusual_input and loud.message.startswith("this does not look like the test MRI this model was")
    assert "5 of 5 slice(s) outside the training range of: FLAIR " in loud.message
    assert ood.plain_name("corr_c0_c1", ["FLAIR", "T1c"]) == "FLAIR-T1c correlation"
    unsure = ood.assess(config, inside, [0.9] * 5)
    assert unsure.uncertain and not unsure.unusual_input and "unusually uncertain" in unsure.message
    one_off = [f.copy() for f in inside]
    one_off[0][0] = 50.0  # one slice of five outside: not a majority of the input
    assert ood.assess(config, one_off, [0.01] * 5).message is None


def test_no_stats_means_no_check():
    from medconddiff.pipeline import check_input

    config = MedCondDiffConfig(image_size=64)
    assert config.input_stats == {}
    assert check_input(config, [np.ones((2, 32, 32), np.float32)], [np.zeros((32, 32))], kind="image") is None
    assert (
        MedCondDiffConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "input_stats"}).input_stats == {}
    )


def test_slice_features_see_content_only_and_channel_correlation():
    img = np.zeros((2, 32, 32), np.float32)
    assert ood.slice_features(img, 0.0) is None  # empty space: nothing to describe
    img[:, 8:24, 8:24] = np.random.default_rng(0).normal(0, 1, (1, 16, 16))
    f = dict(zip(ood.feature_names(2), ood.slice_features(img, 0.0), strict=True))
    assert f["content_fraction"] == pytest.approx(0.25) and f["corr_c0_c1"] == pytest.approx(1.0)
    assert f["c0_std"] == pytest.approx(float(img[0, 8:24, 8:24].std()), rel=1e-5)


def test_input_stats_writes_a_config_that_loads_and_keeps_every_other_field(tiny_model, tiny_weights, tmp_path):
    from medconddiff.hub import load_folder
    from train import data as D
    from train import input_stats

    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    before = json.loads((folder / "config.json").read_text())
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(6, 2, 64, 64)
    images[:, :, 16:48, 16:48] = torch.randn(6, 2, 32, 32, generator=g)
    labels = torch.zeros(6, 64, 64, dtype=torch.uint8)
    labels[:, 20:30, 20:30] = 1
    stats = input_stats.compute(tiny_model, D.SliceSet(images.half(), labels), description="tiny", entropy_slices=3)
    input_stats.write(folder, stats)
    after = json.loads((folder / "config.json").read_text())
    assert {k: v for k, v in after.items() if k != "input_stats"} == {
        k: v for k, v in before.items() if k != "input_stats"
    }
    loaded = load_folder(folder)
    assert loaded.config.input_stats["slices"] == 6 and loaded.config.input_stats["entropy"]["slices"] == 3
    assert loaded.config.input_stats["foreground_fraction"] == pytest.approx(100 / 4096, abs=1e-5)
    feature = ood.slice_features(images[0].numpy(), 0.0)
    assert ood.assess(loaded.config, [feature], [0.0]).message is None  # config.json's sorted keys still match


@pytest.fixture
def brats_cli(capfd):
    from medconddiff import hub
    from medconddiff.__main__ import main

    if "brats-demo" not in hub.bundled_models():
        pytest.skip("brats-demo weights are not bundled")
    if not MedCondDiffConfig.from_json(hub.resolve("brats-demo") / "config.json").input_stats:
        pytest.skip("brats-demo's config.json holds no input_stats")

    def run(files, out: Path) -> str:
        capfd.readouterr()
        with warnings.catch_warnings():
            code = main(["segment", *map(str, files), "-o", str(out), "--weights", "brats-demo", "--quiet"])
        assert code == 0 and out.is_file()  # a warning, never a refusal
        return capfd.readouterr().err

    return run


def test_the_command_line_warns_on_a_ct_volume_and_not_on_a_brats_slice(brats_cli, tmp_path):
    brats = [EXAMPLES / f"brats_pat0004_z096_{m}.png" for m in ("flair", "t1c")]
    assert "warning" not in brats_cli(brats, tmp_path / "brats.png")
    ct = [EXAMPLES / "ct_slab.nii.gz", EXAMPLES / "ct_slab.nii.gz"]  # an abdominal CT (HU) given as FLAIR and T1c
    err = brats_cli(ct, tmp_path / "ct.nii.gz")
    assert err.startswith("warning: this does not look like the FLAIR/T1c") and err.count("\n") == 1


def test_the_app_shows_the_warning_as_a_note_and_in_the_volume_message():
    """demo_server's wording (the app wires it): a BraTS slab read by the CT model is flagged, by the BraTS model not."""
    import demo_server as server
    from medconddiff import hub
    from medconddiff.pipeline import VolumeResult, load_case

    models = hub.bundled_models()
    if not {"brats-demo", "abdomen-ct-demo"} <= set(models):
        pytest.skip("the shipped weights are not bundled")
    brats = MedCondDiffConfig.from_json(hub.resolve("brats-demo") / "config.json")
    ct = MedCondDiffConfig.from_json(hub.resolve("abdomen-ct-demo") / "config.json")
    slab = [EXAMPLES / f"brats_pat0004_slab_{m}.nii.gz" for m in ("flair", "t1c")]
    for config, files, warned in ((brats, slab, False), (ct, slab[:1], True)):
        scan = load_case(files, config)
        shape = scan.data.shape[1:]  # a certain result
        res = VolumeResult(labels=np.zeros(shape, np.int64), agreement=np.ones(shape), entropy=np.zeros(shape))
        text = server.volume_message(config, scan, res, None)
        assert text.startswith("Segmented all 6 slices, in fp32")
        assert ("**Warning: this does not look like" in text) == warned
    note = server.ood_note("this does not look like the <CT> this model was trained on")
    assert 'role="note"' in note and "This does not look like the &lt;CT&gt;" in note


def test_the_rates_study_checks_a_fixed_scale_ct_model_at_each_slice_pixel_size(shared_data):
    """`train.ood_rates` feeds each slice at its own mm per pixel, as the command line does: the 4 mm CT
    model's own held-out slices then pass the input check (fed at an unknown pixel size, they did not)."""
    from medconddiff import hub
    from train import ood_rates

    weights = hub.resolve("abdomen-ct-demo")
    model = hub.load_model("abdomen-ct-demo")
    assert model.config.pixel_spacing > 0
    _, data, part = ood_rates.own_part(weights, shared_data)
    slices, kind, spacings = ood_rates.pick_slices(data, part, model.config, 4)
    assert len(slices) == 4 and all(mm == pytest.approx(3.0, abs=0.1) for mm in spacings)
    counts = ood_rates.rates(model, slices, kind, spacings)
    assert counts["slices"] == 4 and counts["flagged"] == 0


def test_the_rates_study_takes_a_several_folder_models_own_part_from_its_first_folder(shared_data):
    """brats-demo learnt from BraTS 2015 and 2018 (`data.sources`): its own held-out slices are the BraTS
    2015 validation patients, with that folder's file names, not every case of every folder."""
    from medconddiff import hub
    from train import data as D
    from train import ood_rates

    folder, data, part = ood_rates.own_part(hub.resolve("brats-demo"), shared_data)
    assert (folder, part) == ("brats2015", "val") and data.sources is None
    cases = D.split_cases(D.find_cases(data.root, data), data, part="val")
    assert [c.name for c in cases] == ["brats_2013_pat0003_1", "brats_2013_pat0004_1"]
