"""MedCondDiff demo: segment a scan with a conditional diffusion model and watch every step.

    python app.py [--host 127.0.0.1] [--port 7860] [--custom-weights auto|on|off]
    (GRADIO_SERVER_NAME / _PORT and MEDCONDDIFF_CUSTOM_WEIGHTS also work)

This file wires Gradio components to library calls and holds no maths: files and sampling go
through `medconddiff.pipeline`, weights through `medconddiff.hub`, pictures through
`medconddiff.viz`, scores through `medconddiff.metrics`. Every user-fixable problem is a
`MedCondDiffError` from the library and is shown as a `gr.Error` with the library's message.

API: `api_name="segment"` takes (files, model, steps, ensemble, consensus, seed[, slice]) and
returns (mask PNG of class indices, summary dict); see `segment_api`.
"""

from __future__ import annotations

try:  # Hugging Face ZeroGPU; off Spaces `spaces.GPU` returns the function unchanged
    import spaces
except ImportError:  # the demo runs without the package
    spaces = None

import argparse
import contextlib
import functools
import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio.data_classes import FileData, ListFiles
from gradio.utils import get_upload_folder
from PIL import Image

from medconddiff import hub, io, metrics, viz
from medconddiff.config import MedCondDiffConfig
from medconddiff.consensus import CONSENSUS
from medconddiff.errors import InputError, MedCondDiffError, SettingsError, WeightsError
from medconddiff.pipeline import (
    Result,
    SamplingSettings,
    iter_segment_slices,
    load_case,
    resolve_device,
    segment_volume,
)

REPO = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO / "assets" / "examples"
PAPER_URL = "https://arxiv.org/abs/2512.00350"
MAX_FILE_SIZE = "200mb"  # per upload; Gradio refuses larger files before they reach a handler
MAX_STEPS, MAX_ENSEMBLE, MAX_WORK = 50, 8, 100  # per run: steps, members, steps x members (bounds memory)
MAX_CHANNELS = 4  # modality pickers shown for multi-modal models
MAX_SIDE = 1024  # pictures are drawn at the image's resolution, up to this side
CONCURRENCY = int(os.environ.get("MEDCONDDIFF_CONCURRENCY", "1"))  # sampling runs at once, all users together
DEVICE = resolve_device("auto")
RUNS_DIR = Path(tempfile.gettempdir()) / "medconddiff-demo"
SAMPLERS = {"DDIM (deterministic)": "ddim", "DDPM (ancestral)": "ddpm"}
UNCERTAINTY = {"disagreement (1 - agreement of steps and members)": "agreement", "entropy": "entropy"}
EXAMPLES_ATTRIBUTION = (
    "BraTS examples: BraTS 2015 validation patients (Menze et al., *The multimodal brain tumor image "
    "segmentation benchmark (BRATS)*, IEEE TMI 34(10), 2015), licence CC BY-NC-SA 3.0 CH. CT examples: "
    "from the TotalSegmentator project's example files; their organ labels were produced by the "
    "TotalSegmentator model, not drawn by hand. Details: `assets/examples/README.md`."
)


def gpu(fn):
    """`spaces.GPU` on Hugging Face ZeroGPU; the function itself everywhere else."""
    return spaces.GPU(fn) if spaces is not None else fn


def _public(message: str) -> str:
    """`message` with paths inside the upload cache or the scratch folder cut to the file's name.

    Users know their upload by its name; the server's folder layout is nothing they need to see.
    """
    for folder in (get_upload_folder(), RUNS_DIR):
        message = re.sub(re.escape(str(folder)) + r"/(?:[^\s/\"']+/)*", "", message)
    return message


@contextlib.contextmanager
def user_errors():
    """Show the library's user-fixable errors as `gr.Error` with the library's message."""
    try:
        yield
    except MedCondDiffError as err:
        raise gr.Error(_public(str(err))) from None


# -- models -----------------------------------------------------------------------------------------


CUSTOM_WEIGHTS_MODES = ("auto", "on", "off")


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # 0.0.0.0-style wildcards are addresses; any other host name may be reachable from outside
        return False


def custom_weights_allowed(host: str | None = None) -> bool:
    """Whether this server loads weights it does not offer: a Hub repo id or a folder, from the text box or the API.

    MEDCONDDIFF_CUSTOM_WEIGHTS (or `--custom-weights`) is on, off or auto (the default): on only when
    the server listens on a loopback address (`host`, else the one it was launched on) and is not a
    Hugging Face Space (SPACE_ID unset). Otherwise anyone who reaches the server could make it read
    its folders or download any Hub repo. An unknown value counts as off.
    """
    mode = os.environ.get("MEDCONDDIFF_CUSTOM_WEIGHTS", "").strip().lower() or "auto"
    if mode != "auto":
        return mode == "on"
    host = host or getattr(demo, "server_name", None) or launch_kwargs()["server_name"]
    return _is_loopback(host) and not os.environ.get("SPACE_ID")


def _default_spec() -> str:
    return os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip() or hub.DEFAULT_WEIGHTS


@functools.lru_cache(maxsize=3)  # bounded: custom weights must not grow the server's memory without end
def _load(spec: str):
    return hub.load_model(spec, device=DEVICE)


def get_model(spec: str | None):
    """The model for a weights spec ("" = MEDCONDDIFF_WEIGHTS or the bundled default), loaded once per process.

    Only the offered models (`model_choices`) load unless `custom_weights_allowed()`.
    """
    spec = (spec or "").strip()
    if spec and spec not in model_choices() and not custom_weights_allowed():
        raise WeightsError(
            f"custom weights are disabled on this server ({spec!r} is not one of its models); "
            f"accepted: {', '.join(model_choices())}"
        )
    return _load(spec or _default_spec())


def model_choices() -> list[str]:
    """The dropdown's weights: MEDCONDDIFF_WEIGHTS (if set) and the bundled models."""
    env = os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip()
    bundled = hub.bundled_models()
    return ([env] if env and env not in bundled else []) + bundled


def default_choice() -> str | None:
    choices = model_choices()
    preferred = [os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip(), hub.DEFAULT_WEIGHTS]
    return next((c for c in preferred if c in choices), choices[0] if choices else None)


def _spec(choice: str | None, custom: str | None) -> str:
    """The text box (Hub id or folder) wins over the dropdown."""
    return (custom or "").strip() or (choice or "")


