"""A whole volume through the command line, start-up included: this checkout against a baseline commit, in one run.

    python benchmarks/volume_cli.py [--baseline c9dfdcb] [--rounds 5] [--weights brats-demo] [--json OUT]
    python benchmarks/volume_cli.py --quick          # a smoke run: the bundled slab, one round

The baseline commit is checked out into a temporary git worktree (removed at the end). Each round runs
`python -m medconddiff segment FLAIR T1C -o OUT --weights W --device cpu --quiet` once from each checkout,
each in a fresh process (imports, loading the weights, reading, sampling, writing the mask all count),
the order alternating from round to round; the speed-up is the median of the per-round ratios
(harness.py). `medconddiff info` (start-up alone: imports and the weights) is timed the same way. The two
masks are compared (foreground Dice, voxels equal): the baseline ran fp32, this checkout its default
precision. Then, in this process, the same shipped model at this checkout's defaults against the authors'
structure (the backbone at every step, `backbone_every_step=True`) at equal steps, on the volume's middle
slices in one batch: the ratio RESULTS.md has reported since the first benchmark.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import REPO, finish, interleaved, log, machine, median_ratio, stats, write_json

BRATS = REPO.parent / "shared/data/brats2015/validation/brats_2013_pat0003_1"
VOLUMES = [  # the volume, then the bundled slab (also what --quick uses)
    [BRATS / f"{m}_subtrMeanDivStd.nii.gz" for m in ("Flair", "T1c")],
    [REPO / "assets/examples" / f"brats_pat0004_slab_{m}.nii.gz" for m in ("flair", "t1c")],
]
BASELINE = "c9dfdcb"  # main before sampling took the CPU's best precision and the command its quicker start


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def run_command(checkout: Path, argv: list[str]) -> dict:
    """One `python -m medconddiff ARGV` in a new process, started in `checkout` (so its own package and weights
    load): wall seconds, the child's peak resident memory (`os.wait4`) and its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDCONDDIFF_WEIGHTS")}
    env["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # files: no pipe to fill up
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "medconddiff", *argv], cwd=checkout, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: python -m medconddiff {shlex.join(argv)} failed: {stderr[-2000:]}")
    rss = usage.ru_maxrss / 1024.0  # KiB on Linux
    return {"seconds": seconds, "peak_rss_mb": rss, "stdout": stdout.strip()}


def input_files(quick: bool, slices: int | None, folder: Path) -> tuple[list[Path], str]:
    """The volume (FLAIR + T1c) and where it came from; `slices`: only its middle ones, written to `folder`."""
    import nibabel as nib

    files = next(f for f in (VOLUMES[1:] if quick else VOLUMES) if all(p.is_file() for p in f))
    source = " + ".join(str(p.relative_to(REPO if p.is_relative_to(REPO) else REPO.parent)) for p in files)
    depth = nib.load(files[0]).shape[2]
    if not slices or slices >= depth:
        return files, source
    start, out = (depth - slices) // 2, []
    for f in files:
        img = nib.load(f)
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, start : start + slices]
        out.append(folder / f.name)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine), out[-1])
    return out, source + f" (its middle {slices} slices)"


def mask_agreement(a: Path, b: Path) -> dict:
    """Two label maps: foreground Dice pooled over the classes, and the share of voxels equal."""
    import nibabel as nib

    x, y = (np.asarray(nib.load(p).dataobj) for p in (a, b))
    total = int((x > 0).sum()) + int((y > 0).sum())
    same = int(((x == y) & (x > 0)).sum())
    return {"dice_foreground": 1.0 if total == 0 else 2 * same / total, "voxels_equal": float((x == y).mean())}


