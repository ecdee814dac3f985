"""Before/after of each speed option, timed side by side (interleaved rounds) on this machine.

    python benchmarks/ablate.py [--device cpu|cuda] [--sizes 128,256] [--repeats 5] [--json OUT] [--experiments ...]

Each experiment times one default segmentation of a real slice (or the sampling loop, where the
option lives there) with the option off and on, the arms alternating in every round; the speed-up
is the median of the per-round ratios. Experiments: autograd (grad / no_grad / inference_mode),
layout (channels-last activations; channels-last weights, a candidate), denoiser (width 256 with a
full-resolution head vs width 96 with a stride-2 head), chunk (ensemble rows per denoiser call),
autocast (bf16 on the CPU, fp16 on CUDA), threads, and slices per batch for a volume. Which options
the library keeps, and why, is written in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from bench import build_model, example_slice, volume_files
from harness import PeakMemory, compare, finish, interleaved, log, machine, write_json

from medconddiff.config import MedCondDiffConfig
from medconddiff.model import MedCondDiff
from medconddiff.pipeline import SamplingSettings, encode, load_case, segment_image, segment_volume, use_channels_last
from medconddiff.sampler import denoiser_chunk, sample_loop

EXPERIMENTS = ("autograd", "layout", "denoiser", "chunk", "autocast", "threads")
IMAGE_PATH = ("adapter", "backbone", "decoder")  # the modules `encode_image` runs, once per image


def sampling(model, image: torch.Tensor, steps: int, **kw) -> Callable[[], None]:
    """The backbone once, then the sampling loop run to the end (no consensus): for options that live there."""

    def go() -> None:
        for _ in sample_loop(model, encode(model, image, precision="fp32"), steps=steps, keep_x_t=False, **kw):
            pass

    return go


def autograd_modes(model, image, steps: int, rounds: int, device) -> dict:
    layout = use_channels_last(device)
    modes = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}

    def under(mode) -> Callable[[], None]:
        def go() -> None:
            with mode():
                sampling(model, image, steps, channels_last=layout)()

        return go

    res = compare(
        interleaved({n: under(m) for n, m in modes.items()}, rounds=rounds, device=device), "grad", "inference_mode"
    )
    for name in ("grad", "inference_mode"):
        with PeakMemory(device) as mem:
            under(modes[name])()
        res[name]["memory"] = mem.result
    return res


def layouts(model, seg, rounds: int, device) -> dict:
    """Channels-last activations for the denoiser (adopted on the CPU), then channels-last weights
    for the image pathway and for every weight (candidates), each a re-laid-out copy of the model."""
    pair = {"contiguous": seg(channels_last=False), "channels_last": seg(channels_last=True)}
    out = {
        "channels_last_denoiser": compare(
            interleaved(pair, rounds=rounds, device=device), "contiguous", "channels_last"
        )
    }
    image_cl, all_cl = copy.deepcopy(model), copy.deepcopy(model).to(memory_format=torch.channels_last)
    for name in IMAGE_PATH:
        getattr(image_cl, name).to(memory_format=torch.channels_last)
    arms = {
        "activations_only": seg(channels_last=True),
        "image_path_weights": seg(image_cl, channels_last=True),
        "all_weights": seg(all_cl, channels_last=True),
    }
    times = interleaved(arms, rounds=rounds, device=device)
    res = compare(times, "activations_only", "image_path_weights")
    res["speedup_all_weights"] = compare(times, "activations_only", "all_weights")["speedup"]
    return out | {"channels_last_weights": res}


def denoiser_architectures(size: int, raw, kind: str, ensemble: int, rounds: int, device) -> dict:
    """The mask branch as first built (width 256, full-resolution head) vs now (width 96, stride-2 head):
    random weights, the same image pathway, E members; speed only (different networks, different masks)."""
    config = MedCondDiffConfig(image_size=size)
    arms = {}
    for name, cfg in (
        ("width256_full_res_head", dataclasses.replace(config, denoiser_width=config.width, head_stride=1)),
        ("width96_stride2_head", config),
    ):
        torch.manual_seed(0)
        arms[name] = MedCondDiff(cfg).to(device).eval()
    settings = replace(SamplingSettings.defaults_for(config), ensemble=ensemble)
    seg = {
        n: (lambda m=m: segment_image(m, raw, settings, kind=kind, keep_trajectory=False, precision="fp32"))
        for n, m in arms.items()
    }
    res = compare(interleaved(seg, rounds=rounds, device=device), "width256_full_res_head", "width96_stride2_head")
    res["ensemble"] = ensemble
    res["denoiser_parameters"] = {
        n: m.parameter_counts()["rest"] - sum(p.numel() for p in m.decoder.parameters()) for n, m in arms.items()
    }
    return res


def thread_counts(seg, rounds: int, device) -> dict:
    """One intra-op thread vs torch's default (the cores); the default is restored after every call."""
    n = torch.get_num_threads()
    many = n if n > 1 else 2

    def threads(k: int) -> Callable[[], None]:
        def go() -> None:
            torch.set_num_threads(k)
            try:
                seg()()
            finally:
                torch.set_num_threads(n)

        return go

    return compare(
        interleaved({"1": threads(1), str(many): threads(many)}, rounds=rounds, device=device), "1", str(many)
    )


