"""Build the slice cache of a training config: NIfTI volumes -> model-grid slices (safetensors).

    python -m train.prepare --config train/configs/brats_demo.toml [--cache runs/cache]

Understands the BraTS folder layout, nnU-Net/Decathlon `imagesTr/labelsTr`, and a single case;
labels are remapped with the config's `data.label_map`. `train.train` builds the same cache on
first use, so running this first is optional (useful before a multi-process run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .data import command_main
from .train import load_run_config, prepare_data


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--cache", default=None, help="cache folder (default: the train.out folder's parent/cache)")
    args = ap.parse_args(argv)
    run = load_run_config(args.config, args.set)
    cache = Path(args.cache) if args.cache else Path(run.train.out).parent / "cache"
    train_set, val_set = prepare_data(run, cache)
    k = run.model.num_classes
    for name, s in (("train", train_set), ("val", val_set)):
        counts = torch.bincount(s.labels.reshape(-1).long(), minlength=k)[:k].tolist() if len(s) else [0] * k
        print(f"{name}: {len(s)} slices of {run.model.image_size} px; pixels per class {counts}")
    print(f"cache: {cache}")
    return 0


main = command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
