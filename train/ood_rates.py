"""How often the out-of-domain warning fires: each model on its own held-out data and on the other datasets.

    python -m train.ood_rates [--weights-root assets/weights] [--data ../shared/data] [--slices 16] [--json OUT]

Every weights folder under --weights-root whose config.json holds `input_stats` is checked (so a new
model is picked up by adding its folder). Its own data is the folder named in its training.json,
scored on its held-out part (the split file's test part, the validation cases, or the held-out
block of slices); the other datasets under --data are scored on their test/validation parts. Each
input is one slice (a 2D image, or one slice of a volume with content, up to --slices per dataset,
evenly spread), given to the model as a user would: channels repeated or averaged to the model's
count. A slice counts as flagged when `pipeline.check_input` returns a warning. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medconddiff import hub
from medconddiff.config import MedCondDiffConfig
from medconddiff.pipeline import SamplingSettings, check_input, segment_slices

from . import data as D

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Dataset:
    name: str  # column header
    folder: str  # under --data
    settings: D.DataSettings
    part: str  # "test" | "val" | "all"


def datasets(data_root: Path) -> list[Dataset]:
    """The shared datasets, each with the layout train/ reads it in and the part scored here."""
    splits = REPO / "train" / "splits"

    def ds(name, folder, part, **kw):
        return Dataset(name, folder, D.DataSettings(root=str(data_root / folder), **kw), part)

    brats = ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
    return [
        ds("BraTS (MRI)", "brats2015", "val", layout="brats", channel_files=brats, label_file="OTMultiClass.nii.gz",
           val_cases=["brats_2013_pat0003_1", "brats_2013_pat0004_1"]),
        ds("abdominal CT", "abdomen-ct", "all", layout="single", channel_files=["ct.nii.gz"], label_file="labels.nii.gz"),
        ds("Kvasir-SEG (RGB)", "kvasir-seg", "test", layout="images", split_file=str(splits / "kvasir-seg.json"),
           mask_threshold=127),
        ds("PH2 (RGB)", "ph2", "test", layout="images", split_file=str(splits / "ph2.json"), mask_threshold=127),
        ds("ACDC (cine-MRI)", "acdc", "test", layout="nnunet", split_file=str(splits / "acdc.json")),
    ]  # fmt: skip


def own_part(weights: Path, data_root: Path) -> tuple[str | None, D.DataSettings | None, str]:
    """(folder name under --data, data settings, part) of the model's own held-out data, from training.json."""
    path = weights / "training.json"
    if not path.is_file() or "data" not in json.loads(path.read_text()):
        return None, None, ""
    data = D.DataSettings(**json.loads(path.read_text())["data"])
    if data.sources:  # several folders (BraTS 2015 + 2018): the first one's held-out part, in its own column
        data = D.sources_of(data)[0]
    folder = Path(data.root).name
    data = replace(data, root=str(data_root / folder))
    if data.split_file and not Path(data.split_file).is_absolute():
        data = replace(data, split_file=str(REPO / data.split_file))
    part = "test" if data.split_file else "val_range" if data.val_range else "val" if data.val_cases else "all"
    return folder, data, part


def adapt(raw: np.ndarray, channels: int) -> np.ndarray:
    """(C, H, W) -> the model's channel count, as a user would feed it: grey repeated, colour averaged."""
    c = raw.shape[0]
    if c == channels:
        return raw
    grey = raw.mean(axis=0, keepdims=True) if c == 3 else raw[:1]
    return np.repeat(grey, channels, axis=0)


