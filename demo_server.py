"""What the demo server needs beyond the library: weights policy, the model cache, demo limits, request files.

app.py wires the page; this module decides which weights a request may load (and loads each
once), bounds the work of one request, and keeps every file a request writes in a scratch
folder that goes away with the request or the session. Nothing here is maths or file formats:
those are the library's (`medconddiff`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

try:  # Hugging Face ZeroGPU; off Spaces `spaces.GPU` returns the function unchanged
    import spaces
except ImportError:  # the demo runs without the package
    spaces = None
import numpy as np
from gradio.data_classes import FileData, ListFiles
from gradio.utils import get_upload_folder
from PIL import Image

from medconddiff import catalogue, hub, io, modelcard, teaching, viz
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import InputError, MedCondDiffError, SettingsError, WeightsError
from medconddiff.examples import EXAMPLES_DIR, Example, thumbnail
from medconddiff.pipeline import (
    Case,
    Result,
    SamplingSettings,
    check_input,
    load_case,
    read_case,
    resolve_device,
)

MAX_FILE_SIZE = "200mb"  # per upload; Gradio refuses larger files before they reach a handler
MAX_STEPS, MAX_ENSEMBLE, MAX_WORK = 50, 8, 100  # per run: steps, members, steps x members (bounds memory)
MAX_VOLUME_WORK = 4000  # per whole-volume run: steps x members x slices (bounds the time one user holds the queue)
MAX_CHANNELS = 4  # modality pickers shown for multi-modal models
MAX_SIDE = 1024  # an input slice's longer side, in pixels; pictures are drawn at the image's resolution
CONCURRENCY = int(os.environ.get("MEDCONDDIFF_CONCURRENCY", "1"))  # sampling runs at once, all users together
GPU_SECONDS_MAX = 120  # the longest GPU slot one request asks ZeroGPU for
LIMITS = (
    f"_Shared server: each run is at most {MAX_STEPS} steps, {MAX_ENSEMBLE} ensemble members and {MAX_WORK} steps × "
    f"members; a whole volume at most {MAX_VOLUME_WORK} steps × members × slices; images at most {MAX_SIDE} px a "
    f"side. Runs queue, {CONCURRENCY} at a time (your place in the queue shows while you wait). The command line "
    f"`python -m medconddiff segment` has no such limits._"
)


@functools.cache
def device():
    """The device the models run on, decided at the first model load (not at import: no CUDA call then)."""
    return resolve_device("auto")


def __getattr__(name: str):
    if name == "DEVICE":  # `demo_server.DEVICE`: the device, resolved lazily
        return device()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RUNS_DIR = Path(tempfile.gettempdir()) / "medconddiff-demo"
CUSTOM_WEIGHTS_MODES = ("auto", "on", "off")
CUSTOM_WEIGHTS_OFF = (
    "_Other weights (a Hub repo id or a local folder) are disabled on this server; it offers the models above. "
    "Whoever runs it can allow them with `python app.py --custom-weights on`._"
)


def gpu_seconds(steps=0, ensemble=0, slices: int = 1) -> int:
    """The GPU slot (seconds) to ask ZeroGPU for one request: grows with steps x members x slices, capped.

    A slice run also draws and saves pictures at every step (about 0.5 s a step); each denoiser call
    of one slice takes well under 0.05 s on a GPU. Zero/None steps or members count as the cap's
    worth of work, so a request is never given less time than it may use.
    """
    s = int(steps) if steps else MAX_STEPS
    e = int(ensemble) if ensemble else MAX_ENSEMBLE
    per_step = 0.5 if slices <= 1 else 0.0
    return int(min(GPU_SECONDS_MAX, 15 + per_step * s + 0.05 * s * e * max(1, int(slices))))


def volume_depth(files) -> int:
    """The number of slices of a NIfTI upload, from its header alone (1 for 2D images or unreadable files)."""
    found = paths(files)
    if not found or not str(found[0]).endswith(tuple(io.NIFTI_SUFFIXES)):
        return 1
    import nibabel as nib

    try:
        shape = nib.load(str(found[0])).shape
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):  # the reader reports it later, clearly
        return 1
    return int(shape[2]) if len(shape) >= 3 else 1


def gpu(fn=None, *, volume: bool = False):
    """`spaces.GPU` on Hugging Face ZeroGPU, asking for a slot sized to the request (`gpu_seconds`); else `fn`.

    `@gpu` for one slice, `@gpu(volume=True)` for every slice of the upload. The duration is computed
    from `fn`'s own arguments named `steps`, `ensemble` and, for volumes, `files` (the slice count,
    read from the header), so every entry point asks for a slot that fits its request.
    """
    if fn is None:
        return functools.partial(gpu, volume=volume)
    if spaces is None:
        return fn
    signature = inspect.signature(fn)

    def duration(*args, **kwargs) -> int:
        given = signature.bind_partial(*args, **kwargs).arguments
        slices = volume_depth(given.get("files")) if volume else 1
        return gpu_seconds(given.get("steps"), given.get("ensemble"), slices)

    return spaces.GPU(fn, duration=duration)


# -- which weights a request may load ---------------------------------------------------------------


def custom_weights_mode() -> str:
    """MEDCONDDIFF_CUSTOM_WEIGHTS (set by `python app.py --custom-weights`): auto (default), on or off."""
    return os.environ.get("MEDCONDDIFF_CUSTOM_WEIGHTS", "").strip().lower() or "auto"


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # 0.0.0.0-style wildcards are addresses; any other host name may be reachable from outside
        return False


def custom_weights_allowed(host: str | None = None) -> bool:
    """Whether this server loads weights it does not offer: a Hub repo id or a folder, from the text box or the API.

    The mode (`custom_weights_mode`) on or off decides; auto means on only when the server listens
    on a loopback address (`host`, else GRADIO_SERVER_NAME or 127.0.0.1) and is not a Hugging Face
    Space (SPACE_ID unset). Otherwise anyone who reaches the server could make it read its folders
    or download any Hub repo. An unknown mode counts as off.
    """
    mode = custom_weights_mode()
    if mode != "auto":
        return mode == "on"
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    return is_loopback(host) and not os.environ.get("SPACE_ID")


def default_spec() -> str:
    return os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip() or hub.DEFAULT_WEIGHTS


def model_choices() -> list[str]:
    """The dropdown's weights: MEDCONDDIFF_WEIGHTS (if set) and the catalogued models (assets/models.toml)."""
    env = os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip()
    offered = catalogue.names()
    return ([env] if env and env not in offered else []) + offered


