"""Pictures that explain the method: the forward process, the noise schedule, uncertainty with its scale,
ensemble members.

The demo (and a notebook) shows with these what the sampler does not show by itself: how a
clean mask is noised in training (q(x_t | x0), `diffusion.q_sample`), where the sampler's
timesteps sit on the schedule, and what the uncertainty map's colours mean. Same conventions as
`viz`: numpy in, (H, W, 3) uint8 RGB out, array orientation; matplotlib imported lazily.

Notation (`diffusion`): alpha_t = sqrt(alpha_bar_t) multiplies the clean mask x0, sigma_t the noise;
alpha_bar_t = alpha_t^2 = sigmoid(logsnr(t)) is the signal fraction of x_t's variance.
"""

from __future__ import annotations

import html
import math

import numpy as np
import torch

from . import io, viz
from .diffusion import CosineLogSNR, labels_to_x0, q_sample

UNCERTAINTY_CMAP = "viridis"  # perceptually uniform, readable in grey and for colour-blind viewers
UNCERTAINTY_DEFINITIONS = (
    "**disagreement** = 1 − the share of the S steps × E members whose x0-hat votes for the fused class "
    "(0: all agree); **entropy** = −Σ_k p_k log p_k / log K of the fused class probabilities (0: certain, "
    "1: every class equally likely)."
)
FORWARD_HEADER = (
    "### 6. How training noises a mask: the forward process q(x_t | x0)\n"
    "In training the clean mask x0 (one-hot, entries ±1) is mixed with Gaussian noise ε: "
    "x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε, and the network learns to predict x0 back from x_t and the image. "
    "Pick t to see that mixture for this slice's ground truth (or, without one, for the fused mask). "
    "Sampling runs this backwards: from pure noise at t = 1 towards t = 0."
)
_NICE_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def schedule(config) -> CosineLogSNR:
    """The model's noise schedule (the same object its training and sampling use)."""
    return CosineLogSNR.from_config(config)


def signal(config, t: float) -> tuple[float, float]:
    """(sqrt(alpha_bar_t), log-SNR) at time t in [0, 1] for the model's schedule."""
    logsnr = float(schedule(config).logsnr(torch.tensor([float(t)], dtype=torch.float64))[0])
    return math.sqrt(1.0 / (1.0 + math.exp(-logsnr))), logsnr


def forward_noised(labels: np.ndarray, t: float, config, *, seed: int = 0) -> np.ndarray:
    """(H, W) class labels -> x_t (K, H, W) drawn from q(x_t | x0) at time t, with noise from `seed`.

    The same seed gives the same noise ε at every t, so moving t shows the mixture change, not the draw.
    """
    if not 0.0 <= float(t) <= 1.0:
        raise io.InputError(f"t = {t} is outside the diffusion time; accepted: 0 <= t <= 1")
    x0 = labels_to_x0(torch.from_numpy(np.asarray(labels, np.int64))[None], config.num_classes)  # (1, K, H, W)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return q_sample(x0, torch.tensor([float(t)]), noise, schedule(config))[0].numpy()


