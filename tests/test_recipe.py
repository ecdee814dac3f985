"""The training recipe's options: self-conditioning, mask scaling, the training-time density, and the
steps study that compares them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medconddiff.config import MedCondDiffConfig
from medconddiff.hub import load_model, save_model
from medconddiff.model import MedCondDiff
from medconddiff.sampler import sample_loop
from train import steps_study
from train.train import TrainSettings, noisy_masks


def _model(**fields) -> MedCondDiff:
    torch.manual_seed(0)
    cfg = MedCondDiffConfig(image_size=32, width=32, denoiser_width=32, time_embed_dim=32, context_blocks=0, **fields)
    return MedCondDiff(cfg).eval()


def _sample(model, *, seed: int, steps: int = 4, sampler: str = "ddpm") -> torch.Tensor:
    cond = model.encode_image(torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return torch.stack(
            [r.logits for r in sample_loop(model, cond, steps=steps, ensemble=2, sampler=sampler, generator=g)]
        )


def test_self_conditioned_sampling_is_reproducible_from_a_seed():
    model = _model(self_condition=True)
    a, b, c = _sample(model, seed=3), _sample(model, seed=3), _sample(model, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_self_conditioning_feeds_back_the_previous_x0_hat():
    """Step 1 sees zeros (no estimate yet); step i+1 sees 2 * softmax(logits of step i) - 1."""
    model = _model(self_condition=True)
    seen = []
    denoise = model.denoise

    def spy(x_t, t, cond, x0_prev=None):
        seen.append(None if x0_prev is None else x0_prev.clone())
        return denoise(x_t, t, cond, x0_prev)

    model.denoise = spy
    logits = _sample(model, seed=0, steps=3, sampler="ddim")  # (S, E, B, K, H, W)
    assert len(seen) == 3 and all(s is not None for s in seen)
    assert torch.count_nonzero(seen[0]) == 0
    for i in (1, 2):
        expected = 2 * logits[i - 1].flatten(0, 1).softmax(dim=1) - 1
        torch.testing.assert_close(seen[i], expected)
    # and the input matters: the same step with another x0_prev gives other logits
    x = torch.randn(1, 5, 32, 32)
    cond = model.encode_image(torch.randn(1, 2, 32, 32))
    t = torch.tensor([0.5])
    with torch.no_grad():
        assert not torch.allclose(denoise(x, t, cond, None), denoise(x, t, cond, torch.ones_like(x)))


def test_a_config_json_without_the_recipe_fields_loads_and_samples_as_before(tmp_path):
    """Files written before mask_scale / self_condition existed mean 1.0 / False: the same weights,
    the same layout and the same masks as a model whose config spells the old values out."""
    model = _model()
    save_model(model, tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    del cfg["mask_scale"], cfg["self_condition"]
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    old = load_model(tmp_path / "w")
    assert old.config.mask_scale == 1.0 and old.config.self_condition is False
    assert old.mask_in[1].in_channels == 16 * old.config.num_classes
    assert torch.equal(_sample(old, seed=1), _sample(model, seed=1))


def test_a_self_conditioned_model_round_trips_through_its_weights_folder(tmp_path):
    model = _model(self_condition=True, mask_scale=0.5)
    save_model(model, tmp_path / "w")
    loaded = load_model(tmp_path / "w")
    assert loaded.config.self_condition and loaded.config.mask_scale == 0.5
    assert loaded.mask_in[1].in_channels == 2 * 16 * loaded.config.num_classes
    assert torch.equal(_sample(loaded, seed=2), _sample(model, seed=2))


def test_mask_scale_and_t_power_shape_the_training_inputs():
    from medconddiff.diffusion import CosineLogSNR

    config = MedCondDiffConfig(image_size=64, num_classes=2, class_names=["bg", "fg"], mask_scale=0.25)
    schedule = CosineLogSNR.from_config(config)
    labels = torch.randint(0, 2, (4000, 2, 2))
    g = torch.Generator().manual_seed(0)
    t, _, x_t, sc = noisy_masks(labels, config, TrainSettings(t_power=3.0), schedule, g)
    assert sc is None  # not a self-conditioned model: no extra draws
    assert float(t.mean()) == pytest.approx(0.75, abs=0.02)  # density 3 t^2 has mean 3/4
    t, _, x_t, _ = noisy_masks(labels, config, TrainSettings(), schedule, g)
    assert float(t.mean()) == pytest.approx(0.5, abs=0.02)
    clean = t < 0.02  # nearly no noise: x_t is the scaled mask, +-0.25
    assert int(clean.sum()) > 20
    assert float(x_t[clean].abs().median()) == pytest.approx(0.25, abs=0.02)


def test_self_conditioned_training_feeds_x0_hat_only_on_the_chosen_rows():
    model = _model(self_condition=True).train()
    seen = []
    denoise = model.denoise

    def spy(x_t, t, cond, x0_prev=None):
        seen.append(x0_prev)
        return denoise(x_t, t, cond, x0_prev)

    model.denoise = spy
    x_t, t = torch.randn(4, 5, 32, 32), torch.rand(4)
    chosen = torch.tensor([True, False, True, False])
    out = model(torch.randn(2, 2, 32, 32), x_t, t, self_cond_mask=chosen)
    out.sum().backward()
    assert len(seen) == 2 and seen[0] is None  # a gradient-free first pass, then the real one
    fed = seen[1]
    assert torch.count_nonzero(fed[~chosen]) == 0 and torch.count_nonzero(fed[chosen]) > 0
    assert model.mask_in[1].weight.grad is not None


@pytest.mark.parametrize("mode", ["from_noise", "from_next"])
def test_recycling_builds_x_t_from_the_models_own_no_grad_prediction(mode):
    """The recycled rows' x_t is the model's x0-hat (computed with no gradient, from pure noise at t = 1 or
    from the truth one step noisier), scaled and noised to the row's t; the other rows keep the truth's x_t;
    the loss's gradient reaches the weights only through the second pass."""
    from medconddiff.diffusion import labels_to_x0, probs_to_x0, q_sample
    from train.train import recycle_inputs

    model = _model(mask_scale=0.5).train()
    s = TrainSettings(recycle=mode, recycle_prob=0.5, recycle_gap=0.2)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(8, 32, 32, generator=g) > 0.6).long() * 2
    t, noise, x_t, _ = noisy_masks(labels, model.config, s, model.schedule, g)
    rec = recycle_inputs(labels, t, noise, model.config, s, model.schedule, g)
    assert 0 < int(rec.rows.sum()) < 8  # some rows of each kind
    if mode == "from_noise":
        assert torch.equal(rec.t_start, torch.ones(8))
    else:
        assert torch.allclose(rec.t_start, (t + 0.2).clamp(max=1.0))
        x0 = labels_to_x0(labels, 5) * 0.5
        eps = (rec.x_start - q_sample(x0, rec.t_start, torch.zeros_like(noise), model.schedule)) / _sigma(
            model, rec.t_start
        )
        assert eps.std() > 0.9 and not torch.allclose(eps, noise)  # the truth noised with its own fresh noise

    calls = []
    denoise = model.denoise

    def spy(x, tt, cond, x0_prev=None):
        calls.append((x.detach().clone(), tt.clone(), torch.is_grad_enabled(), x.requires_grad))
        out = denoise(x, tt, cond, x0_prev)
        calls[-1] += (out.detach().clone(),)
        return out

    model.denoise = spy
    image = torch.randn(8, 2, 32, 32, generator=g)
    logits = model(image, x_t, t, recycle=rec)
    (first_x, first_t, first_grad, _, first_out), (second_x, second_t, second_grad, second_req, _) = calls
    assert torch.equal(first_x, rec.x_start) and torch.equal(first_t, rec.t_start) and not first_grad
    assert second_grad and not second_req and torch.equal(second_t, t)
    expected = q_sample(probs_to_x0(first_out.float().softmax(1)) * 0.5, t, noise, model.schedule)
    rows = rec.rows
    assert torch.allclose(second_x[rows], expected[rows], atol=1e-6)
    assert torch.equal(second_x[~rows], x_t[~rows])

    logits.float().pow(2).mean().backward()  # a gradient reaches the weights through the second pass only
    assert model.mask_in[1].weight.grad is not None and model.mask_in[1].weight.grad.abs().sum() > 0