def model_labels() -> list[tuple[str, str]]:
    """(label, value) of each offered model: its name and the catalogue's line of purpose.

    Read from the catalogue alone, so the page is built without loading (or downloading) any weights;
    a model that cannot load says why when it is picked.
    """
    purposes = {m.name: m.purpose for m in catalogue.load()}
    return [(f"{name} — {purposes[name]}" if name in purposes else name, name) for name in model_choices()]


def gallery_examples(found: list[Example]) -> list[Example]:
    """The examples in the catalogue's order of their models, each model's own `example` first; others last."""
    order = {m.name: i for i, m in enumerate(catalogue.load())}
    featured = {m.example for m in catalogue.load() if m.example}
    return sorted(found, key=lambda ex: (order.get(ex.model, len(order)), ex.caption not in featured))


def default_choice() -> str | None:
    choices = model_choices()
    preferred = [os.environ.get("MEDCONDDIFF_WEIGHTS", "").strip(), hub.DEFAULT_WEIGHTS]
    return next((c for c in preferred if c in choices), choices[0] if choices else None)


def peek_config(spec: str) -> MedCondDiffConfig | None:
    """A weights spec's config.json without loading the weights (None if it cannot be read)."""
    try:
        return MedCondDiffConfig.from_json(hub.resolve(spec or None) / hub.CONFIG_NAME)
    except MedCondDiffError:
        return None


@dataclass(frozen=True)
class Loaded:
    """A model as this server loaded it: the spec resolved once, to one folder."""

    name: str  # what the page shows: the spec, or the default weights' spec for ""
    folder: Path
    model: object  # medconddiff.model.MedCondDiff, on device()

    @property
    def config(self) -> MedCondDiffConfig:
        return self.model.config

    def summary(self) -> str:
        """One Markdown line: name, inputs, classes, size, parameters, device."""
        c = self.config
        return (
            f"**{self.name}** · {', '.join(c.channel_names)} · {c.modality.upper()} · {c.num_classes} classes · "
            f"{c.image_size} px · {self.model.parameter_counts()['total'] / 1e6:.1f} M parameters · "
            f"on {device().type.upper()}"
        )