def peek_config(spec: str) -> MedCondDiffConfig | None:
    """A weights spec's config.json without loading the weights (None if it cannot be read)."""
    try:
        return MedCondDiffConfig.from_json(hub.resolve(spec or None) / hub.CONFIG_NAME)
    except MedCondDiffError:
        return None


# -- examples ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    caption: str
    files: tuple[str, ...]  # one per modality, in the channel order of the model it was made for
    truth: str | None
    model: str  # the bundled model it was made for
    modality: str


# glob of the first file, its suffix, the suffixes of all modality files, ground truth suffix, caption, model, modality
_EXAMPLE_KINDS = [
    ("brats_*_z*_flair.png", "_flair.png", ("_flair.png", "_t1c.png"), "_seg.png", "BraTS {}", "brats-demo", "mri"),
    (
        "brats_*_slab_flair.nii.gz",
        "_flair.nii.gz",
        ("_flair.nii.gz", "_t1c.nii.gz"),
        "_seg.nii.gz",
        "BraTS {} (NIfTI, 6 slices)",
        "brats-demo",
        "mri",
    ),
    ("ct_z*[0-9].png", ".png", (".png",), "_seg.png", "abdominal CT {}", "abdomen-ct-demo", "ct"),
    ("ct_slab.nii.gz", ".nii.gz", (".nii.gz",), "_seg.nii.gz", "abdominal CT {} (NIfTI)", "abdomen-ct-demo", "ct"),
]


def find_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The bundled examples: BraTS FLAIR + T1c slices and slab, abdominal CT slices and slab."""
    out = []
    for pattern, first, suffixes, truth_suffix, caption, model, modality in _EXAMPLE_KINDS:
        for path in sorted(folder.glob(pattern)):
            stem = path.name[: -len(first)]
            files = [folder / f"{stem}{s}" for s in suffixes]
            truth = folder / f"{stem}{truth_suffix}"
            if all(f.is_file() for f in files):
                name = caption.format(stem.split("_", 1)[1].replace("_", " "))
                out.append(
                    Example(name, tuple(map(str, files)), str(truth) if truth.is_file() else None, model, modality)
                )
    return out


def _thumbnail(example: Example, path: Path) -> str:
    """The example's (middle) slice with its labels drawn on, as a PNG."""
    scan = io.read_scan(list(example.files))
    z = scan.data.shape[-1] // 2 if scan.is_volume else None
    picture = viz.to_display(
        scan.data[..., z] if z is not None else scan.data, modality=example.modality, kind=scan.kind
    )
    if example.truth:
        truth = io.read_labels(example.truth, shape=scan.data.shape[1:], num_classes=256)
        truth = truth[..., z] if z is not None else truth
        picture = viz.overlay(picture, truth, viz.class_colours(int(truth.max()) + 1), alpha=0.35)
    Image.fromarray(viz.display_orientation(picture, scan.kind)).save(path)
    return str(path)


EXAMPLES = find_examples()


def gallery_items() -> list[tuple[str, str]]:
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="thumbs-", dir=RUNS_DIR))
    items = []
    for i, ex in enumerate(EXAMPLES):
        try:
            items.append((_thumbnail(ex, folder / f"example-{i}.png"), ex.caption))
        except MedCondDiffError as err:  # a damaged example must not stop the app
            print(f"warning: example {ex.caption!r} left out: {err}")
    return items


def model_for(example: Example) -> tuple[str | None, str]:
    """(dropdown, text box) values for an example: the model made for it, else an offered one that fits it.

    Neither: the example's own model in the text box where custom weights are allowed, else a `WeightsError`.
    """
    choices = model_choices()
    if example.model in choices:
        return example.model, ""
    for name in choices:
        cfg = peek_config(name)
        if cfg is not None and cfg.image_channels == len(example.files) and cfg.modality == example.modality:
            return name, ""
    if custom_weights_allowed():
        return default_choice(), example.model  # not offered: the text box tries it, and says clearly if it fails
    raise WeightsError(  # the text box is hidden here: a value put there could not be cleared
        f"the example {example.caption!r} needs the model {example.model!r}, which this server does not offer, "
        f"and none of its models fits it; offered: {', '.join(model_choices())}"
    )


# -- reading a case ---------------------------------------------------------------------------------


def _paths(files) -> list[str]:
    """Gradio's file value (None, a path, or a list of paths / file dicts) -> list of paths."""
    if not files:
        return []
    files = files if isinstance(files, list | tuple) else [files]
    return [f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else f.name) for f in files]


def guess_order(paths: list[str], channel_names: list[str]) -> list[str]:
    """Files in channel order, matched by name (e.g. 'x_flair.png' -> FLAIR), the rest in upload order."""
    left, picked = list(paths), {}
    for c in sorted(range(len(channel_names)), key=lambda c: -len(channel_names[c])):  # 't1c' before 't1'
        key = re.sub(r"[^a-z0-9]", "", channel_names[c].lower())
        match = next((p for p in left if key and key in re.sub(r"[^a-z0-9]", "", Path(p).name.lower())), None)
        if match is not None:
            picked[c] = match
            left.remove(match)
    return [picked[c] if c in picked else left.pop(0) for c in range(len(channel_names)) if c in picked or left]


def _ordered(paths: list[str], config: MedCondDiffConfig, picks: list[str | None]) -> list[str]:
    """The files in the model's channel order: the modality pickers' choice when complete, else a guess."""
    n = config.image_channels
    if not paths:
        raise InputError("no input file: upload an image or NIfTI volume, or pick an example")
    if n == 1 or n > MAX_CHANNELS or len(paths) != n:
        return paths  # load_case reports a wrong count
    chosen = [p for p in picks[:n] if p]
    if len(chosen) < n or any(p not in paths for p in chosen):
        return guess_order(paths, config.channel_names)
    if len(set(chosen)) < n:
        names = ", ".join(config.channel_names)
        raise InputError(f"the same file is picked for two modalities; give each of {names} its own file")
    return chosen


@functools.lru_cache(maxsize=2)
def _read(paths: tuple[str, ...], spec: str) -> io.Scan:
    return load_case(list(paths), get_model(spec).config)


@dataclass
class Case:
    scan: io.Scan
    raw: np.ndarray  # (C, H, W) the slice to segment, as read
    z: int | None  # its index, for volumes
    truth: np.ndarray | None  # (H, W) ground-truth labels
    paths: list[str]  # in channel order