def _sigma(model, t):
    return model.schedule.alpha_sigma(t)[1][:, None, None, None]


def test_auroc_and_dice_measures():
    import numpy as np

    assert steps_study.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 1.0
    assert steps_study.auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([False, True, False, True])) == 0.5
    assert steps_study.auroc(np.array([0.9, 0.1]), np.array([False, True])) == 0.0
    pred = torch.tensor([[0, 1], [1, 2]])
    assert steps_study.image_dice(pred, pred, 3) == 1.0
    assert math.isnan(steps_study.image_dice(torch.zeros(2, 2), torch.zeros(2, 2), 3))  # nothing to find
    assert steps_study.image_dice(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]), 2) == pytest.approx(2 / 3)


def test_the_steps_study_runs_end_to_end_on_a_tiny_setting(shared_data, tmp_path):
    if not (shared_data / "kvasir-seg").is_dir():
        pytest.skip("kvasir-seg not in ../shared/data")
    from train import studies

    studies.main(["steps", "--tiny", "--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")])
    report = json.loads((tmp_path / "docs" / "steps_kvasir_tiny.json").read_text())
    assert set(report["arms"]) >= {"today", "self_cond"}
    rows = report["arms"]["self_cond"]["rows"]
    assert {(r["sampler"], r["ensemble"], r["steps"]) for r in rows} == {
        (s, e, n) for s in ("ddim", "ddpm") for e in (1, 2) for n in (1, 2)
    }
    for r in rows:
        assert 0.0 <= r["dice"] <= 1.0 and 0.0 <= r["change_mean"] <= 1.0
        assert math.isnan(r["auroc_entropy"]) or 0.0 <= r["auroc_entropy"] <= 1.0
    one_step = [r for r in rows if r["steps"] == 1]
    assert all(r["change_mean"] == 0.0 and r["gain_vs_1"] == 0.0 for r in one_step)
    assert "| self_cond |" in (tmp_path / "docs" / "steps_kvasir_tiny.md").read_text()
    loaded = load_model(tmp_path / "runs" / "steps_kvasir_tiny" / "self_cond" / "weights")
    assert loaded.config.self_condition and loaded.config.image_size == 32


