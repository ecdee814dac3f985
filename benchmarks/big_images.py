"""Large 2D inputs and whole volumes through the command line: wall time (start-up included) and peak RSS.

    python benchmarks/big_images.py [--weights brats-demo] [--json OUT] [--rounds 2] [--quick]

Each arm is one `python -m medconddiff segment ...` in a fresh process (so start-up, reading, the
model and writing the mask all count), its peak resident memory from the kernel's accounting of
that child (`os.wait4`). The 2D arms are the bundled BraTS FLAIR + T1c slice scaled to 512 px and to
4000 px (PNG, and JPEG, which is decoded at reduced scale), timed in interleaved rounds; the ratio is
the median of per-round ratios (harness.py). The volume arm is a whole BraTS volume (the shared data,
else the bundled slab), once. The mask must come back at the input's full size.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import REPO, finish, log, machine, median_ratio, write_json

EXAMPLES = REPO / "assets" / "examples"
SLICE = [EXAMPLES / f"brats_pat0003_z080_{m}.png" for m in ("flair", "t1c")]
VOLUMES = [
    [REPO.parent / "shared/data/brats2015/validation/brats_2013_pat0003_1" / f"{m}_subtrMeanDivStd.nii.gz"
     for m in ("Flair", "T1c")],
    [EXAMPLES / f"brats_pat0004_slab_{m}.nii.gz" for m in ("flair", "t1c")],
]  # fmt: skip


def scaled_pair(side: int, ext: str, folder: Path) -> list[Path]:
    """The bundled two-modality slice resized (bicubic) to side x side, saved as PNG or JPEG."""
    from PIL import Image

    out = []
    for src in SLICE:
        path = folder / f"{side}_{src.stem}.{ext}"
        Image.open(src).resize((side, side), Image.Resampling.BICUBIC).save(
            path, **({"quality": 92} if ext == "jpg" else {})
        )
        out.append(path)
    return out


def run_cli(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one `python -m medconddiff ARGV` in a new process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medconddiff", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"python -m medconddiff {shlex.join(argv)} failed: {err.strip()}")
    return seconds, usage.ru_maxrss / 1024.0  # KiB on Linux


def mask_shape(path: Path) -> list[int]:
    from PIL import Image

    with Image.open(path) as img:
        return [img.size[1], img.size[0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="brats-demo")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round, the bundled slab: a smoke run")
    args = ap.parse_args(argv)
    small, big = (128, 600) if args.quick else (512, 4000)
    rounds = 1 if args.quick else args.rounds
    info, notes = machine(torch.device("cpu")), []
    common = ["--weights", args.weights, "--device", "cpu", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="medconddiff-big-") as tmp:
        folder = Path(tmp)
        inputs = {f"png_{small}": scaled_pair(small, "png", folder), f"png_{big}": scaled_pair(big, "png", folder)}
        inputs[f"jpg_{big}"] = scaled_pair(big, "jpg", folder)
        arms: dict[str, dict] = {name: {"seconds": [], "peak_rss_mb": []} for name in inputs}
        for r in range(rounds):
            for name, files in inputs.items():
                out = folder / f"{name}_mask.png"
                seconds, rss = run_cli(["segment", *map(str, files), "-o", str(out), *common])
                arms[name]["seconds"].append(round(seconds, 3))
                arms[name]["peak_rss_mb"].append(round(rss, 1))
                arms[name]["mask_shape"] = mask_shape(out)
                log(f"round {r + 1}: {name} {seconds:.1f} s, {rss:.0f} MB peak RSS, mask {arms[name]['mask_shape']}")
        files = next(f for f in ([VOLUMES[1]] if args.quick else VOLUMES) if all(p.is_file() for p in f))
        seconds, rss = run_cli(["segment", *map(str, files), "-o", str(folder / "volume_mask.nii.gz"), *common])
        import nibabel as nib

        shape = list(nib.load(files[0]).shape)
        log(f"volume {shape}: {seconds:.1f} s, {rss:.0f} MB peak RSS")
    for arm in arms.values():
        arm["median_seconds"] = statistics.median(arm["seconds"])
        arm["max_peak_rss_mb"] = max(arm["peak_rss_mb"])
    base = arms[f"png_{small}"]["seconds"]
    finish(info, notes)
    result = {
        "kind": "big_images",
        "command": "python benchmarks/big_images.py" + (" --quick" if args.quick else f" --rounds {rounds}"),
        "weights": args.weights,
        "small_side": small,
        "big_side": big,
        "rounds": rounds,
        "arms": arms,
        "ratio_big_png_vs_small": median_ratio(arms[f"png_{big}"]["seconds"], base),
        "ratio_big_jpg_vs_small": median_ratio(arms[f"jpg_{big}"]["seconds"], base),
        "volume": {
            "input": " + ".join(str(p.relative_to(REPO.parent)) for p in files),
            "shape": shape,
            "seconds": round(seconds, 3),
            "peak_rss_mb": round(rss, 1),
        },
        "machine": info,
        "notes": notes,
    }
    if args.json:
        write_json(args.json, result)
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
