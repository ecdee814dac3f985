"""Before/after of each speed option, measured side by side (interleaved repeats) on this machine.

    python benchmarks/ablate.py [--device cpu|cuda] [--sizes 128,256] [--repeats 5] [--json OUT] [--experiments ...,compile]

Each experiment times one default segmentation of a real slice (10 DDIM steps, 1 member, mean-logits
consensus) with the option off and on, alternating the two in every repeat so that a change in
machine load hits both alike; it reports medians and their ratio. `bench.py` gives the absolute
figures; this gives the evidence for each optimisation listed in benchmarks/RESULTS.md.

Experiments: autograd off (grad vs no_grad vs inference_mode), the denoiser's channels-last layout,
channels-last weights as well (a candidate, not adopted), the trajectory buffer's layout (K innermost
or contiguous, whole segmentation), the denoiser's architecture (width 256 + full-resolution head vs width 96 + stride-2
head), ensemble rows per denoiser call (cache-sized chunks on the CPU), reduced-precision autocast
(bf16 on the CPU, fp16 on CUDA), threads, slices per batch for a volume, and torch.compile of the denoiser (CUDA: mode reduce-overhead, i.e. CUDA graphs).
Which of them the library keeps, and why, is listed in benchmarks/RESULTS.md (`report.py`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from medconddiff.config import MedCondDiffConfig  # noqa: E402
from medconddiff.model import MedCondDiff  # noqa: E402
from medconddiff.pipeline import (  # noqa: E402
    SamplingSettings,
    encode,
    segment_image,
    segment_volume,
    use_channels_last,
)
from medconddiff.sampler import denoiser_chunk, sample_loop  # noqa: E402


def interleaved(variants: dict[str, Callable[[], object]], *, repeats: int, device: torch.device) -> dict:
    """Median seconds of each variant, timed in turn within every repeat, after one warm-up each."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name] += bench.measure(fn, device=device, warmup=0, repeats=1)
    return {name: {"median": statistics.median(t), "samples": [round(x, 5) for x in t]} for name, t in times.items()}


def with_ratio(res: dict, before: str, after: str) -> dict:
    res["speedup"] = res[before]["median"] / res[after]["median"]
    res["before"], res["after"] = before, after
    return res


def autograd_modes(model, image: torch.Tensor, settings: SamplingSettings, device: torch.device, repeats: int) -> dict:
    """The backbone once + the sampling loop under each autograd mode (the pipeline uses inference_mode)."""

    layout = use_channels_last(device)

    def run(mode: Callable[[], AbstractContextManager]) -> Callable[[], None]:
        def go() -> None:
            with mode():
                cond = encode(model, image)
                for _ in sample_loop(model, cond, steps=settings.steps, keep_x_t=False, channels_last=layout):
                    pass

        return go

    res = interleaved(
        {"grad": run(torch.enable_grad), "no_grad": run(torch.no_grad), "inference_mode": run(torch.inference_mode)},
        repeats=repeats,
        device=device,
    )
    for name, mode in (("grad", torch.enable_grad), ("inference_mode", torch.inference_mode)):
        with bench.PeakMemory(device) as mem:
            run(mode)()
        res[name]["memory"] = mem.result
    return with_ratio(res, "grad", "inference_mode")