def forward_picture(
    labels: np.ndarray, t: float, config, *, kind: str, axes: tuple[str, ...] | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """The clean mask and q(x_t | x0) at t side by side, in display orientation, and a one-line caption."""
    colours = viz.class_colours(config.num_classes)
    clean = viz.colour_labels(labels, colours)
    noisy = viz.noisy_mask(forward_noised(labels, t, config, seed=seed), colours)
    parts = [viz.upscale(viz.display_orientation(p, kind, axes), min_side=160) for p in (clean, noisy)]
    a, logsnr = signal(config, t)
    text = (
        f"Left: x0 (what is noised). Right: x_t at **t = {t:.2f}**: signal coefficient √ᾱ_t = **{a:.3f}**, "
        f"noise coefficient √(1 − ᾱ_t) = {math.sqrt(max(0.0, 1 - a * a)):.3f}, signal fraction ᾱ_t = {a * a:.3f}, "
        f"log-SNR = {logsnr:+.2f}."
    )
    return viz.side_by_side(parts), text


def schedule_picture(
    config, timesteps: list[float] | None = None, *, current: int | None = None, t_mark: float | None = None
) -> np.ndarray:
    """The signal coefficient sqrt(alpha_bar_t) and fraction alpha_bar_t against t, as a small plot.

    `timesteps`: the sampler's times, drawn as dots on the curve; `current` (an index into them) is
    highlighted; `t_mark` draws a dashed line (the forward view's t).
    """
    from matplotlib.figure import Figure

    ts = np.linspace(0.0, 1.0, 201)
    logsnr = schedule(config).logsnr(torch.from_numpy(ts)).numpy()
    abar = 1.0 / (1.0 + np.exp(-logsnr))
    fig = Figure(figsize=(4.6, 2.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ts, np.sqrt(abar), color="#3b528b", lw=1.8, label="√ᾱ_t (signal coefficient)")
    ax.plot(ts, abar, color="#5ec962", lw=1.4, ls="--", label="ᾱ_t (signal fraction)")
    if timesteps:
        tt = np.asarray(timesteps, np.float64)
        a = np.sqrt(1.0 / (1.0 + np.exp(-schedule(config).logsnr(torch.from_numpy(tt)).numpy())))
        ax.plot(tt, a, "o", color="#21918c", ms=4, label="sampler's steps")
        if current is not None and 0 <= current < len(tt):
            ax.plot(tt[current], a[current], "o", ms=10, mfc="none", mec="#d62728", mew=2.2)
            ax.annotate(f"step {current + 1}", (tt[current], a[current]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8, color="#d62728")  # fmt: skip
    if t_mark is not None:
        ax.axvline(float(t_mark), color="#d62728", lw=1, ls=":", label=f"forward view t = {t_mark:.2f}")
    ax.set_xlim(1.02, -0.02)  # sampling runs from t = 1 (noise) to t = 0 (clean): left to right
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("t (sampling goes left to right)")
    ax.set_title("noise schedule", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", frameon=False)
    fig.tight_layout()
    return viz.figure_to_rgb(fig)


def nice_scale(values: np.ndarray) -> float:
    """The top of the colour scale: the smallest round number at or above the map's maximum (at least 0.01)."""
    top = float(np.nanmax(values)) if np.size(values) else 0.0
    return next((s for s in _NICE_SCALES if top <= s + 1e-9), 1.0)


def uncertainty_picture(
    values: np.ndarray, base: np.ndarray | None = None, *, vmax: float | None = None, blend: float = 0.7
) -> tuple[np.ndarray, float]:
    """(H, W) uncertainty in [0, 1] -> (picture, top of the scale): viridis from 0 to `vmax` (default
    `nice_scale`), blended with weight `blend` over a grey copy of `base` (H, W, 3) when given."""
    vmax = nice_scale(values) if vmax is None else float(vmax)
    colour = viz.heatmap(values, cmap=UNCERTAINTY_CMAP, vmax=vmax).astype(np.float32)
    if base is not None:
        grey = base.astype(np.float32).mean(axis=-1, keepdims=True)
        colour = blend * colour + (1.0 - blend) * grey
    return colour.round().astype(np.uint8), vmax


def colourbar_html(vmax: float, label: str, *, cmap: str = UNCERTAINTY_CMAP, blended: bool = True) -> str:
    """HTML colour bar for `uncertainty_picture`: the colour map from 0 to `vmax`, with ticks (CSS class `mcd-cbar`)."""
    from matplotlib import colormaps

    stops = ", ".join(
        "#{:02x}{:02x}{:02x} {:.0f}%".format(*(round(255 * v) for v in colormaps[cmap](x)[:3]), 100 * x)
        for x in np.linspace(0.0, 1.0, 11)
    )
    ticks = "".join(f"<span>{v:g}</span>" for v in (0.0, vmax / 2, vmax))
    note = " · blended over the image" if blended else ""
    return (
        f'<div class="mcd-cbar"><div class="mcd-cbar-title">{html.escape(label)}: 0 to {vmax:g}{note}</div>'
        f'<div class="mcd-cbar-ramp" style="background: linear-gradient(to right, {stops})"></div>'
        f'<div class="mcd-cbar-ticks">{ticks}</div></div>'
    )


def member_pictures(step, base: np.ndarray, *, row: int = 0) -> list[np.ndarray]:
    """Each ensemble member's x0-hat at one `pipeline.SliceStep` (the last: the member's own answer), over `base`."""
    geometry, k = step.geometries[row], step.logits.shape[-3]
    colours = viz.class_colours(k)
    out = []
    for e in range(step.logits.shape[0]):
        labels = viz.step_probs(step.logits[e : e + 1, row], geometry).argmax(axis=0)  # (H, W)
        out.append(viz.overlay(base, labels, colours, alpha=0.55))
    return out