def authors_ratio(files: list[Path], weights: str, slices: int, rounds: int) -> dict:
    """This checkout's defaults against the authors' structure (backbone every step) at equal steps, on the
    volume's middle slices with content as one batch, both through `pipeline.iter_segment_slices`."""
    from collections import deque

    from medconddiff.hub import load_model
    from medconddiff.pipeline import SamplingSettings, iter_segment_slices, load_case, prepare_slice

    model = load_model(weights)
    scan = load_case(files, model.config)
    z = scan.data.shape[-1]
    order = sorted(range(z), key=lambda k: abs(k - z // 2))  # the middle slices first
    raws = [
        scan.data[..., k]
        for k in order
        if prepare_slice(scan.data[..., k], model.config, kind="nifti").image is not None
    ]
    raws = raws[:slices]
    settings = SamplingSettings.defaults_for(model.config)

    def seg(**kw):
        return lambda: deque(iter_segment_slices(model, raws, settings, kind=scan.kind, **kw), maxlen=1)[0]

    ours, theirs = seg()(), seg(backbone_every_step=True)()
    times = interleaved(
        {"default": seg(), "every_step": seg(backbone_every_step=True)}, rounds=rounds, device=torch.device("cpu")
    )
    return {
        "slices": len(raws),
        "size": model.config.image_size,
        "steps": settings.steps,
        "precision": ours[0].precision,
        "default": stats(times["default"]),
        "every_step": stats(times["every_step"]),
        "ratio_vs_backbone_every_step": median_ratio(times["every_step"], times["default"]),
        "same_labels": all(np.array_equal(a.labels, b.labels) for a, b in zip(ours, theirs, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    ap.add_argument("--weights", default="brats-demo")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up run of each (5)")
    ap.add_argument("--slices", type=int, default=None, help="only the volume's middle N slices (default: all)")
    ap.add_argument("--authors-slices", type=int, default=8, help="slices in the authors'-structure batch (8)")
    ap.add_argument("--no-startup", action="store_true", help="do not time `medconddiff info` (start-up alone)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="the bundled slab, one round, no warm-up: a smoke run")
    args = ap.parse_args(argv)
    rounds, warmup = (1, 0) if args.quick else (args.rounds, 1)
    authors_slices = 2 if args.quick else args.authors_slices
    baseline = git("rev-parse", args.baseline)
    info, notes = machine(torch.device("cpu")), []
    with tempfile.TemporaryDirectory(prefix="medconddiff-volume-cli-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "baseline"
        git("worktree", "add", "--detach", "--quiet", str(tree), baseline)
        try:
            files, source = input_files(args.quick, args.slices, tmp)
            checkouts = {"baseline": tree, "current": REPO}
            common = ["--weights", args.weights, "--device", "cpu", "--quiet"]
            commands = {
                name: ["segment", *map(str, files), "-o", str(tmp / f"{name}.nii.gz"), *common] for name in checkouts
            }
            arms = {f"{kind}_{name}": [] for kind in ("segment", "startup") for name in checkouts}
            rss: dict[str, list[float]] = {name: [] for name in checkouts}
            out_line = ""
            for r in range(-warmup, rounds):
                names = list(checkouts) if r % 2 == 0 else list(checkouts)[::-1]  # the order alternates
                for name in names:
                    done = run_command(checkouts[name], commands[name])
                    log(f"round {r + 1}: {name} segment {done['seconds']:.2f} s")
                    if r >= 0:
                        arms[f"segment_{name}"].append(round(done["seconds"], 3))
                        rss[name].append(done["peak_rss_mb"])
                    out_line = done["stdout"].splitlines()[-1] if name == "current" else out_line
                    if not args.no_startup:
                        started = run_command(checkouts[name], ["info", "--weights", args.weights])
                        log(f"round {r + 1}: {name} info {started['seconds']:.2f} s")
                        if r >= 0:
                            arms[f"startup_{name}"].append(round(started["seconds"], 3))
            masks = mask_agreement(tmp / "baseline.nii.gz", tmp / "current.nii.gz")
            log(f"this checkout's defaults against the backbone at every step ({authors_slices} slices) ...")
            authors = authors_ratio(files, args.weights, authors_slices, rounds)
            import nibabel as nib

            shape = list(nib.load(files[0]).shape)
        finally:
            git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(tree, ignore_errors=True)
    skipped = re.search(r"(\d+) of (\d+) slice\(s\) held only background", out_line)
    precision = re.search(r"precision (\w+)", out_line)
    result = {
        "kind": "volume_cli",
        "command": "python benchmarks/volume_cli.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "baseline": {"commit": baseline[:7], "checkout": "temporary git worktree"},
        "current": {"commit": info.get("commit")},
        "input": source,
        "shape": shape,
        "weights": args.weights,
        "segment_command": "python -m medconddiff "
        + shlex.join(commands["current"])
        .replace(str(tmp), "TMP")
        .replace(f"{REPO}/", "")
        .replace(str(REPO.parent), ".."),
        "rounds": rounds,
        "warmup_runs": warmup,
        "quick": args.quick,
        "segment": {name: stats(arms[f"segment_{name}"]) | {"peak_rss_mb": max(rss[name])} for name in checkouts},
        "speedup": median_ratio(arms["segment_baseline"], arms["segment_current"]),
        "current_output": out_line,
        "current_precision": precision.group(1) if precision else None,
        "skipped_slices": int(skipped.group(1)) if skipped else 0,
        "masks": masks,
        "authors": authors,
        "machine": info,
        "notes": notes,
    }
    if not args.no_startup:
        result["startup"] = {name: stats(arms[f"startup_{name}"]) for name in checkouts}
        result["startup_speedup"] = median_ratio(arms["startup_baseline"], arms["startup_current"])
    finish(info, notes)
    print(
        f"whole command: {args.baseline} {statistics.median(arms['segment_baseline']):.2f} s, this checkout "
        f"{statistics.median(arms['segment_current']):.2f} s: x{result['speedup']:.2f} (median of {rounds} round(s))"
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