def read_case(files, spec: str, picks: list[str | None], slice_index, truth_file) -> Case:
    """The UI's files and choices -> the slice to segment (`MedCondDiffError` for bad input).

    slice_index None or < 0 means the middle slice of a volume.
    """
    config = get_model(spec).config
    paths = _ordered(_paths(files), config, picks)
    scan = _read(tuple(paths), spec)
    z, raw = None, scan.data
    if scan.is_volume:
        depth = scan.data.shape[-1]
        z = depth // 2 if slice_index is None or int(slice_index) < 0 else int(slice_index)
        if not 0 <= z < depth:
            raise InputError(f"slice {z} is outside the volume (0..{depth - 1})")
        raw = scan.data[..., z]
    truth = None
    if _paths(truth_file):
        labels = io.read_labels(_paths(truth_file)[0], shape=scan.data.shape[1:], num_classes=config.num_classes)
        truth = labels[..., z] if z is not None else labels
    return Case(scan=scan, raw=raw, z=z, truth=truth, paths=paths)


def _picture(case: Case, config: MedCondDiffConfig, ct_window: str | None) -> np.ndarray:
    """The slice as an (H, W, 3) picture, array orientation."""
    window = ct_window or config.ct_window
    return viz.to_display(case.raw, modality=config.modality, kind=case.scan.kind, ct_window=window)


def _save(picture: np.ndarray, path: Path, kind: str) -> str:
    """Write a picture in display orientation (PNG, fast compression); return its path."""
    Image.fromarray(viz.fit(viz.display_orientation(picture, kind), max_side=MAX_SIDE)).save(path, compress_level=1)
    return str(path)


@contextlib.contextmanager
def _request_folder():
    """A scratch folder for one request's output files, deleted as soon as the handler is done with it."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="request-", dir=RUNS_DIR) as folder:
        yield Path(folder)


def _to_cache(component, path: Path) -> str:
    """Copy an output file into Gradio's cache now, as Gradio would after the handler returns.

    Gradio serves (and later deletes, see `delete_cache`) that copy; the caller deletes its own, so a
    request leaves no file in the app's scratch folder.
    """
    return component.move_resource_to_block_cache(path)


# -- one run, kept per session ----------------------------------------------------------------------


@dataclass
class Run:
    """One sampling run of one slice: the result with its trajectory, and the pictures made from it."""

    result: Result | None
    base: np.ndarray  # (H, W, 3) the slice's picture, array orientation
    kind: str  # "nifti" or "image"
    config: MedCondDiffConfig
    truth: np.ndarray | None  # (H, W)
    folder: Path
    affine: np.ndarray | None = None
    z: int | None = None
    step_files: list[tuple[str, str, str]] = field(default_factory=list)  # x_t, x0-hat, change; per step
    captions: list[str] = field(default_factory=list)
    gif: str | None = None
    version: int = 0  # bumped at every re-fusion: unique export names


def _drop_run(run) -> None:
    if isinstance(run, Run):
        shutil.rmtree(run.folder, ignore_errors=True)


@contextlib.contextmanager
def _dropped_on_error(run: Run):
    """Delete a run's files if it stops half-way (an error, or the browser went away)."""
    try:
        yield
    except BaseException:
        _drop_run(run)
        raise


def _settings(config, steps, sampler, ensemble, consensus, seed) -> SamplingSettings:
    """The UI's or API's settings (0 / "" = the model's default), within this demo's limits."""
    settings = SamplingSettings.defaults_for(
        config,
        steps=int(steps) if steps else None,
        ensemble=int(ensemble) if ensemble else None,
        sampler=SAMPLERS.get(sampler, sampler) or None,
        consensus=consensus or None,
        seed=int(seed or 0),
    )
    s, e = settings.steps, settings.ensemble
    if s > MAX_STEPS or e > MAX_ENSEMBLE or s * e > MAX_WORK:
        raise SettingsError(
            f"this demo runs at most {MAX_STEPS} steps, {MAX_ENSEMBLE} ensemble members and {MAX_WORK} steps x "
            f"members per run (asked: {s} x {e}); the command line `python -m medconddiff segment` has no such limit"
        )
    return settings


def _in_inference_mode(iterator):
    """Resume the library's sampling generator under `torch.inference_mode` on whichever thread asks.

    Gradio resumes a streaming handler on worker threads and grad mode is per thread, so the
    library's own `inference_mode` block, entered on the first thread, does not cover later steps.
    """
    while True:
        with torch.inference_mode():
            item = next(iterator, None)
        if item is None:
            return
        yield item


def _step_caption(i: int, n: int, t: float, logsnr: float, flipped: int | None) -> str:
    signal = 1.0 / (1.0 + np.exp(-logsnr))  # alpha_t^2: the share of signal in x_t's variance
    text = f"**Step {i + 1} / {n}** · t = {t:.3f} · log-SNR = {logsnr:+.2f} (signal fraction α² = {signal:.3f})"
    return text + (f" · {flipped} pixel(s) changed class" if flipped is not None else " · first step")


def _trajectory_plot(per_step: list[np.ndarray], run: Run) -> str:
    """Dice to the ground truth (when given) or class areas of x0-hat at each step, as a PNG."""
    k, names, colours = run.config.num_classes, run.config.class_names, viz.class_colours(run.config.num_classes)
    if run.truth is not None:
        values = np.array([metrics.per_class(lab, run.truth, k)["dice"] for lab in per_step])
        fig = viz.trajectory_figure(
            values, names, ylabel="Dice", title="Dice of x0-hat to the ground truth", colours=colours
        )
    else:
        values = np.array([viz.class_areas(lab, k) for lab in per_step])
        fig = viz.trajectory_figure(values, names, ylabel="pixels", title="class areas of x0-hat", colours=colours)
    path = run.folder / "trajectory.png"
    Image.fromarray(viz.figure_to_rgb(fig)).save(path)
    return str(path)


def _legend(run: Run) -> str:
    labels, k = run.result.labels, run.config.num_classes
    areas = viz.class_areas(labels, k)
    rows = [
        f'<span class="mcd-swatch" style="background:{colour}"></span>{name}: {areas[c]} px '
        f"({100.0 * areas[c] / labels.size:.1f} %)"
        for c, (name, colour) in enumerate(zip(run.config.class_names, viz.hex_colours(k), strict=True))
        if c > 0
    ]
    return f'<div class="mcd-legend"><b>{run.result.consensus}</b><br>' + "<br>".join(rows) + "</div>"


