"""Image or volume in -> `Result` out: the one data path used by the app, the CLI and the evaluation.

files --io.read_scan--> Scan --io.normalise--> (C, H, W) or (C, X, Y, Z)
  --per slice: prepare_slice (normalise, content test, plan_geometry, to_model_grid)--> (B, C, size, size)
  --model.encode_image (once)--> cond --sample_loop (S steps x E members)--> trajectory
  --consensus.fuse--> probabilities + uncertainty --from_model_grid--> original grid
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import io, ood
from .consensus import Consensus, class_argmax, fuse
from .errors import SettingsError
from .precision import autocast_dtype
from .precision import resolve as resolve_precision
from .sampler import SamplingSettings, StepRecord, sample_loop, trajectory_buffer

if TYPE_CHECKING:
    from .config import MedCondDiffConfig
    from .model import MedCondDiff


@dataclass
class Trajectory:
    """Every step of one image's sampling, on the model grid."""

    t: np.ndarray  # (S,) times
    logsnr: np.ndarray  # (S,) noise levels (higher = cleaner)
    logits: torch.Tensor  # (S, E, K, size, size) predicted x0 logits
    x_t: torch.Tensor | None  # (S, E, K, size, size) noisy masks fed in, if kept
    labels: torch.Tensor | None = None  # (S, E, size, size) uint8 argmax of `logits`, if computed


@dataclass
class Result:
    """One slice's segmentation on its original pixel grid."""

    labels: np.ndarray  # (H, W) int64
    probs: np.ndarray  # (K, H, W) float32
    agreement: np.ndarray  # (H, W) fraction of steps x members agreeing with `labels`
    entropy: np.ndarray  # (H, W) normalised predictive entropy in [0, 1]
    geometry: io.Geometry
    consensus: str
    trajectory: Trajectory | None = field(default=None, repr=False)
    precision: str = "fp32"  # what the network ran in: "fp32", "bf16" or "fp16" ("auto" resolved)
    sampled: bool = True  # False: the slice held only background and got it without sampling

    def refuse(self, method: str) -> Result:
        """The same sampling fused with another consensus function, without re-sampling."""
        if self.trajectory is None:
            raise SettingsError("this result kept no trajectory; re-run with keep_trajectory=True")
        return _finish(self.trajectory, self.geometry, method, precision=self.precision)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. Asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda was asked for but no CUDA GPU is available; use cpu or auto")
    if name not in ("cpu", "cuda"):
        raise SettingsError(f"unknown device {name!r}; accepted: auto, cpu, cuda")
    return torch.device(name)


def model_device(model: MedCondDiff) -> torch.device:
    """The device the model's weights are on (where its inputs must go)."""
    return next(model.parameters()).device


def encode(model, batch: torch.Tensor, *, precision: str = "auto") -> torch.Tensor:
    """(B, C, size, size) model-grid images -> cond (B, denoiser_width, size/4, size/4), float32.

    The once-per-image part: the backbone and semantic decoder, under autocast when `precision`
    asks for it ("auto": `precision.resolve` for the batch's device); `cond` comes back in float32
    so the sampling state stays float32.
    """
    dtype = autocast_dtype(resolve_precision(precision, batch.device, warn=False))
    if dtype is None:
        return model.encode_image(batch)
    with torch.autocast(batch.device.type, dtype=dtype):
        cond = model.encode_image(batch)
    return cond.float()


def stack_steps(logits: list[torch.Tensor]) -> torch.Tensor:
    """S per-step logits (E, B, K, H, W) -> (S, E, B, K, H, W), laid out in memory with K innermost.

    The consensus reduces over K (softmax, argmax): about 3x faster on this layout than on the
    contiguous one (benchmarks/RESULTS.md). The values and shape are those of `torch.stack`.
    On the CPU the pipeline has the loop write into one such buffer instead (`trajectory_buffer`).
    """
    return torch.stack([x.movedim(-3, -1) for x in logits]).movedim(-1, -3)


