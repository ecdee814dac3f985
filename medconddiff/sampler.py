"""Sampling: a scheduler with `set_timesteps` / `step`, and the one loop that records every step.

The scheduler owns the time grid and the update rule; `sample_loop` only loops. Two update rules:
    ddim: deterministic, x_s = alpha_s * x0_hat + sigma_s * eps_hat
    ddpm: ancestral, x_s ~ q(x_s | x_t, x0_hat), with no noise on the last step
where eps_hat = (x_t - alpha_t * x0_hat) / sigma_t and x0_hat = 2 * softmax(logits) - 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .config import SAMPLERS
from .diffusion import CosineLogSNR, probs_to_x0
from .errors import SettingsError

MAX_STEPS = 1000
MAX_ENSEMBLE = 32


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x at the next (less noisy) time        (N, K, H, W)
    pred_original_sample: torch.Tensor  # x0_hat in value space [-1, 1]  (N, K, H, W)


class MaskScheduler:
    """Time grid t_0 = 1 > t_1 > ... > t_{S-1} > 0 and the update from t_i to t_{i+1} (t_S = 0)."""

    def __init__(self, schedule: CosineLogSNR, *, kind: str = "ddim"):
        if kind not in SAMPLERS:
            raise SettingsError(f"unknown sampler {kind!r}; accepted: {', '.join(SAMPLERS)}")
        self.schedule = schedule
        self.kind = kind
        self.timesteps = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> None:
        """S evenly spaced times from 1 down to 1/S; the step after the last one lands on t = 0."""
        if not 1 <= int(num_steps) <= MAX_STEPS:
            raise SettingsError(f"steps must be between 1 and {MAX_STEPS}, got {num_steps}")
        grid = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64)
        self.timesteps = grid[:-1]
        self._next = grid[1:]

    def step(
        self, x0_hat: torch.Tensor, index: int, x_t: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """One update from timesteps[index] to the next time. x0_hat, x_t: (N, K, H, W)."""
        t = self.timesteps[index : index + 1]
        s = self._next[index : index + 1]
        a_t, s_t = (v.double() for v in self.schedule.alpha_sigma(t))
        a_s, s_s = (v.double() for v in self.schedule.alpha_sigma(s))
        last = index == len(self.timesteps) - 1
        if last:
            prev = x0_hat
        elif self.kind == "ddim":
            eps = (x_t - float(a_t) * x0_hat) / float(s_t)
            prev = float(a_s) * x0_hat + float(s_s) * eps
        else:
            # posterior q(x_s | x_t, x0): alpha_{t|s} = a_t / a_s, sigma_{t|s}^2 = s_t^2 - alpha_{t|s}^2 s_s^2
            a_ts = a_t / a_s
            var_ts = s_t**2 - a_ts**2 * s_s**2
            mean = (a_ts * s_s**2 / s_t**2) * x_t + (a_s * var_ts / s_t**2) * x0_hat
            std = (var_ts * s_s**2 / s_t**2).sqrt()
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            prev = mean.to(x_t.dtype) + float(std) * noise
        return StepOutput(prev_sample=prev, pred_original_sample=x0_hat)


@dataclass
class StepRecord:
    """What the loop saw and predicted at one step, for B images and E members."""

    index: int  # i in 0..S-1
    num_steps: int  # S
    t: float  # time in [0, 1]
    logsnr: float  # noise level; higher is cleaner
    x_t: torch.Tensor | None  # the noisy mask fed in            (E, B, K, H, W)
    logits: torch.Tensor  # predicted x0 logits              (E, B, K, H, W)


CPU_CHUNK_ELEMENTS = 1 << 20  # denoiser rows per call on the CPU: about 4 MB of fp32 activations per tensor


def denoiser_chunk(model, cond: torch.Tensor) -> int:
    """How many rows (members x images) the denoiser takes per call on `cond`'s device.

    On the CPU a batch whose activations outgrow the cache runs slower per row than single rows
    (256 px, width 256: 37 ms per row alone, 86 ms per row in a batch of 4; benchmarks/RESULTS.md),
    so rows go through in chunks of about CPU_CHUNK_ELEMENTS activations; GPUs take every row at once.
    """
    if cond.device.type != "cpu":
        return 1 << 30
    per_row = model.config.width * cond.shape[-2] * cond.shape[-1]
    return max(1, CPU_CHUNK_ELEMENTS // max(1, per_row))


def sample_loop(
    model,
    cond: torch.Tensor,
    *,
    steps: int,
    ensemble: int = 1,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    keep_x_t: bool = True,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    chunk: int | None = None,
) -> Iterator[StepRecord]:
    """Run S denoising steps for B images x E members as one batch, yielding a record per step.

    cond (B, width, h, w) comes from `model.encode_image` and is shared by all members; the
    starting noise and any ancestral noise come from `generator` (on the CPU, so a seed gives the
    same masks on every device). `channels_last` runs the denoiser on (N, H, W, K)-strided tensors:
    the same values, laid out for faster oneDNN convolutions on the CPU. `autocast_dtype`
    (torch.bfloat16 / torch.float16) runs the denoiser under autocast; the logits, x_t and the
    update stay float32. `chunk` caps how many of the E*B rows go through the denoiser in one call
    (None: `denoiser_chunk` picks by device); the noise and the update still cover all rows at once.
    """
    if not 1 <= int(ensemble) <= MAX_ENSEMBLE:
        raise SettingsError(f"ensemble must be between 1 and {MAX_ENSEMBLE}, got {ensemble}")
    b = cond.shape[0]
    k = model.config.num_classes
    h, w = cond.shape[-2] * 4, cond.shape[-1] * 4
    scheduler = MaskScheduler(model.schedule, kind=sampler)
    scheduler.set_timesteps(steps)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    cond_e = cond.repeat(ensemble, *([1] * (cond.dim() - 1)))  # (E*B, width, h, w), member-major
    cond_e = cond_e.contiguous(memory_format=layout)
    rows = ensemble * b
    x_t = torch.randn((rows, k, h, w), generator=generator).to(cond.device, cond.dtype)
    chunk = denoiser_chunk(model, cond) if chunk is None else max(1, int(chunk))
    for i, t in enumerate(scheduler.timesteps):
        x_t = x_t.contiguous(memory_format=layout)  # a no-op unless the update changed the layout
        t_batch = torch.full((rows,), float(t), device=cond.device)
        with torch.autocast(cond.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
            parts = [
                model.denoise(x_t[r : r + chunk], t_batch[r : r + chunk], cond_e[r : r + chunk])
                for r in range(0, rows, chunk)
            ]
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        logits = logits.float()  # (E*B, K, H, W)
        x0_hat = probs_to_x0(logits.softmax(dim=1))
        yield StepRecord(
            index=i,
            num_steps=len(scheduler.timesteps),
            t=float(t),
            logsnr=float(model.schedule.logsnr(t.reshape(1))),
            x_t=x_t.float().reshape(ensemble, b, k, h, w) if keep_x_t else None,
            logits=logits.reshape(ensemble, b, k, h, w),
        )
        x_t = scheduler.step(x0_hat.to(x_t.dtype), i, x_t, generator=generator).prev_sample