def _dice_table(run: Run) -> str:
    if run.truth is None:
        return "_Give a ground-truth mask (or pick an example) to see per-class Dice._"
    k, names = run.config.num_classes, run.config.class_names
    scores = metrics.per_class(run.result.labels, run.truth, k)["dice"]
    pred, true = viz.class_areas(run.result.labels, k), viz.class_areas(run.truth, k)
    lines = ["| class | Dice | px | truth px |", "|---|---|---|---|"]
    lines += [f"| {names[c]} | {scores[c]:.3f} | {pred[c]} | {true[c]} |" for c in range(1, k)]
    lines.append(f"| **mean (foreground)** | **{metrics.averages(scores)['foreground']:.3f}** | | |")
    return "\n".join(lines)


def _consensus_pictures(run: Run, opacity: float, uncertainty: str) -> tuple[str, str]:
    res, measure = run.result, UNCERTAINTY.get(uncertainty, uncertainty)
    fused = viz.overlay(run.base, res.labels, viz.class_colours(run.config.num_classes), alpha=opacity)
    unc = 1.0 - res.agreement if measure == "agreement" else res.entropy
    tag = f"{res.consensus}-{run.version}"
    return (
        _save(fused, run.folder / f"consensus-{tag}-{round(opacity * 100)}.png", run.kind),
        _save(viz.heatmap(unc), run.folder / f"uncertainty-{tag}-{measure}.png", run.kind),
    )


def _exports(run: Run) -> list[str]:
    """The fused mask as PNG (class indices, array orientation) and, for NIfTI input, NIfTI; the GIF."""
    name = f"mask_{run.result.consensus}_{run.version}"
    io.write_png_labels(run.result.labels, run.folder / f"{name}.png")
    files = [str(run.folder / f"{name}.png")]
    if run.kind == "nifti" and run.affine is not None:
        shift = np.eye(4)
        shift[2, 3] = run.z  # a one-slice volume at the slice's own place in the scanner's space
        nii = run.folder / f"{name}_slice{run.z:03d}.nii.gz"
        io.write_nifti_labels(run.result.labels[..., None], nii, affine=run.affine @ shift)
        files.append(str(nii))
    return files + ([run.gif] if run.gif else [])


# -- event handlers -----------------------------------------------------------------------------------


def model_summary(spec: str, model) -> str:
    c = model.config
    name = spec or _default_spec()
    return (
        f"**{name}** · {', '.join(c.channel_names)} · {c.modality.upper()} · {c.num_classes} classes · "
        f"{c.image_size} px · {model.parameter_counts()['total'] / 1e6:.1f} M parameters · on {DEVICE.type.upper()}"
    )


CUSTOM_WEIGHTS_OFF = (
    "_Other weights (a Hub repo id or a local folder) are disabled on this server; it offers the models above. "
    "Whoever runs it can allow them with `python app.py --custom-weights on`._"
)


def on_page():
    """A new page: the text box for other weights where this server allows them, else a note saying why not."""
    allowed = custom_weights_allowed()
    return gr.Row(visible=allowed), gr.Markdown(visible=not allowed)


def on_model(choice: str | None, custom: str | None):
    """Load the chosen weights and fit the controls to them."""
    spec = _spec(choice, custom)
    with user_errors():
        model = get_model(spec)
    c = model.config
    return (
        model_summary(spec, model),
        about_markdown(spec),
        gr.update(visible=c.modality == "ct", value=c.ct_window),
        gr.update(value=min(c.default_steps, MAX_STEPS)),
        gr.update(value=next(k for k, v in SAMPLERS.items() if v == c.default_sampler)),
        gr.update(value=min(c.default_ensemble, MAX_ENSEMBLE)),
        gr.update(value=c.default_consensus),
    )


def _picker_updates(config: MedCondDiffConfig, paths: list[str], order: list[str]) -> list:
    multi = 1 < config.image_channels <= MAX_CHANNELS and len(paths) > 1
    choices = [(Path(p).name, p) for p in paths]
    ups = []
    for c in range(MAX_CHANNELS):
        show = multi and c < config.image_channels
        label = f"file for {config.channel_names[c]}" if c < config.image_channels else f"channel {c + 1}"
        value = order[c] if show and c < len(order) else None
        ups.append(gr.Dropdown(choices=choices, value=value, visible=show, label=label))
    return ups


def _preview(case: Case, config: MedCondDiffConfig, ct_window: str | None) -> tuple[str, str]:
    picture = _picture(case, config, ct_window)
    if case.truth is not None:
        picture = viz.overlay(picture, case.truth, viz.class_colours(config.num_classes), alpha=0.4)
    with _request_folder() as folder:
        path = _to_cache(preview, Path(_save(picture, folder / "preview.png", case.scan.kind)))
    shape = "x".join(map(str, case.scan.data.shape[1:]))
    names = ", ".join(f"{n}: `{Path(p).name}`" for n, p in zip(config.channel_names, case.paths, strict=False))
    where = f" · slice {case.z} of 0..{case.scan.data.shape[-1] - 1}" if case.z is not None else ""
    truth = " · ground truth drawn" if case.truth is not None else ""
    return path, f"{case.scan.kind.upper()} {shape}{where} · {names}{truth}"


def on_files(files, choice, custom, truth, ct_window):
    """New files (upload or example): match files to modalities, set up the slice slider, preview."""
    spec, paths = _spec(choice, custom), _paths(files)
    with user_errors():
        config = get_model(spec).config
        if not paths:
            hidden = [gr.Slider(visible=False, value=0), gr.Row(visible=False), None, ""]
            return (*_picker_updates(config, [], []), *hidden)
        order = guess_order(paths, config.channel_names) if len(paths) == config.image_channels else paths
        case = read_case(order, spec, [], -1, truth)
        preview, info = _preview(case, config, ct_window)
    volume = case.scan.is_volume
    depth = case.scan.data.shape[-1] if volume else 1
    slider = gr.Slider(minimum=0, maximum=max(depth - 1, 1), value=case.z or 0, step=1, visible=volume)
    return (*_picker_updates(config, paths, order), slider, gr.Row(visible=volume), preview, info)


def on_view(files, choice, custom, truth, ct_window, slice_index, m0, m1, m2, m3):
    """Slice, modality pick, ground truth or window changed: redraw the preview."""
    spec = _spec(choice, custom)
    if not _paths(files):
        return None, ""
    with user_errors():
        case = read_case(files, spec, [m0, m1, m2, m3], slice_index, truth)
        return _preview(case, get_model(spec).config, ct_window)