def new_trajectory(config, settings: SamplingSettings, images: int, device: torch.device) -> torch.Tensor | None:
    """The buffer `sample_loop(out=...)` writes every step into on the CPU (no copy at the end);
    None on other devices, where the records come back to the CPU one step at a time."""
    if device.type != "cpu":
        return None
    rows = settings.ensemble * images
    return trajectory_buffer(settings.steps, rows, config.num_classes, config.image_size)


def collect_trajectory(records: list[StepRecord], out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished loop's records (and its `new_trajectory` buffer) -> logits (S, E, B, K, H, W)
    and the per-step argmax labels (S, E, B, H, W) uint8, ready for `consensus.fuse`."""
    if out is not None:  # (S, E*B, K, H, W) -> (S, E, B, K, H, W), a view
        e, b = records[0].logits.shape[:2]
        logits = out.reshape(len(records), e, b, *out.shape[2:])
    else:
        logits = stack_steps([r.logits for r in records])
    return logits, torch.stack([r.labels for r in records])


def use_channels_last(device: torch.device, channels_last: bool | None = None) -> bool:
    """The denoiser's memory layout: None (auto) means channels-last on the CPU, contiguous on CUDA.

    On the CPU, oneDNN runs the per-step convolutions about 10% faster on channels-last tensors
    (benchmarks/RESULTS.md); CUDA stays contiguous until measured there. The values are the same up
    to float rounding (~1e-6, as between thread counts); the weights are not touched.
    """
    return device.type == "cpu" if channels_last is None else bool(channels_last)


def _to_original(maps: torch.Tensor, geometry: io.Geometry, fill: torch.Tensor) -> np.ndarray:
    return io.from_model_grid(maps, geometry, fill=fill).numpy()


def _finish(traj: Trajectory, geometry: io.Geometry, method: str, *, precision: str) -> Result:
    """Fuse a trajectory and bring the maps back to the original grid."""
    c = fuse(traj.logits, torch.from_numpy(traj.logsnr), method=method, votes=traj.labels)
    k = c.probs.shape[0]
    bg = torch.zeros(k)
    bg[0] = 1.0  # outside the crop box: certain background
    probs = io.from_model_grid(c.probs, geometry, fill=bg)
    unc = io.from_model_grid(torch.stack([c.agreement, c.entropy]), geometry, fill=torch.tensor([1.0, 0.0]))
    return Result(
        labels=class_argmax(probs, dim=0).numpy(),
        probs=probs.numpy(),
        agreement=unc[0].numpy(),
        entropy=unc[1].numpy(),
        geometry=geometry,
        consensus=method,
        trajectory=traj,
        precision=precision,
    )


def _empty_result(geometry: io.Geometry, k: int, method: str, *, precision: str) -> Result:
    h, w = geometry.shape
    probs = np.zeros((k, h, w), np.float32)
    probs[0] = 1.0
    return Result(
        labels=np.zeros((h, w), np.int64),
        probs=probs,
        agreement=np.ones((h, w), np.float32),
        entropy=np.zeros((h, w), np.float32),
        geometry=geometry,
        consensus=method,
        precision=precision,
        sampled=False,
    )


@dataclass(frozen=True)
class Prepared:
    """One raw slice made ready for the model: the single place a slice is normalised and put on the grid."""

    image: torch.Tensor | None  # (C, size, size) on the model grid; None when the slice holds only background
    geometry: io.Geometry  # how the model grid maps back onto the slice's own (H, W) grid
    normalised: np.ndarray  # (C, H, W) in the model's input range, on the slice's own grid


def prepare_slice(
    raw: np.ndarray,
    config: MedCondDiffConfig,
    *,
    kind: str,
    ct_window: str | None = None,
    spacing: float | None = None,
) -> Prepared:
    """A raw (C, H, W) slice as read (`kind` "nifti" or "image") -> `Prepared`.

    Normalises it (`io.normalise`), tests whether anything differs from empty space, plans the
    crop/pad/resize (`io.plan_geometry`) and, for a slice with content, resamples it onto the
    model grid (`io.to_model_grid`). `iter_segment_slices` (so the app, the CLI and the evaluation)
    and the training slice cache (`train.data.build_slices`, so training and its validation) prepare
    slices here: a slice gets the same statistics and grid wherever it comes from. `spacing`: mm
    per pixel of a scan's slice (`Scan.slice_spacing`), used by models with a `pixel_spacing`;
    pictures have none.
    """
    normalised = io.normalise(raw, config, kind=kind, ct_window=ct_window)
    geometry = io.plan_geometry(normalised, config, spacing=spacing if kind == "nifti" else None)
    bg = io.background_value(config)
    has_content = bool((np.abs(normalised - bg) > 1e-6).any())
    image = io.to_model_grid(normalised, geometry, background=bg) if has_content else None
    return Prepared(image=image, geometry=geometry, normalised=normalised)


@dataclass
class SliceStep(StepRecord):
    """A sampling step of a batch of slices, moved to the CPU, with each slice's geometry.

    `geometries[j]` brings row j of `logits` / `x_t` (the j-th slice with content) back to that
    slice's own grid (`io.from_model_grid`, `viz.step_probs`): no caller plans geometry again.
    """

    geometries: tuple[io.Geometry, ...] = ()


def _sample_steps(
    model: MedCondDiff,
    batch: torch.Tensor,
    settings: SamplingSettings,
    *,
    generator: torch.Generator,
    keep_x_t: bool,
    channels_last: bool | None,
    precision: str,
    geometries: tuple[io.Geometry, ...] = (),
    backbone_every_step: bool = False,
) -> Generator[SliceStep, None, Trajectory]:
    """(B, C, size, size) model-grid images -> a CPU `SliceStep` per step; returns the whole `Trajectory`.

    `precision` is already resolved for the model's device ("fp32", "bf16" or "fp16").

    The trajectory's maps keep the batch axis: logits (S, E, B, K, size, size). Each step runs
    under `torch.inference_mode()`, entered and left around that step alone, so the consumer may
    resume this generator on any thread and no grad-mode context stays open across a `yield`.
    """
    config = model.config
    device = batch.device
    with torch.inference_mode():
        cond = encode(model, batch, precision=precision)  # (B, denoiser_width, size/4, size/4): once for every step
        out = new_trajectory(config, settings, batch.shape[0], device)
    loop = sample_loop(
        model,
        cond,
        steps=settings.steps,
        ensemble=settings.ensemble,
        sampler=settings.sampler,
        generator=generator,
        keep_x_t=keep_x_t,
        channels_last=use_channels_last(device, channels_last),
        autocast_dtype=autocast_dtype(precision),
        out=out,
        reencode=(lambda: encode(model, batch, precision=precision)) if backbone_every_step else None,
    )
    records = []
    while True:
        with torch.inference_mode():  # this step only: the next one may run on another thread
            rec = next(loop, None)
            if rec is None:
                break
            on_cpu = {f.name: getattr(rec, f.name) for f in fields(rec)}  # every field the sampler records
            on_cpu.update(
                x_t=None if rec.x_t is None else rec.x_t.cpu(), logits=rec.logits.cpu(), labels=rec.labels.cpu()
            )
            rec = SliceStep(**on_cpu, geometries=geometries)
        records.append(rec)
        yield rec
    with torch.inference_mode():
        logits, labels = collect_trajectory(records, out)
        return Trajectory(
            t=np.array([r.t for r in records]),
            logsnr=np.array([r.logsnr for r in records]),
            logits=logits,
            x_t=torch.stack([r.x_t for r in records]) if keep_x_t else None,
            labels=labels,
        )


def iter_segment_slices(
    model: MedCondDiff,
    slices: list[np.ndarray],
    settings: SamplingSettings,
    *,
    kind: str,
    ct_window: str | None = None,
    spacing: float | None = None,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
    channels_last: bool | None = None,
    precision: str = "auto",
    backbone_every_step: bool = False,
) -> Iterator[SliceStep | list[Result]]:
    """Segment raw slices [(C, H, W), ...] (as read; `kind` "nifti" or "image") as one batch.

    Each slice is prepared on its own (`prepare_slice`: the same statistics for a PNG slice, a
    NIfTI volume's slice and a training slice). Yields a `SliceStep` after each sampling step (for
    progress and streaming; it carries the slices' geometries), then the list of `Result`s, one per
    slice. Pure-background slices skip the model. Each step runs under its own
    `torch.inference_mode()` (see `_sample_steps`): resuming on another thread is safe.
    `channels_last`: None picks the faster layout for the device (`use_channels_last`).
    `precision`: "auto" (default: bf16 where the hardware runs it natively, fp16 on an older CUDA GPU,
    else fp32; `precision.resolve`), or "fp32", "bf16", "fp16" for the network's autocast; each
    `Result.precision` says which ran. Forcing bf16 or fp16 where the hardware would emulate it
    runs, with a warning that it is slower.
    `backbone_every_step`: re-run the backbone at every step (the authors' structure; the same
    masks, slower), for benchmarks/bench.py to time against this design.
    """
    used = resolve_precision(precision, model_device(model))  # an unknown precision fails before any work
    prepared = [prepare_slice(s, model.config, kind=kind, ct_window=ct_window, spacing=spacing) for s in slices]
    return (
        yield from _iter_prepared(
            model,
            prepared,
            settings,
            generator=generator,
            keep_trajectory=keep_trajectory,
            channels_last=channels_last,
            precision=used,
            backbone_every_step=backbone_every_step,
        )
    )


def _iter_prepared(
    model: MedCondDiff,
    prepared: list[Prepared],
    settings: SamplingSettings,
    *,
    generator: torch.Generator | None,
    keep_trajectory: bool,
    channels_last: bool | None,
    precision: str,
    backbone_every_step: bool = False,
) -> Iterator[SliceStep | list[Result]]:
    """`iter_segment_slices` once its slices are prepared: the slices with content sampled as one
    batch, then the list of `Result`s (background for the empty ones). `precision` is resolved."""
    config = model.config
    active = [i for i, p in enumerate(prepared) if p.image is not None]
    results: list[Result | None] = [None] * len(prepared)
    if generator is None:
        generator = torch.Generator().manual_seed(settings.seed)
    if active:
        batch = torch.stack([prepared[i].image for i in active]).to(model_device(model))  # (B, C, size, size)
        traj = yield from _sample_steps(
            model,
            batch,
            settings,
            generator=generator,
            keep_x_t=keep_trajectory,
            channels_last=channels_last,
            precision=precision,
            geometries=tuple(prepared[i].geometry for i in active),
            backbone_every_step=backbone_every_step,
        )
        with torch.inference_mode():
            for j, i in enumerate(active):
                one = Trajectory(
                    t=traj.t,
                    logsnr=traj.logsnr,
                    logits=traj.logits[:, :, j],
                    x_t=None if traj.x_t is None else traj.x_t[:, :, j],
                    labels=traj.labels[:, :, j],
                )
                res = _finish(one, prepared[i].geometry, settings.consensus, precision=precision)
                results[i] = res if keep_trajectory else replace(res, trajectory=None)
    for i, p in enumerate(prepared):
        if results[i] is None:
            results[i] = _empty_result(p.geometry, config.num_classes, settings.consensus, precision=precision)
    yield results


def segment_model_grid(
    model: MedCondDiff,
    images: torch.Tensor,
    settings: SamplingSettings,
    *,
    generator: torch.Generator | None = None,
    channels_last: bool | None = None,
    precision: str = "auto",
) -> Consensus:
    """(B, C, size, size) images already on the model grid (e.g. a training `SliceSet`) -> the fused
    `Consensus` on that grid: labels (B, size, size). The same sampling (and `precision`) as
    `iter_segment_slices`."""
    precision = resolve_precision(precision, images.device)
    if generator is None:
        generator = torch.Generator().manual_seed(settings.seed)
    steps = _sample_steps(
        model,
        images,
        settings,
        generator=generator,
        keep_x_t=False,
        channels_last=channels_last,
        precision=precision,
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:  # the generator's return value: the whole trajectory
            traj = done.value
            break
    with torch.inference_mode():
        return fuse(traj.logits, torch.from_numpy(traj.logsnr), method=settings.consensus, votes=traj.labels)


def segment_slices(
    model: MedCondDiff,
    slices: list[np.ndarray],
    settings: SamplingSettings,
    *,
    kind: str,
    ct_window: str | None = None,
    spacing: float | None = None,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
    channels_last: bool | None = None,
    precision: str = "auto",
) -> list[Result]:
    """`iter_segment_slices` run to the end: raw slices [(C, H, W), ...] -> one `Result` each."""
    results = None
    for item in iter_segment_slices(
        model,
        slices,
        settings,
        kind=kind,
        ct_window=ct_window,
        spacing=spacing,
        generator=generator,
        keep_trajectory=keep_trajectory,
        channels_last=channels_last,
        precision=precision,
    ):
        results = item  # the last item is the list of results
    return results


def segment_image(
    model: MedCondDiff,
    image: np.ndarray,
    settings: SamplingSettings,
    *,
    kind: str,
    ct_window: str | None = None,
    spacing: float | None = None,
    keep_trajectory: bool = True,
    channels_last: bool | None = None,
    precision: str = "auto",
) -> Result:
    """One raw (C, H, W) slice -> `Result` (keeps the trajectory unless told otherwise)."""
    return segment_slices(
        model,
        [image],
        settings,
        kind=kind,
        ct_window=ct_window,
        spacing=spacing,
        keep_trajectory=keep_trajectory,
        channels_last=channels_last,
        precision=precision,
    )[0]


@dataclass
class VolumeResult:
    labels: np.ndarray  # (X, Y, Z) int64
    agreement: np.ndarray  # (X, Y, Z) float32
    entropy: np.ndarray  # (X, Y, Z) float32
    skipped: int = 0  # slices that held only background: given background without sampling
    precision: str = "fp32"  # what the network ran in ("auto" resolved)
    prepared: list[Prepared] | None = field(default=None, repr=False)  # each slice as sampled, for `check_input`


def prepare_volume(
    volume: np.ndarray,
    config: MedCondDiffConfig,
    *,
    kind: str = "nifti",
    ct_window: str | None = None,
    spacing: float | None = None,
) -> list[Prepared]:
    """Raw (C, X, Y, Z) volume -> each slice along Z made ready for the model (`prepare_slice`), in order;
    `segment_volume` samples those with content. It needs only the config, so a caller may prepare the
    slices while the weights still load (the command line does)."""
    return [
        prepare_slice(volume[..., k], config, kind=kind, ct_window=ct_window, spacing=spacing)
        for k in range(volume.shape[-1])
    ]


def volume_workers(device: torch.device, batches: int) -> int:
    """How many batches of a volume `segment_volume` samples side by side: 2 on a CPU where torch has two
    or more intra-op threads (each batch then runs on its share of them), else 1.

    The network's per-step operations are small (a 128 px model's maps are 32 x 32): two threads ran a
    batch only 1.3x faster than one on this project's 2-core CPU, while two batches side by side, one
    thread each, kept both cores busy (a 155-slice BraTS volume in bf16: 3.5 s against 4.0 s).
    """
    return 2 if device.type == "cpu" and batches >= 2 and torch.get_num_threads() >= 2 else 1


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The generator of a volume's batch `index`: the seed itself for the first (a volume of one batch samples
    as `segment_slices` does), a seed derived from (seed, index) for the others, so each batch's noise is its
    own whatever order the batches run in."""
    if index == 0:
        return torch.Generator().manual_seed(seed)
    derived = int(np.random.SeedSequence([seed, index]).generate_state(2, np.uint32).view(np.uint64)[0])
    return torch.Generator().manual_seed(derived >> 1)  # 63 bits: what manual_seed takes


def segment_volume(
    model,
    volume: np.ndarray,
    settings: SamplingSettings,
    *,
    kind: str = "nifti",
    ct_window: str | None = None,
    spacing: float | None = None,
    batch_size: int = 8,
    progress: bool | Callable[[int, int], None] = False,
    channels_last: bool | None = None,
    precision: str = "auto",
    workers: int | None = None,
    prepared: list[Prepared] | None = None,
) -> VolumeResult:
    """Raw (C, X, Y, Z) volume -> labels on the same grid, slice by slice along Z, batched.

    Every slice is prepared first (`prepare_volume`, or `prepared` when the caller has done it with the
    same reading arguments); the ones that hold only background after
    normalisation (above and below the head or body: nothing differs from empty space) get
    background without sampling, and `VolumeResult.skipped` counts them. The others are sampled
    `batch_size` at a time; each batch has its own generator (`batch_generator`), so a seed
    reproduces the whole volume. `workers` batches run side by side (None: `volume_workers`), each
    on its share of torch's intra-op threads; torch's thread count is set for the worker threads
    and put back afterwards. `spacing`: the in-plane mm per voxel (`Scan.slice_spacing`), for models
    with a `pixel_spacing`. `precision` as for `iter_segment_slices`. `progress` True shows a tqdm
    bar; a callable gets (slices done, total), called on the caller's thread.
    """
    _, x, y, z = volume.shape
    device = model_device(model)
    used = resolve_precision(precision, device)
    if prepared is None:
        prepared = prepare_volume(volume, model.config, kind=kind, ct_window=ct_window, spacing=spacing)
    elif len(prepared) != z:
        raise SettingsError(f"prepared holds {len(prepared)} slices for a volume of {z}; give one per slice")
    active = [k for k, p in enumerate(prepared) if p.image is not None]
    batches = [active[i : i + batch_size] for i in range(0, len(active), batch_size)]
    labels = np.zeros((x, y, z), np.int64)  # the skipped slices' background: class 0, full agreement, no entropy
    agreement = np.ones((x, y, z), np.float32)
    entropy = np.zeros((x, y, z), np.float32)

    def sample(index: int) -> list[Result]:
        *_, results = _iter_prepared(
            model,
            [prepared[k] for k in batches[index]],
            settings,
            generator=batch_generator(settings.seed, index),
            keep_trajectory=False,
            channels_last=channels_last,
            precision=used,
        )
        return results

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=z, initial=z - len(active), unit="slice", desc="segmenting")
    done = z - len(active)
    workers = volume_workers(device, len(batches)) if workers is None else max(1, int(workers))
    threads = torch.get_num_threads()
    with ExitStack() as stack:
        if workers > 1:
            stack.callback(torch.set_num_threads, threads)  # the workers set torch's default for new threads too
            share = max(1, threads // workers)
            pool = stack.enter_context(
                ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(share,))
            )
            results = pool.map(sample, range(len(batches)))  # in order, as each batch is done
        else:
            results = map(sample, range(len(batches)))
        for idx, batch_results in zip(batches, results, strict=True):
            for k, r in zip(idx, batch_results, strict=True):
                labels[..., k], agreement[..., k], entropy[..., k] = r.labels, r.agreement, r.entropy
            done += len(idx)
            if bar is not None:
                bar.update(len(idx))
            elif callable(progress):
                progress(done, z)
    if bar is not None:
        bar.close()
    return VolumeResult(
        labels=labels, agreement=agreement, entropy=entropy, skipped=z - len(active), precision=used, prepared=prepared
    )


