"""Learning curves of a training run: loss and validation Dice against steps and wall time.

    python -m train.plot RUN_DIR [--out FILE.png]     # default: RUN_DIR/learning_curve.png

Reads RUN_DIR/metrics.jsonl (written by `train.train`: a "train" line every 25 steps, a "val" line
at every validation). A finished run also gets the figure inside its weights folder, where the
model card shows it. Several runs can be drawn into one figure (`--label` names them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIGURE = "learning_curve.png"


def read(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """RUN_DIR/metrics.jsonl -> (train records, val records), each sorted by step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; accepted: a run folder written by python -m train.train")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = sorted((r for r in rows if r.get("kind") == "train"), key=lambda r: r["step"])
    val = sorted((r for r in rows if r.get("kind") == "val"), key=lambda r: r["step"])
    return train, val


def _smooth(values: list[float], window: int = 8) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def draw(run_dirs: str | Path | list, out: str | Path, *, labels: list[str] | None = None) -> Path | None:
    """Draw the runs' curves into `out` (PNG); None when no run has a metrics line yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    labels = labels or [Path(d).name for d in dirs]
    runs = [(label, *read(d)) for label, d in zip(labels, dirs, strict=True)]
    if not any(train or val for _, train, val in runs):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharey="row")
    for label, train, val in runs:
        for col, key, scale in ((0, "step", 1.0), (1, "wall_s", 60.0)):
            if train:
                x = [r[key] / scale for r in train]
                axes[0, col].plot(x, _smooth([r["loss"] for r in train]), label=label, lw=1.2)
            if val:
                x = [r[key] / scale for r in val]
                axes[1, col].plot(x, [r.get("dice_fg_mean", float("nan")) for r in val], "o-", ms=3, label=label)
                best = [r for r in val if r.get("best")]
                if best:
                    b = max(best, key=lambda r: r.get("dice_fg_mean", -1))
                    axes[1, col].plot([b[key] / scale], [b["dice_fg_mean"]], "*", ms=10, color="black")
    axes[0, 0].set_ylabel("training loss (Dice + CE, smoothed)")
    axes[1, 0].set_ylabel("validation foreground Dice")
    axes[1, 0].set_xlabel("training step")
    axes[1, 1].set_xlabel("training wall time (min)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0, 0].legend(fontsize=8)
    axes[1, 1].text(0.99, 0.02, "* best validation", transform=axes[1, 1].transAxes, ha="right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output folder(s) with metrics.jsonl")
    ap.add_argument("--out", help=f"PNG to write (default: the first RUN_DIR/{FIGURE})")
    ap.add_argument("--label", nargs="+", help="a legend label per run (default: the folder names)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]) / FIGURE
    path = draw(args.runs, out, labels=args.label)
    if path is None:
        print(f"{args.runs[0]}: no metrics recorded yet", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