def pick_slices(
    data: D.DataSettings, part: str, config: MedCondDiffConfig, n: int
) -> tuple[list[np.ndarray], str, list[float | None]]:
    """Up to `n` raw slices with content from the part, evenly spread over its cases; their kind; and
    each slice's in-plane mm per pixel (None for pictures), which models with a `pixel_spacing` need."""
    cases = D.find_cases(data.root, data)
    if part in ("test", "val"):
        cases = D.split_cases(cases, data, part=part) or cases
    kind = "image" if data.layout == "images" else "nifti"
    if kind == "image":
        chosen = [cases[i] for i in np.unique(np.linspace(0, len(cases) - 1, min(n, len(cases))).round().astype(int))]
        return (
            [adapt(D.read_case(c, data, config)[0].data, config.image_channels) for c in chosen],
            kind,
            [None] * len(chosen),
        )
    cases = [cases[i] for i in np.unique(np.linspace(0, len(cases) - 1, min(n, len(cases))).round().astype(int))]
    pool = []  # (case index, slice index)
    scans = []
    for ci, case in enumerate(cases):
        scan, _ = D.read_case(case, data, config)
        z = range(*data.val_range) if part == "val_range" and data.val_range else range(scan.data.shape[-1])
        content = [k for k in z if np.ptp(scan.data[..., k]) > 0]
        pool += [(ci, k) for k in content]
        scans.append(scan)
    idx = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    picked = [adapt(scans[pool[i][0]].data[..., pool[i][1]], config.image_channels) for i in idx]
    return picked, kind, [scans[pool[i][0]].slice_spacing for i in idx]


def rates(model, slices: list[np.ndarray], kind: str, spacings: list[float | None] | None = None) -> dict:
    """Segment each slice with the model's defaults (at its own pixel size, as the command line does);
    how many the input check flags, and why."""
    config = model.config
    settings = SamplingSettings.defaults_for(config, seed=0)
    counts = {"slices": 0, "flagged": 0, "unusual_input": 0, "uncertain": 0}
    spacings = spacings or [None] * len(slices)
    for mm, group in itertools.groupby(zip(slices, spacings, strict=True), key=lambda pair: pair[1]):
        same_size = [raw for raw, _ in group]  # consecutive slices of one pixel size (one case of a volume)
        for start in range(0, len(same_size), 8):
            batch = same_size[start : start + 8]
            results = segment_slices(model, batch, settings, kind=kind, spacing=mm)
            for raw, res in zip(batch, results, strict=True):
                check = check_input(config, [raw], [res.entropy], kind=kind, spacing=mm)
                if check is None or check.slices == 0:
                    continue
                counts["slices"] += 1
                counts["flagged"] += int(check.message is not None)
                counts["unusual_input"] += int(check.unusual_input)
                counts["uncertain"] += int(check.uncertain)
    return counts


def cell(c: dict, own: bool) -> str:
    if not c.get("slices"):
        return "n/a"
    text = f"{100 * c['flagged'] / c['slices']:.0f}% ({c['flagged']}/{c['slices']}; input {c['unusual_input']}, "
    text += f"uncertainty {c['uncertain']})"
    return f"**{text}** (own)" if own else text


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.ood_rates", description=__doc__.split("\n")[0])
    ap.add_argument("--weights-root", default=str(REPO / "assets" / "weights"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--slices", type=int, default=16, help="slices (or images) per dataset")
    ap.add_argument("--json", default=None, help="also write the counts here")
    args = ap.parse_args(argv)
    data_root = Path(args.data)
    table, names = {}, [d.name for d in datasets(data_root)]
    for weights in sorted(p for p in Path(args.weights_root).iterdir() if (p / hub.CONFIG_NAME).is_file()):
        config = MedCondDiffConfig.from_json(weights / hub.CONFIG_NAME)
        if not config.input_stats:
            print(f"{weights.name}: no input_stats in config.json (python -m train.input_stats adds them); skipped",
                  file=sys.stderr)  # fmt: skip
            continue
        model = hub.load_folder(weights, device="cpu")
        own_folder, own_data, own = own_part(weights, data_root)
        row = {}
        for d in datasets(data_root):
            is_own = d.folder == own_folder
            settings, part = (own_data, own) if is_own else (d.settings, d.part)
            if not Path(settings.root).is_dir():
                row[d.name] = {"slices": 0, "missing": True}
                continue
            slices, kind, spacings = pick_slices(settings, part, config, args.slices)
            row[d.name] = rates(model, slices, kind, spacings) | {"own": is_own}
            print(f"{weights.name} on {d.name}: {row[d.name]}", file=sys.stderr, flush=True)
        table[weights.name] = row
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model_name, row in table.items():
        lines.append(f"| {model_name} | " + " | ".join(cell(row[n], row[n].get("own", False)) for n in names) + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"slices_per_dataset": args.slices, "rates": table}, indent=2) + "\n")
    return 0


main = D.command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