def volume_batches(slices: int, rounds: int, device) -> dict:
    """Slices per second through `segment_volume` (the command line's path, in fp32) at 128 px, 1 to 16 slices per
    batch."""
    model, _ = build_model(128, None, device)
    settings = SamplingSettings.defaults_for(model.config)
    with tempfile.TemporaryDirectory() as tmp:
        files, source = volume_files(model.config, slices, Path(tmp))
        scan = load_case(files, model.config)
    arms = {
        str(b): (lambda b=b: segment_volume(model, scan.data, settings, kind=scan.kind, batch_size=b, precision="fp32"))
        for b in (1, 4, 8, 16)
    }
    res = compare(interleaved(arms, rounds=rounds, device=device), "1", "8")
    for b in arms:
        res[b]["slices_per_second"] = slices / res[b]["median"]
    return res | {"source": source, "slices": slices, "size": 128}


def experiments_at(size: int, raw, kind: str, todo: set[str], rounds: int, device: torch.device) -> dict:
    """Every asked-for before/after at one image size, on the real architecture with random weights."""
    model, _ = build_model(size, None, device)
    settings = SamplingSettings.defaults_for(model.config)
    image = torch.randn(1, model.config.image_channels, size, size, device=device)
    row: dict = {}

    def seg(net=model, **kw) -> Callable[[], None]:  # fp32 unless an arm asks otherwise: each option against fp32
        kw = {"precision": "fp32"} | kw
        return lambda: segment_image(net, raw, settings, kind=kind, keep_trajectory=False, **kw)

    if "autograd" in todo:
        log(f"{size}: autograd")
        row["autograd"] = autograd_modes(model, image, settings.steps, rounds, device)
    if "layout" in todo:
        log(f"{size}: layout")
        row |= layouts(model, seg, rounds, device)
    if "denoiser" in todo:
        log(f"{size}: denoiser architecture")
        for e in (1, 4):
            row[f"denoiser_architecture_e{e}"] = denoiser_architectures(size, raw, kind, e, rounds, device)
    if "chunk" in todo:
        log(f"{size}: denoiser rows per call")
        layout, e = use_channels_last(device), 8
        with torch.inference_mode():
            arms = {
                "one_call": sampling(model, image, settings.steps, ensemble=e, channels_last=layout, chunk=e),
                "chunked": sampling(model, image, settings.steps, ensemble=e, channels_last=layout),
            }
            res = compare(interleaved(arms, rounds=rounds, device=device), "one_call", "chunked")
            res["rows_per_call"] = min(e, denoiser_chunk(model, encode(model, image)))
        row["denoiser_chunk_e8"] = res | {"ensemble": e}
    if "autocast" in todo:
        amp = "bf16" if device.type == "cpu" else "fp16"
        if device.type == "cpu" and not machine(device)["cpu_bf16"]:
            row["autocast"] = {"skipped": "this CPU has no native bf16 (autocast would emulate it, slowly)"}
        else:
            log(f"{size}: precision")
            row["autocast"] = compare(
                interleaved({"fp32": seg(), amp: seg(precision=amp)}, rounds=rounds, device=device), "fp32", amp
            )
    if "threads" in todo and device.type == "cpu":
        log(f"{size}: threads")
        row["threads"] = thread_counts(seg, rounds, device)
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per experiment")
    ap.add_argument("--volume-slices", type=int, default=16, help="slices for the batch-size sweep (0 skips)")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"a subset of {','.join(EXPERIMENTS)}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", metavar="OUT", default=None)
    args = ap.parse_args(argv)
    todo = set(args.experiments.split(","))
    if todo - set(EXPERIMENTS):
        ap.error(
            f"unknown experiment(s) {', '.join(sorted(todo - set(EXPERIMENTS)))}; accepted: {', '.join(EXPERIMENTS)}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: dict = {"command": "python benchmarks/ablate.py " + shlex.join(argv), "machine": machine(device)}
    raw, kind, out["input"] = example_slice(2)
    out |= {"repeats": args.repeats, "experiments": sorted(todo), "sizes": {}, "notes": []}
    for size in [int(s) for s in args.sizes.split(",")]:
        out["sizes"][str(size)] = experiments_at(size, raw, kind, todo, args.repeats, device)
    if args.volume_slices:
        log("volume batch sizes")
        out["volume_batch"] = volume_batches(args.volume_slices, max(1, args.repeats // 2), device)
    finish(out["machine"], out["notes"])
    for size, row in out["sizes"].items():
        for name, r in row.items():
            print(f"{size:>5} {name:<26} " + (f"skipped: {r['skipped']}" if "skipped" in r else f"x{r['speedup']:.2f}"))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