@functools.lru_cache(maxsize=3)  # bounded: custom weights must not grow the server's memory without end
def _load(spec: str) -> Loaded:
    folder = hub.resolve(spec)
    return Loaded(name=spec, folder=folder, model=hub.load_folder(folder, device=device()))


def get_model(spec: str | None, host: str | None = None) -> Loaded:
    """The model for a weights spec ("" = MEDCONDDIFF_WEIGHTS or the bundled default), loaded once per process.

    Only the offered models (`model_choices`) load unless `custom_weights_allowed(host)`.
    """
    spec = (spec or "").strip()
    if spec and spec not in model_choices() and not custom_weights_allowed(host):
        raise WeightsError(
            f"custom weights are disabled on this server ({spec!r} is not one of its models); "
            f"accepted: {', '.join(model_choices())}"
        )
    return _load(spec or default_spec())


def model_for(example: Example, host: str | None = None) -> tuple[str | None, str]:
    """(dropdown, text box) values for an example: the model made for it, else an offered one that fits it.

    Neither: the example's own model in the text box where custom weights are allowed, else a `WeightsError`.
    """
    choices = model_choices()
    if example.model in choices:
        return example.model, ""
    for name in choices:
        cfg = peek_config(name)
        files = 1 if cfg is not None and cfg.modality == "natural" else getattr(cfg, "image_channels", 0)
        if (
            cfg is not None and files == len(example.files) and cfg.modality == example.modality
        ):  # an RGB picture is one file
            return name, ""
    if custom_weights_allowed(host):
        return default_choice(), example.model  # not offered: the text box tries it, and says clearly if it fails
    raise WeightsError(  # the text box is hidden here: a value put there could not be cleared
        f"the example {example.caption!r} needs the model {example.model!r}, which this server does not offer, "
        f"and none of its models fits it; offered: {', '.join(model_choices())}"
    )


def settings(config, steps, sampler, ensemble, consensus, seed, *, slices: int = 1) -> SamplingSettings:
    """A request's settings (0 / "" / None = the model's default), within this demo's limits (`slices`: a volume's)."""
    chosen = SamplingSettings.defaults_for(
        config,
        steps=int(steps) if steps else None,
        ensemble=int(ensemble) if ensemble else None,
        sampler=sampler or None,
        consensus=consensus or None,
        seed=int(seed or 0),
    )
    s, e = chosen.steps, chosen.ensemble
    if s > MAX_STEPS or e > MAX_ENSEMBLE or s * e > MAX_WORK:
        raise SettingsError(
            f"this demo runs at most {MAX_STEPS} steps, {MAX_ENSEMBLE} ensemble members and {MAX_WORK} steps x "
            f"members per run (asked: {s} x {e}); the command line `python -m medconddiff segment` has no such limit"
        )
    if s * e * slices > MAX_VOLUME_WORK:
        raise SettingsError(
            f"this demo segments a volume with at most {MAX_VOLUME_WORK} steps x members x slices (asked: {s} x {e} x "
            f"{slices} = {s * e * slices}); use fewer steps or members, or the command line "
            "`python -m medconddiff segment`, which has no such limit"
        )
    return chosen


# -- a request's files ------------------------------------------------------------------------------


def paths(files) -> list[str]:
    """Gradio's file value (None, a path, or a list of paths / file dicts) -> list of paths."""
    if not files:
        return []
    files = files if isinstance(files, list | tuple) else [files]
    return [f if isinstance(f, str) else (f.get("path") if isinstance(f, dict) else f.name) for f in files]


