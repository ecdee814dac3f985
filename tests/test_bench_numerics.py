"""The speed options keep fp32 results the same: masks identical, logits equal up to float rounding;
reduced precision ("auto" picks it where the hardware runs it natively) keeps the sampling state in float32.

fp32 convolutions already differ by ~1e-6 between thread counts (oneDNN sums in another order),
so "the same" means: identical label maps, and logits within 1e-4 of the contiguous-layout run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medconddiff import pipeline
from medconddiff.errors import SettingsError
from medconddiff.pipeline import SamplingSettings, encode, iter_segment_slices, segment_image, use_channels_last
from medconddiff.precision import cpu_has_native_bf16, resolve
from medconddiff.sampler import sample_loop


def _slice(seed: int = 0) -> np.ndarray:
    img = np.zeros((2, 90, 70), np.float32)
    img[:, 10:80, 8:60] = np.random.default_rng(seed).normal(0, 1, (2, 70, 52)) + 0.1
    return img


def _logits(model, cond, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        recs = list(sample_loop(model, cond, steps=4, ensemble=2, generator=gen, **kwargs))
    return torch.stack([r.logits for r in recs])  # (S, E, B, K, H, W)


def test_channels_last_denoiser_matches_contiguous(tiny_model):
    image = torch.from_numpy(np.stack([_slice(0)[:, :64, :64], _slice(1)[:, :64, :64]]))
    with torch.inference_mode():
        cond = tiny_model.encode_image(image)
    for sampler in ("ddim", "ddpm"):
        ref = _logits(tiny_model, cond, sampler=sampler)
        new = _logits(tiny_model, cond, sampler=sampler, channels_last=True)
        assert new.shape == ref.shape == (4, 2, 2, 5, 64, 64)
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(new.argmax(dim=-3), ref.argmax(dim=-3))


def test_pipeline_layouts_give_the_same_masks(tiny_model):
    settings = SamplingSettings(steps=3, ensemble=2)
    a = segment_image(tiny_model, _slice(), settings, kind="nifti", channels_last=False, precision="fp32")
    b = segment_image(tiny_model, _slice(), settings, kind="nifti", channels_last=True, precision="fp32")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
    assert all(p.is_contiguous() for p in tiny_model.parameters())  # the weights are never re-laid out


def test_auto_layout_is_channels_last_on_cpu_only():
    assert use_channels_last(torch.device("cpu")) is True
    assert use_channels_last(torch.device("cuda")) is False
    assert use_channels_last(torch.device("cpu"), False) is False


def test_fp32_precision_is_the_plain_path(tiny_model):
    image = torch.from_numpy(_slice()[None, :, :64, :64].copy())
    with torch.inference_mode():
        assert torch.equal(encode(tiny_model, image, precision="fp32"), tiny_model.encode_image(image))
    res = segment_image(tiny_model, _slice(), SamplingSettings(steps=2), kind="nifti", precision="fp32")
    assert res.precision == "fp32" and res.trajectory.logits.dtype == torch.float32


def test_the_default_precision_is_auto_resolved_for_the_device(tiny_model):
    settings = SamplingSettings(steps=2)
    chosen = resolve("auto", "cpu")
    a = segment_image(tiny_model, _slice(), settings, kind="nifti")
    b = segment_image(tiny_model, _slice(), settings, kind="nifti", precision=chosen)
    assert a.precision == b.precision == chosen == ("bf16" if cpu_has_native_bf16() else "fp32")
    np.testing.assert_array_equal(a.probs, b.probs)


def test_bf16_autocast_runs_and_keeps_float32_outputs(tiny_model):
    res = segment_image(tiny_model, _slice(), SamplingSettings(steps=2), kind="nifti", precision="bf16")
    assert res.trajectory.logits.dtype == torch.float32 and torch.isfinite(res.trajectory.logits).all()
    assert res.labels.shape == (90, 70)
    with torch.inference_mode():
        cond = encode(tiny_model, torch.zeros(1, 2, 64, 64), precision="bf16")
    assert cond.dtype == torch.float32


def test_unknown_precision_is_a_settings_error(tiny_model):
    with pytest.raises(SettingsError, match="accepted: auto, fp32, bf16, fp16"):
        segment_image(tiny_model, _slice(), SamplingSettings(steps=1), kind="nifti", precision="int8")


@pytest.mark.parametrize("ensemble", [1, 3])
def test_trajectory_is_stacked_with_classes_innermost_and_fuses_the_same(tiny_model, ensemble):
    """The pipeline stacks the trajectory with K innermost (faster consensus); the masks are unchanged."""
    settings = SamplingSettings(steps=3, ensemble=ensemble)
    for channels_last in (True, False):
        res = segment_image(tiny_model, _slice(), settings, kind="nifti", channels_last=channels_last, precision="fp32")
        logits = res.trajectory.logits
        assert logits.shape == (3, ensemble, 5, 64, 64) and logits.stride(-3) == 1
        for method in ("mean_logits", "majority_vote", "snr_weighted"):
            plain = pipeline._finish(
                replace(res.trajectory, logits=logits.contiguous()), res.geometry, method, precision=res.precision
            )
            fast = res.refuse(method)
            np.testing.assert_array_equal(fast.labels, plain.labels)
            np.testing.assert_allclose(fast.probs, plain.probs, atol=1e-6)
            np.testing.assert_allclose(fast.agreement, plain.agreement)


@pytest.mark.parametrize("ensemble", [1, 2])
def test_backbone_every_step_runs_the_backbone_each_step_and_gives_the_same_masks(tiny_model, ensemble):
    """The benchmark's 'authors' structure' arm: S backbone passes instead of one, identical masks."""
    settings = SamplingSettings(steps=3, ensemble=ensemble)
    calls = []
    handle = tiny_model.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        ours = segment_image(tiny_model, _slice(), settings, kind="nifti")
        once = len(calls)
        *_, (theirs,) = iter_segment_slices(
            tiny_model, [_slice()], settings, kind="nifti", keep_trajectory=True, backbone_every_step=True
        )
    finally:
        handle.remove()
    assert once == 1 and len(calls) - once == settings.steps
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    torch.testing.assert_close(ours.trajectory.logits, theirs.trajectory.logits, rtol=0, atol=1e-5)
