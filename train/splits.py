"""Fixed train / validation / test splits, committed as JSON under train/splits/.

    python -m train.splits            # rewrite every split file from ../shared/data (same seed, same files)

Each file maps "train", "val" and "test" to case names. The test part is never used for training,
early stopping or picking sampling defaults. Splits are by case: an image for the 2D datasets, a
patient for ACDC (both frames of a patient stay together), never by slice.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
SEED = 20261201


def split_names(names: list[str], *, val: int, test: int, seed: int = SEED) -> dict[str, list[str]]:
    """Shuffle sorted names with a fixed seed; the first `test` are test, the next `val` validation."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return {
        "train": sorted(order[test + val :]),
        "val": sorted(order[test : test + val]),
        "test": sorted(order[:test]),
    }


def image_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "images").iterdir() if p.is_file())


def acdc_split(root: Path, *, val_patients: int = 10) -> dict[str, list[str]]:
    """ACDC: its own `val` patients are our test part; validation patients are carved out of `train`."""
    given = json.loads((root / "splits.json").read_text())
    patients = sorted({n.split("_")[0] for n in given["train"]})
    held = set(split_names(patients, val=val_patients, test=0)["val"])
    return {
        "train": sorted(n for n in given["train"] if n.split("_")[0] not in held),
        "val": sorted(n for n in given["train"] if n.split("_")[0] in held),
        "test": sorted(given["val"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.splits", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data", help="folder holding kvasir-seg/, ph2/, acdc/")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: data folder {data} not found (see the README's data guide)", file=sys.stderr)
        return 2
    SPLITS_DIR.mkdir(exist_ok=True)
    splits = {
        "kvasir-seg": split_names(image_names(data / "kvasir-seg"), val=90, test=90),
        "ph2": split_names(image_names(data / "ph2"), val=20, test=20),
        "acdc": acdc_split(data / "acdc"),
    }
    for name, split in splits.items():
        (SPLITS_DIR / f"{name}.json").write_text(json.dumps(split, indent=1) + "\n")
        print(name, {k: len(v) for k, v in split.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
