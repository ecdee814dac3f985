"""Speed and memory of MedCondDiff on the real architecture, every arm through the public pipeline.

    python benchmarks/bench.py [--device cpu|cuda] [--sizes 128,256,352] [--weights W] [--json OUT] [--quick]

Per image size (batch 1; the --weights model where its size matches, else random weights):
  backbone    `pipeline.encode`, ms per image (this design runs it once per image)
  denoiser    `model.denoise`, ms per step
  default     one real slice through `pipeline.iter_segment_slices` (run to its end, as `segment_image`)
  every_step  the same call with `backbone_every_step=True` (the authors' structure): the same masks
  ddpm1000    MedSegDiff-style: sampler="ddpm", steps=1000, backbone every step; the first N steps
              are timed and the time extrapolated linearly to 1000 (flagged in the JSON)
At the headline size (256): E = 1, 4, 8 members in one batch vs E separate runs. For a volume: slices
per second through the command line (in-process). With --amp: reduced-precision vs fp32 masks (Dice).
Arms compared with each other are timed in interleaved rounds; ratios are medians of per-round ratios.
`report.py` renders the JSON into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from harness import PeakMemory, compare, extrapolate, finish, interleaved, log, machine, stats, timed, write_json

from medconddiff import __main__ as cli
from medconddiff import hub, io, metrics
from medconddiff.config import MedCondDiffConfig
from medconddiff.model import MedCondDiff
from medconddiff.pipeline import (
    SamplingSettings,
    encode,
    iter_segment_slices,
    load_case,
    segment_image,
    segment_slices,
    segment_volume,
    use_channels_last,
)
from medconddiff.precision import autocast_dtype

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets/examples"
SHARED = REPO.parent / "shared/data"
BRATS_FILES = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
EXAMPLE_SLICES = {  # real inputs by channel count: 2 = BraTS FLAIR + T1c (the default config), 1 = CT
    2: [[EXAMPLES / f"{n}_{m}.png" for m in ("flair", "t1c")] for n in ("brats_pat0003_z080", "brats_pat0003_z088")],
    1: [[EXAMPLES / f"{n}.png"] for n in ("ct_z088", "ct_z096")],
}
VOLUMES = {  # the volume for the slices-per-second figure, then a fallback
    2: [
        [SHARED / "brats2015/validation/brats_2013_pat0003_1" / f for f in BRATS_FILES],
        [EXAMPLES / f"brats_pat0004_slab_{m}.nii.gz" for m in ("flair", "t1c")],
    ],
    1: [[SHARED / "abdomen-ct/ct.nii.gz"], [EXAMPLES / "ct_slab.nii.gz"]],
}
DDPM_STEPS = 1000
HEADLINE_SIZE = 256
ENSEMBLES = (1, 4, 8)
TARGETS = {  # the headline bounds for a 2-core CPU at 256 px: key -> (comparison, bound)
    "default_seconds_256": ("<=", 1.0),
    "ratio_vs_backbone_every_step": (">=", 1.8),
    "ratio_vs_ddpm1000": (">=", 100.0),
    "ratio_ensemble4_vs_1": ("<=", 2.5),
}


def example_slice(channels: int) -> tuple[np.ndarray, str, str]:
    """A real slice (C, H, W) as read from disk, its kind and its files; a synthetic disc if none is bundled."""
    for files in EXAMPLE_SLICES.get(channels, []):
        if all(f.is_file() for f in files):
            return io.read_scan(files).data, "image", " + ".join(f.name for f in files)
    yy, xx = np.mgrid[:240, :240]
    disc = (yy - 120) ** 2 + (xx - 110) ** 2 < 95**2
    data = np.where(disc, np.random.default_rng(0).normal(1.0, 0.3, (channels, 240, 240)), 0.0)
    return data.astype(np.float32), "nifti", "synthetic 240x240 disc (no example slice for this channel count)"


def build_model(size: int, weights, device: torch.device) -> tuple[torch.nn.Module, str]:
    if weights is not None and weights.config.image_size == size:
        return weights, "shipped"
    torch.manual_seed(0)
    return MedCondDiff(MedCondDiffConfig(image_size=size)).to(device).eval(), "random"


def ddpm_seconds_per_step(model, raw, kind: str, steps: int, perf: dict, device: torch.device) -> float:
    """Seconds per step of a 1000-step DDPM with the backbone every step, from `steps` steps of the pipeline.

    The clock starts at the first step's record (after normalisation and the first encode) and stops
    `steps` records later, so it covers exactly `steps` x (backbone + denoiser + update).
    """
    settings = replace(SamplingSettings.defaults_for(model.config), sampler="ddpm", steps=DDPM_STEPS, ensemble=1)
    run = iter_segment_slices(model, [raw], settings, kind=kind, backbone_every_step=True, **perf)
    stamps = []
    for _, _record in zip(range(steps + 1), run, strict=False):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
    run.close()
    return (stamps[-1] - stamps[0]) / steps


def bench_size(model, origin: str, raw, kind: str, plan: dict, perf: dict, device: torch.device) -> dict:
    """Everything measured at one image size, batch 1."""
    config, rounds = model.config, plan["runs"]
    settings = SamplingSettings.defaults_for(config)
    out: dict = {"weights": origin, "parameters": model.parameter_counts()["total"]}
    layout = torch.channels_last if perf["channels_last"] else torch.contiguous_format
    with torch.inference_mode():  # per-call costs: values do not matter, shapes do
        image = torch.randn(1, config.image_channels, config.image_size, config.image_size, device=device)
        cond = encode(model, image, precision=perf["precision"]).contiguous(memory_format=layout)
        x_t = torch.randn(1, config.num_classes, config.image_size, config.image_size, device=device)
        x_t, t = x_t.contiguous(memory_format=layout), torch.full((1,), 0.5, device=device)
        dtype = autocast_dtype(perf["precision"])

        def denoise() -> None:
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                model.denoise(x_t, t, cond)

        backbone = lambda: encode(model, image, precision=perf["precision"])  # noqa: E731
        per_call = interleaved({"backbone": backbone, "denoiser": denoise}, rounds=plan["repeats"], device=device)
    out["backbone_ms"] = 1e3 * statistics.median(per_call["backbone"])
    out["denoiser_ms_per_step"] = 1e3 * statistics.median(per_call["denoiser"])

    def seg(**kw):  # both arms through the same public call, run to its last item (the results)
        return lambda: deque(iter_segment_slices(model, [raw], settings, kind=kind, **perf, **kw), maxlen=1)[0][0]

    with PeakMemory(device) as mem:
        ours = seg()()
    out["memory_default"] = mem.result
    theirs = seg(backbone_every_step=True)()
    out["every_step_same_labels"] = bool(np.array_equal(ours.labels, theirs.labels))  # equal work, same masks
    times = interleaved({"default": seg(), "every_step": seg(backbone_every_step=True)}, rounds=rounds, device=device)
    out["default"] = stats(times["default"]) | {"settings": asdict(settings)}
    out["every_step"] = stats(times["every_step"])
    out["ratio_vs_backbone_every_step"] = compare(times, "every_step", "default")["speedup"]
    n = plan["ddpm_steps"]
    per_step = statistics.median(
        ddpm_seconds_per_step(model, raw, kind, n, perf, device) for _ in range(max(1, rounds - 1))
    )
    out["ddpm1000"] = {
        "seconds": extrapolate(per_step * n, n, DDPM_STEPS),
        "extrapolated": True,
        "timed_steps": n,
        "seconds_per_step": per_step,
        "how": f"median time of {n} of {DDPM_STEPS} ancestral steps (backbone every step), x {DDPM_STEPS}/{n}",
    }
    out["ratio_vs_ddpm1000"] = out["ddpm1000"]["seconds"] / out["default"]["median"]
    return out


def bench_ensemble(model, raw, kind: str, plan: dict, perf: dict, device: torch.device) -> dict:
    """E members in one batch sharing one `cond` vs E separate one-member runs (seeds seed..seed+E-1).

    Each round times E = 1, 4, 8 (and the separate runs) back to back; ratios are medians over rounds.
    """
    base = SamplingSettings.defaults_for(model.config)

    def seg(settings: SamplingSettings) -> None:
        segment_image(model, raw, settings, kind=kind, keep_trajectory=False, **perf)

    memory = {}
    for e in ENSEMBLES:  # the warm-up, and each batch size's peak memory on its own
        with PeakMemory(device) as mem:
            seg(replace(base, ensemble=e))
        memory[e] = mem.result
    arms = {f"one_batch_{e}": (lambda e=e: seg(replace(base, ensemble=e))) for e in ENSEMBLES}
    for e in ENSEMBLES[1:]:
        arms[f"separate_{e}"] = lambda e=e: [seg(replace(base, seed=base.seed + m)) for m in range(e)]
    times = interleaved(arms, rounds=plan["repeats"], device=device, warmup=0)
    times["separate_1"] = times["one_batch_1"]  # one member: the same run
    out = {}
    for e in ENSEMBLES:
        one, sep = times[f"one_batch_{e}"], times[f"separate_{e}"]
        out[str(e)] = {
            "one_batch": stats(one),
            "separate_runs": stats(sep),
            "memory": memory[e],
            "ratio_vs_1": compare(times, f"one_batch_{e}", "one_batch_1")["speedup"],
            "ratio_vs_1_rounds": [round(a / b, 4) for a, b in zip(one, times["one_batch_1"], strict=True)],
            "speedup_vs_separate": compare(times, f"separate_{e}", f"one_batch_{e}")["speedup"],
        }
    return out


def volume_files(config: MedCondDiffConfig, slices: int, folder: Path) -> tuple[list[Path], str]:
    """NIfTI file(s) of a real volume with `slices` slices (its middle ones, or it tiled along z) and their source."""
    import nibabel as nib

    files = next((f for f in VOLUMES.get(config.image_channels, []) if all(p.is_file() for p in f)), None)
    if files is None:
        raise FileNotFoundError(f"no volume with {config.image_channels} channel(s) in {EXAMPLES} or {SHARED}")
    source = " + ".join(str(f.relative_to(REPO.parent)) if f.is_relative_to(REPO.parent) else str(f) for f in files)
    depth = nib.load(files[0]).shape[2]
    if depth == slices:
        return list(files), source
    out = []
    for f in files:
        img = nib.load(f)
        data = np.asarray(img.dataobj, dtype=np.float32)
        data = np.concatenate([data] * -(-slices // depth), axis=2)  # tiled when too thin
        start = (data.shape[2] - slices) // 2
        out.append(folder / f.name)
        out[-1].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data[:, :, start : start + slices]), img.affine), out[-1])
    return out, source + f" (the middle {slices} slices, tiled along z when thinner)"


def bench_volume(model, spec: str | None, plan: dict, device: torch.device, precision: str) -> dict:
    """`python -m medconddiff segment VOLUME -o OUT` in-process, timed whole (read, load, segment, write),
    then `segment_volume` alone on the same volume; one batch of `segment_volume` warms up first."""
    config, batch = model.config, plan["volume_batch"]
    settings = SamplingSettings.defaults_for(config)
    with tempfile.TemporaryDirectory(prefix="medconddiff-bench-") as tmp:
        files, source = volume_files(config, plan["volume_slices"], Path(tmp) / "input")
        weights = spec if spec is not None else str(hub.save_model(model, Path(tmp) / "weights"))
        scan = load_case(files, config)
        segment_volume(model, scan.data[..., :batch], settings, kind=scan.kind, batch_size=batch, precision=precision)
        argv = ["segment", *map(str, files), "-o", f"{tmp}/mask.nii.gz", "--weights", weights]
        argv += ["--device", device.type, "--batch-size", str(batch), "--precision", precision, "--quiet"]
        with PeakMemory(device) as mem, open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            start = time.perf_counter()
            code = cli.main(argv)
            seconds = time.perf_counter() - start
        if code != 0 or not Path(f"{tmp}/mask.nii.gz").is_file():
            raise RuntimeError(f"the command line failed on the volume (exit {code}): {argv}")
        inner = timed(
            lambda: segment_volume(model, scan.data, settings, kind=scan.kind, batch_size=batch, precision=precision),
            device,
        )
        command = "python -m medconddiff " + shlex.join(argv).replace(tmp, "TMP")
    z = scan.data.shape[-1]
    return {
        "source": source,
        "command": command,
        "size": config.image_size,
        "slices": z,
        "batch_size": batch,
        "seconds": seconds,
        "slices_per_second": z / seconds,
        "segment_volume_seconds": inner,
        "segment_volume_slices_per_second": z / inner,
        "seconds_for_155_slices": extrapolate(seconds, z, 155),
        "extrapolated_to_155": z != 155,
        "memory": mem.result,
    }


def precision_check(model, origin: str, precision: str, plan: dict, per_volume: int, device: torch.device) -> dict:
    """fp32 vs `precision` autocast through the pipeline on real slices (the examples, and `per_volume`
    evenly spaced slices of the middle half of each BraTS validation volume): mask Dice, and the speed."""
    config, channels_last = model.config, use_channels_last(device)
    settings = SamplingSettings.defaults_for(config)
    groups: dict[str, list] = {"image": [], "nifti": []}
    for files in EXAMPLE_SLICES.get(config.image_channels, []):
        if all(f.is_file() for f in files):
            groups["image"].append(io.read_scan(files).data)
    cases = sorted((SHARED / "brats2015/validation").glob("*")) if config.image_channels == 2 and per_volume else []
    for case in cases:
        vol = load_case([case / f for f in BRATS_FILES], config).data
        z = vol.shape[-1]
        groups["nifti"] += [vol[..., k] for k in np.linspace(z // 4, 3 * z // 4, per_volume).round().astype(int)]
    if not any(groups.values()):
        return {"skipped": "no real slices found (assets/examples, ../shared/data)"}
    labels: dict[str, list] = {"fp32": [], precision: []}
    for kind, group in groups.items():
        for start in range(0, len(group), plan["volume_batch"]):
            for p in labels:
                chunk = group[start : start + plan["volume_batch"]]
                res = segment_slices(model, chunk, settings, kind=kind, channels_last=channels_last, precision=p)
                labels[p] += [r.labels.ravel() for r in res]
    raw, kind = (groups["image"] or groups["nifti"])[0], "image" if groups["image"] else "nifti"
    arms = {
        p: lambda p=p: segment_image(model, raw, settings, kind=kind, keep_trajectory=False, precision=p)
        for p in labels
    }
    times = interleaved(arms, rounds=plan["runs"], device=device)
    a, b = np.concatenate(labels["fp32"]), np.concatenate(labels[precision])
    dice = {
        str(c): metrics.dice(a == c, b == c) for c in range(1, config.num_classes) if (a == c).any() or (b == c).any()
    }
    return {
        "precision": precision,
        "device": device.type,
        "weights": origin,
        "size": config.image_size,
        "slices": sum(len(g) for g in groups.values()),
        "fp32_seconds": statistics.median(times["fp32"]),
        "amp_seconds": statistics.median(times[precision]),
        "speedup": compare(times, "fp32", precision)["speedup"],
        "dice_per_class": dice,
        "dice_min": min(dice.values(), default=1.0),
        "dice_foreground": metrics.dice(a > 0, b > 0),
        "pixels_equal": float((a == b).mean()),
    }


def targets(result: dict) -> dict:
    """Issue 5's targets: value, bound, met; `applies` says whether this run is their setting."""
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = result[key]
        checks[key] = {
            "value": value,
            "op": op,
            "bound": bound,
            "met": value <= bound if op == "<=" else value >= bound,
        }
    applies = result["headline_size"] == HEADLINE_SIZE and result["machine"]["device"] == "cpu" and not result["quick"]
    return {"applies": applies, "setting": "2-core CPU, 256 px, default settings", "checks": checks}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", default="128,256,352", help="comma-separated image sizes (multiples of 32)")
    ap.add_argument("--json", metavar="OUT", default=None, help="write the results here as JSON")
    ap.add_argument("--weights", default=None, help="shipped weights (name, folder or Hub id): used at their size")
    ap.add_argument("--quick", action="store_true", help="1 round, 2 DDPM steps, 4 volume slices: a smoke test")
    ap.add_argument("--repeats", type=int, default=None, help="rounds for per-call timings and ensembles (5; quick 1)")
    ap.add_argument("--ddpm-steps", type=int, default=None, help="DDPM steps actually timed (default 20; quick 2)")
    ap.add_argument("--volume-slices", type=int, default=None, help="volume slices (default 155; quick 4; 0 skips)")
    ap.add_argument("--volume-batch", type=int, default=8, help="slices per batch (the command line's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast for the table")
    ap.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        default="auto",
        help="check this precision's "
        "masks against fp32 (auto: fp16 on CUDA, bf16 on a CPU with native bf16; none with --quick)",
    )
    ap.add_argument("--dice-slices", type=int, default=None, help="slices per validation volume for --amp (16)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    repeats = args.repeats or (1 if args.quick else 5)
    plan = {
        "warmup": 1,
        "repeats": repeats,
        "runs": repeats if args.quick else max(3, repeats - 2),
        "ddpm_steps": args.ddpm_steps or (2 if args.quick else 20),
        "volume_slices": args.volume_slices if args.volume_slices is not None else (4 if args.quick else 155),
        "volume_batch": args.volume_batch,
    }
    perf = {"channels_last": use_channels_last(device), "precision": args.precision}
    weights = hub.load_model(args.weights, device=device) if args.weights else None
    headline = HEADLINE_SIZE if HEADLINE_SIZE in sizes else max(sizes)
    result: dict = {"machine": machine(device), "plan": plan, "perf": perf, "quick": args.quick, "notes": []}
    result["weights_spec"] = args.weights
    if headline != HEADLINE_SIZE:
        result["notes"].append(f"{HEADLINE_SIZE} px not in --sizes: the headline keys are measured at {headline} px")
    raw, kind, source = example_slice(MedCondDiffConfig().image_channels)
    result["inputs"], result["sizes"] = {"slice": source}, {}
    for size in sizes:
        model, origin = build_model(size, weights, device)
        sraw, skind = (raw, kind) if model.config.image_channels == raw.shape[0] else example_slice(1)[:2]
        log(f"size {size} ({origin} weights) ...")
        result["sizes"][str(size)] = bench_size(model, origin, sraw, skind, plan, perf, device)
        if size == headline:
            log(f"ensembles at {size} ...")
            result["ensemble"] = bench_ensemble(model, sraw, skind, plan, perf, device)
    small = weights.config.image_size if weights is not None else min(sizes) if args.quick else 128
    if plan["volume_slices"] > 0:
        model, origin = build_model(small, weights, device)
        log(f"volume through the command line at {small} px ({origin} weights) ...")
        spec = args.weights if origin == "shipped" else None
        result["volume"] = bench_volume(model, spec, plan, device, perf["precision"]) | {"weights": origin}
    amp = None if args.amp == "none" or (args.amp == "auto" and args.quick) else args.amp
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "bf16" if result["machine"]["cpu_bf16"] else None
    if amp:
        model, origin = build_model(small, weights, device)
        log(f"{amp} vs fp32 masks at {small} px ({origin} weights) ...")
        per_volume = args.dice_slices if args.dice_slices is not None else (1 if args.quick else 16)
        result["precision_check"] = precision_check(model, origin, amp, plan, per_volume, device)
    else:
        result["precision_check"] = {"skipped": f"--amp {args.amp}" + (" (--quick)" if args.quick else "")}
    top = result["sizes"][str(headline)]
    result["headline_size"] = headline
    result["default_seconds_256"] = top["default"]["median"]
    result["ratio_vs_backbone_every_step"] = top["ratio_vs_backbone_every_step"]
    result["ratio_vs_ddpm1000"] = top["ratio_vs_ddpm1000"]
    result["ratio_ensemble4_vs_1"] = result["ensemble"]["4"]["ratio_vs_1"]
    finish(result["machine"], result["notes"])
    result["targets"] = targets(result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    result = {"command": "python benchmarks/bench.py " + shlex.join(argv)} | run(args)
    for key, c in result["targets"]["checks"].items():
        print(f"{key:<30} {c['value']:10.3f}  target {c['op']} {c['bound']:g}: {'met' if c['met'] else 'NOT MET'}")
    d = result["sizes"][str(result["headline_size"])]["ddpm1000"]
    print(
        f"(DDPM-1000 EXTRAPOLATED from {d['timed_steps']} of {DDPM_STEPS} steps; targets apply: "
        f"{result['targets']['applies']})"
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