def select_example(evt: gr.SelectData):
    """A gallery click: that example's files and ground truth, and a model that fits it."""
    ex = EXAMPLES[evt.index]
    with user_errors():
        choice, custom = model_for(ex)
    return list(ex.files), ex.truth, gr.update(value=choice), custom


@gpu
def run_segment(
    files, choice, custom, slice_index, ct_window, truth, steps, sampler, ensemble, consensus, seed, opacity,
    uncertainty, old_run, m0, m1, m2, m3, progress=gr.Progress(),
):  # fmt: skip
    """Sample one slice, streaming each step's pictures; then the consensus view and the exports."""
    spec = _spec(choice, custom)
    with user_errors():
        model = get_model(spec)
        config = model.config
        settings = _settings(config, steps, sampler, ensemble, consensus, seed)
        case = read_case(files, spec, [m0, m1, m2, m3], slice_index, truth)
        window = ct_window or config.ct_window
        # the geometry the pipeline plans for this slice: brings each streamed step back to the image's grid
        geometry = io.plan_geometry(io.normalise(case.raw, config, kind=case.scan.kind, ct_window=window), config)
    _drop_run(old_run)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    run = Run(
        result=None,
        base=_picture(case, config, window),
        kind=case.scan.kind,
        config=config,
        truth=case.truth,
        folder=Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR)),
        affine=case.scan.affine,
        z=case.z,
    )
    colours = viz.class_colours(config.num_classes)
    prev, per_step, frames = None, [], []
    started = time.perf_counter()
    progress(0, desc="encoding the image")
    steps_iter = iter_segment_slices(
        model, [case.raw], settings, kind=case.scan.kind, ct_window=window, keep_trajectory=True
    )
    with user_errors(), _dropped_on_error(run):
        for item in _in_inference_mode(steps_iter):
            if isinstance(item, list):  # the last item: the results
                run.result = item[0]
                break
            i, n = item.index, item.num_steps
            probs = viz.step_probs(item.logits[:, 0], geometry)  # (K, H, W) on the image's grid
            labels = probs.argmax(axis=0)
            noisy = viz.noisy_mask(viz.step_noisy(item.x_t[:, 0], geometry), colours)
            x0 = viz.overlay(run.base, labels, colours, alpha=0.55)
            moved = viz.heatmap(viz.change(prev, probs), cmap="inferno")
            flipped = int((labels != per_step[-1]).sum()) if per_step else None
            pics = (("xt", noisy), ("x0", x0), ("change", moved))
            paths = tuple(_save(pic, run.folder / f"{name}-{i:03d}.png", run.kind) for name, pic in pics)
            run.step_files.append(paths)
            run.captions.append(_step_caption(i, n, item.t, item.logsnr, flipped))
            frames.append(viz.caption(viz.side_by_side([noisy, x0]), f"step {i + 1}/{n}  t={item.t:.2f}"))
            prev = probs
            per_step.append(labels)
            progress((i + 1, n), desc=f"sampling step {i + 1} of {n}", unit="steps")
            yield {
                step_slider: gr.Slider(minimum=1, maximum=max(n, 2), value=i + 1, interactive=False),
                step_label: run.captions[-1],
                xt_image: paths[0],
                x0_image: paths[1],
                change_image: paths[2],
                status: f"sampling: step {i + 1} of {n}",
            }
    if run.result is None or run.result.trajectory is None:
        _drop_run(run)
        raise gr.Error("this slice holds only empty space (nothing differs from the background): pick another slice")
    gif_frames = [viz.upscale(viz.display_orientation(f, run.kind), min_side=200) for f in frames]
    run.gif = str(viz.write_gif(gif_frames, run.folder / "trajectory.gif"))
    fused, unc = _consensus_pictures(run, opacity, uncertainty)
    seconds = time.perf_counter() - started
    yield {
        run_state: run,
        step_slider: gr.Slider(minimum=1, maximum=max(len(per_step), 2), value=len(per_step), interactive=True),
        trajectory_plot: _trajectory_plot(per_step, run),
        consensus_image: fused,
        uncertainty_image: unc,
        legend: _legend(run),
        dice_table: _dice_table(run),
        exports: _exports(run),
        consensus2: settings.consensus,
        status: (
            f"Done: {settings.steps} step(s) x {settings.ensemble} member(s), {settings.sampler.upper()}, "
            f"consensus {settings.consensus}, seed {settings.seed}, in {seconds:.1f} s on {DEVICE.type.upper()}."
        ),
    }


def show_step(run, step):
    """The timestep slider moved: show that step's stored pictures."""
    if not isinstance(run, Run) or not run.step_files:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    i = int(np.clip(int(step) - 1, 0, len(run.step_files) - 1))
    return (*run.step_files[i], run.captions[i])


def refuse(run, consensus: str, opacity: float, uncertainty: str):
    """Another consensus function: fuse the stored trajectory again (no re-sampling)."""
    if not isinstance(run, Run) or run.result.consensus == consensus:
        return (*(gr.skip(),) * 7, consensus)
    with user_errors():
        run.result = run.result.refuse(consensus)
    run.version += 1
    fused, unc = _consensus_pictures(run, opacity, uncertainty)
    note = f"Re-fused the stored trajectory with `{consensus}` (no new sampling)."
    return run, fused, unc, _legend(run), _dice_table(run), _exports(run), note, consensus


def redraw(run, opacity: float, uncertainty: str):
    """Opacity or uncertainty measure changed: redraw the consensus pictures."""
    if not isinstance(run, Run):
        return gr.skip(), gr.skip()
    return _consensus_pictures(run, opacity, uncertainty)


@gpu
def run_volume(
    files, choice, custom, ct_window, steps, sampler, ensemble, consensus, seed, m0, m1, m2, m3, progress=gr.Progress()
):
    """Segment every slice of an uploaded volume; the mask keeps the upload's shape and affine."""
    spec = _spec(choice, custom)
    with user_errors():
        model = get_model(spec)
        settings = _settings(model.config, steps, sampler, ensemble, consensus, seed)
        case = read_case(files, spec, [m0, m1, m2, m3], -1, None)
        if not case.scan.is_volume:
            raise InputError("whole-volume segmentation needs a NIfTI volume; for a 2D image use Segment")
        progress(0, desc="segmenting the volume")
        res = segment_volume(
            model,
            case.scan.data,
            settings,
            kind=case.scan.kind,
            ct_window=ct_window or model.config.ct_window,
            progress=lambda done, total: progress((done, total), desc=f"slice {done} of {total}", unit="slices"),
        )
    with _request_folder() as folder:
        out = folder / f"mask_{settings.consensus}.nii.gz"
        io.write_nifti_labels(res.labels, out, affine=case.scan.affine, header=case.scan.header)
        path = _to_cache(volume_file, out)
    return path, f"Segmented all {case.scan.data.shape[-1]} slices: the mask has the upload's shape and affine."