def experiments_at(size: int, raw, kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Every before/after at one image size, on the real architecture with random weights."""
    model, _ = bench.build_model(size, None, device)
    settings = SamplingSettings.defaults_for(model.config)
    image = bench.model_grid(model, raw, kind, device)
    cpu = device.type == "cpu"
    row: dict = {}

    def seg(net=model, **kw) -> Callable[[], None]:
        return lambda: segment_image(net, raw, settings, kind=kind, keep_trajectory=False, **kw)

    todo = set(args.experiments.split(","))
    if "autograd" in todo:
        print(f"{size}: autograd", file=sys.stderr, flush=True)
        row["autograd"] = autograd_modes(model, image, settings, device, args.repeats)
    if "layout" in todo:
        print(f"{size}: layout", file=sys.stderr, flush=True)
        row |= layouts(model, seg, args.repeats, device)
    if "denoiser" in todo:
        print(f"{size}: denoiser architecture", file=sys.stderr, flush=True)
        for e in (1, 4):
            row[f"denoiser_architecture_e{e}"] = denoiser_architectures(size, raw, kind, e, args.repeats, device)
    if "chunk" in todo:
        print(f"{size}: denoiser rows per call", file=sys.stderr, flush=True)
        row["denoiser_chunk_e8"] = denoiser_chunks(model, image, settings, 8, args.repeats, device)
    if "autocast" in todo:
        amp = "bf16" if cpu else "fp16"
        if cpu and not bench.machine(device)["cpu_bf16"]:
            row["autocast"] = {"skipped": "this CPU has no native bf16 (autocast would emulate it, slowly)"}
        else:
            print(f"{size}: precision", file=sys.stderr, flush=True)
            res = interleaved({"fp32": seg(), amp: seg(precision=amp)}, repeats=args.repeats, device=device)
            row["autocast"] = with_ratio(res, "fp32", amp)
    if cpu and "threads" in todo:
        print(f"{size}: threads", file=sys.stderr, flush=True)
        row["threads"] = thread_counts(seg, args.repeats, device)
    if "compile" in todo:
        print(f"{size}: torch.compile (slow)", file=sys.stderr, flush=True)
        row["torch_compile_denoiser"] = compile_denoiser(model, seg, args.repeats, device)
    return row


IMAGE_PATH = ("adapter", "backbone", "decoder")  # the modules `encode_image` runs: once per image


def layouts(model, seg: Callable[..., Callable[[], None]], repeats: int, device: torch.device) -> dict:
    """The denoiser's channels-last activations (adopted), then channels-last weights (a candidate).

    The candidate lays out the weights of the image pathway (adapter, backbone, decoder) channels-last,
    and, as a third arm, every weight; the speed-up reported is the image pathway's.
    """
    out = {}
    pair = {"contiguous": seg(channels_last=False), "channels_last": seg(channels_last=True)}
    out["channels_last_denoiser"] = with_ratio(
        interleaved(pair, repeats=repeats, device=device), "contiguous", "channels_last"
    )
    start = time.perf_counter()
    image_cl = copy.deepcopy(model)
    for name in IMAGE_PATH:
        if hasattr(image_cl, name):
            getattr(image_cl, name).to(memory_format=torch.channels_last)
    relayout_s = time.perf_counter() - start  # copy + re-layout: a one-off cost per loaded model
    all_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    arms = {
        "activations_only": seg(channels_last=True),
        "image_path_weights": seg(image_cl, channels_last=True),
        "all_weights": seg(all_cl, channels_last=True),
    }
    res = interleaved(arms, repeats=repeats, device=device)
    res["relayout_seconds"] = relayout_s
    res["speedup_all_weights"] = res["activations_only"]["median"] / res["all_weights"]["median"]
    out["channels_last_weights"] = with_ratio(res, "activations_only", "image_path_weights")
    return out


def denoiser_architectures(size: int, raw, kind: str, ensemble: int, repeats: int, device) -> dict:
    """The mask branch as first built (at the decoder's width 256, a feature map at full resolution
    before the last conv) vs now (`denoiser_width` 96, the last convs at stride 2 then a pixel
    shuffle to the K logits). Random weights, the same image pathway; E members; speed only (the
    masks differ: they are different networks). Also reports each arm's E / E=1 time ratio."""
    config = MedCondDiffConfig(image_size=size)
    legacy = dataclasses.replace(config, denoiser_width=config.width, head_stride=1)
    arms = {}
    for name, cfg in (("width256_full_res_head", legacy), ("width96_stride2_head", config)):
        torch.manual_seed(0)
        arms[name] = MedCondDiff(cfg).to(device).eval()
    settings = replace(SamplingSettings.defaults_for(config), ensemble=ensemble)

    def seg(net) -> Callable[[], None]:
        return lambda: segment_image(net, raw, settings, kind=kind, keep_trajectory=False)

    res = interleaved({name: seg(net) for name, net in arms.items()}, repeats=repeats, device=device)
    res["ensemble"] = ensemble
    res["denoiser_parameters"] = {
        name: net.parameter_counts()["rest"] - sum(p.numel() for p in net.decoder.parameters())
        for name, net in arms.items()
    }
    return with_ratio(res, "width256_full_res_head", "width96_stride2_head")


def denoiser_chunks(model, image, settings: SamplingSettings, ensemble: int, repeats: int, device) -> dict:
    """E members: every row through the denoiser in one call vs `sampler.denoiser_chunk` rows per call."""
    layout = use_channels_last(device)

    def run(chunk: int | None) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                cond = encode(model, image)
                steps = sample_loop(
                    model,
                    cond,
                    steps=settings.steps,
                    ensemble=ensemble,
                    keep_x_t=False,
                    channels_last=layout,
                    chunk=chunk,
                )
                for _ in steps:
                    pass

        return go

    res = interleaved({"one_call": run(ensemble), "chunked": run(None)}, repeats=repeats, device=device)
    with torch.inference_mode():
        res["rows_per_call"] = min(ensemble, denoiser_chunk(model, encode(model, image)))
    res["ensemble"] = ensemble
    return with_ratio(res, "one_call", "chunked")


def thread_counts(seg: Callable[..., Callable[[], None]], repeats: int, device: torch.device) -> dict:
    """One intra-op thread vs torch's default (the core count); restored after every run."""
    n = torch.get_num_threads()

    def threads(k: int) -> Callable[[], None]:
        def go() -> None:
            torch.set_num_threads(k)
            try:
                seg()()
            finally:
                torch.set_num_threads(n)

        return go

    many = n if n > 1 else 2
    res = interleaved({"1": threads(1), str(many): threads(many)}, repeats=repeats, device=device)
    return with_ratio(res, "1", str(many))


def compile_denoiser(model, seg: Callable[..., Callable[[], None]], repeats: int, device: torch.device) -> dict:
    """torch.compile of `model.denoise` (CUDA: mode reduce-overhead, i.e. CUDA graphs), with its build time."""
    compiled = torch.compile(model.denoise, dynamic=False, mode=None if device.type == "cpu" else "reduce-overhead")

    def use(on: bool) -> Callable[[], None]:
        def go() -> None:
            if on:
                model.denoise = compiled  # an instance attribute shadows the method
            else:
                model.__dict__.pop("denoise", None)
            seg()()

        return go

    try:
        start = time.perf_counter()
        use(True)()  # builds the compiled graph
        compile_s = time.perf_counter() - start
        res = interleaved({"eager": use(False), "compiled": use(True)}, repeats=repeats, device=device)
    finally:
        model.__dict__.pop("denoise", None)
    res["first_call_seconds"] = compile_s
    return with_ratio(res, "eager", "compiled")


def volume_batches(slices: int, repeats: int, device: torch.device) -> dict:
    """Slices per second through `segment_volume` (the CLI path) at 128 px for 1, 4, 8, 16 slices per batch."""
    model, _ = bench.build_model(128, None, device)
    vol, kind, source = bench.example_volume(model.config, slices)
    settings = SamplingSettings.defaults_for(model.config)
    sizes = (1, 4, 8, 16)

    def run(b: int) -> Callable[[], None]:
        return lambda: segment_volume(model, vol, settings, kind=kind, batch_size=b)

    res = interleaved({str(b): run(b) for b in sizes}, repeats=repeats, device=device)
    for b in sizes:
        res[str(b)]["slices_per_second"] = slices / res[str(b)]["median"]
    res["source"], res["slices"], res["size"] = source, slices, 128
    return with_ratio(res, "1", "8")


def run_experiments(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    out: dict = {"machine": bench.machine(device), "repeats": args.repeats, "sizes": {}}
    raw, kind, source = bench.example_slice(2)
    out["input"] = source
    out["experiments"] = args.experiments.split(",")
    for size in [int(s) for s in args.sizes.split(",")]:
        out["sizes"][str(size)] = experiments_at(size, raw, kind, args, device)
    if args.volume_slices:
        print("volume batch sizes", file=sys.stderr, flush=True)
        out["volume_batch"] = volume_batches(args.volume_slices, max(1, args.repeats // 2), device)
    out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    note = bench.busy_note(out["machine"])
    out["notes"] = [note] if note else []
    return out


def print_results(out: dict) -> None:
    m = out["machine"]
    print(
        f"\nablations on {m['device']} ({m.get('gpu') or m['cpu']}), {m['threads']} threads, {out['repeats']} repeats"
    )
    print(f"{'size':>5}  {'experiment':<24} {'before':>16} {'after':>16} {'speed-up':>9}")
    for size, row in out["sizes"].items():
        for name, r in row.items():
            if "skipped" in r:
                print(f"{size:>5}  {name:<24} skipped: {r['skipped']}")
                continue
            b, a = r["before"], r["after"]
            print(
                f"{size:>5}  {name:<24} {b + ' ' + format(r[b]['median'], '.3f'):>16} "
                f"{a + ' ' + format(r[a]['median'], '.3f'):>16} {r['speedup']:>9.2f}"
            )
    vb = out.get("volume_batch")
    if vb:
        rates = ", ".join(f"batch {b}: {vb[b]['slices_per_second']:.2f}" for b in ("1", "4", "8", "16"))
        print(f"volume ({vb['slices']} slices at {vb['size']} px), slices/s: {rates}")
    for note in out.get("notes", []):
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--volume-slices", type=int, default=16, help="slices for the batch-size sweep (0 skips)")
    ap.add_argument(
        "--experiments",
        default="autograd,layout,denoiser,chunk,autocast,threads,compile",
        help="comma-separated subset of autograd,layout,denoiser,chunk,autocast,threads,compile "
        "(compile: about a minute)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"command": "python benchmarks/ablate.py " + shlex.join(argv)} | run_experiments(args)
    print_results(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