def test_the_recycling_round_trains_measures_and_draws_each_arm(shared_data, tmp_path):
    """`steps --round recycling --tiny`: the recycling arm trains with recycling and is sampled every way, the
    segmenter arm in one pass; each arm gets its trajectory picture and the verdict compares them."""
    if not (shared_data / "kvasir-seg").is_dir():
        pytest.skip("kvasir-seg not in ../shared/data")
    from PIL import Image

    from train import studies

    docs = tmp_path / "docs"
    studies.main(["steps", "--round", "recycling", "--tiny", "--runs", str(tmp_path / "runs"), "--docs", str(docs)])
    report = json.loads((docs / "steps_recycling_kvasir_tiny.json").read_text())
    assert set(report["arms"]) == {"recycle", "plain"}
    plain = report["arms"]["plain"]["rows"]
    assert [(r["sampler"], r["ensemble"], r["steps"]) for r in plain] == [("one_pass", 1, 1)]
    recycle = report["arms"]["recycle"]["rows"]
    assert {(r["sampler"], r["ensemble"], r["steps"]) for r in recycle} == {
        (s, e, n) for s in ("ddim", "ddpm") for e in (1, 2) for n in (1, 2)
    }
    assert report["verdict"]["plain_dice"] == plain[0]["dice"]
    log = (tmp_path / "runs" / "steps_recycling_kvasir_tiny" / "recycle" / "train.log").read_text()
    assert '"recycle": "from_noise"' in log
    for arm, tiles in (("recycle", 2 + 10 + 1), ("plain", 2)):  # truth, the steps (or the pass), consensus
        picture = Image.open(docs / f"steps_recycling_kvasir_tiny_{arm}.png")
        assert picture.size[0] > tiles * 150
    text = (docs / "steps_recycling_tiny.md").read_text()
    assert "| plain |" in text and "| recycle |" in text and "steps_recycling_kvasir_tiny_plain.png" in text


def test_the_size_study_trains_each_arm_and_scores_it_by_polyp_size(shared_data, tmp_path):
    """`studies size`: one run per (image size, steps) arm, the size reaching the weights, each scored on
    validation at the images' own resolution, overall and in three groups by how much of the image the polyp
    covers; one --steps value serves every size, or one per size."""
    if not (shared_data / "kvasir-seg").is_dir():
        pytest.skip("kvasir-seg not in ../shared/data")
    from train import studies

    assert studies.size_arms([128, 192], [2400]) == [(128, 2400), (192, 2400)]
    with pytest.raises(SystemExit, match="one value or one per size"):
        studies.size_arms([128, 192, 256], [1, 2])
    sets = ["train.batch_size=2", "train.warmup=1", "data.split_file=tests/data/tiny_split_kvasir.json"]
    docs = tmp_path / "docs"
    argv = ["size", "--sizes", "32", "64", "32", "--steps", "2", "2", "3", "--val-every", "1"]
    # an arm stopped after its first step (a session's end) is continued from its checkpoint, not restarted
    from train import train as T

    stopped = tmp_path / "runs" / "size_kvasir_demo_32_2"
    first = ["model.image_size=32", "train.steps=2", "train.val_every=1", "train.ckpt_every=1"]
    T.run(["--config", "train/configs/kvasir_demo.toml", "--out", str(stopped), "--no-progress", "--stop-after", "1"]
          + [a for x in [*sets, *first] for a in ("--set", x)])  # fmt: skip
    assert not (stopped / "weights").exists()
    studies.main(
        [*argv, "--out", str(tmp_path / "runs"), "--docs", str(docs), *[a for x in sets for a in ("--set", x)]]
    )
    report = json.loads((docs / "size_kvasir_demo.json").read_text())
    assert list(report["arms"]) == ["32_2", "64_2", "32_3"] and report["val_images"] == 4  # the tiny split's
    for key, size, steps in (("32_2", 32, 2), ("64_2", 64, 2), ("32_3", 32, 3)):
        assert load_model(tmp_path / "runs" / f"size_kvasir_demo_{key}" / "weights").config.image_size == size
        arm = report["arms"][key]
        assert [r["step"] for r in arm["curve"]] == list(range(1, steps + 1)) and 0.0 <= arm["val_dice"] <= 1.0
        assert set(arm["by_size"]) == {"smallest third", "middle third", "largest third"}
    assert "resumed from" in (stopped / "train.log").read_text()
    small, large = report["groups"]["smallest third"], report["groups"]["largest third"]
    assert small[0] <= small[1] <= large[0] <= large[1]
    text = (docs / "size_kvasir_demo.md").read_text()
    assert all(f"| {a} |" in text for a in ("32 px, 2 steps", "64 px, 2 steps", "32 px, 3 steps"))
    assert "Best on validation:" in text and "size_kvasir_demo.png" in text
    assert (docs / "size_kvasir_demo.png").stat().st_size > 10_000
