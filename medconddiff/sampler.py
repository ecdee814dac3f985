"""Sampling: a scheduler with `set_timesteps` / `step`, and the one loop that records every step.

The scheduler owns the time grid and the update rule; `sample_loop` only loops. Two update rules:
    ddim: deterministic, x_s = alpha_s * x0_hat + sigma_s * eps_hat
    ddpm: ancestral, x_s ~ q(x_s | x_t, x0_hat), with no noise on the last step
where eps_hat = (x_t - alpha_t * x0_hat) / sigma_t and x0_hat = b * (2 * softmax(logits) - 1), b the
model's `mask_scale` (1 unless it was trained on scaled masks). A self-conditioned model also gets
the previous step's 2 * softmax(logits) - 1 as input (zeros at the first step).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .consensus import CONSENSUS, class_argmax
from .diffusion import CosineLogSNR, probs_to_x0
from .errors import SettingsError

MAX_STEPS = 1000
MAX_ENSEMBLE = 32
SAMPLERS = ("ddim", "ddpm")


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit value; larger ones overflow inside torch


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: the one place these settings are checked (the scheduler, the loop, the
    command line, the app and config.json defaults all go through it)."""

    steps: int = 10
    ensemble: int = 1
    sampler: str = "ddim"
    consensus: str = "mean_logits"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "ensemble"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise SettingsError(f"{name} must be a whole number, got {value!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise SettingsError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 1 <= self.ensemble <= MAX_ENSEMBLE:
            raise SettingsError(f"ensemble must be between 1 and {MAX_ENSEMBLE}, got {self.ensemble}")
        if self.sampler not in SAMPLERS:
            raise SettingsError(f"unknown sampler {self.sampler!r}; accepted: {', '.join(SAMPLERS)}")
        if self.consensus not in CONSENSUS:
            raise SettingsError(f"unknown consensus {self.consensus!r}; accepted: {', '.join(CONSENSUS)}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
            raise SettingsError(f"seed must be between 0 and {MAX_SEED} (a whole number), got {seed!r}")

    @classmethod
    def defaults_for(cls, config, **overrides) -> SamplingSettings:
        """The model's own defaults (from its config), with any non-None overrides."""
        base = dict(
            steps=config.default_steps,
            ensemble=config.default_ensemble,
            sampler=config.default_sampler,
            consensus=config.default_consensus,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x at the next (less noisy) time        (N, K, H, W)
    pred_original_sample: torch.Tensor  # x0_hat in value space [-1, 1]  (N, K, H, W)


class MaskScheduler:
    """Time grid t_0 = 1 > t_1 > ... > t_{S-1} > 0 and the update from t_i to t_{i+1} (t_S = 0)."""

    def __init__(self, schedule: CosineLogSNR, *, kind: str = "ddim"):
        SamplingSettings(sampler=kind)  # raises SettingsError naming the accepted samplers
        self.schedule = schedule
        self.kind = kind
        self.timesteps = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> None:
        """S evenly spaced times from 1 down to 1/S; the step after the last one lands on t = 0."""
        SamplingSettings(steps=num_steps, sampler=self.kind)
        grid = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64)
        self.timesteps = grid[:-1]
        self._next = grid[1:]

    def needs_noise(self, index: int) -> bool:
        """Whether the update from timesteps[index] adds noise (ancestral steps before the last)."""
        return self.kind == "ddpm" and index < len(self.timesteps) - 1

    def step(
        self,
        x0_hat: torch.Tensor,
        index: int,
        x_t: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """One update from timesteps[index] to the next time. x0_hat, x_t: (N, K, H, W).

        Ancestral noise is `noise` when given (rows of a draw made for the whole batch), else
        drawn here from `generator`.
        """
        t = self.timesteps[index : index + 1]
        s = self._next[index : index + 1]
        a_t, s_t = (v.double() for v in self.schedule.alpha_sigma(t))
        a_s, s_s = (v.double() for v in self.schedule.alpha_sigma(s))
        last = index == len(self.timesteps) - 1
        # Both rules are linear in (x_t, x0_hat): the coefficients come first, in float64, so the
        # update over every row costs two passes (three with noise) instead of one per operator.
        if last:
            prev = x0_hat
        elif self.kind == "ddim":
            # x_s = a_s x0 + s_s eps, eps = (x_t - a_t x0) / s_t
            c_x = s_s / s_t
            c_0 = a_s - c_x * a_t
            prev = torch.add(x_t * float(c_x), x0_hat, alpha=float(c_0))
        else:
            # posterior q(x_s | x_t, x0): alpha_{t|s} = a_t / a_s, sigma_{t|s}^2 = s_t^2 - alpha_{t|s}^2 s_s^2
            a_ts = a_t / a_s
            var_ts = s_t**2 - a_ts**2 * s_s**2
            c_x = a_ts * s_s**2 / s_t**2
            c_0 = a_s * var_ts / s_t**2
            std = (var_ts * s_s**2 / s_t**2).sqrt()
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            prev = torch.add(x_t * float(c_x), x0_hat, alpha=float(c_0)).add_(noise, alpha=float(std))
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
    labels: torch.Tensor | None = None  # argmax class of `logits`, uint8 (E, B, H, W)


CPU_CHUNK_ELEMENTS = 1 << 19  # denoiser rows per call on the CPU: about 2 MB of fp32 activations per tensor


def denoiser_chunk(model, cond: torch.Tensor) -> int:
    """How many rows (members x images) the denoiser takes per call on `cond`'s device.

    On the CPU a batch whose stride-4 activations outgrow the cache runs slower per row, so rows
    go through in chunks of about CPU_CHUNK_ELEMENTS activations (1 row at 256 px, 5 at 128 px);
    GPUs take every row at once. Measured on this project's 2-core CPU, width 96, 256 px: the
    whole pipeline with E = 4 took 2.09x one member with 1 row per call and 2.82x with all 4
    rows in one call (benchmarks/bench.py, 5 interleaved rounds each), although the sampling
    loop timed alone favoured 4 rows (196 vs 228 ms for 10 steps): judge chunk sizes end to end.
    """
    if cond.device.type != "cpu":
        return 1 << 30
    per_row = model.config.denoiser_width * cond.shape[-2] * cond.shape[-1]
    return max(1, CPU_CHUNK_ELEMENTS // max(1, per_row))


def trajectory_buffer(steps: int, rows: int, num_classes: int, size: int, device=None) -> torch.Tensor:
    """An empty (S, rows, K, size, size) float32 trajectory for `sample_loop(out=...)`.

    Laid out with K innermost in memory, so the loop's channels-last logits are copied in as
    they are (a contiguous buffer measured a tie end to end; benchmarks/RESULTS.md).
    """
    return torch.empty((steps, rows, size, size, num_classes), device=device).movedim(-1, 2)


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
    out: torch.Tensor | None = None,
    reencode: Callable[[], torch.Tensor] | None = None,
) -> Iterator[StepRecord]:
    """Run S denoising steps for B images x E members as one batch, yielding a record per step.

    cond (B, denoiser_width, h, w) comes from `model.encode_image` and is shared by all members; the
    starting noise and any ancestral noise come from `generator` (on the CPU, so a seed gives the
    same masks on every device). `channels_last` runs the denoiser on (N, H, W, K)-strided tensors:
    the same values, laid out for faster oneDNN convolutions on the CPU. `autocast_dtype`
    (torch.bfloat16 / torch.float16) runs the denoiser under autocast; the logits, x_t and the
    update stay float32.

    `chunk` caps how many of the E*B rows go through the denoiser in one call (None:
    `denoiser_chunk` picks by device). Each chunk's softmax, update and argmax run right after
    its denoiser call, while its maps are still in cache; the noise is drawn for all rows at
    once, so the masks do not depend on the chunking. `out` (from `trajectory_buffer`, S x E*B
    rows) receives every step's logits, and the records' logits are views into it.

    `reencode` (for benchmarks) is the authors' structure: called before every step after the
    first, it returns fresh image features in place of `cond` (same shape), i.e. the backbone
    runs at every step. Returning what `cond` holds, it leaves the masks unchanged.
    """
    SamplingSettings(steps=steps, ensemble=ensemble, sampler=sampler)  # the one check of the settings
    b = cond.shape[0]
    k = model.config.num_classes
    h, w = cond.shape[-2] * 4, cond.shape[-1] * 4
    rows = ensemble * b
    scheduler = MaskScheduler(model.schedule, kind=sampler)
    scheduler.set_timesteps(steps)
    if out is not None and tuple(out.shape) != (len(scheduler.timesteps), rows, k, h, w):
        raise SettingsError(f"out must be shaped {(len(scheduler.timesteps), rows, k, h, w)}, got {tuple(out.shape)}")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    cond_e = cond.repeat(ensemble, *([1] * (cond.dim() - 1)))  # (E*B, dw, h, w), member-major
    cond_e = cond_e.contiguous(memory_format=layout)
    x_t = torch.randn((rows, k, h, w), generator=generator).to(cond.device, cond.dtype)
    chunk = denoiser_chunk(model, cond) if chunk is None else max(1, int(chunk))
    scale = float(model.config.mask_scale)  # x0 is noised as mask_scale * (2 onehot - 1)
    # self-conditioning: each row's previous x0-hat (value space, unscaled); zeros before the first step
    x0_prev = torch.zeros_like(x_t) if model.config.self_condition else None
    amp = torch.autocast(cond.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for i, t in enumerate(scheduler.timesteps):
        if reencode is not None and i > 0:  # (E*B, dw, h, w) recomputed: the step this design hoists out
            cond_e = reencode().repeat(ensemble, *([1] * (cond.dim() - 1))).contiguous(memory_format=layout)
        x_t = x_t.contiguous(memory_format=layout)  # a no-op unless the update changed the layout
        t_batch = torch.full((rows,), float(t), device=cond.device)
        noise = None
        if scheduler.needs_noise(i):
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        logits = out[i] if out is not None else torch.empty_like(x_t, dtype=torch.float32)  # (E*B, K, H, W)
        labels = torch.empty((rows, h, w), dtype=torch.uint8, device=cond.device)
        x_next = torch.empty_like(x_t)
        for r in range(0, rows, chunk):
            rs = slice(r, r + chunk)
            with amp:
                args = (x_t[rs], t_batch[rs], cond_e[rs]) + (() if x0_prev is None else (x0_prev[rs],))
                part = model.denoise(*args)
            part = part.float()
            logits[rs] = part
            labels[rs] = class_argmax(part, dim=1)
            x0_hat = probs_to_x0(part.softmax(dim=1)).to(x_t.dtype)
            if x0_prev is not None:
                x0_prev[rs] = x0_hat
            if scale != 1.0:
                x0_hat = x0_hat * scale
            x_next[rs] = scheduler.step(x0_hat, i, x_t[rs], noise=None if noise is None else noise[rs]).prev_sample
        yield StepRecord(
            index=i,
            num_steps=len(scheduler.timesteps),
            t=float(t),
            logsnr=float(model.schedule.logsnr(t.reshape(1))),
            x_t=x_t.float().reshape(ensemble, b, k, h, w) if keep_x_t else None,
            logits=logits.reshape(ensemble, b, k, h, w),
            labels=labels.reshape(ensemble, b, h, w),
        )
        x_t = x_next
