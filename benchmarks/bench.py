"""Speed and memory of MedCondDiff, side by side, on the real architecture.

    python benchmarks/bench.py [--device cpu|cuda] [--sizes 128,256,352] [--json OUT] [--weights W] [--quick]

Per image size (batch 1; random weights, or the --weights model where its size matches):
  backbone     `model.encode_image`, per image                   (this design: once per image)
  denoiser     `model.denoise`, per step                          (every step)
  default      one real slice end to end through `pipeline.segment_image` with the model's default
               settings (steps, ensemble, consensus), as the command line runs it
  core         the same from the model-grid tensor to the fused label map: backbone once, `sample_loop`,
               consensus
  every_step   the authors' structure: identical to `core` except that the backbone runs at every step
  ddpm1000     MedSegDiff-style: 1000 ancestral (DDPM) steps with the backbone at every step, no
               consensus; timed on the first N steps and extrapolated linearly to 1000 (said in the output)
  memory       peak RSS (CPU) or max_memory_allocated / max_memory_reserved (CUDA) over the default runs
At the headline size (256): ensembles of E = 1, 4, 8 members in one batch vs E separate runs (both timed).
For a volume (155 slices at the model's size): slices per second through the command line
(`python -m medconddiff segment`, run in-process: read, load weights, segment, write).
With --amp (default: bf16 on a CPU that has it, fp16 on CUDA): reduced-precision vs fp32 masks on
real slices (Dice) and the speed ratio; the table itself runs at --precision (default fp32).

Every time is a median over repeats after warm-up. Timings on shared machines are noisy: the load
average at the start and end is recorded, and a busy machine is flagged. `report.py` renders the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("medconddiff") is None:  # run as `python benchmarks/bench.py` from a checkout
    sys.path.insert(0, str(REPO))

from medconddiff import __main__ as cli  # noqa: E402
from medconddiff import hub, io, metrics, pipeline  # noqa: E402
from medconddiff.config import MedCondDiffConfig  # noqa: E402
from medconddiff.consensus import fuse, step_labels  # noqa: E402
from medconddiff.diffusion import probs_to_x0  # noqa: E402
from medconddiff.model import MedCondDiff  # noqa: E402
from medconddiff.pipeline import (  # noqa: E402
    SamplingSettings,
    autocast_dtype,
    collect_trajectory,
    encode,
    load_case,
    new_trajectory,
    segment_image,
    segment_slices,
    segment_volume,
    use_channels_last,
)
from medconddiff.sampler import MaskScheduler, StepRecord, sample_loop  # noqa: E402

EXAMPLE_NAMES_MRI = ("brats_pat0003_z080", "brats_pat0003_z088", "brats_pat0004_z096")
BRATS_FILES = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
EXAMPLES = REPO / "assets/examples"
SHARED = REPO.parent / "shared/data"
# Real inputs by channel count: 2 = BraTS FLAIR + T1c (the default config), 1 = abdominal CT.
EXAMPLE_SLICES = {
    2: [[EXAMPLES / f"{n}_flair.png", EXAMPLES / f"{n}_t1c.png"] for n in EXAMPLE_NAMES_MRI],
    1: [[EXAMPLES / f"{n}.png"] for n in ("ct_z088", "ct_z096")],
}
VOLUMES = {  # the volume for the slices-per-second figure, then fallbacks
    2: [
        [SHARED / "brats2015/validation/brats_2013_pat0003_1" / f for f in BRATS_FILES],
        [EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz"],
    ],
    1: [[SHARED / "abdomen-ct/ct.nii.gz"], [EXAMPLES / "ct_slab.nii.gz"]],
}
DDPM_STEPS = 1000
HEADLINE_SIZE = 256
ENSEMBLES = (1, 4, 8)
# Issue 5's targets, for a 2-core CPU at 256 px: key -> (comparison, bound).
TARGETS = {
    "default_seconds_256": ("<=", 1.0),
    "ratio_vs_backbone_every_step": (">=", 1.8),
    "ratio_vs_ddpm1000": (">=", 100.0),
    "ratio_ensemble4_vs_1": ("<=", 2.5),
}


# -- timing and memory ----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], *, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn`, `repeats` times after `warmup` untimed calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _stats(times: list[float]) -> dict[str, float | list[float]]:
    return {"median": statistics.median(times), "min": min(times), "samples": [round(t, 6) for t in times]}


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a `with` block.

    CPU: the resident set's high-water mark (Linux VmHWM, reset on entry through /proc/self/clear_refs);
    where that reset is not possible, ru_maxrss, the peak over the whole process so far (flagged).
    CUDA: `torch.cuda.max_memory_allocated` / `max_memory_reserved`, with the cache emptied and the
    peaks reset on entry, so `reserved` is what this block needed, not what earlier blocks left cached.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict[str, float | str] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            return self
        self._rss_before = _proc_status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._method = "VmHWM (reset at the start of the run)"
        except OSError:
            self._method = "ru_maxrss (peak over the whole process, not just this run)"
        return self

    def __exit__(self, *exc) -> None:
        mb = 1024.0**2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result = {
                "max_memory_allocated_mb": torch.cuda.max_memory_allocated(self.device) / mb,
                "max_memory_reserved_mb": torch.cuda.max_memory_reserved(self.device) / mb,
                "allocated_before_mb": self._before / mb,
            }
            return
        peak_kb = _proc_status_kb("VmHWM") if self._method.startswith("VmHWM") else None
        if peak_kb is None:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        before = (self._rss_before or 0) / 1024.0
        self.result = {"peak_rss_mb": peak_kb / 1024.0, "rss_before_mb": before, "method": self._method}


def memory_summary(mem: dict) -> str:
    if "max_memory_reserved_mb" in mem:
        return f"{mem['max_memory_allocated_mb']:.0f}/{mem['max_memory_reserved_mb']:.0f} MB alloc/resv"
    return f"{mem['peak_rss_mb']:.0f} MB RSS (+{mem['peak_rss_mb'] - mem['rss_before_mb']:.0f})"


# -- inputs and models ----------------------------------------------------------------------------


def _short(path: Path) -> str:
    return str(path.relative_to(REPO.parent)) if path.is_relative_to(REPO.parent) else str(path)


def example_slice(channels: int) -> tuple[np.ndarray, str, str]:
    """A real slice as read from disk (C, H, W), its kind, and where it came from (synthetic if absent)."""
    for files in EXAMPLE_SLICES.get(channels, []):
        if all(f.is_file() for f in files):
            scan = io.read_scan(files)
            return scan.data, scan.kind, " + ".join(f.name for f in files)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:240, :240]
    inside = (yy - 120) ** 2 + (xx - 110) ** 2 < 95**2  # a head-sized disc on empty background
    data = np.where(inside, rng.normal(1.0, 0.3, (channels, 240, 240)), 0.0).astype(np.float32)
    return data, "nifti", "synthetic 240x240 disc (no example slice for this channel count)"


def example_volume(config: MedCondDiffConfig, slices: int) -> tuple[np.ndarray, str, str]:
    """A real volume (C, X, Y, Z) read as the command line reads it (`load_case`), cut or tiled to `slices`."""
    for files in VOLUMES.get(config.image_channels, []):
        if all(f.is_file() for f in files):
            scan = load_case(files, config)
            data = scan.data
            source = " + ".join(_short(f) for f in files)
            if data.shape[-1] < slices:
                source += f" (tiled along z from {data.shape[-1]} slices)"
                data = np.concatenate([data] * math.ceil(slices / data.shape[-1]), axis=-1)
            if data.shape[-1] > slices:
                source += f" (the middle {slices} of {data.shape[-1]} slices)"
            start = (data.shape[-1] - slices) // 2  # the middle `slices` of the volume
            return data[..., start : start + slices], scan.kind, source
    raw, kind, src = example_slice(config.image_channels)
    return np.repeat(raw[..., None], slices, axis=-1), kind, f"{src}, repeated along z"


def model_grid(model, raw: np.ndarray, kind: str, device: torch.device) -> torch.Tensor:
    """Raw (C, H, W) slice -> (1, C, size, size) model input, by the pipeline's own io steps."""
    config = model.config
    norm = io.normalise(raw, config, kind=kind)
    geometry = io.plan_geometry(norm, config)
    return io.to_model_grid(norm, geometry, background=io.background_value(config))[None].to(device)


