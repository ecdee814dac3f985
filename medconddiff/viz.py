"""Pictures of inputs, masks and trajectories: overlays, colour maps, trajectory plots, GIF frames.

Everything here is numpy in, uint8 RGB out, on the image's own pixel grid (array orientation;
`display_orientation` turns NIfTI slices the way a viewer shows them). No Gradio: the app, the
command line and notebooks all draw with these. matplotlib and Pillow are imported lazily.

Shapes: an RGB picture is (H, W, 3) uint8; labels (H, W) int; class maps (K, H, W) float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import io

# Distinct, colour-blind-aware colours for classes 1, 2, ...; class 0 (background) is black.
_PALETTE = [
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
]


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: black for class 0, then the palette (repeated if K is large)."""
    cols = [(0, 0, 0)] + [_PALETTE[i % len(_PALETTE)] for i in range(num_classes - 1)]
    return np.array(cols, dtype=np.uint8)


def hex_colours(num_classes: int) -> list[str]:
    """The same colours as '#rrggbb' strings (for legends)."""
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in class_colours(num_classes)]


_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_DOWN_OR_RIGHT = {"R": "L", "L": "L", "A": "P", "P": "P", "S": "I", "I": "I"}  # where the index runs on screen


def _screen_plan(axes: tuple[str, ...]) -> tuple[int, str, str]:
    """In-plane axis codes (c0, c1) of a slice -> (the array axis shown horizontally, the direction
    the screen's columns run towards, the direction its rows run towards)."""
    c0, c1 = axes[0], axes[1]
    across = 0 if c0 in "RL" else 1 if c1 in "RL" else 0 if c0 in "AP" else 1
    return across, _DOWN_OR_RIGHT[(c0, c1)[across]], _DOWN_OR_RIGHT[(c0, c1)[1 - across]]


def display_orientation(picture: np.ndarray, kind: str, axes: tuple[str, ...] | None = None) -> np.ndarray:
    """A NIfTI slice (X, Y, ...) -> as a viewer shows it; 2D pictures are left as they are.

    With the volume's axis codes `axes` (`Scan.axes`, e.g. ("L", "P", "S")) the slice is shown in
    the radiological convention: the patient's right on the viewer's left, anterior at the top
    (superior at the top for coronal and sagittal planes, anterior on the left for sagittal).
    Without them a NIfTI slice is turned by np.rot90.
    """
    if kind != "nifti":
        return picture
    if axes is None:
        return np.ascontiguousarray(np.rot90(picture))
    across, right, down = _screen_plan(tuple(axes))
    shown = picture if across == 1 else np.swapaxes(picture, 0, 1)  # rows: the vertical body axis
    row_code, col_code = axes[1 - across], axes[across]
    if row_code != down:
        shown = shown[::-1]
    if col_code != right:
        shown = shown[:, ::-1]
    return np.ascontiguousarray(shown)


def edge_letters(axes: tuple[str, ...]) -> dict[str, str]:
    """The body directions at the edges of a slice shown by `display_orientation(..., axes)`:
    {"left": "R", "right": "L", "top": "A", "bottom": "P"} for an axial slice."""
    _, right, down = _screen_plan(tuple(axes))
    return {"left": _OPPOSITE[right], "right": right, "top": _OPPOSITE[down], "bottom": down}


