"""Schedule, forward noising, the scheduler's update rules and the recording loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medconddiff.config import MedCondDiffConfig
from medconddiff.diffusion import CosineLogSNR, hybrid_loss, labels_to_x0, probs_to_x0, q_sample
from medconddiff.errors import SettingsError
from medconddiff.sampler import MaskScheduler, sample_loop, trajectory_buffer


def test_schedule_endpoints_and_shift():
    s = CosineLogSNR(logsnr_min=-15, logsnr_max=15, shift=0.0)
    ends = s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([15.0, -15.0], dtype=torch.float64))
    shifted = CosineLogSNR.from_config(MedCondDiffConfig(image_size=128))
    assert shifted.shift == pytest.approx(2 * np.log(64 / 128))
    t = torch.linspace(0, 1, 11)
    a, sig = shifted.alpha_sigma(t)
    torch.testing.assert_close(a**2 + sig**2, torch.ones(11))
    assert (shifted.logsnr(t)[1:] < shifted.logsnr(t)[:-1]).all()  # monotone: noisier with t


def test_training_and_sampling_share_one_value_space():
    labels = torch.randint(0, 4, (2, 8, 8))
    x0 = labels_to_x0(labels, 4)
    assert set(x0.unique().tolist()) == {-1.0, 1.0}
    onehot_probs = (x0 + 1) / 2
    torch.testing.assert_close(probs_to_x0(onehot_probs), x0)  # a confident prediction maps back exactly
    s = CosineLogSNR()
    torch.testing.assert_close(
        q_sample(x0, torch.zeros(2), torch.randn_like(x0), s), x0, atol=5e-3, rtol=0
    )  # sigma_0 ~ 5e-4


def test_hybrid_loss_is_small_for_correct_logits():
    labels = torch.randint(0, 3, (2, 16, 16))
    good = labels_to_x0(labels, 3) * 20
    bad = -good
    assert hybrid_loss(good, labels)[0] < 0.05 < hybrid_loss(bad, labels)[0]


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_scheduler_visits_s_timesteps(kind):
    sch = MaskScheduler(CosineLogSNR(), kind=kind)
    sch.set_timesteps(7)
    assert len(sch.timesteps) == 7
    assert sch.timesteps[0] == 1.0 and sch.timesteps[-1] > 0
    assert (sch.timesteps[1:] < sch.timesteps[:-1]).all()


def test_scheduler_rejects_bad_settings():
    with pytest.raises(SettingsError):
        MaskScheduler(CosineLogSNR(), kind="euler")
    with pytest.raises(SettingsError):
        MaskScheduler(CosineLogSNR()).set_timesteps(0)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the calls of each entry point."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.schedule = inner, inner.config, inner.schedule
        self.calls = {"encode": 0, "denoise": 0}

    def encode_image(self, image):
        self.calls["encode"] += 1
        return self.inner.encode_image(image)

    def denoise(self, x_t, t, cond):
        self.calls["denoise"] += 1
        return self.inner.denoise(x_t, t, cond)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_loop_records_every_step_and_runs_the_denoiser_once_per_step(tiny_model, kind):
    model = CountingModel(tiny_model)
    with torch.inference_mode():
        cond = model.encode_image(torch.randn(2, 2, 64, 64))
        recs = list(
            sample_loop(model, cond, steps=5, ensemble=3, sampler=kind, generator=torch.Generator().manual_seed(0))
        )
    assert model.calls == {"encode": 1, "denoise": 5}  # E=3 members share one cond, one batch per step
    assert [r.index for r in recs] == list(range(5))
    assert recs[0].t == 1.0
    assert all(r.logits.shape == (3, 2, 5, 64, 64) and r.x_t.shape == (3, 2, 5, 64, 64) for r in recs)
    assert all(torch.isfinite(r.logits).all() for r in recs)
    assert [r.logsnr for r in recs] == sorted(r.logsnr for r in recs)  # cleaner at every step


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampling_is_reproducible_from_a_seed(tiny_model, kind):
    with torch.inference_mode():
        cond = tiny_model.encode_image(torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(1)))

        def run(seed):
            g = torch.Generator().manual_seed(seed)
            return torch.stack(
                [r.logits for r in sample_loop(tiny_model, cond, steps=4, ensemble=2, sampler=kind, generator=g)]
            )

        a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ensemble_members_differ(tiny_model):
    with torch.inference_mode():
        cond = tiny_model.encode_image(torch.randn(1, 2, 64, 64))
        recs = list(sample_loop(tiny_model, cond, steps=3, ensemble=2, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(recs[0].x_t[0], recs[0].x_t[1])  # different starting noise per member


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_chunked_denoiser_calls_give_the_one_batch_result(tiny_model, kind):
    """The CPU runs large ensembles in chunks of rows (cache-sized); masks and noise must not change."""
    with torch.inference_mode():
        cond = tiny_model.encode_image(torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(2)))

        def run(chunk, model=tiny_model):
            g = torch.Generator().manual_seed(5)
            return list(sample_loop(model, cond, steps=3, ensemble=3, sampler=kind, generator=g, chunk=chunk))

        whole, chunked = run(6), run(4)
        counting = CountingModel(tiny_model)
        run(4, counting)
    assert counting.calls["denoise"] == 3 * 2  # 6 rows in chunks of 4: two calls per step
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(a.x_t, b.x_t, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_votes_and_trajectory_buffer_match_the_records(tiny_model, kind):
    """Each record's `labels` are the argmax of its logits, and `out=` receives exactly the records'
    logits (the records are views into it), laid out with the classes innermost."""
    with torch.inference_mode():
        cond = tiny_model.encode_image(torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(3)))

        def run(**kw):
            g = torch.Generator().manual_seed(7)
            return list(sample_loop(tiny_model, cond, steps=4, ensemble=2, sampler=kind, generator=g, **kw))

        out = trajectory_buffer(4, 2 * 2, 5, 64)
        plain, buffered = run(), run(out=out)
    assert out.stride(2) == 1  # K innermost
    for i, (a, b) in enumerate(zip(plain, buffered, strict=True)):
        assert a.labels.dtype == torch.uint8 and a.labels.shape == (2, 2, 64, 64)
        assert torch.equal(a.labels, a.logits.argmax(dim=2).to(torch.uint8))
        assert torch.equal(a.logits, b.logits) and torch.equal(a.labels, b.labels)
        assert torch.equal(out[i].reshape(2, 2, 5, 64, 64), a.logits)
        assert b.logits.data_ptr() == out[i].data_ptr()
    with pytest.raises(SettingsError, match="out must be shaped"):
        run(out=trajectory_buffer(3, 4, 5, 64))