def ordered(files: list[str], config: MedCondDiffConfig, picks: list[str | None]) -> list[str]:
    """The files in the model's channel order: the modality pickers' choice when complete, else matched by name."""
    n = config.image_channels
    if not files:
        raise InputError("no input file: upload an image or NIfTI volume, or pick an example")
    if n == 1 or n > MAX_CHANNELS or len(files) != n:
        return files  # load_case reports a wrong count
    chosen = [p for p in picks[:n] if p]
    if len(chosen) < n or any(p not in files for p in chosen):
        return io.match_channels(files, config.channel_names)
    if len(set(chosen)) < n:
        names = ", ".join(config.channel_names)
        raise InputError(f"the same file is picked for two modalities; give each of {names} its own file")
    return chosen


@functools.lru_cache(maxsize=2)  # the slice slider re-reads the same upload: read it once
def _scan(files: tuple[str, ...], loaded: Loaded) -> io.Scan:
    return load_case(list(files), loaded.config)


def case(files, loaded: Loaded, picks: list[str | None], slice_index, truth_file) -> Case:
    """The page's files and choices -> the slice to segment (`MedCondDiffError` for bad input)."""
    files = ordered(paths(files), loaded.config, picks)
    truth, scan = paths(truth_file), _scan(tuple(files), loaded)
    if max(scan.data.shape[1:3]) > MAX_SIDE:
        raise InputError(
            f"{Path(files[0]).name}: {'x'.join(map(str, scan.data.shape[1:3]))} pixels a slice is larger than this "
            f"demo takes; accepted: at most {MAX_SIDE} px a side (the command line has no such limit)"
        )
    return read_case(files, loaded.config, slice_index=slice_index, truth=truth[0] if truth else None, scan=scan)


def volume_truth(truth_file, case: Case, config: MedCondDiffConfig) -> np.ndarray | None:
    """The ground-truth label volume (X, Y, Z) given with a volume run, on the scan's grid; None without one."""
    found = paths(truth_file)
    if not found:
        return None
    labels = io.read_labels(found[0], shape=case.scan.source_shape, num_classes=config.num_classes)
    return case.scan.to_canonical(labels)  # on the grid the volume was segmented on


def volume_scores(labels: np.ndarray, truth: np.ndarray | None, config: MedCondDiffConfig) -> str:
    """Markdown: volume-level Dice per class (and BraTS region), all slices pooled; a hint without truth."""
    if truth is None:
        return "_Give a ground-truth volume (NIfTI on the same grid) to see volume-level Dice._"
    table = viz.dice_table(labels, truth, config.class_names, unit="voxels")
    return (
        "**Volume-level Dice**: each class's voxels over every slice pooled into one score, the Dice of "
        "`python -m train.evaluate` (a class in neither volume shows –):\n\n" + table
    )


def public(message: str) -> str:
    """`message` with paths inside the upload cache or the scratch folder cut to the file's name.

    Users know their upload by its name; the server's folder layout is nothing they need to see.
    """
    for folder in (get_upload_folder(), RUNS_DIR):
        message = re.sub(re.escape(str(folder)) + r"/(?:[^\s/\"']+/)*", "", message)
    return message


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show the library's user-fixable errors as `gr.Error` with the library's message."""
    try:
        yield
    except MedCondDiffError as err:
        raise gr.Error(public(str(err))) from None


@contextlib.contextmanager
def request_folder() -> Iterator[Path]:
    """A scratch folder for one request's output files, deleted as soon as the handler is done with it."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="request-", dir=RUNS_DIR) as folder:
        yield Path(folder)


def to_cache(component, path: Path) -> str:
    """Copy an output file into Gradio's cache now, as Gradio would after the handler returns.

    Gradio serves (and later deletes, see `delete_cache`) that copy; the caller deletes its own, so a
    request leaves no file in the app's scratch folder.
    """
    return component.move_resource_to_block_cache(path)


def preview(component, case: Case, config: MedCondDiffConfig, ct_window: str | None) -> tuple[str, str]:
    """The slice (its ground truth drawn on) as a file in `component`'s Gradio cache, and a line saying what it is."""
    picture = viz.slice_picture(case.image, config, kind=case.scan.kind, ct_window=ct_window, truth=case.truth)
    with request_folder() as folder:
        path = to_cache(component, Path(save_picture(picture, folder / "preview.png", case.scan.kind, case.scan.axes)))
    return path, case.summary(config.channel_names)