# a 2D picture is reduced at read time to at most this many times the model's image size: the crop
# to the foreground keeps detail, and a 4000 px photograph costs about what a 512 px one does
READ_SIDE_FACTOR = 4


def check_input(
    config: MedCondDiffConfig,
    slices: Iterable[np.ndarray] | None,
    entropy_maps: Iterable[np.ndarray],
    *,
    kind: str,
    ct_window: str | None = None,
    spacing: float | None = None,
    prepared: list[Prepared] | None = None,
) -> ood.Assessment | None:
    """Raw slices [(C, H, W), ...] and the entropy maps [(H, W), ...] of their results -> the input
    check (`ood.assess`): a plain warning when they do not look like the model's training inputs.

    Each slice is prepared exactly as it was for sampling (`prepare_slice`), or taken from
    `prepared` when the caller has it (`VolumeResult.prepared`; `slices` may then be None); empty
    slices are skipped. None when the model's config.json stores no `input_stats`.
    """
    if not config.input_stats:
        return None
    bg = io.background_value(config)
    feats, ents = [], []
    if prepared is None:
        prepared = [prepare_slice(raw, config, kind=kind, ct_window=ct_window, spacing=spacing) for raw in slices]
    for p, entropy in zip(prepared, entropy_maps, strict=True):
        f = None if p.image is None else ood.slice_features(p.image.numpy(), bg)
        if f is not None:
            feats.append(f)
            ents.append(ood.mean_entropy(entropy, ood.content_mask(p.normalised, bg)))
    return ood.assess(config, feats, ents)