def build_model(size: int, weights, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The real architecture at `size`: the --weights model if its size matches, else random weights."""
    if weights is not None and weights.config.image_size == size:
        return weights, "shipped"
    torch.manual_seed(0)
    return MedCondDiff(MedCondDiffConfig(image_size=size)).to(device).eval(), "random"


# -- the structures compared ----------------------------------------------------------------------


@dataclass(frozen=True)
class Perf:
    """The speed options under test, applied alike to every structure compared."""

    channels_last: bool
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)

    def pipeline_kwargs(self) -> dict:
        return {"channels_last": self.channels_last, "precision": self.precision}

    def autocast(self, device: torch.device):
        dtype = autocast_dtype(self.precision)
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def ours(model, image: torch.Tensor, settings: SamplingSettings, perf: Perf) -> torch.Tensor:
    """This design: backbone once, then `sample_loop`, then the consensus. (B, C, H, W) -> (B, H, W) labels."""
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():
        cond = encode(model, image, precision=perf.precision)
        out = new_trajectory(model.config, settings, image.shape[0], image.device)
        records = [
            replace(r, logits=r.logits.cpu(), labels=r.labels.cpu())
            for r in sample_loop(
                model,
                cond,
                steps=settings.steps,
                ensemble=settings.ensemble,
                sampler=settings.sampler,
                generator=generator,
                keep_x_t=False,
                channels_last=perf.channels_last,
                autocast_dtype=autocast_dtype(perf.precision),
                out=out,
            )
        ]
        logits, votes = collect_trajectory(records, out)  # as the pipeline assembles them
        logsnr = torch.tensor([r.logsnr for r in records])
        return fuse(logits, logsnr, method=settings.consensus, votes=votes).labels


def backbone_every_step(
    model,
    image: torch.Tensor,
    settings: SamplingSettings,
    perf: Perf,
    *,
    limit: int | None = None,
    consensus: bool = True,
) -> torch.Tensor | None:
    """The authors' structure: `encode_image` inside the step loop, everything else as in `ours`
    (the same trajectory buffer, per-step votes and consensus), all rows in one denoiser call.

    Their backbone also sees the noisy mask, so its features cannot be reused across steps; here it
    sees only the image (a little less work than theirs). `limit` stops after that many steps (for
    timing a 1000-step run in part); `consensus=False` keeps no trajectory (MedSegDiff returns the
    last x0). (B, C, H, W) -> (B, H, W) labels, or None when stopped early or without consensus.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    e, b = settings.ensemble, image.shape[0]
    k, size = model.config.num_classes, image.shape[-1]
    scheduler = MaskScheduler(model.schedule, kind=settings.sampler)
    scheduler.set_timesteps(settings.steps)
    layout = torch.channels_last if perf.channels_last else torch.contiguous_format
    kept: list[StepRecord] = []
    out = new_trajectory(model.config, settings, b, image.device) if consensus else None
    with torch.inference_mode():
        x_t = torch.randn((e * b, k, size, size), generator=generator).to(image.device)
        for i, t in enumerate(scheduler.timesteps[:limit]):
            cond = encode(model, image, precision=perf.precision)  # the step this design hoists out of the loop
            cond = cond.repeat(e, *([1] * (cond.dim() - 1))).contiguous(memory_format=layout)  # (E*B, width, h, w)
            x_t = x_t.contiguous(memory_format=layout)
            t_batch = torch.full((e * b,), float(t), device=image.device)
            with perf.autocast(image.device):
                logits = model.denoise(x_t, t_batch, cond)
            logits = logits.float()  # (E*B, K, H, W)
            if consensus:
                if out is not None:
                    out[i] = logits
                kept.append(
                    StepRecord(
                        index=i,
                        num_steps=settings.steps,
                        t=float(t),
                        logsnr=float(model.schedule.logsnr(t.reshape(1))),
                        x_t=None,
                        logits=logits.reshape(e, b, k, size, size).cpu(),
                        labels=step_labels(logits).reshape(e, b, size, size).cpu(),
                    )
                )
            x0_hat = probs_to_x0(logits.softmax(dim=1))
            x_t = scheduler.step(x0_hat.to(x_t.dtype), i, x_t, generator=generator).prev_sample
        if not consensus or len(kept) < settings.steps:
            return None
        logits, votes = collect_trajectory(kept, out)
        logsnr = torch.tensor([r.logsnr for r in kept])
        return fuse(logits, logsnr, method=settings.consensus, votes=votes).labels


# -- the benchmark --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    warmup: int
    repeats: int  # for the per-call timings (backbone, denoiser)
    runs: int  # for the whole segmentations
    ddpm_steps: int  # steps of the 1000-step DDPM actually timed
    volume_slices: int
    volume_batch: int


def bench_size(model, origin: str, raw: np.ndarray, kind: str, plan: Plan, perf: Perf, device: torch.device) -> dict:
    """Everything measured at one image size, batch 1."""
    config = model.config
    settings = SamplingSettings.defaults_for(config)
    image = model_grid(model, raw, kind, device)  # (1, C, size, size)
    out: dict = {"weights": origin, "parameters": model.parameter_counts()["total"]}
    layout = torch.channels_last if perf.channels_last else torch.contiguous_format

    with torch.inference_mode():
        cond = encode(model, image, precision=perf.precision).contiguous(memory_format=layout)
        x_t = torch.randn((1, config.num_classes, config.image_size, config.image_size)).to(device)
        x_t = x_t.contiguous(memory_format=layout)
        t = torch.full((1,), 0.5, device=device)
        backbone = measure(
            lambda: encode(model, image, precision=perf.precision),
            device=device,
            warmup=plan.warmup,
            repeats=plan.repeats,
        )

        def denoise() -> None:
            with perf.autocast(device):
                model.denoise(x_t, t, cond)

        denoiser = measure(denoise, device=device, warmup=plan.warmup, repeats=plan.repeats)
    out["backbone_ms"] = 1e3 * statistics.median(backbone)
    out["denoiser_ms_per_step"] = 1e3 * statistics.median(denoiser)
    out["backbone_samples_s"], out["denoiser_samples_s"] = backbone, denoiser

    def default_run() -> None:
        segment_image(model, raw, settings, kind=kind, keep_trajectory=False, **perf.pipeline_kwargs())

    with PeakMemory(device) as mem:
        default = measure(default_run, device=device, warmup=plan.warmup, repeats=plan.runs)
    out["default"] = _stats(default) | {"settings": asdict(settings)}
    out["memory_default"] = mem.result

    labels = ours(model, image, settings, perf)
    same = backbone_every_step(model, image, settings, perf)
    out["every_step_same_labels"] = bool(torch.equal(labels, same))  # equal work: the same masks
    core = measure(lambda: ours(model, image, settings, perf), device=device, warmup=plan.warmup, repeats=plan.runs)
    every = measure(
        lambda: backbone_every_step(model, image, settings, perf),
        device=device,
        warmup=plan.warmup,
        repeats=plan.runs,
    )
    out["core"] = _stats(core)
    out["every_step"] = _stats(every)
    out["ratio_vs_backbone_every_step"] = statistics.median(every) / statistics.median(core)

    ddpm = replace(settings, sampler="ddpm", steps=DDPM_STEPS, ensemble=1)
    n = plan.ddpm_steps
    part = measure(
        lambda: backbone_every_step(model, image, ddpm, perf, limit=n, consensus=False),
        device=device,
        warmup=0,  # the same shapes as every_step, already warm
        repeats=max(1, plan.runs - 1),
    )
    per_step = statistics.median(part) / n
    out["ddpm1000"] = {
        "seconds": per_step * DDPM_STEPS,
        "extrapolated": True,
        "timed_steps": n,
        "seconds_per_step": per_step,
        "how": f"median time of the first {n} of {DDPM_STEPS} ancestral steps (backbone every step), x {DDPM_STEPS}/{n}",
    }
    out["ratio_vs_ddpm1000"] = out["ddpm1000"]["seconds"] / statistics.median(core)
    return out


def bench_ensemble(model, raw: np.ndarray, kind: str, plan: Plan, perf: Perf, device: torch.device) -> dict:
    """E members sampled as one batch sharing one `cond`, vs E separate single-member runs (both timed).

    The separate runs are E calls of the pipeline with one member each (seeds seed..seed+E-1): the
    naive way to get E samples, re-running the backbone for each. The timings are interleaved:
    each round times E = 1, 4, 8 back to back, and a ratio is the median over rounds of the
    ratio within a round, so a machine that speeds up or slows down during the run (shared
    hosts do) shifts both sides of a ratio alike.
    """
    base = SamplingSettings.defaults_for(model.config)
    batches = {e: replace(base, ensemble=e) for e in ENSEMBLES}
    seeds = {e: [replace(base, seed=base.seed + m) for m in range(e)] for e in ENSEMBLES}

    def segment(settings: SamplingSettings) -> None:
        segment_image(model, raw, settings, kind=kind, keep_trajectory=False, **perf.pipeline_kwargs())

    def timed(fn: Callable[[], object]) -> float:
        return measure(fn, device=device, warmup=0, repeats=1)[0]

    memory: dict = {}
    for e in ENSEMBLES:  # warm-up, and the peak memory of each batch size on its own
        with PeakMemory(device) as mem:
            for _ in range(max(1, plan.warmup)):
                segment(batches[e])
        memory[e] = mem.result
    one_batch: dict = {e: [] for e in ENSEMBLES}
    separate: dict = {e: [] for e in ENSEMBLES}
    for _ in range(plan.repeats):  # the headline ratio: as many rounds as the per-call timings get
        for e in ENSEMBLES:
            one_batch[e].append(timed(lambda e=e: segment(batches[e])))
            if e > 1:
                separate[e].append(timed(lambda e=e: [segment(s) for s in seeds[e]]))
    separate[1] = one_batch[1]  # one member: the same run
    out: dict = {}
    for e in ENSEMBLES:
        per_round = [a / b for a, b in zip(one_batch[e], one_batch[1], strict=True)]
        speedups = [a / b for a, b in zip(separate[e], one_batch[e], strict=True)]
        out[str(e)] = {
            "one_batch": _stats(one_batch[e]),
            "separate_runs": _stats(separate[e]),
            "memory": memory[e],
            "ratio_vs_1": statistics.median(per_round),
            "ratio_vs_1_rounds": [round(r, 4) for r in per_round],
            "speedup_vs_separate": statistics.median(speedups),
        }
    return out


def volume_files(config: MedCondDiffConfig, slices: int, folder: Path) -> tuple[list[Path], str, int]:
    """NIfTI file(s) of a real volume with `slices` slices, one per modality, and where they came from.

    The volume's own files when it has exactly that many slices; else its middle `slices` (or the volume
    tiled along z) written to `folder` with the source affine.
    """
    import nibabel as nib

    for files in VOLUMES.get(config.image_channels, []):
        if all(f.is_file() for f in files) and nib.load(files[0]).shape[2:3] == (slices,):
            return list(files), " + ".join(_short(f) for f in files), slices
    data, _, source = example_volume(config, slices)
    affine = np.eye(4)
    for files in VOLUMES.get(config.image_channels, []):
        if all(f.is_file() for f in files):
            affine = nib.load(files[0]).affine
            break
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(data.shape[0]):
        path = folder / f"volume_ch{c}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data[c], dtype=np.float32), affine), str(path))
        out.append(path)
    return out, source, data.shape[-1]


def bench_volume(model, spec: str | None, plan: Plan, device: torch.device) -> dict:
    """Slices per second through the command line, in-process: `python -m medconddiff segment VOLUME -o OUT`.

    The command reads the NIfTI file(s), loads the weights (`spec`, or `model` saved to a temp folder),
    segments slice by slice in batches (`segment_volume`) and writes the label map. One batch through
    `segment_volume` first warms the kernels up; the command is then timed once, as a whole and its
    `segment_volume` call alone. The command line runs at its defaults (auto layout, fp32).
    """
    config = model.config
    with tempfile.TemporaryDirectory(prefix="medconddiff-bench-") as tmp:
        tmp = Path(tmp)
        files, source, z = volume_files(config, plan.volume_slices, tmp / "input")
        weights = spec if spec is not None else str(hub.save_model(model, tmp / "weights"))
        scan = load_case(files, config)
        settings = SamplingSettings.defaults_for(config)
        mid = scan.data.shape[-1] // 2
        warm = scan.data[..., max(0, mid - plan.volume_batch // 2) :][..., : plan.volume_batch]
        segment_volume(model, warm, settings, kind=scan.kind, batch_size=plan.volume_batch)
        bg = io.background_value(config)
        active = sum(
            bool((np.abs(io.normalise(scan.data[..., k], config, kind=scan.kind) - bg) > 1e-6).any()) for k in range(z)
        )
        inner: dict[str, float] = {}
        original = pipeline.segment_volume

        def timed_segment_volume(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            _sync(device)
            inner["seconds"] = time.perf_counter() - start
            return out

        out_path = tmp / "mask.nii.gz"
        argv = ["segment", *map(str, files), "-o", str(out_path), "--weights", weights, "--device", device.type]
        argv += ["--batch-size", str(plan.volume_batch), "--quiet"]
        pipeline.segment_volume = timed_segment_volume  # the command imports it from the module when it runs
        try:
            with PeakMemory(device) as mem, contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
                _sync(device)
                start = time.perf_counter()
                code = cli.main(argv)
                _sync(device)
                seconds = time.perf_counter() - start
        finally:
            pipeline.segment_volume = original
        if code != 0 or not out_path.is_file() or "seconds" not in inner:
            raise RuntimeError(f"the command line failed on the volume (exit {code}): python -m medconddiff {argv}")
        command = "python -m medconddiff " + shlex.join(argv).replace(str(tmp), "TMP")  # TMP: a temp folder
    return {
        "source": source,
        "command": command,
        "size": config.image_size,
        "slices": z,
        "slices_with_content": active,  # pure-background slices skip the model
        "batch_size": plan.volume_batch,
        "seconds": seconds,
        "slices_per_second": z / seconds,
        "segment_volume_seconds": inner["seconds"],
        "segment_volume_slices_per_second": z / inner["seconds"],
        "seconds_for_155_slices": seconds * 155 / z,
        "extrapolated_to_155": z != 155,
        "memory": mem.result,
    }


def real_slices(config: MedCondDiffConfig, per_volume: int) -> list[tuple[np.ndarray, str, str]]:
    """Real (C, H, W) slices as read from disk, with kind and name, for the precision check: the example
    slices, and `per_volume` evenly spaced slices with content from each real volume (first volume per kind)."""
    out = []
    for files in EXAMPLE_SLICES.get(config.image_channels, []):
        if all(f.is_file() for f in files):
            out.append((io.read_scan(files).data, "image", files[0].stem))
    volumes = VOLUMES.get(config.image_channels, [])[:1]
    if config.image_channels == 2:  # every BraTS validation case
        volumes = [[case / f for f in BRATS_FILES] for case in sorted((SHARED / "brats2015/validation").glob("*"))]
    for files in volumes:
        if per_volume < 1 or not all(f.is_file() for f in files):
            continue
        vol = load_case(files, config).data
        bg = io.background_value(config)
        norm = [io.normalise(vol[..., z], config, kind="nifti") for z in range(vol.shape[-1])]
        full = [z for z, n in enumerate(norm) if (np.abs(n - bg) > 1e-6).any(axis=0).mean() > 0.05]
        for z in np.linspace(full[0], full[-1], per_volume).round().astype(int) if full else []:
            out.append((vol[..., z], "nifti", f"{files[0].parent.name} z={z}"))
    return out


def mask_agreement(ref: list[np.ndarray], new: list[np.ndarray], num_classes: int) -> dict:
    """Dice between two sets of label maps, per class pooled over all slices (classes present in either)."""
    a, b = np.concatenate([r.ravel() for r in ref]), np.concatenate([n.ravel() for n in new])
    per_class = {
        str(c): metrics.dice(a == c, b == c) for c in range(1, num_classes) if (a == c).any() or (b == c).any()
    }
    return {
        "dice_per_class": per_class,
        "dice_min": min(per_class.values()) if per_class else 1.0,
        "dice_foreground": metrics.dice(a > 0, b > 0),
        "pixels_equal": float((a == b).mean()),
    }


def precision_check(
    model, origin: str, precision: str, channels_last: bool, plan: Plan, per_volume: int, device: torch.device
) -> dict:
    """fp32 vs `precision` (bf16/fp16 autocast) masks through the pipeline on real slices: Dice, and the speed."""
    fp32, low = Perf(channels_last, "fp32"), Perf(channels_last, precision)
    settings = SamplingSettings.defaults_for(model.config)
    slices = real_slices(model.config, per_volume)
    if not slices:
        return {"skipped": "no real slices found (assets/examples, ../shared/data)"}
    ref, new = [], []
    for kind in ("image", "nifti"):
        group = [raw for raw, k, _ in slices if k == kind]
        for start in range(0, len(group), plan.volume_batch):
            chunk = group[start : start + plan.volume_batch]
            ref += [r.labels for r in segment_slices(model, chunk, settings, kind=kind, **fp32.pipeline_kwargs())]
            new += [r.labels for r in segment_slices(model, chunk, settings, kind=kind, **low.pipeline_kwargs())]
    raw, kind, _ = slices[0]
    runs = {p.precision: [] for p in (fp32, low)}
    for p in (fp32, low):  # warm-up
        segment_image(model, raw, settings, kind=kind, keep_trajectory=False, **p.pipeline_kwargs())
    for _ in range(plan.runs):  # interleaved, so that a change in load hits both alike
        for p in (fp32, low):
            runs[p.precision] += measure(
                lambda p=p: segment_image(
                    model, raw, settings, kind=kind, keep_trajectory=False, **p.pipeline_kwargs()
                ),
                device=device,
                warmup=0,
                repeats=1,
            )
    out = {
        "precision": precision,
        "device": device.type,
        "weights": origin,
        "size": model.config.image_size,
        "slices": len(slices),
        "slice_names": [name for _, _, name in slices],
        "fp32_seconds": statistics.median(runs["fp32"]),
        "amp_seconds": statistics.median(runs[precision]),
    }
    out["speedup"] = out["fp32_seconds"] / out["amp_seconds"]
    return out | mask_agreement(ref, new, model.config.num_classes)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout
    except OSError:
        return None
    return (out.stdout.strip() + ("+dirty" if dirty.strip() else "")) if out.returncode == 0 else None


def machine(device: torch.device) -> dict:
    """What the figures were taken on: CPU, cores, threads, torch, load average, GPU (if any)."""
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cuda_available": torch.cuda.is_available(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_total_mb"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["other_busy_cores_at_start"] = other_busy_cores()
    return info


def _cpu_ticks() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def other_busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy over `seconds` while this one slept (Linux /proc/stat).

    The load average cannot tell: right after a previous benchmark it still counts that run's threads.
    This process's own CPU time in the window (OpenMP threads spin on for a while after work) is taken out.
    """
    before, own_before, wall_before = _cpu_ticks(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    after, own, wall = _cpu_ticks(), time.process_time() - own_before, time.perf_counter() - wall_before
    if before is None or after is None or after[0] == before[0]:
        return None
    total, idle = after[0] - before[0], after[1] - before[1]
    busy = (1 - idle / total) * (os.cpu_count() or 1) - own / wall
    return round(max(0.0, busy), 2)


def busy_note(info: dict) -> str | None:
    """A note when other work kept more than a quarter of the cores busy as the run started."""
    busy = info.get("other_busy_cores_at_start")
    cores = info.get("cores_available") or 1
    if busy is not None and busy > 0.25 * cores:
        return (
            f"the machine was busy (other processes kept {busy:.1f} of {cores} cores busy at the start): "
            "the times are inflated; take the final figures on an idle machine"
        )
    return None


def targets(result: dict) -> dict:
    """Issue 5's targets (2-core CPU, 256 px): value, bound, met; `applies` says if this run is that setting."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = result[key]
        out[key] = {"value": value, "op": op, "bound": bound, "met": value <= bound if op == "<=" else value >= bound}
    m = result["machine"]
    applies = result["headline_size"] == HEADLINE_SIZE and m["device"] == "cpu" and not result["quick"]
    return {"applies": applies, "setting": "2-core CPU, 256 px, default settings", "checks": out}


def print_table(result: dict) -> None:
    m = result["machine"]
    where = m.get("gpu") or m["cpu"]
    perf = ", ".join(f"{k}={v}" for k, v in result["perf"].items())
    print(f"\nMedCondDiff benchmark on {m['device']} ({where}), torch {m['torch']}, {m['threads']} threads; {perf}")
    print(f"input slice: {result['inputs']['slice']}")
    head = (
        f"{'size':>5} {'weights':>8} {'backbone':>10} {'denoiser':>10} {'default':>9} {'core':>8} "
        f"{'every-step':>11} {'x':>6} {'DDPM-1000*':>11} {'x':>7}  peak memory (default run)"
    )
    print(head)
    print(f"{'':>5} {'':>8} {'ms/image':>10} {'ms/step':>10} {'s':>9} {'s':>8} {'s':>11} {'':>6} {'s':>11}")
    for size, r in result["sizes"].items():
        print(
            f"{size:>5} {r['weights']:>8} {r['backbone_ms']:>10.1f} {r['denoiser_ms_per_step']:>10.1f} "
            f"{r['default']['median']:>9.3f} {r['core']['median']:>8.3f} {r['every_step']['median']:>11.3f} "
            f"{r['ratio_vs_backbone_every_step']:>6.2f} {r['ddpm1000']['seconds']:>11.1f} "
            f"{r['ratio_vs_ddpm1000']:>7.1f}  {memory_summary(r['memory_default'])}"
        )
    steps = {r["ddpm1000"]["timed_steps"] for r in result["sizes"].values()}
    print(
        f"* DDPM-1000 is EXTRAPOLATED: {'/'.join(map(str, sorted(steps)))} of {DDPM_STEPS} steps timed, x {DDPM_STEPS}/N. "
        "default = pipeline.segment_image end to end; core = model-grid tensor to label map; "
        "x = every-step / core and DDPM-1000 / core."
    )
    ens = result.get("ensemble")
    if ens:
        print(
            f"\nensemble at {result['headline_size']} px (one batch sharing one cond vs E separate runs, both timed):"
        )
        print(f"{'E':>3} {'one batch s':>12} {'vs E=1':>7} {'E runs s':>9} {'speed-up':>9}  peak memory")
        for e, r in ens.items():
            print(
                f"{e:>3} {r['one_batch']['median']:>12.3f} {r['ratio_vs_1']:>7.2f} {r['separate_runs']['median']:>9.3f} "
                f"{r['speedup_vs_separate']:>9.2f}  {memory_summary(r['memory'])}"
            )
    vol = result.get("volume")
    if vol:
        extra = f" (timed on {vol['slices']}, scaled to 155)" if vol["extrapolated_to_155"] else ""
        print(
            f"\nvolume through the command line: {vol['slices']} slices ({vol['slices_with_content']} with content) "
            f"at {vol['size']} px, batch {vol['batch_size']}, {vol['weights']} weights: {vol['seconds']:.1f} s, "
            f"{vol['slices_per_second']:.2f} slices/s (segment_volume alone {vol['segment_volume_slices_per_second']:.2f}); "
            f"155 slices: {vol['seconds_for_155_slices']:.1f} s{extra}; {memory_summary(vol['memory'])}"
        )
    pc = result.get("precision_check")
    if pc and "skipped" not in pc:
        print(
            f"\n{pc['precision']} vs fp32 on {pc['device']} ({pc['weights']} weights, {pc['size']} px, {pc['slices']} real "
            f"slices): mask Dice min over classes {pc['dice_min']:.4f}, foreground {pc['dice_foreground']:.4f}, "
            f"pixels equal {pc['pixels_equal']:.4f}; speed x{pc['speedup']:.2f} "
            f"({pc['fp32_seconds']:.3f} s -> {pc['amp_seconds']:.3f} s per slice)"
        )
    elif pc:
        print(f"\nprecision check skipped: {pc['skipped']}")
    t = result["targets"]
    print(
        f"\nheadline ({result['headline_size']} px); targets for a {t['setting']}"
        + ("" if t["applies"] else " (do not apply to this run)")
    )
    for key, c in t["checks"].items():
        print(f"  {key:<30} {c['value']:10.3f}   target {c['op']} {c['bound']:<6g} {'met' if c['met'] else 'NOT MET'}")
    for note in result["notes"]:
        print(f"note: {note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", default="128,256,352", help="comma-separated image sizes (multiples of 32)")
    ap.add_argument("--json", metavar="OUT", default=None, help="write the results here as JSON")
    ap.add_argument("--weights", default=None, help="shipped weights (name, folder or Hub id): used at their size")
    ap.add_argument("--quick", action="store_true", help="one repeat, 2 DDPM steps, 4 volume slices: a smoke test")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; quick 1)")
    ap.add_argument("--ddpm-steps", type=int, default=None, help="DDPM steps actually timed (default 20; quick 2)")
    ap.add_argument("--volume-slices", type=int, default=None, help="volume slices (default 155; quick 4; 0 skips)")
    ap.add_argument(
        "--volume-size", type=int, default=None, help="model size for the volume (default: the weights' size, else 128)"
    )
    ap.add_argument("--volume-batch", type=int, default=8, help="slices per batch (the command line's default is 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument(
        "--channels-last", choices=["auto", "on", "off"], default="auto", help="layout (auto: the pipeline's choice)"
    )
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast for the whole table (default fp32)",
    )
    ap.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default="auto",
        help="check this precision's masks against fp32 on real slices (Dice) and its speed; auto: fp16 on CUDA, "
        "bf16 on a CPU with native bf16, else none (and none with --quick)",
    )
    ap.add_argument(
        "--dice-slices", type=int, default=None, help="slices per validation volume for the --amp check (default 16)"
    )
    return ap.parse_args(argv)


def amp_choice(args: argparse.Namespace, device: torch.device, info: dict) -> str | None:
    if args.amp != "auto":
        return None if args.amp == "none" else args.amp
    if args.quick:
        return None
    if device.type == "cuda":
        return "fp16"
    return "bf16" if info["cpu_bf16"] else None


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    repeats = args.repeats or (1 if args.quick else 5)
    plan = Plan(
        warmup=1,
        repeats=repeats,
        runs=repeats if args.quick else max(3, repeats - 2),
        ddpm_steps=args.ddpm_steps or (2 if args.quick else 20),
        volume_slices=args.volume_slices if args.volume_slices is not None else (4 if args.quick else 155),
        volume_batch=args.volume_batch,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    weights = None
    if args.weights:
        weights = hub.load_model(args.weights, device=device)
    headline = HEADLINE_SIZE if HEADLINE_SIZE in sizes else max(sizes)
    layout = {"auto": None, "on": True, "off": False}[args.channels_last]
    perf = Perf(channels_last=use_channels_last(device, layout), precision=args.precision)
    result: dict = {
        "machine": machine(device),
        "plan": asdict(plan),
        "perf": asdict(perf),
        "quick": args.quick,
        "weights_spec": args.weights,
        "notes": [],
    }
    amp = amp_choice(args, device, result["machine"])
    if headline != HEADLINE_SIZE:
        result["notes"].append(
            f"{HEADLINE_SIZE} px not in --sizes: the headline keys (default_seconds_256, ratios) are measured at {headline} px"
        )
    raw, kind, source = example_slice(MedCondDiffConfig().image_channels)  # 2 channels: BraTS
    result["inputs"] = {"slice": source}
    result["sizes"] = {}
    for size in sizes:
        model, origin = build_model(size, weights, device)
        slice_raw, slice_kind = (raw, kind)
        if model.config.image_channels != raw.shape[0]:
            slice_raw, slice_kind, _ = example_slice(model.config.image_channels)
        print(f"size {size} ({origin} weights) ...", file=sys.stderr, flush=True)
        result["sizes"][str(size)] = bench_size(model, origin, slice_raw, slice_kind, plan, perf, device)
        if size == headline:
            print(f"ensembles at {size} ...", file=sys.stderr, flush=True)
            result["ensemble"] = bench_ensemble(model, slice_raw, slice_kind, plan, perf, device)
        del model
    if plan.volume_slices > 0:
        vsize = args.volume_size or (
            weights.config.image_size if weights is not None else min(sizes) if args.quick else 128
        )
        model, origin = build_model(vsize, weights, device)
        spec = args.weights if origin == "shipped" else None
        print(f"volume through the command line at {vsize} ({origin} weights) ...", file=sys.stderr, flush=True)
        result["volume"] = bench_volume(model, spec, plan, device) | {"weights": origin}
    if amp:
        psize = weights.config.image_size if weights is not None else min(sizes) if args.quick else 128
        model, origin = build_model(psize, weights, device)
        print(f"{amp} vs fp32 masks at {psize} ({origin} weights) ...", file=sys.stderr, flush=True)
        per_volume = args.dice_slices if args.dice_slices is not None else (1 if args.quick else 16)
        result["precision_check"] = precision_check(model, origin, amp, perf.channels_last, plan, per_volume, device)
        if origin == "random":
            result["notes"].append("the precision check ran on random weights: its Dice says little; pass --weights")
    else:
        result["precision_check"] = {"skipped": f"--amp {args.amp}" + (" (--quick)" if args.quick else "")}
    top = result["sizes"][str(headline)]
    result["headline_size"] = headline
    result["default_seconds_256"] = top["default"]["median"]
    result["ratio_vs_backbone_every_step"] = top["ratio_vs_backbone_every_step"]
    result["ratio_vs_ddpm1000"] = top["ratio_vs_ddpm1000"]
    result["ratio_ensemble4_vs_1"] = result["ensemble"]["4"]["ratio_vs_1"]
    result["notes"].append(
        f"ratio_vs_ddpm1000 is extrapolated from {plan.ddpm_steps} timed steps of {DDPM_STEPS} (each step costs the "
        "same: backbone + denoiser + update, so the time is linear in steps)"
    )
    if hasattr(os, "getloadavg"):
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"]["run_wall_seconds"] = round(time.perf_counter() - wall, 1)
    result["machine"]["run_cpu_seconds"] = round(time.process_time() - cpu, 1)  # / wall: threads kept busy
    note = busy_note(result["machine"])
    if note:
        result["notes"].append(note)
    result["targets"] = targets(result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = {"command": "python benchmarks/bench.py " + shlex.join(argv)} | run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