def save_picture(picture: np.ndarray, path: Path, kind: str, axes: tuple[str, ...] | None = None) -> str:
    """Write an (H, W, 3) array-orientation picture as a viewer shows it (`viz.for_viewer`: radiological,
    with orientation letters for NIfTI slices; PNG, fast compression); its path."""
    Image.fromarray(viz.for_viewer(picture, kind, axes, max_side=MAX_SIDE)).save(path, compress_level=1)
    return str(path)


def gallery(catalogue: list[Example]) -> list[tuple[str, str]]:
    """(thumbnail file, caption) of each example, the thumbnails written once into the scratch folder."""
    folder, items = Path(tempfile.mkdtemp(prefix="thumbs-", dir=_runs_dir())), []
    for i, ex in enumerate(catalogue):
        try:
            Image.fromarray(thumbnail(ex)).save(folder / f"example-{i}.png")
            items.append((str(folder / f"example-{i}.png"), ex.caption))
        except MedCondDiffError as err:  # a damaged example must not stop the app
            print(f"warning: example {ex.caption!r} left out: {err}")
    return items


def paths_only(upload: gr.File) -> gr.File:
    """`upload` hands its handler the uploaded files' paths, as `type="filepath"` does, and leaves no stray file.

    gradio 6.31's `File.preprocess` also creates an empty `NamedTemporaryFile(delete=False)` in the
    cache for every uploaded file and never uses or deletes it. A `gr.File` subclass would fix that
    too, but Gradio writes a `.pyi` stub beside the source of every component subclass, so this
    instance's own `preprocess` is replaced instead. File types are checked by the browser and,
    whatever the client, by the library when it reads the file.
    """

    def preprocess(payload: ListFiles | FileData | None) -> str | list[str] | None:
        if payload is None:
            return None
        found = [f.path for f in (payload.root if isinstance(payload, ListFiles) else [payload])]
        return found[0] if upload.file_count == "single" else found

    upload.preprocess = preprocess
    return upload


# -- one sampling run, kept per session -------------------------------------------------------------


