"""Evaluate weights on labelled volumes through the shared pipeline; JSON out, Markdown table printed.

    python -m train.evaluate --weights assets/weights/brats-demo --data ../shared/data/brats2015/validation --out v.json

The data layout (BraTS folders, imagesTr/labelsTr, or a single case) is taken from --config, else
from the weights folder's training.json, else detected: BraTS-style case folders are matched to
the model's channel names by file-name prefix (FLAIR -> Flair_*.nii.gz).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from medconddiff import metrics
from medconddiff.hub import load_model, resolve
from medconddiff.pipeline import SamplingSettings, load_case, resolve_device, segment_slices, segment_volume
from medconddiff.precision import CHOICES
from medconddiff.precision import resolve as resolve_precision

from . import data as D


def detect_data(root: Path, config) -> D.DataSettings:
    """Guess the layout of `root` for a model with these channel names."""
    if not root.is_dir():
        raise D.DataError(f"data folder {root} not found (looked in {root.resolve()}); give --data an existing folder")
    if (root / "imagesTr").is_dir():
        return D.DataSettings(root=str(root), layout="nnunet", label_file="")
    label_names = ("OTMultiClass.nii.gz", "labels.nii.gz", "seg.nii.gz", "label.nii.gz")
    for label in label_names:
        hits = sorted(root.rglob(label))
        if not hits:
            continue
        folder = hits[0].parent
        files = []
        for name in config.channel_names:
            cands = sorted(
                p.name for p in folder.glob("*.nii*") if p.name.lower().startswith(name.lower()) and p.name != label
            )
            if not cands:
                raise D.DataError(
                    f"{folder}: no file for channel {name!r} beside {label} (looked for {name}*.nii.gz); "
                    "accepted: a file per channel named after it, or --config with data.channel_files"
                )
            files.append(cands[0])
        layout = "single" if folder == root and len(hits) == 1 else "brats"
        return D.DataSettings(root=str(root), layout=layout, channel_files=files, label_file=label)
    raise D.DataError(
        f"{root}: no labelled cases found (looked in {root.resolve()} for imagesTr/ + labelsTr/ and for "
        f"{', '.join(label_names)}); accepted: the layouts of the README's Data guide"
    )


def data_settings(args, weights_dir: Path, config) -> D.DataSettings:
    if args.config:
        from .train import load_run_config

        data = load_run_config(args.config, []).data
    elif (weights_dir / "training.json").is_file() and "data" in json.loads(
        (weights_dir / "training.json").read_text()
    ):
        data = D.DataSettings(**json.loads((weights_dir / "training.json").read_text())["data"])
    else:
        return detect_data(Path(args.data), config)
    if data.sources:  # several data folders: the one --data names (or a part of it, e.g. its validation/)
        target = Path(args.data).resolve()
        picked = []
        for src in data.sources:
            root = Path(src["root"]).resolve()
            if target == root:
                picked.append(src)
            elif root in target.parents:
                picked.append({**src, "root": str(args.data), "train_cases": None, "val_cases": None})
        if not picked:  # another folder (a user's own copy): the first folder's file names that find cases there
            if not target.is_dir():
                raise D.DataError(f"data folder {args.data} not found")
            for src in data.sources:
                entry = {**src, "root": str(args.data), "train_cases": None, "val_cases": None, "split_file": None}
                try:
                    if D.find_cases(str(args.data), dataclasses.replace(data, sources=[entry])):
                        picked = [entry]
                        break
                except D.DataError:
                    continue
        if not picked:
            roots = ", ".join(str(s["root"]) for s in data.sources)
            raise D.DataError(
                f"--data {args.data}: no labelled cases with the file names of any of the model's data folders "
                f"({roots}); accepted: one of those folders, a folder in one, or a folder of cases named as in one"
            )
        return dataclasses.replace(data, sources=picked)
    return dataclasses.replace(data, root=str(args.data), train_cases=None, val_cases=None)


def markdown_table(report: dict, *, max_cases: int = 24) -> str:
    """The report as a Markdown table: one row per case and the mean; with more than `max_cases`
    cases, the five with the lowest foreground Dice (the misses), then the median and the mean."""
    names = report["class_names"]
    brats = "brats" in report["mean"]
    head = ["case"] + (
        [f"{r} Dice" for r in metrics.BRATS_REGIONS] + [f"{r} HD95" for r in metrics.BRATS_REGIONS] if brats else []
    )
    head += [f"{n} Dice" for n in names[1:]] + ["mean Dice (fg)", "mean Dice (all)", "mean IoU (fg)", "mean IoU (all)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, m):
        cells = [name]
        if brats:
            cells += [f"{m['brats'][r]['dice']:.3f}" for r in metrics.BRATS_REGIONS]
            cells += [f"{m['brats'][r]['hd95']:.1f}" for r in metrics.BRATS_REGIONS]
        cells += [f"{d:.3f}" for d in m["dice"][1:]]
        cells += [
            f"{m['dice_mean']['foreground']:.3f}",
            f"{m['dice_mean']['all']:.3f}",
            f"{m['iou_mean']['foreground']:.3f}",
            f"{m['iou_mean']['all']:.3f}",
        ]
        return "| " + " | ".join(cells) + " |"

    cases = report["cases"]
    if len(cases) <= max_cases:
        for name, m in cases.items():
            lines.append(row(name, m))
    else:
        worst = sorted(cases, key=lambda n: cases[n]["dice_mean"]["foreground"])[:5]
        for name in worst:
            lines.append(row(f"{name} (among the 5 lowest)", cases[name]))
        fg = np.array([c["dice_mean"]["foreground"] for c in cases.values()])
        lines.append(
            f"| **median** ({len(cases)} cases) | "
            + " | ".join(["–"] * (len(head) - 5))
            + f" | {np.median(fg):.3f} | – | – | – |"
        )
    lines.append(row("**mean**", report["mean"]))
    return "\n".join(lines)


def mean_of(cases: list[dict]) -> dict:
    k = len(cases[0]["dice"])
    out = {
        "dice": [float(np.mean([c["dice"][i] for c in cases])) for i in range(k)],
        "iou": [float(np.mean([c["iou"][i] for c in cases])) for i in range(k)],
    }
    out["dice_mean"] = metrics.averages(out["dice"])
    out["iou_mean"] = metrics.averages(out["iou"])
    if "brats" in cases[0]:
        out["brats"] = {}
        for r in metrics.BRATS_REGIONS:
            hd, skipped = metrics.nanmean([c["brats"][r]["hd95"] for c in cases])
            out["brats"][r] = {
                "dice": float(np.mean([c["brats"][r]["dice"] for c in cases])),
                "hd95": hd,
                "hd95_undefined": skipped,
            }
    return out


def predict_case(
    model,
    scan,
    settings: SamplingSettings,
    *,
    batch_size: int = 8,
    progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """One read case (`pipeline.load_case`) -> its label map on the scan's grid, (X, Y, Z) for volumes
    or (H, W) for 2D images: the prediction `evaluate` scores, through the library's pipeline. fp32 by
    default, so that a reported number does not depend on whether the machine has native bf16."""
    if scan.is_volume:
        return segment_volume(
            model,
            scan.data,
            settings,
            kind=scan.kind,
            spacing=scan.slice_spacing,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
        ).labels
    return segment_slices(model, [scan.data], settings, kind=scan.kind, precision=precision)[0].labels


def evaluate(
    model,
    data: D.DataSettings,
    settings: SamplingSettings,
    *,
    batch_size: int = 8,
    brats: bool | None = None,
    cases: list[str] | None = None,
    split: str | None = None,
    progress: bool = True,
    precision: str = "fp32",
) -> dict:
    """Run the pipeline on every case (or one part of `data.split_file`) and compute the metrics."""
    found = D.find_cases(data.root, data)
    if split:
        if not data.split_file and not data.sources:  # with sources, each folder has its own split
            raise SystemExit("--split needs a split file (data.split_file in the training config)")
        found = D.split_cases(found, data, part=split)
    if cases:
        found = [c for c in found if c.name in cases]
    k = model.config.num_classes
    regions = metrics.regions_for(model.config.class_names) if data.layout == "brats" else {}
    if brats is not None and not brats:
        regions = {}
    elif brats and not regions:
        regions = dict(metrics.BRATS_REGIONS)
    per_case, seconds = {}, []
    for case in found:
        scan = load_case(case.images, model.config)  # each case is read once: the scan here, the labels below
        truth = D.read_labels(case, data)
        truth = scan.to_canonical(truth) if scan.is_volume and truth is not None else truth  # the grid of `pred`
        t0 = time.time()
        pred = predict_case(model, scan, settings, batch_size=batch_size, progress=progress, precision=precision)
        seconds.append(time.time() - t0)
        if not scan.is_volume:  # a large picture reduced as it was read: scored on the file's own size
            pred = scan.to_source(pred)
        if data.layout == "single" and data.val_range:
            a, b = data.val_range
            pred, truth = pred[..., a:b], truth[..., a:b]  # only the held-out block of slices
        per_case[case.name] = metrics.evaluate_case(pred, truth, k, spacing=scan.spacing, regions=regions)
    # a config with several data folders: the report names the folder(s) scored and their own split files
    root, split_file = data.root, data.split_file
    if data.sources:
        root = ", ".join(str(src["root"]) for src in data.sources)
        split_file = ", ".join(str(src["split_file"]) for src in data.sources if src.get("split_file")) or None
    return {
        "class_names": list(model.config.class_names),
        "settings": dataclasses.asdict(settings),
        "precision": precision,
        "data": {
            "root": root,
            "layout": data.layout,
            "split": {"file": split_file, "part": split} if split else None,
            "val_range_only": data.val_range if data.layout == "single" else None,
        },
        "cases": per_case,
        "mean": mean_of(list(per_case.values())),
        "seconds_per_case": float(np.mean(seconds)),
    }


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description="Evaluate weights on labelled volumes.")
    ap.add_argument("--weights", default=None, help="bundled name, folder or Hub repo id (default: brats-demo)")
    ap.add_argument(
        "--data", required=True, help="folder of labelled cases (BraTS layout, imagesTr/labelsTr, or one case)"
    )
    ap.add_argument("--out", required=True, help="JSON report path")
    ap.add_argument("--config", help="training TOML whose [data] section describes the layout")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--ensemble", type=int)
    ap.add_argument("--consensus")
    ap.add_argument("--sampler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="slices per batch (the CLI's default: the same masks)")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--precision",
        default="fp32",
        metavar="|".join(CHOICES),
        help="the network's precision (default fp32: the reported numbers do not depend on the machine)",
    )
    ap.add_argument("--cases", nargs="*", help="only these case names")
    ap.add_argument("--split", choices=["train", "val", "test"], help="only this part of the config's split file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    folder = resolve(args.weights)
    model = load_model(folder, device=device)
    settings = SamplingSettings.defaults_for(
        model.config,
        steps=args.steps,
        ensemble=args.ensemble,
        consensus=args.consensus,
        sampler=args.sampler,
        seed=args.seed,
    )
    data = data_settings(args, folder, model.config)
    report = evaluate(
        model,
        data,
        settings,
        batch_size=args.batch_size,
        cases=args.cases,
        split=args.split,
        progress=not args.no_progress,
        precision=precision,
    )
    report["weights"] = str(args.weights or folder)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    print(
        f"\n{len(report['cases'])} case(s), {report['seconds_per_case']:.1f} s per case; settings {report['settings']}"
    )
    return 0


main = D.command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
