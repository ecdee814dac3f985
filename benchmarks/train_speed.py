"""Training throughput: fp32 against bf16 autocast, one thread against every core, at 128 and 256 px.

    python benchmarks/train_speed.py --json benchmarks/results/train_speed.json
    python benchmarks/train_speed.py --sizes 64 --rounds 1 --steps 1     # a seconds-long check

Times `train.train.train_step` itself (noisy masks, forward under autocast, fp32 loss, backward,
clipped AdamW step, EMA update) plus the augmentation of each batch, with the recipe of a shipped
config (default: the Kvasir-SEG model's; batch 8 x 2 noise draws, augmentation on). Every arm has
its own model and optimiser; arms run in interleaved rounds (`harness.interleaved`), and each ratio
is the median of the per-round ratios. Batches are random tensors of the right shape: the time of a
step does not depend on what the pixels show. On a CPU without native bf16 the bf16 arms are skipped
and the output says so (autocast would emulate bf16 there, slowly).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from harness import finish, interleaved, log, machine, median_ratio, stats, write_json

from medconddiff import precision as P
from medconddiff.diffusion import class_weights_from_counts
from medconddiff.model import MedCondDiff
from train import data as D
from train.train import load_run_config, train_step


def make_arm(run, *, amp: str, threads: int, device: torch.device, seed: int = 0):
    """A callable taking `steps` training steps of a fresh model at `threads` threads and precision `amp`."""
    torch.manual_seed(seed)
    model = MedCondDiff(run.model).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    s, m = run.train, run.model
    pool_images = torch.rand(4 * s.batch_size, m.image_channels, m.image_size, m.image_size, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(m.image_size), torch.arange(m.image_size), indexing="ij")
    centre = torch.rand(4 * s.batch_size, 2, generator=gen) * m.image_size
    radius = m.image_size * (0.1 + 0.2 * torch.rand(4 * s.batch_size, generator=gen))
    dist2 = (yy[None] - centre[:, 0, None, None]) ** 2 + (xx[None] - centre[:, 1, None, None]) ** 2
    pool_labels = (dist2 < radius[:, None, None] ** 2).long() * (m.num_classes - 1)  # (N, S, S) discs
    class_w = class_weights_from_counts(D.class_counts(pool_labels, m.num_classes))
    state = {"step": 0}

    def go(steps: int) -> None:
        torch.set_num_threads(threads)
        for _ in range(steps):
            idx = torch.randint(0, pool_images.shape[0], (s.batch_size,), generator=gen)
            img, lab = D.augment(pool_images[idx].clone(), pool_labels[idx].clone(), run.augment, gen, background=0.0)
            train_step(model, model, ema, opt, img, lab, run, step=state["step"], class_w=class_w, gen=gen, amp=amp)
            state["step"] += 1

    return go


def compare(times: dict[str, list[float]], before: str, after: str) -> dict:
    return {"before": before, "after": after, "speedup": median_ratio(times[before], times[after])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="train/configs/kvasir_demo.toml", help="the recipe whose steps are timed")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    info = machine(device)
    bf16 = P.native_bf16(device)
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    if device.type == "cuda" and not bf16:
        precisions = ["fp32", "fp16"]
    thread_counts = [cores] if device.type == "cuda" else sorted({1, cores})
    note = f"{device.type} bf16 support: {'native' if bf16 else 'none'}" + (
        "" if bf16 or device.type == "cuda" else " - the bf16 arms are skipped (emulated bf16 is slower than fp32)"
    )
    log(note)
    result: dict = {"kind": "train_speed", "machine": info, "config": args.config, "notes": [note], "sizes": {}}
    for size in args.sizes:
        run = load_run_config(args.config, [f"model.image_size={size}", 'train.precision="fp32"'])
        images = run.train.batch_size
        arms = {
            f"{amp} {threads}t": make_arm(run, amp=amp, threads=threads, device=device)
            for amp in precisions
            for threads in thread_counts
        }
        log(f"{size} px: {', '.join(arms)} ({args.rounds} rounds of {args.steps} steps)")
        times = interleaved(
            {k: (lambda fn=fn: fn(args.steps)) for k, fn in arms.items()}, rounds=args.rounds, device=device
        )
        row: dict = {"batch": images, "noise_draws": run.train.noise_draws, "arms": {}, "ratios": {}}
        for name, t in times.items():
            per_step = [x / args.steps for x in t]
            row["arms"][name] = {**stats(per_step), "steps_per_s": 1 / stats(per_step)["median"]}
            row["arms"][name]["images_per_s"] = images * row["arms"][name]["steps_per_s"]
        top = max(thread_counts)

        if len(precisions) > 1:
            row["ratios"][f"{precisions[1]} vs fp32, {top} threads"] = compare(
                times, f"fp32 {top}t", f"{precisions[1]} {top}t"
            )
        if len(thread_counts) > 1:
            row["ratios"][f"{top} threads vs 1, fp32"] = compare(times, "fp32 1t", f"fp32 {top}t")
            if len(precisions) > 1:
                best = f"{precisions[1]} {top}t"
                row["ratios"][f"{precisions[1]} {top} threads vs fp32 1 thread"] = compare(times, "fp32 1t", best)
        result["sizes"][str(size)] = row
        for name, a in row["arms"].items():
            log(f"  {name}: {a['median']:.3f} s/step, {a['images_per_s']:.1f} images/s")
        for name, r in row["ratios"].items():
            log(f"  {name}: x{r['speedup']:.2f}")
    torch.set_num_threads(cores)
    finish(info, result["notes"])
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