@dataclass
class Run:
    """One sampling run of one slice, kept per session: the result with its trajectory, and its picture files."""

    case: Case
    config: MedCondDiffConfig
    base: np.ndarray  # (H, W, 3) the slice's picture, array orientation
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="run-", dir=_runs_dir())))
    result: Result | None = None
    step_files: list[tuple[str, str, str]] = field(default_factory=list)  # x_t, x0-hat, change; per step
    captions: list[str] = field(default_factory=list)
    per_step: list[np.ndarray] = field(default_factory=list)  # (H, W) x0-hat labels of each step
    frames: list[np.ndarray] = field(default_factory=list)  # the GIF's frames
    gif: str | None = None
    plot: str | None = None
    version: int = 0  # bumped at every re-fusion: unique export names
    times: list[float] = field(default_factory=list)  # t of each step
    members: list[tuple[str, str]] = field(default_factory=list)  # (file, caption) of each member's x0-hat, E > 1
    ct_window: str | None = None  # the window the slice was sampled with (CT NIfTI)
    warning: str | None = None  # the input check's note (`pipeline.check_input`), shown with the legend
    _probs: np.ndarray | None = None  # (K, H, W) the last step's x0-hat probabilities
    _last: object = field(default=None, repr=False)  # the last pipeline.SliceStep (its members' x0-hat)

    @property
    def kind(self) -> str:
        return self.case.scan.kind

    @property
    def axes(self) -> tuple[str, ...] | None:
        return self.case.scan.axes

    def add_step(self, step) -> tuple[str, str, str]:
        """Draw and save one `pipeline.SliceStep` of this run's slice; the paths of its x_t, x0-hat and change pictures."""
        i, n = step.index, step.num_steps
        pics = viz.StepPictures(step, self.base, prev_probs=self._probs)
        named = {"xt": pics.noisy, "x0": pics.x0, "change": pics.change}
        files = tuple(save_picture(p, self.folder / f"{k}-{i:03d}.png", self.kind, self.axes) for k, p in named.items())
        flipped = int((pics.labels != self.per_step[-1]).sum()) if self.per_step else None
        self.step_files.append(files)
        self.captions.append(viz.step_caption(i, n, step.t, step.logsnr, flipped))
        shown = [viz.for_viewer(viz.upscale(p, min_side=200), self.kind, self.axes) for p in (pics.noisy, pics.x0)]
        self.frames.append(viz.caption(viz.side_by_side(shown), f"step {i + 1}/{n}  t={step.t:.2f}"))
        self.per_step.append(pics.labels)
        self.times.append(float(step.t))
        self._probs, self._last = pics.probs, step
        return files

    def finish(self, result: Result) -> None:
        """The sampling ended: keep the result, write the trajectory GIF and plot."""
        self.result = result
        check = check_input(self.config, [self.case.image], [result.entropy], **self.case.reading(self.ct_window))
        self.warning = check.message if check is not None else None
        self.gif = str(viz.write_gif(self.frames, self.folder / "trajectory.gif"))
        plot = viz.trajectory_picture(self.per_step, self.config.class_names, self.case.truth)
        Image.fromarray(plot).save(self.folder / "trajectory.png")
        self.plot = str(self.folder / "trajectory.png")
        if self._last is not None and self._last.logits.shape[0] > 1:
            pictures = teaching.member_pictures(self._last, self.base)
            self.members = [
                (save_picture(p, self.folder / f"member-{e}.png", self.kind, self.axes), f"member {e + 1}")
                for e, p in enumerate(pictures)
            ]
        self._last = None  # the step's tensors are not needed any more

    def truth_picture(self) -> str | None:
        """The ground truth over the slice, drawn like x0-hat beside it (None without truth)."""
        if self.case.truth is None:
            return None
        picture = viz.overlay(self.base, self.case.truth, viz.class_colours(self.config.num_classes), alpha=0.55)
        return save_picture(picture, self.folder / "truth.png", self.kind, self.axes)

    def schedule_plot(self, step: int | None = None, t_mark: float | None = None) -> str:
        """The noise schedule with this run's timesteps, step `step` (1-based) highlighted, as a file."""
        name = f"schedule-{step or 0}-{'' if t_mark is None else round(t_mark * 100)}.png"
        if not (self.folder / name).is_file():
            current = None if step is None else int(step) - 1
            picture = teaching.schedule_picture(self.config, self.times, current=current, t_mark=t_mark)
            Image.fromarray(picture).save(self.folder / name)
        return str(self.folder / name)

    def forward(self, t: float) -> tuple[str, str]:
        """q(x_t | x0) at t for the ground truth (else the fused mask), as a file, and its caption."""
        source = self.case.truth if self.case.truth is not None else self.result.labels
        picture, text = teaching.forward_picture(source, float(t), self.config, kind=self.kind, axes=self.axes)
        what = "the ground truth" if self.case.truth is not None else "the fused mask (no ground truth given)"
        path = save_picture(picture, self.folder / f"forward-{round(float(t) * 1000)}.png", "image")
        return path, f"Noising {what}. {text}"

    def consensus_pictures(self, opacity: float, measure: str) -> tuple[str, str]:
        """The fused mask over the slice and the uncertainty map (`measure` "agreement" or "entropy"), as files."""
        res = self.result
        fused = viz.overlay(self.base, res.labels, viz.class_colours(self.config.num_classes), alpha=opacity)
        picture, _ = teaching.uncertainty_picture(self.uncertainty(measure), self.base)
        tag = f"{res.consensus}-{self.version}"
        return (
            save_picture(fused, self.folder / f"consensus-{tag}-{round(opacity * 100)}.png", self.kind, self.axes),
            save_picture(picture, self.folder / f"uncertainty-{tag}-{measure}.png", self.kind, self.axes),
        )

    def uncertainty(self, measure: str) -> np.ndarray:
        """(H, W) disagreement (1 - agreement) or normalised entropy, in [0, 1]."""
        return 1.0 - self.result.agreement if measure == "agreement" else self.result.entropy

    def colourbar(self, measure: str) -> str:
        """The uncertainty map's colour bar and scale, and the definitions of both measures."""
        name = "disagreement" if measure == "agreement" else "entropy"
        bar = teaching.colourbar_html(teaching.nice_scale(self.uncertainty(measure)), name)
        return bar

    def legend(self) -> str:
        """The class legend, after the input check's warning when it has one (a visible note, not an error)."""
        html = viz.legend_html(self.result.labels, self.config.class_names, title=self.result.consensus)
        return (ood_note(self.warning) if self.warning else "") + html

    def dice_table(self) -> str:
        if self.case.truth is None:
            return "_Give a ground-truth mask (or pick an example) to see per-class Dice._"
        return viz.dice_table(self.result.labels, self.case.truth, self.config.class_names)

    def exports(self) -> list[str]:
        """The fused mask as PNG (class indices, array orientation) and, for NIfTI input, a one-slice NIfTI; the GIF."""
        name = f"mask_{self.result.consensus}_{self.version}"
        io.write_png_labels(self.case.on_file_grid(self.result.labels), self.folder / f"{name}.png")
        files = [str(self.folder / f"{name}.png")]
        if self.case.slice_affine is not None:  # the slice at its own place in the scanner's space
            nii = self.folder / f"{name}_slice{self.case.z:03d}.nii.gz"
            io.write_nifti_labels(self.result.labels[..., None], nii, affine=self.case.slice_affine)
            files.append(str(nii))
        return files + ([self.gif] if self.gif else [])