@gpu
def segment_api(files, model: str, steps: int, ensemble: int, consensus: str, seed: int, slice_index: int = -1):
    """API: segment a 2D image (one file per modality) or one slice of NIfTI volume(s) (-1: the middle one).

    Returns (mask, summary): `mask` a PNG whose pixel values are class indices on the input's grid
    (for NIfTI, the array slice: rows follow the first voxel axis); `summary` a dict with "shape"
    [H, W], "classes" (names), "areas" (pixels per class), "slice" and the settings used.
    model "" is the default weights, else one of the offered models (other weights only where
    `custom_weights_allowed()`); steps or ensemble 0 and consensus "" the model's defaults.
    `slice_index` is optional (gradio_client fills in -1 when it is left out).
    """
    started = time.perf_counter()
    spec = (model or "").strip()
    with user_errors():
        mdl = get_model(spec)
        config = mdl.config
        settings = _settings(config, steps, "", ensemble, consensus, seed)
        case = read_case(files, spec, [], slice_index, None)
        result = None
        for item in iter_segment_slices(mdl, [case.raw], settings, kind=case.scan.kind):
            result = item  # the last item is the list of results
    labels = result[0].labels
    with _request_folder() as folder:
        io.write_png_labels(labels, folder / "mask.png")
        mask = _to_cache(api_mask, folder / "mask.png")
    summary = {
        "shape": list(labels.shape),
        "classes": list(config.class_names),
        "areas": [int(a) for a in viz.class_areas(labels, config.num_classes)],
        "slice": case.z,
        "model": spec or _default_spec(),
        "steps": settings.steps,
        "ensemble": settings.ensemble,
        "sampler": settings.sampler,
        "consensus": settings.consensus,
        "seed": settings.seed,
        "mean_agreement": round(float(result[0].agreement.mean()), 4),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return mask, summary


# -- About ------------------------------------------------------------------------------------------


def _sections(markdown: str) -> list[tuple[str, str]]:
    """Markdown -> [(heading, body), ...], YAML front matter dropped."""
    text = re.sub(r"\A---\n.*?\n---\n", "", markdown, flags=re.S)
    out, heading, body = [], "", []
    for line in text.splitlines():
        if re.match(r"#{1,6}\s", line):
            out.append((heading, "\n".join(body).strip()))
            heading, body = line.lstrip("#").strip(), []
        else:
            body.append(line)
    out.append((heading, "\n".join(body).strip()))
    return [(h, b) for h, b in out if b]


def validation_markdown(card: str | None) -> str:
    """The model card's validation / evaluation section(s), else its tables, else 'not yet evaluated'."""
    secs = _sections(card or "")
    picked = [(h, b) for h, b in secs if re.search(r"valid|evaluat|result|metric|score|benchmark", h, re.I)]
    picked = picked or [(h, b) for h, b in secs if re.search(r"^\s*\|.*\|\s*$", b, re.M)]
    if not picked:
        return "_Not yet evaluated: this model's card holds no validation numbers._"
    return "\n\n".join(f"#### {h}\n\n{b}" if h else b for h, b in picked)


def about_markdown(spec: str) -> str:
    """What MedCondDiff is, what this model was trained on and how it validated (from its card), the caveats."""
    parts = [
        "### What MedCondDiff is",
        f"MedCondDiff ([arXiv 2512.00350]({PAPER_URL})) segments medical images with a *conditional diffusion "
        "model*: the segmentation mask is what gets noised and denoised, the image is the condition. A PVT-v2 "
        "backbone encodes the image once; at every sampling step a light denoiser predicts the clean mask x0-hat "
        "from the noisy mask x_t and the image features (fused by addition). A *consensus* function fuses the "
        "predictions of all steps (and ensemble members) into the final mask; where they disagree is shown as "
        "uncertainty.",
        "### This model",
    ]
    try:
        folder = hub.resolve(spec or None)
    except MedCondDiffError as err:
        folder = None
        parts.append(f"The weights could not be found: {err}")
    if folder is not None:
        card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else None
        training = None
        with contextlib.suppress(OSError, json.JSONDecodeError):
            training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        cfg = peek_config(spec)
        parts.append(f"Weights: `{spec or hub.DEFAULT_WEIGHTS}` (folder `{folder.name}`).")
        if cfg is not None:
            parts.append(
                f"Input: {', '.join(cfg.channel_names)} ({cfg.modality.upper()}) at {cfg.image_size} px; "
                f"classes: {', '.join(cfg.class_names)}."
            )
        trained = [b for h, b in _sections(card or "") if re.search(r"train|data", h, re.I)]
        if trained:
            parts.append("**Trained on:** " + trained[0])
        if isinstance(training, dict):
            keys = ("steps", "train_slices", "val_slices", "wall_minutes", "device", "world_size")
            facts = ", ".join(f"{k.replace('_', ' ')} {training[k]}" for k in keys if k in training)
            parts.append(f"Training run: {facts}.")
        parts += ["### Validation", validation_markdown(card)]
    parts += [
        "### Not for clinical use",
        "This is a research demo. It is not a medical device, has not been clinically validated and must not "
        "be used for diagnosis or treatment. The shipped models were trained on a few cases only.",
        "### Example data",
        EXAMPLES_ATTRIBUTION,
    ]
    return "\n\n".join(parts)


# -- the page ---------------------------------------------------------------------------------------

CSS = """
.mcd-small { font-size: 0.85em; opacity: 0.85; }
.mcd-pixels img { object-fit: contain !important; image-rendering: pixelated; }  /* small scans fill the box */
.mcd-legend { line-height: 1.9; font-size: 0.95em; }
.mcd-swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.45em;
              border-radius: 2px; vertical-align: -0.1em; }
"""
_INITIAL = default_choice()
_CFG = peek_config(_INITIAL or "") or MedCondDiffConfig()
_FILE_TYPES = [*io.IMAGE_SUFFIXES, *io.NIFTI_SUFFIXES, ".gz"]


def _paths_only(upload: gr.File) -> gr.File:
    """`upload` hands its handler the uploaded files' paths, as `type="filepath"` does, and leaves no stray file.

    gradio 6.31's `File.preprocess` also creates an empty `NamedTemporaryFile(delete=False)` in the
    cache for every uploaded file and never uses or deletes it. A `gr.File` subclass would fix that
    too, but Gradio writes a `.pyi` stub beside the source of every component subclass (app.pyi
    here), so this instance's own `preprocess` is replaced instead. File types are checked by the
    browser and, whatever the client, by the library when it reads the file.
    """

    def preprocess(payload: ListFiles | FileData | None) -> str | list[str] | None:
        if payload is None:
            return None
        paths = [f.path for f in (payload.root if isinstance(payload, ListFiles) else [payload])]
        return paths[0] if upload.file_count == "single" else paths

    upload.preprocess = preprocess
    return upload


def _image(label: str, elem_id: str, *, pixels: bool = True, **kwargs) -> gr.Image:
    """An output picture; `pixels`: a scan-sized picture, scaled to fill its box with square pixels."""
    classes = ["mcd-pixels"] if pixels else []
    return gr.Image(
        label=label, type="filepath", format="png", interactive=False, elem_id=elem_id, elem_classes=classes, **kwargs
    )


with gr.Blocks(title="MedCondDiff demo", delete_cache=(3600, 3600)) as demo:
    run_state = gr.State(None, time_to_live=3600, delete_callback=_drop_run)
    gr.Markdown(
        "# MedCondDiff: diffusion segmentation you can watch\n"
        f"A lightweight conditional diffusion model for medical image segmentation ([paper]({PAPER_URL})). "
        "Pick an example or upload a scan, sample, then step through the denoising and compare consensus "
        "functions. **Research demo, not for clinical use.**"
    )
    with gr.Tabs():
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column(scale=3):
                    gr.Markdown("### 1. Input")
                    gallery = gr.Gallery(
                        gallery_items(),
                        label="Examples: click one",
                        columns=4,
                        height=250,
                        allow_preview=False,
                        interactive=False,
                        format="png",
                        buttons=[],
                        elem_id="examples",
                    )
                    gr.Markdown(EXAMPLES_ATTRIBUTION, elem_classes=["mcd-small"])
                    files = _paths_only(
                        gr.File(
                            label=f"Image(s), one per modality: PNG/JPG or NIfTI (.nii, .nii.gz), at most {MAX_FILE_SIZE.upper()} each",
                            file_count="multiple",
                            file_types=_FILE_TYPES,
                            height=130,
                            elem_id="files",
                        )
                    )
                    with gr.Row():
                        pickers = [gr.Dropdown(visible=False, elem_id=f"modality-{c}") for c in range(MAX_CHANNELS)]
                    slice_slider = gr.Slider(
                        0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice-slider"
                    )
                    truth_file = _paths_only(
                        gr.File(
                            label="Ground-truth mask (optional): PNG of class indices, or NIfTI on the same grid",
                            file_types=_FILE_TYPES,
                            height=100,
                            elem_id="truth",
                        )
                    )
                    preview = _image("input slice", "preview", height=280)
                    input_info = gr.Markdown("", elem_id="input-info")
                with gr.Column(scale=2):
                    gr.Markdown("### 2. Model and sampling")
                    model_dd = gr.Dropdown(model_choices(), value=_INITIAL, label="Model", elem_id="model")
                    with gr.Row(visible=False) as custom_row:  # shown on page load where custom weights are allowed
                        model_box = gr.Textbox(
                            label="…or a Hub repo id (owner/name[@revision]) or a local weights folder",
                            placeholder="owner/name",
                            scale=4,
                            elem_id="model-box",
                        )
                        load_btn = gr.Button("Load", scale=1, elem_id="load-btn")
                    custom_note = gr.Markdown(CUSTOM_WEIGHTS_OFF, visible=False, elem_id="custom-note")
                    model_info = gr.Markdown(elem_id="model-info")
                    ct_window = gr.Dropdown(
                        list(io.CT_WINDOWS),
                        value=_CFG.ct_window,
                        label="CT window (for NIfTI in Hounsfield units; PNG/JPG are taken as already windowed)",
                        visible=_CFG.modality == "ct",
                        elem_id="ct-window",
                    )
                    steps = gr.Slider(1, MAX_STEPS, value=min(_CFG.default_steps, MAX_STEPS), step=1, label="Steps")
                    sampler = gr.Radio(list(SAMPLERS), value="DDIM (deterministic)", label="Sampler")
                    ensemble = gr.Slider(1, MAX_ENSEMBLE, value=1, step=1, label="Ensemble members (sampled together)")
                    consensus = gr.Dropdown(list(CONSENSUS), value=_CFG.default_consensus, label="Consensus")
                    seed = gr.Number(0, precision=0, label="Seed")
                    run_btn = gr.Button("Segment", variant="primary", elem_id="run-btn")
                    status = gr.Markdown("", elem_id="status")

            with gr.Group(elem_id="timestep-view"):
                gr.Markdown("### 3. Timestep view: the noisy mask, the predicted clean mask and what changed")
                step_slider = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, elem_id="step-slider")
                step_label = gr.Markdown("_Run the sampler to record a trajectory._", elem_id="step-label")
                with gr.Row():
                    xt_image = _image("noisy mask x_t", "xt-img", height=300)
                    x0_image = _image("predicted clean mask x0-hat, on the image", "x0-img", height=300)
                    change_image = _image("change from the previous step", "change-img", height=300)
                trajectory_plot = _image("trajectory", "trajectory-plot", pixels=False, height=290)

            with gr.Group(elem_id="consensus-view"):
                gr.Markdown("### 4. Consensus view: the fused mask and where steps and members disagree")
                with gr.Row():
                    consensus_image = _image("fused mask on the image", "consensus-img", height=340, scale=2)
                    uncertainty_image = _image(
                        "uncertainty: black 0 to yellow 1", "uncertainty-img", height=340, scale=2
                    )
                    with gr.Column(scale=2):
                        legend = gr.HTML(elem_id="legend")
                        dice_table = gr.Markdown(elem_id="dice")
                with gr.Row():
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Mask opacity", elem_id="opacity")
                    uncertainty = gr.Radio(list(UNCERTAINTY), value=next(iter(UNCERTAINTY)), label="Uncertainty map")
                    consensus2 = gr.Dropdown(
                        list(CONSENSUS), value=_CFG.default_consensus, label="Consensus function", elem_id="consensus2"
                    )
                refuse_note = gr.Markdown("")

            with gr.Group(elem_id="exports"):
                gr.Markdown("### 5. Exports")
                exports = gr.File(
                    label="mask: PNG of class indices, NIfTI slice (the upload's affine, moved to the slice); trajectory GIF",
                    file_count="multiple",
                    interactive=False,
                    elem_id="export-files",
                )
                with gr.Row(visible=False) as volume_row:
                    volume_btn = gr.Button("Segment every slice of the volume", elem_id="volume-btn")
                    volume_file = gr.File(label="whole-volume mask (NIfTI, the upload's affine)", interactive=False)
                volume_note = gr.Markdown("")

        with gr.Tab("About", elem_id="about-tab"):
            about = gr.Markdown(about_markdown(_INITIAL or ""), elem_id="about")

    with gr.Row(visible=False):  # the API's own components: see `segment_api`
        api_files = _paths_only(gr.File(file_count="multiple"))
        api_model = gr.Textbox()
        api_steps = gr.Number(0, precision=0)
        api_ensemble = gr.Number(0, precision=0)
        api_consensus = gr.Textbox("")
        api_seed = gr.Number(0, precision=0)
        api_slice = gr.Number(-1, precision=0)
        api_mask = gr.File()
        api_summary = gr.JSON()
        api_btn = gr.Button()

    ui = {"api_visibility": "undocumented"}  # UI events: not part of the public API
    model_in = [model_dd, model_box]
    model_out = [model_info, about, ct_window, steps, sampler, ensemble, consensus]
    files_in = [files, *model_in, truth_file, ct_window]
    files_out = [*pickers, slice_slider, volume_row, preview, input_info]
    view_in = [*files_in, slice_slider, *pickers]
    settings_in = [steps, sampler, ensemble, consensus, seed]

    demo.load(on_page, None, [custom_row, custom_note], **ui)
    demo.load(on_model, model_in, model_out, show_progress_on=[model_info], **ui)
    # dropdowns use .select: Gradio 6.31 fires a dropdown's .input twice per pick, .select once
    for event in (model_dd.select, model_box.submit, load_btn.click):
        event(on_model, model_in, model_out, show_progress_on=[model_info], **ui).then(
            on_files, files_in, files_out, show_progress_on=[preview], **ui
        )
    files.upload(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    files.clear(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    gallery.select(select_example, None, [files, truth_file, model_dd, model_box], **ui).then(
        on_model, model_in, model_out, show_progress_on=[model_info], **ui
    ).then(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    slice_slider.input(on_view, view_in, [preview, input_info], trigger_mode="always_last", **ui)
    for event in (truth_file.upload, truth_file.clear, ct_window.select, *(p.select for p in pickers)):
        event(on_view, view_in, [preview, input_info], **ui)

    run_btn.click(
        run_segment,
        [
            files,
            *model_in,
            slice_slider,
            ct_window,
            truth_file,
            *settings_in,
            opacity,
            uncertainty,
            run_state,
            *pickers,
        ],
        [run_state, step_slider, step_label, xt_image, x0_image, change_image, trajectory_plot, consensus_image]
        + [uncertainty_image, legend, dice_table, exports, consensus2, status],
        show_progress_on=[status],
        concurrency_id="sampling",
        **ui,
    )
    step_slider.input(
        show_step,
        [run_state, step_slider],
        [xt_image, x0_image, change_image, step_label],
        trigger_mode="always_last",
        show_progress="hidden",
        **ui,
    )
    refuse_out = [run_state, consensus_image, uncertainty_image, legend, dice_table, exports, refuse_note]
    consensus.select(refuse, [run_state, consensus, opacity, uncertainty], [*refuse_out, consensus2], **ui)
    consensus2.select(refuse, [run_state, consensus2, opacity, uncertainty], [*refuse_out, consensus], **ui)
    for event, mode in ((opacity.input, "always_last"), (uncertainty.input, None)):
        event(redraw, [run_state, opacity, uncertainty], [consensus_image, uncertainty_image], trigger_mode=mode, **ui)
    volume_btn.click(
        run_volume,
        [files, *model_in, ct_window, *settings_in, *pickers],
        [volume_file, volume_note],
        show_progress_on=[volume_note],
        concurrency_id="sampling",
        **ui,
    )
    api_btn.click(
        segment_api,
        [api_files, api_model, api_steps, api_ensemble, api_consensus, api_seed, api_slice],
        [api_mask, api_summary],
        api_name="segment",
        concurrency_id="sampling",
    )

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


def launch_kwargs(*, host: str | None = None, port: int | None = None) -> dict:
    """Arguments of `demo.launch` shared by `python app.py` and the tests (upload cap, CSS, examples folder)."""
    return {
        "server_name": host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        "server_port": int(port or os.environ.get("GRADIO_SERVER_PORT") or 7860),
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "show_error": True,
        "css": CSS,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="MedCondDiff Gradio demo (no network needed)")
    ap.add_argument("--host", default=None, help="address to serve on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    ap.add_argument(
        "--custom-weights",
        choices=CUSTOM_WEIGHTS_MODES,
        default=None,
        help="load weights other than the offered models (Hub repo ids, local folders) for the UI and API: on, off, "
        "or auto = only when serving on a loopback address and not on a Hugging Face Space "
        "(default: MEDCONDDIFF_CUSTOM_WEIGHTS or auto)",
    )
    args = ap.parse_args(argv)
    if args.custom_weights:
        os.environ["MEDCONDDIFF_CUSTOM_WEIGHTS"] = args.custom_weights  # the handlers read the setting from there
    mode = os.environ.get("MEDCONDDIFF_CUSTOM_WEIGHTS", "").strip().lower() or "auto"
    if mode not in CUSTOM_WEIGHTS_MODES:
        ap.error(f"MEDCONDDIFF_CUSTOM_WEIGHTS={mode!r} is not a mode; accepted: {', '.join(CUSTOM_WEIGHTS_MODES)}")
    kwargs = launch_kwargs(host=args.host, port=args.port)
    allowed = custom_weights_allowed(kwargs["server_name"])
    print(f"custom weights (Hub repo ids, local folders): {'allowed' if allowed else 'disabled'} ({mode})")
    try:
        get_model(_INITIAL or "")  # load the default weights before the first request
    except MedCondDiffError as err:
        print(f"warning: the default weights did not load: {err}")
    demo.launch(**kwargs)


if __name__ == "__main__":
    main()