def mark_edges(picture: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    """Write the orientation letters (`edge_letters`) at the middle of each edge of a displayed (H, W, 3) picture."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(picture))
    draw = ImageDraw.Draw(canvas)
    h, w = picture.shape[:2]
    letters = edge_letters(axes)
    spots = {
        "left": (3, h // 2 - 5),
        "right": (w - 9, h // 2 - 5),
        "top": (w // 2 - 3, 2),
        "bottom": (w // 2 - 3, h - 13),
    }
    for edge, (x, y) in spots.items():
        draw.text((x, y), letters[edge], fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def for_viewer(
    picture: np.ndarray, kind: str, axes: tuple[str, ...] | None = None, *, max_side: int | None = None
) -> np.ndarray:
    """An array-orientation (H, W, 3) picture -> as shown and exported: turned (`display_orientation`),
    shrunk to `max_side`, and for NIfTI slices with known `axes` the orientation letters at the edges."""
    shown = display_orientation(picture, kind, axes)
    if max_side is not None:
        shown = fit(shown, max_side=max_side)
    return mark_edges(shown, axes) if kind == "nifti" and axes is not None else shown


def _stretch(channel: np.ndarray) -> np.ndarray:
    """(H, W) -> [0, 1]: the minimum (empty space) to black, the 99.5th percentile of the rest to white."""
    lo = float(channel.min())
    rest = channel[channel > lo]
    hi = float(np.percentile(rest, 99.5)) if rest.size else lo + 1.0
    return np.clip((channel - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def to_display(
    image: np.ndarray, *, modality: str, kind: str, ct_window: str = "abdomen", channel: int = 0
) -> np.ndarray:
    """A raw slice (C, H, W), as read from disk -> (H, W, 3) uint8 picture to draw masks on.

    CT NIfTI in Hounsfield units is shown through the chosen window; a CT picture is taken as
    already windowed. MRI shows one channel (`channel`), contrast-stretched. A 3-channel
    natural image is shown in colour.
    """
    image = np.asarray(image, dtype=np.float32)
    if modality == "natural" and image.shape[0] == 3:
        top = 255.0 if image.max() <= 255 else float(image.max())
        return (np.clip(np.moveaxis(image, 0, -1) / top, 0, 1) * 255).round().astype(np.uint8)
    chan = image[min(channel, image.shape[0] - 1)]
    if modality == "ct" and kind == "nifti":
        grey = io.window_to_display(chan, ct_window)
    elif modality == "ct":
        top = 255.0 if chan.max() <= 255 else float(chan.max())
        grey = (np.clip(chan / top, 0, 1) * 255).round().astype(np.uint8)
    else:
        grey = (_stretch(chan) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def colour_labels(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 in the class colours."""
    return colours[np.clip(labels, 0, len(colours) - 1)]


def overlay(base: np.ndarray, labels: np.ndarray, colours: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours of `labels` (H, W) onto `base` (H, W, 3) with opacity `alpha`.

    Background (class 0) pixels keep the base picture; alpha 0 returns the base unchanged.
    """
    alpha = float(np.clip(alpha, 0.0, 1.0))
    fg = (labels > 0)[..., None]
    mixed = (1.0 - alpha) * base.astype(np.float32) + alpha * colour_labels(labels, colours).astype(np.float32)
    return np.where(fg, mixed.round(), base).astype(np.uint8)


def soft_mask(weights: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Per-class weights (K, H, W), summing to 1 per pixel -> (H, W, 3) uint8 colour mixture."""
    rgb = np.tensordot(np.moveaxis(weights, 0, -1), colours.astype(np.float32), axes=([-1], [0]))
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def noisy_mask(x_t: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """A noisy mask x_t (K, H, W) in value space (clean entries are -1 / +1) -> (H, W, 3) uint8.

    Pixels are coloured by softmax(2 x_t) over the classes: a clean one-hot mask shows its class
    colours (at 93 % strength), pure noise shows a speckle of all of them.
    """
    z = 2.0 * x_t.astype(np.float32)
    w = np.exp(z - z.max(axis=0, keepdims=True))
    return soft_mask(w / w.sum(axis=0, keepdims=True), colours)


def heatmap(values: np.ndarray, *, cmap: str = "magma", vmax: float = 1.0) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 through a matplotlib colour map."""
    from matplotlib import colormaps

    v = np.clip(np.nan_to_num(values.astype(np.float32)) / max(vmax, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](v)[..., :3] * 255).round().astype(np.uint8)


def change(prev_probs: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
    """Per-pixel change between two steps' class probabilities (K, H, W): total variation in [0, 1].

    0.5 * sum_k |p_k - q_k|: 0 where nothing moved, 1 where all probability moved to other classes.
    The first step (no previous one) gives zeros.
    """
    if prev_probs is None:
        return np.zeros(probs.shape[1:], np.float32)
    return (0.5 * np.abs(probs - prev_probs).sum(axis=0)).astype(np.float32)


# -- one step of a trajectory, back on the image's grid ----------------------------------------


def step_probs(logits: torch.Tensor, geometry: io.Geometry) -> np.ndarray:
    """Predicted x0 logits (E, K, s, s) on the model grid -> class probabilities (K, H, W) on the image's grid.

    Members are averaged after the softmax; pixels outside the model's crop are background.
    """
    probs = logits.detach().float().softmax(dim=1).mean(dim=0)  # (K, s, s)
    fill = torch.zeros(probs.shape[0])
    fill[0] = 1.0
    return io.from_model_grid(probs, geometry, fill=fill).numpy()


def step_noisy(x_t: torch.Tensor, geometry: io.Geometry, *, member: int = 0) -> np.ndarray:
    """The noisy mask x_t (E, K, s, s) of one member -> (K, H, W) on the image's grid.

    Outside the crop it shows a clean background (+1 for class 0, -1 for the others).
    """
    x = x_t[member].detach().float()
    fill = -torch.ones(x.shape[0])
    fill[0] = 1.0
    return io.from_model_grid(x, geometry, fill=fill).numpy()


def class_areas(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels -> (K,) pixel counts per class."""
    return np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes]


# -- figures and animations -----------------------------------------------------------------


def trajectory_figure(values: np.ndarray, class_names: list[str], *, ylabel: str, title: str, colours: np.ndarray):
    """values (S, K) per step and class -> a small matplotlib Figure, one line per foreground class.

    Class 0 (background) is left out. The caller closes the figure (`plt.close(fig)`).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, values.shape[0] + 1)
    for k in range(1, values.shape[1]):
        ax.plot(steps, values[:, k], marker="o", ms=3, lw=1.5, color=colours[k] / 255.0, label=class_names[k])
    ax.set_xlabel("sampling step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0.5, values.shape[0] + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def figure_to_rgb(fig) -> np.ndarray:
    """Render a matplotlib Figure (Agg) -> (H, W, 3) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def upscale(picture: np.ndarray, *, min_side: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor until the shorter side is at least `min_side`."""
    factor = max(1, int(np.ceil(min_side / max(1, min(picture.shape[:2])))))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def fit(picture: np.ndarray, *, max_side: int) -> np.ndarray:
    """Shrink (H, W, 3) so that its longer side is at most `max_side` (area resampling); else unchanged."""
    h, w = picture.shape[:2]
    if max(h, w) <= max_side:
        return picture
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))


def side_by_side(pictures: list[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Equal-height (H, W_i, 3) pictures -> one (H, sum W_i + gaps, 3), separated by white gaps."""
    h = pictures[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for i, p in enumerate(pictures):
        parts += [sep, p] if i else [p]
    return np.concatenate(parts, axis=1)


def caption(picture: np.ndarray, text: str) -> np.ndarray:
    """Add a white strip with `text` under a picture (PIL's built-in font)."""
    from PIL import Image, ImageDraw

    h, w = picture.shape[:2]
    strip = 16
    canvas = Image.new("RGB", (w, h + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(picture), (0, 0))
    ImageDraw.Draw(canvas).text((4, h + 2), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_gif(frames: list[np.ndarray], path: str | Path, *, frame_ms: int = 400, hold_last_ms: int = 1500) -> Path:
    """Frames (H, W, 3) uint8 -> an animated GIF that loops, holding the last frame a little longer."""
    from PIL import Image

    if not frames:
        raise ValueError("write_gif needs at least one frame")
    images = [Image.fromarray(f) for f in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    images[0].save(
        str(path), save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False, disposal=1
    )
    return Path(path)


# -- what a sampling run looks like ---------------------------------------------------------


class StepPictures:
    """One sampling step of one slice, drawn on the slice's own grid (array orientation).

    `noisy` the noisy mask x_t, `x0` the predicted clean mask x0-hat over `base`, `change` how far
    the class probabilities moved since `prev_probs` (all (H, W, 3) uint8); `probs` (K, H, W) and
    `labels` (H, W) are x0-hat's class probabilities and argmax, for the next step and for plots.
    """

    def __init__(self, step, base: np.ndarray, *, row: int = 0, prev_probs: np.ndarray | None = None) -> None:
        geometry = step.geometries[row]  # a pipeline.SliceStep: row j of the batch and its geometry
        colours = class_colours(step.logits.shape[-3])
        self.probs = step_probs(step.logits[:, row], geometry)  # (K, H, W)
        self.labels = self.probs.argmax(axis=0)
        self.noisy = noisy_mask(step_noisy(step.x_t[:, row], geometry), colours)
        self.x0 = overlay(base, self.labels, colours, alpha=0.55)
        self.change = heatmap(change(prev_probs, self.probs), cmap="inferno")


TIMESTEP_HEADER = (
    "### 3. Timestep view: the noisy mask, the predicted clean mask and what changed\n"
    "At each step the network looks at the noisy mask x_t and predicts the clean mask: each step's output "
    "(the middle picture) is that estimate, x0-hat, made at the step's t; the next "
    "x_t mixes that prediction back in with less noise. The output of the last step is its x0-hat, so "
    "its t is still above 0. With the shipped models x0-hat is almost final after the first step (well "
    "under 1 % of pixels change per step on brain MRI): what forms step by step is x_t, around a "
    "prediction already made. The polyp model was trained on its own predictions (recycling), so its "
    "later steps correct it a little (about +0.01 Dice from 1 to 10 steps on validation images); the "
    "steps study in the README found no recipe whose steps do much more. The consensus below fuses all "
    "steps (and members)."
)


def step_caption(index: int, num_steps: int, t: float, logsnr: float, flipped: int | None) -> str:
    """A Markdown line naming a step, its time and noise level, and how many pixels changed class."""
    signal = 1.0 / (1.0 + np.exp(-logsnr))  # alpha_t^2: the share of signal in x_t's variance
    text = f"**Step {index + 1} / {num_steps}** · t = {t:.3f} · log-SNR = {logsnr:+.2f} (signal fraction α² = {signal:.3f})"
    text += f" · {flipped} pixel(s) changed class" if flipped is not None else " · first step"
    if index == num_steps - 1:
        text += (
            f"\n\nThe last step's output is its x0-hat: the network's estimate of the clean mask, made from x_t at "
            f"t = {t:.3f} (the update to t = 0 only keeps that estimate). Every step's picture in the middle is such "
            "an estimate at that step's t."
        )
    return text


def trajectory_picture(
    per_step: list[np.ndarray], class_names: list[str], truth: np.ndarray | None = None
) -> np.ndarray:
    """x0-hat's labels at each step [(H, W), ...] -> a plot of the Dice to `truth` (or of the class areas)."""
    from . import metrics

    k, colours = len(class_names), class_colours(len(class_names))
    if truth is not None:
        scores = [[metrics.present_dice(lab == c, truth == c) for c in range(k)] for lab in per_step]
        values = np.array([[np.nan if d is None else d for d in row] for row in scores])  # absent: no point
        return figure_to_rgb(
            trajectory_figure(
                values, class_names, ylabel="Dice", title="Dice of x0-hat to the ground truth", colours=colours
            )
        )
    values = np.array([class_areas(lab, k) for lab in per_step])
    return figure_to_rgb(
        trajectory_figure(values, class_names, ylabel="pixels", title="class areas of x0-hat", colours=colours)
    )


NOT_SCORED = "–"  # a class in neither the prediction nor the truth: no Dice, left out of the mean


def _class_list(classes: tuple[int, ...]) -> str:
    """(1, 2, 3, 4) -> "classes 1-4"; (1, 3, 4) -> "classes 1, 3, 4"; (3,) -> "class 3"."""
    if len(classes) == 1:
        return f"class {classes[0]}"
    if len(classes) > 2 and list(classes) == list(range(classes[0], classes[-1] + 1)):
        return f"classes {classes[0]}-{classes[-1]}"
    return "classes " + ", ".join(map(str, classes))


def dice_table(labels: np.ndarray, truth: np.ndarray, class_names: list[str], *, unit: str = "px") -> str:
    """A Markdown table of Dice per class (and per BraTS region for BraTS models) of `labels` against `truth`.

    Any shape (a slice or a whole volume); the scores are `metrics.scored`'s: a class in neither map
    shows NOT_SCORED and is left out of the foreground mean, which the last rows say.
    """
    from . import metrics

    s = metrics.scored(labels, truth, class_names)

    def fmt(d: float | None) -> str:
        return NOT_SCORED if d is None else f"{d:.3f}"

    lines = [f"| class | Dice | {unit} | truth {unit} |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt(d)} | {p} | {t} |" for name, d, p, t in s["classes"]]
    lines.append(f"| **mean (foreground)** | **{fmt(s['mean'])}** | | |")
    if s["regions"]:
        lines += ["", "| BraTS region | Dice |", "|---|---|"]
        lines += [f"| {name} | {fmt(d)} |" for name, d in s["regions"]]
        which = metrics.regions_for(class_names)  # the model's own classes: five (2015) or four (2017+)
        lines.append(
            "\n"
            + ", ".join(
                f"{name} {title} ({_class_list(which[name])})"
                for name, title in (("WT", "whole tumour"), ("TC", "tumour core"), ("ET", "enhancing tumour"))
            )
            + "."
        )
    if s["absent"]:
        lines.append(
            f"\n{NOT_SCORED}: in neither the prediction nor the truth (nothing to score); "
            f"left out of the mean ({s['absent']} class(es))."
        )
    return "\n".join(lines)


def slice_picture(
    image: np.ndarray, config, *, kind: str, ct_window: str | None = None, truth: np.ndarray | None = None
) -> np.ndarray:
    """A raw (C, H, W) slice as the model's modality is shown (CT through `ct_window`, else the model's),
    with `truth` (H, W) drawn on when given: (H, W, 3) uint8, array orientation."""
    window = ct_window or config.ct_window
    picture = to_display(image, modality=config.modality, kind=kind, ct_window=window)
    if truth is not None:
        picture = overlay(picture, truth, class_colours(config.num_classes), alpha=0.4)
    return picture


def legend_html(labels: np.ndarray, class_names: list[str], *, title: str) -> str:
    """HTML: a colour swatch, name and area for each foreground class of `labels` (CSS classes
    `mcd-legend` and `mcd-swatch` for the page to style)."""
    k = len(class_names)
    areas = class_areas(labels, k)
    rows = [
        f'<span class="mcd-swatch" style="background:{colour}"></span>{name}: {areas[c]} px '
        f"({100.0 * areas[c] / labels.size:.1f} %)"
        for c, (name, colour) in enumerate(zip(class_names, hex_colours(k), strict=True))
        if c > 0
    ]
    return f'<div class="mcd-legend"><b>{title}</b><br>' + "<br>".join(rows) + "</div>"