def _runs_dir() -> Path:
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    return RUNS_DIR


def drop_run(run) -> None:
    """Delete a run's files (the session ended, a new run replaced it, or it stopped half-way)."""
    if isinstance(run, Run):
        shutil.rmtree(run.folder, ignore_errors=True)


@contextlib.contextmanager
def dropped_on_error(run: Run) -> Iterator[None]:
    """Delete a run's files if it stops half-way (an error, or the browser went away)."""
    try:
        yield
    except BaseException:
        drop_run(run)
        raise


# -- the page's words and styles --------------------------------------------------------------------

CSS = """
.mcd-small { font-size: 0.85em; opacity: 0.85; }
.mcd-pixels img { object-fit: contain !important; image-rendering: pixelated; }  /* small scans fill the box */
.mcd-legend { line-height: 1.9; font-size: 0.95em; }
.mcd-swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.45em;
              border-radius: 2px; vertical-align: -0.1em; }
.mcd-cbar { margin: 0.3em 0 0.2em; font-size: 0.85em; }
.mcd-cbar-ramp { height: 14px; border-radius: 2px; border: 1px solid #8884; }
.mcd-cbar-ticks { display: flex; justify-content: space-between; }
"""
# after a run starts, bring the results into view (they are below the inputs)
SCROLL_TO_RESULTS = "() => { document.getElementById('timestep-view')?.scrollIntoView({block: 'start'}); }"
PLAY_SECONDS = 0.6  # the play control's time per step
INTRO = (
    "# MedCondDiff: diffusion segmentation you can watch\n"
    f"A lightweight conditional diffusion model for medical image segmentation ([paper]({modelcard.PAPER_URL})). "
    "Pick an example or upload a scan, sample, then step through the denoising and compare consensus "
    "functions. **Research demo, not for clinical use.**"
)
LABELS = {
    "files": f"Image(s), one per modality: PNG/JPG, NIfTI (.nii, .nii.gz) or a DICOM series (.zip, .dcm), at most {MAX_FILE_SIZE.upper()} each",
    "truth": "Ground-truth mask (optional): PNG of class indices, or NIfTI on the same grid",
    "custom": "…or a Hub repo id (owner/name[@revision]) or a local weights folder",
    "window": "CT window (for NIfTI in Hounsfield units; PNG/JPG are taken as already windowed)",
    "ensemble": "Ensemble members (sampled together)",
    "exports": "mask: PNG of class indices, NIfTI slice (the upload's affine, moved to the slice); trajectory GIF",
}
MEMBERS = {"columns": 4, "height": 260, "allow_preview": False, "interactive": False, "format": "png", "buttons": []}
GALLERY = {
    "elem_id": "examples",
    "columns": 4,
    "height": 250,
    "allow_preview": False,
    "interactive": False,
    "format": "png",
    "buttons": [],
}

# -- components the page builds from ------------------------------------------------------------