def load_case(paths: list, config, *, series: str | None = None) -> io.Scan:
    """Read the files of one case, check they fit the model (modality count), and turn a volume to the
    model's orientation (`io.reorient` to `config.orientation`: the slices it was trained on).
    `series`: the SeriesInstanceUID to read from DICOM input that holds several series.
    A large 2D picture is reduced as it is read (`READ_SIDE_FACTOR`); `Scan.to_source` brings the
    maps back to its full size.

    Write maps of the returned scan's grid with `io.write_scan_labels` / `io.write_scan_map`: they go
    back onto the file's own grid, orientation and affine.
    """
    scan = io.read_scan(paths, series=series, max_side=READ_SIDE_FACTOR * config.image_size)
    if scan.data.shape[0] != config.image_channels:
        raise io.InputError(
            f"the model expects {config.image_channels} modality channel(s) ({', '.join(config.channel_names)}); "
            f"got {scan.data.shape[0]} from {len(paths)} file(s). Give one file per modality, in that order."
        )
    return io.reorient(scan, config.orientation)


@dataclass
class Case:
    """One case read for segmenting one slice: what the app shows and what a notebook needs."""

    scan: io.Scan
    image: np.ndarray  # (C, H, W) the slice to segment, as read
    z: int | None  # its index along Z, for volumes
    truth: np.ndarray | None  # (H, W) ground-truth labels of that slice, if a label file was given
    paths: list[str]  # the files, in the model's channel order

    def summary(self, channel_names: list[str]) -> str:
        """One line: kind, shape, the slice shown, which file is which channel, whether truth is drawn."""
        shape = "x".join(map(str, self.scan.data.shape[1:]))
        names = ", ".join(f"{n}: `{Path(p).name}`" for n, p in zip(channel_names, self.paths, strict=False))
        where = f" · slice {self.z} of 0..{self.scan.data.shape[-1] - 1}" if self.z is not None else ""
        truth = " · ground truth drawn" if self.truth is not None else ""
        return f"{(self.scan.origin or self.scan.kind).upper()} {shape}{where} · {names}{truth}"

    def reading(self, ct_window: str | None = None) -> dict:
        """How its slices are read, as keywords for the `segment_*` functions: kind, CT window, spacing."""
        return {"kind": self.scan.kind, "ct_window": ct_window, "spacing": self.scan.slice_spacing}

    def on_file_grid(self, values: np.ndarray) -> np.ndarray:
        """An (H, W) map of `image` -> on the file's pixel grid: a picture reduced at read time comes
        back to its full size (nearest neighbour); a volume's slice stays as it is."""
        return values if self.scan.is_volume else self.scan.to_source(values)

    @property
    def slice_affine(self) -> np.ndarray | None:
        """The (4, 4) affine of the slice as a one-slice NIfTI volume (None for 2D images)."""
        return None if self.scan.affine is None or self.z is None else io.slice_affine(self.scan.affine, self.z)


def read_case(
    paths: list[str],
    config: MedCondDiffConfig,
    *,
    slice_index: int | None = None,
    truth: str | None = None,
    scan: io.Scan | None = None,
) -> Case:
    """The files of one case (in the model's channel order) -> the slice to segment, with its ground truth.

    `slice_index` None or < 0 is the middle slice of a volume. `scan`: the files already read
    (a caller's cache), else they are read here with `load_case`.
    """
    scan = load_case(paths, config) if scan is None else scan
    z, image = None, scan.data
    if scan.is_volume:
        depth = scan.data.shape[-1]
        z = depth // 2 if slice_index is None or int(slice_index) < 0 else int(slice_index)
        if not 0 <= z < depth:
            raise io.InputError(f"slice {z} is outside the volume (0..{depth - 1})")
        image = scan.data[..., z]
    labels = None
    if truth:
        labels = io.read_labels(truth, shape=scan.source_shape, num_classes=config.num_classes)
        labels = scan.to_canonical(labels)[..., z] if z is not None else scan.to_canonical(labels)
    return Case(scan=scan, image=image, z=z, truth=labels, paths=list(map(str, paths)))
