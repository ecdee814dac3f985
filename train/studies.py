"""The studies reported in the README, each one command.

    python -m train.studies fusion    # paper Table 3: add vs concat vs none at equal budget
    python -m train.studies consensus --weights assets/weights/brats-demo   # consensus x steps x ensemble
    python -m train.studies steps --dataset kvasir   # training recipes: do later steps refine the mask?
    python -m train.studies ct-scale --weights A B   # CT models at 3 mm, at 0.73 mm, with contrast-like +80 HU
    python -m train.studies precision   # the same training in fp32 and under bf16 autocast: same result?
    python -m train.studies size --sizes 128 192 128 --steps 2400 2400 4800   # image size and steps, on validation

Both evaluate on the BraTS validation patients through the shared pipeline and write JSON + Markdown
into runs/studies/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medconddiff import metrics
from medconddiff.consensus import CONSENSUS
from medconddiff.hub import load_model
from medconddiff.pipeline import SamplingSettings, load_case, segment_slices

from . import ct_scale, steps_study
from . import data as D
from . import evaluate as E
from . import train as T

FUSION_ARMS = ("add", "concat", "none")


def study_fusion(args) -> dict:
    out = Path(args.out)
    rows = {}
    for arm in FUSION_ARMS:
        run_dir = out / f"fusion_{arm}"
        if not (run_dir / "weights" / "model.safetensors").is_file():
            T.run(["--config", f"train/configs/ablation_fusion_{arm}.toml", "--out", str(run_dir), "--no-progress"])
        model = load_model(run_dir / "weights")
        data = D.DataSettings(**json.loads((run_dir / "weights" / "training.json").read_text())["data"])
        data.root = args.data
        report = E.evaluate(model, data, SamplingSettings.defaults_for(model.config), progress=False)
        rows[arm] = {
            "wt": report["mean"]["brats"]["WT"]["dice"],
            "tc": report["mean"]["brats"]["TC"]["dice"],
            "et": report["mean"]["brats"]["ET"]["dice"],
            "dice_fg": report["mean"]["dice_mean"]["foreground"],
            "dice_all": report["mean"]["dice_mean"]["all"],
            "params": model.parameter_counts()["total"],
        }
    lines = ["| fusion | params | WT | TC | ET | mean Dice (fg) | mean Dice (all) |", "|---|---|---|---|---|---|---|"]
    for arm, r in rows.items():
        lines.append(
            f"| {arm} | {r['params'] / 1e6:.1f}M | {r['wt']:.3f} | {r['tc']:.3f} | {r['et']:.3f} | "
            f"{r['dice_fg']:.3f} | {r['dice_all']:.3f} |"
        )
    table = "\n".join(lines)
    (out / "fusion.json").write_text(json.dumps(rows, indent=2))
    (out / "fusion.md").write_text(table + "\n")
    print(table)
    return rows


def study_consensus(args) -> dict:
    """Every consensus function for each (steps, ensemble): one sampling per setting, fused five ways."""
    model = load_model(args.weights)
    k = model.config.num_classes
    data = E.detect_data(Path(args.data), model.config)
    cases = D.find_cases(data.root, data)
    loaded = []
    for case in cases:
        scan = load_case(case.images, model.config)
        _, truth = D.read_case(case, data, model.config)
        keep = slice(None, None, args.every)  # every Nth slice: the sweep is S x E samplings of each volume
        scan.data, truth = scan.data[..., keep], truth[..., keep]
        loaded.append((case.name, scan, truth))
    rows = []
    for steps in args.steps:
        for ens in args.ensembles:
            preds = {m: [] for m in CONSENSUS}
            t0 = time.time()
            for _, scan, _ in loaded:
                vol = {m: np.zeros(scan.data.shape[1:], np.int64) for m in CONSENSUS}
                z = scan.data.shape[-1]
                settings = SamplingSettings(steps=steps, ensemble=ens, seed=0)
                for start in range(0, z, 16):
                    idx = list(range(start, min(z, start + 16)))
                    res = segment_slices(
                        model, [scan.data[..., i] for i in idx], settings, kind="nifti", keep_trajectory=True
                    )
                    for i, r in zip(idx, res, strict=True):
                        for m in CONSENSUS:
                            vol[m][..., i] = r.labels if r.trajectory is None else r.refuse(m).labels
                for m in CONSENSUS:
                    preds[m].append(vol[m])
            seconds = (time.time() - t0) / len(loaded)
            for m in CONSENSUS:
                cases_m = [
                    metrics.evaluate_case(p, t, k, brats=True) for p, (_, _, t) in zip(preds[m], loaded, strict=True)
                ]
                mean = E.mean_of(cases_m)
                rows.append(
                    {
                        "consensus": m,
                        "steps": steps,
                        "ensemble": ens,
                        "seconds_per_volume": seconds,
                        "wt": mean["brats"]["WT"]["dice"],
                        "tc": mean["brats"]["TC"]["dice"],
                        "et": mean["brats"]["ET"]["dice"],
                        "dice_fg": mean["dice_mean"]["foreground"],
                    }
                )
            print(f"steps {steps} ensemble {ens}: {seconds:.0f} s per volume", flush=True)
    lines = [
        f"Every {args.every} slice(s) of each validation volume; Dice of the stacked slices.",
        "",
        "| consensus | S | E | WT | TC | ET | mean Dice (fg) | s / volume |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['consensus']} | {r['steps']} | {r['ensemble']} | {r['wt']:.3f} | {r['tc']:.3f} | {r['et']:.3f} | "
            f"{r['dice_fg']:.3f} | {r['seconds_per_volume']:.0f} |"
        )
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "consensus.json").write_text(json.dumps(rows, indent=2))
    (out / "consensus.md").write_text(table + "\n")
    print(table)
    return {"rows": rows}


def _machine_line() -> str:
    import os
    import platform

    from medconddiff import precision

    cpu = precision.proc_field("model name") or platform.processor() or platform.machine()
    bf16 = "native bf16" if precision.cpu_has_native_bf16() else "no native bf16"
    return f"{cpu.strip()}, {os.cpu_count()} cores, {bf16}"


def _train_arm(config: str, run_dir: Path, sets: list[str], *, steps: int, val_every: int) -> None:
    """Train one arm of a study unless its weights are already there (a rerun only redraws the report); an
    arm stopped part-way continues from its last checkpoint (written at every validation)."""
    if (run_dir / "weights" / "model.safetensors").is_file():
        return
    sets = [*sets, f"train.steps={steps}", f"train.val_every={val_every}", f"train.ckpt_every={val_every}"]
    argv = ["--config", config, "--out", str(run_dir), "--no-progress", "--resume"]
    T.run([*argv, *[a for x in sets for a in ("--set", x)]])


def study_precision(args) -> dict:
    """Train one config twice, fp32 and bf16 autocast (same seed, data and steps); compare the curves."""
    from . import plot

    out = Path(args.out)
    arms = {}
    for precision in ("fp32", "bf16"):
        run_dir = out / f"precision_{precision}"
        _train_arm(
            args.config,
            run_dir,
            [f"train.precision={json.dumps(precision)}"],
            steps=args.steps,
            val_every=args.val_every,
        )
        train, val = plot.read(run_dir)
        info = json.loads((run_dir / "weights" / "training.json").read_text())
        arms[precision] = {
            "train": train,
            "val": val,
            "wall_minutes": info["wall_minutes"],
            "precision": info["precision"],
        }
    fp32, bf16 = arms["fp32"], arms["bf16"]
    pairs = [(a, b) for a, b in zip(fp32["val"], bf16["val"], strict=True)]
    loss_pairs = [(a["loss"], b["loss"]) for a, b in zip(fp32["train"], bf16["train"], strict=True)]
    result = {
        "command": f"python -m train.studies precision --config {args.config} --steps {args.steps} --val-every {args.val_every}",
        "config": args.config,
        "steps": args.steps,
        "validation": [
            {
                "step": a["step"],
                "fp32": a["dice_fg_mean"],
                "bf16": b["dice_fg_mean"],
                "diff": b["dice_fg_mean"] - a["dice_fg_mean"],
            }
            for a, b in pairs
        ],
        "max_abs_val_diff": max(abs(b["dice_fg_mean"] - a["dice_fg_mean"]) for a, b in pairs),
        "final_val_diff": pairs[-1][1]["dice_fg_mean"] - pairs[-1][0]["dice_fg_mean"],
        "mean_abs_loss_diff": float(np.mean([abs(a - b) for a, b in loss_pairs])),
        "mean_loss": float(np.mean([a for a, _ in loss_pairs])),
        "first_loss_diff": abs(loss_pairs[0][0] - loss_pairs[0][1]),
        "wall_minutes": {k: v["wall_minutes"] for k, v in arms.items()},
        "resolved": {k: v["precision"] for k, v in arms.items()},
    }
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    plot.draw([out / "precision_fp32", out / "precision_bf16"], docs / "precision_parity.png", labels=["fp32", "bf16"])
    lines = [
        "# Training precision: fp32 against bf16 autocast",
        "",
        f"Command: `{result['command']}` (same config, seed, data order and steps; only `train.precision` differs).",
        f"Machine: {_machine_line()}. Validation: {T.TrainSettings.val_slices} validation images with foreground, "
        f"{T.TrainSettings.val_steps} DDIM steps, sampled in fp32 (`train.train.validate`).",
        "",
        "| step | validation Dice fp32 | bf16 | bf16 - fp32 |",
        "|---|---|---|---|",
        *[f"| {r['step']} | {r['fp32']:.4f} | {r['bf16']:.4f} | {r['diff']:+.4f} |" for r in result["validation"]],
        "",
        f"Largest validation difference {result['max_abs_val_diff']:.4f}; at the last step {result['final_val_diff']:+.4f}. "
        f"Training loss (every 25 steps): mean absolute difference {result['mean_abs_loss_diff']:.4f} against a mean "
        f"loss of {result['mean_loss']:.4f} (first logged step: {result['first_loss_diff']:.5f}). Wall time: fp32 "
        f"{result['wall_minutes']['fp32']} min, bf16 {result['wall_minutes']['bf16']} min.",
        "",
        "![loss and validation Dice of both runs](precision_parity.png)",
    ]
    (docs / "precision_parity.md").write_text("\n".join(lines) + "\n")
    (docs / "precision_parity.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    return result


def size_arms(sizes: list[int], steps: list[int]) -> list[tuple[int, int]]:
    """--sizes and --steps -> (image size, steps) per arm: one steps value serves every size."""
    if len(steps) == 1:
        steps = steps * len(sizes)
    if len(steps) != len(sizes):
        raise SystemExit(f"--steps: give one value or one per size ({len(sizes)}), got {len(steps)}")
    return list(zip(sizes, steps, strict=True))


def study_size(args) -> dict:
    """Train one config at several image sizes (same seed and data order; the same steps, or more steps for
    a smaller size at about the same wall time); score each arm on the validation split at the images' own
    resolution, overall and in three groups by how much of the image the foreground (the polyp) covers."""
    from . import plot

    out, docs = Path(args.out), Path(args.docs)
    stem = Path(args.config).stem
    arms, reports = {}, {}
    for size, steps in size_arms(args.sizes, args.steps):
        key = f"{size}_{steps}"
        run_dir = out / f"size_{stem}_{key}"
        sets = [*args.set, f"model.image_size={size}"]
        _train_arm(args.config, run_dir, sets, steps=steps, val_every=args.val_every)
        _, val = plot.read(run_dir)
        info = json.loads((run_dir / "weights" / "training.json").read_text())
        model = load_model(run_dir / "weights")
        data = D.DataSettings(**info["data"])
        reports[key] = E.evaluate(model, data, SamplingSettings.defaults_for(model.config), split="val", progress=False)
        tail = [r["dice_fg_mean"] for r in val if r["step"] >= 0.8 * steps]
        arms[key] = {
            "size": size,
            "steps": steps,
            "run": str(run_dir),
            "wall_minutes": info["wall_minutes"],
            "precision": info["precision"],
            "threads": info.get("threads"),
            "curve": [{"step": r["step"], "wall_s": r["wall_s"], "dice": r["dice_fg_mean"]} for r in val],
            "last_20pct_gain": (tail[-1] - tail[0]) if len(tail) > 1 else None,
            "val_dice": reports[key]["mean"]["dice_mean"]["foreground"],
            "seconds_per_image": reports[key]["seconds_per_case"],
        }
    first = next(iter(arms.values()))  # every arm has the config's data settings (`data`)
    names = list(reports[next(iter(arms))]["cases"])
    share = {
        c.name: float((D.read_labels(c, data) > 0).mean())
        for c in D.split_cases(D.find_cases(data.root, data), data, part="val")
    }
    order = sorted(names, key=lambda n: share[n])
    third = len(order) // 3
    groups = {
        "smallest third": order[:third],
        "middle third": order[third : 2 * third],
        "largest third": order[2 * third :],
    }
    for key, arm in arms.items():
        fg = {n: metrics.averages(c["dice"])["foreground"] for n, c in reports[key]["cases"].items()}
        arm["by_size"] = {g: float(np.mean([fg[n] for n in ns])) for g, ns in groups.items()}
    bounds = {g: (share[ns[0]], share[ns[-1]]) for g, ns in groups.items()}
    command = (
        f"python -m train.studies size --config {args.config} --sizes {' '.join(map(str, args.sizes))} "
        f"--steps {' '.join(map(str, args.steps))} --val-every {args.val_every}"
        + "".join(f" --set {x}" for x in args.set)
    )
    result = {
        "command": command,
        "config": args.config,
        "machine": _machine_line(),
        "val_images": len(names),
        "groups": {g: list(b) for g, b in bounds.items()},
        "arms": arms,
    }
    docs.mkdir(parents=True, exist_ok=True)
    figure = f"size_{stem}.png"
    label = lambda a: f"{a['size']} px, {a['steps']} steps"  # noqa: E731
    plot.draw([a["run"] for a in arms.values()], docs / figure, labels=[label(a) for a in arms.values()])
    lines = [
        f"# Image size: {stem} at {', '.join(label(a) for a in arms.values())}",
        "",
        f"Command: `{command}` (same config, seed and data order; only `model.image_size` and the number of steps "
        f"differ). Machine: {result['machine']}; training at {first['precision']} on {first['threads']} thread(s). "
        f"Scored on the validation split ({len(names)} images) at each image's own resolution, with the config's "
        "sampling defaults, in fp32 (`train.evaluate`); the test split is not looked at. The three groups split "
        "the validation images by how much of the image the polyp covers.",
        "",
        "| arm | training wall time | validation Dice (per image) | "
        + " | ".join(f"{g} ({bounds[g][0]:.1%}-{bounds[g][1]:.1%})" for g in groups)
        + " | last 20% of the steps (model-grid validation) | s per image |",
        "|---|---|---|" + "---|" * len(groups) + "---|---|",
    ]
    for a in arms.values():
        gain = "n/a" if a["last_20pct_gain"] is None else f"{a['last_20pct_gain']:+.3f}"
        lines.append(
            f"| {label(a)} | {a['wall_minutes']:.1f} min | {a['val_dice']:.3f} | "
            + " | ".join(f"{a['by_size'][g]:.3f}" for g in groups)
            + f" | {gain} | {a['seconds_per_image']:.2f} |"
        )
    ranked = sorted(arms.values(), key=lambda a: -a["val_dice"])
    verdict = f"Best on validation: {label(ranked[0])} ({ranked[0]['val_dice']:.3f})"
    if len(ranked) > 1:
        gap = ranked[0]["val_dice"] - ranked[1]["val_dice"]
        verdict += f", {gap:.3f} ahead of {label(ranked[1])}" + (" (within 0.005: level)." if gap < 0.005 else ".")
    lines += [
        "",
        verdict + " The curves below are the training runs' own validation (pooled Dice on the model's grid, a "
        "quicker number than the table's), against steps and against wall time.",
        "",
        f"![loss and validation Dice of every arm]({figure})",
    ]
    (docs / f"size_{stem}.md").write_text("\n".join(lines) + "\n")
    (docs / f"size_{stem}.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.studies", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="study", required=True)
    f = sub.add_parser("fusion", help="train and evaluate the add/concat/none arms")
    f.add_argument("--data", default="../shared/data/brats2015/validation")
    f.add_argument("--out", default="runs/studies")
    c = sub.add_parser("consensus", help="consensus functions x steps x ensemble size")
    c.add_argument("--weights", default="brats-demo")
    c.add_argument("--data", default="../shared/data/brats2015/validation")
    c.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    c.add_argument("--ensembles", type=int, nargs="+", default=[1, 4])
    c.add_argument("--every", type=int, default=1, help="use every Nth slice of each volume (faster sweep)")
    c.add_argument("--out", default="runs/studies")
    steps_study.add_parser(sub)
    s = sub.add_parser(
        "ct-scale",
        help="CT models on the held-out slices: as stored, resampled to 0.73 mm, contrast-like +80 HU",
    )
    s.add_argument("--weights", nargs="+", default=["assets/weights/abdomen-ct-demo"])
    s.add_argument("--data", default="../shared/data/abdomen-ct")
    s.add_argument("--out", default="runs/studies")
    p = sub.add_parser("precision", help="the same training in fp32 and bf16: validation Dice and loss curves")
    p.add_argument("--config", default="train/configs/kvasir_demo.toml")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--out", default="runs/studies")
    p.add_argument("--docs", default="docs/studies")
    z = sub.add_parser("size", help="the same training at several image sizes, scored on validation")
    z.add_argument("--config", default="train/configs/kvasir_demo.toml")
    z.add_argument("--sizes", type=int, nargs="+", default=[128, 192])
    z.add_argument("--steps", type=int, nargs="+", default=[2400], help="one value, or one per size")
    z.add_argument("--val-every", type=int, default=400)
    z.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every arm")
    z.add_argument("--out", default="runs/studies")
    z.add_argument("--docs", default="docs/studies")
    args = ap.parse_args(argv)
    if args.study == "size":
        study_size(args)
        return 0
    if args.study == "precision":
        study_precision(args)
        return 0
    if args.study == "ct-scale":
        rows = ct_scale.run(args.weights, args.data)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ct_scale.json").write_text(json.dumps(rows, indent=2))
        (out / "ct_scale.md").write_text(ct_scale.markdown(rows) + "\n")
        print(ct_scale.markdown(rows))
        return 0
    if args.study == "steps":
        steps_study.study_steps(args)
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (study_fusion if args.study == "fusion" else study_consensus)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