def modality_pickers(config: MedCondDiffConfig, files: list[str], order: list[str]) -> list[gr.Dropdown]:
    """The modality pickers: shown for a multi-modal model given several files, each set to its matched file."""
    multi, n = 1 < config.image_channels <= MAX_CHANNELS and len(files) > 1, config.image_channels
    choices = [(Path(p).name, p) for p in files]
    return [
        gr.Dropdown(
            choices=choices,
            value=order[c] if multi and c < n and c < len(order) else None,
            visible=multi and c < n,
            label=f"file for {config.channel_names[c]}" if c < n else f"channel {c + 1}",
        )
        for c in range(MAX_CHANNELS)
    ]


def upload(label: str, elem_id: str, **kwargs) -> gr.File:
    """A file input for scans (images, NIfTI, DICOM zips or files) whose handlers get plain paths."""
    types = list(io.UPLOAD_SUFFIXES)
    return paths_only(gr.File(label=label, file_types=types, elem_id=elem_id, **kwargs))


def picture(label: str, elem_id: str, *, pixels: bool = True, **kwargs) -> gr.Image:
    """An output picture; `pixels`: a scan-sized picture, scaled to fill its box with square pixels."""
    classes = ["mcd-pixels"] if pixels else []
    return gr.Image(
        label=label, type="filepath", format="png", interactive=False, elem_id=elem_id, elem_classes=classes, **kwargs
    )


# -- serving ----------------------------------------------------------------------------------------


def ood_note(message: str) -> str:
    """The input check's warning as a visible HTML note (class `mcd-warning`, styled inline)."""
    import html

    style = "background:#fff3cd;color:#664d03;padding:6px 10px;border-radius:6px;margin-bottom:6px"
    text = html.escape(message[0].upper() + message[1:])
    return f'<div class="mcd-warning" role="note" style="{style}">⚠ {text}</div>'


def volume_message(config: MedCondDiffConfig, scan: io.Scan, res, ct_window: str | None) -> str:
    """What the whole-volume run says when done: the mask's grid, and the input check's warning if any."""
    z = scan.data.shape[-1]
    entropy = [res.entropy[..., k] for k in range(z)]
    slices = None if res.prepared is not None else [scan.data[..., k] for k in range(z)]  # else prepared again
    check = check_input(
        config, slices, entropy, kind=scan.kind, ct_window=ct_window, spacing=scan.slice_spacing, prepared=res.prepared
    )
    empty = f" ({res.skipped} held only background and were not sampled)" if res.skipped else ""
    done = (
        f"Segmented all {z} slices{empty}, in {res.precision}: the mask has the upload's shape, orientation and affine."
    )
    return done + (f" **Warning: {check.message}.**" if check is not None and check.message else "")


def launch_kwargs(*, css: str = "", host: str | None = None, port: int | None = None) -> dict:
    """Arguments of `demo.launch` shared by `python app.py` and the tests (upload cap, CSS, examples folder)."""
    return {
        "server_name": host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        "server_port": int(port or os.environ.get("GRADIO_SERVER_PORT") or 7860),
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "show_error": True,
        "css": css,
    }


def serve(demo: gr.Blocks, argv: list[str] | None = None, *, css: str = "", initial: str = "") -> None:
    """The command line of `python app.py`: settle the weights policy, load the `initial` weights, launch."""
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
    mode = custom_weights_mode()
    if mode not in CUSTOM_WEIGHTS_MODES:
        ap.error(f"MEDCONDDIFF_CUSTOM_WEIGHTS={mode!r} is not a mode; accepted: {', '.join(CUSTOM_WEIGHTS_MODES)}")
    try:  # a malformed catalogue or weights source stops the server here, not at the first request
        catalogue.weights_source()
        offered = catalogue.load()
    except MedCondDiffError as err:
        ap.error(str(err))
    print(
        f"offered models: {', '.join(m.name for m in offered) or 'none'} (weights source: {catalogue.weights_source()})"
    )
    kwargs = launch_kwargs(css=css, host=args.host, port=args.port)
    allowed = custom_weights_allowed(kwargs["server_name"])
    print(f"custom weights (Hub repo ids, local folders): {'allowed' if allowed else 'disabled'} ({mode})")
    try:
        get_model(initial, kwargs["server_name"])  # load the default weights before the first request
    except MedCondDiffError as err:
        print(f"warning: the default weights did not load: {err}")
    demo.launch(**kwargs)
