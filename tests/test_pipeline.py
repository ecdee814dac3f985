"""The shared data path: image or volume in, Result out, on the original grid."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from medconddiff import io
from medconddiff.errors import SettingsError
from medconddiff.pipeline import (
    Result,
    SamplingSettings,
    SliceStep,
    iter_segment_slices,
    prepare_slice,
    segment_image,
    segment_volume,
)
from medconddiff.sampler import StepRecord


def _slice(h=90, w=70, seed=0):
    img = np.zeros((2, h, w), np.float32)
    img[:, 10:80, 20:60] = np.random.default_rng(seed).normal(0, 1, (2, 70, 40)) + 0.1
    return img


def test_segment_image_returns_maps_on_the_original_grid(tiny_model):
    res = segment_image(tiny_model, _slice(), SamplingSettings(steps=3, ensemble=2), kind="nifti")
    assert res.labels.shape == res.agreement.shape == res.entropy.shape == (90, 70)
    assert res.probs.shape == (5, 90, 70)
    np.testing.assert_allclose(res.probs.sum(0), 1.0, atol=1e-5)
    assert res.trajectory.logits.shape == (3, 2, 5, 64, 64) and res.trajectory.x_t.shape == (3, 2, 5, 64, 64)
    assert (res.labels[:, :10] == 0).all()  # left of the crop box (foreground from column 20, margin 8)


def test_refuse_changes_only_the_fusion(tiny_model):
    res = segment_image(tiny_model, _slice(), SamplingSettings(steps=4, consensus="mean_logits"), kind="nifti")
    other = res.refuse("last")
    assert other.trajectory is res.trajectory  # the same samples, fused differently
    assert other.consensus == "last"
    again = res.refuse("mean_logits")
    np.testing.assert_array_equal(again.labels, res.labels)


def test_iter_yields_every_step_then_results(tiny_model):
    blank = np.zeros((2, 50, 60), np.float32)
    items = list(
        iter_segment_slices(tiny_model, [_slice(), blank, _slice(seed=1)], SamplingSettings(steps=3), kind="nifti")
    )
    assert [type(i) for i in items[:3]] == [SliceStep] * 3 and isinstance(items[0], StepRecord)
    assert isinstance(items[-1], list) and all(isinstance(r, Result) for r in items[-1])
    # each step carries the geometry of every slice it sampled (the blank one skipped the model)
    assert items[0].logits.shape[1] == 2 and items[0].geometries == (items[-1][0].geometry, items[-1][2].geometry)
    assert items[-1][1].geometry.shape == (50, 60)


def test_prepare_slice_is_normalise_content_test_and_model_grid(tiny_model):
    config = tiny_model.config
    p = prepare_slice(_slice(), config, kind="nifti")
    np.testing.assert_array_equal(p.normalised, io.normalise(_slice(), config, kind="nifti"))
    assert p.geometry == io.plan_geometry(p.normalised, config) and p.geometry.box[2] == 12  # column 20 - margin 8
    assert p.image.shape == (2, 64, 64) and p.image.dtype == torch.float32
    torch.testing.assert_close(p.image, io.to_model_grid(p.normalised, p.geometry, background=0.0))
    empty = prepare_slice(np.zeros((2, 30, 40), np.float32), config, kind="nifti")
    assert empty.image is None and empty.geometry.shape == (30, 40)


def test_inference_mode_is_entered_per_step_and_not_held_across_yields(tiny_model):
    """A consumer may resume the generator on another thread (Gradio does): each step still runs without autograd."""
    gen = iter_segment_slices(tiny_model, [_slice()], SamplingSettings(steps=3), kind="nifti")
    first = next(gen)
    assert not torch.is_inference_mode_enabled()  # the caller's thread is back in its own mode
    with ThreadPoolExecutor(1) as pool:
        later = [pool.submit(next, gen).result() for _ in range(3)]
    assert first.logits.is_inference() and all(r.logits.is_inference() for r in later[:2])
    assert isinstance(later[-1], list) and later[-1][0].labels.shape == (90, 70)


def test_seed_reproduces_and_blank_slices_skip_the_model(tiny_model):
    vol = np.stack([_slice(seed=s) for s in range(3)] + [np.zeros((2, 90, 70), np.float32)], axis=-1)
    s = SamplingSettings(steps=2, seed=7)
    a = segment_volume(tiny_model, vol, s, batch_size=2)
    b = segment_volume(tiny_model, vol, s, batch_size=2)
    assert a.labels.shape == (90, 70, 4)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels[..., 3] == 0).all() and (a.agreement[..., 3] == 1).all()
    assert a.skipped == 1 and a.precision in ("fp32", "bf16")


def test_volume_batches_side_by_side_give_the_masks_of_one_at_a_time(tiny_model):
    """Each batch has its own generator, so the batches may run on two threads in any order: the same masks
    (in fp32; the float maps up to rounding of another thread count), and torch's thread count is put back."""
    empty = np.zeros((2, 90, 70), np.float32)
    vol = np.stack([empty] + [_slice(seed=s) for s in range(5)] + [empty], axis=-1)  # 5 slices with content
    s = SamplingSettings(steps=2, seed=3, sampler="ddpm")  # ancestral noise at every step, not only at the start
    threads = torch.get_num_threads()
    seen = []
    two = segment_volume(
        tiny_model, vol, s, batch_size=2, precision="fp32", workers=2, progress=lambda d, t: seen.append((d, t))
    )
    assert torch.get_num_threads() == threads
    # One at a time on the thread count each of the two workers had: the same float sums, so the same argmax
    # even where two classes nearly tie (on all of a many-core machine's threads one such pixel flipped).
    torch.set_num_threads(max(1, threads // 2))
    try:
        one = segment_volume(tiny_model, vol, s, batch_size=2, precision="fp32", workers=1)
        alone = segment_volume(tiny_model, vol[..., 1:3], s, batch_size=2, precision="fp32")  # the first batch alone
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one.labels, two.labels)
    np.testing.assert_allclose(one.entropy, two.entropy, atol=1e-5)
    assert (one.skipped, two.skipped) == (2, 2) and seen == [(4, 7), (6, 7), (7, 7)]  # batches of 2, 2, 1
    np.testing.assert_array_equal(alone.labels, one.labels[..., 1:3])  # samples as segment_slices does


def test_settings_validation():
    with pytest.raises(SettingsError, match="steps"):
        SamplingSettings(steps=0)
    with pytest.raises(SettingsError, match="ensemble"):
        SamplingSettings(ensemble=100)
    with pytest.raises(SettingsError, match="consensus"):
        SamplingSettings(consensus="median")
    for seed in (-1, 2**63, 2**70, 1.5, "3", True):
        with pytest.raises(SettingsError, match=r"seed must be between 0 and 9223372036854775807 \(a whole number\)"):
            SamplingSettings(seed=seed)
    assert SamplingSettings(seed=2**63 - 1).seed == 2**63 - 1 and SamplingSettings(seed=np.int64(5)).seed == 5
