"""Do later sampling steps refine the mask? Training recipes compared at equal budget.

    python -m train.studies steps --dataset kvasir     # or --dataset brats; --tiny for a seconds-long check

Each arm trains the same small model (same data, seed, steps and batch) with one change to the
recipe, then samples the validation split with S in {1, 2, 5, 10, 20}, E in {1, 4}, DDIM and DDPM,
and measures on the model grid:
    dice        mean over images of the mean Dice of the foreground classes present in the truth or
                the prediction (an image with neither counts nowhere), for the consensus and for the
                last step's x0-hat alone
    gain        dice at S minus dice at S = 1 (same arm, sampler and E)
    change      share of pixels whose argmax class changes between consecutive steps' x0-hat
                (mean over steps, and between the last two): does the mask still move late?
    auroc       how well a per-pixel uncertainty (1 - agreement, entropy) ranks the pixels the
                consensus got wrong above those it got right (0.5 = no better than chance), pooled
                over all validation pixels
    rho         Spearman correlation between an image's mean entropy and its Dice (negative is useful)
The "combo" arm joins, for each factor, the value whose single-factor arm scored best at S = 10,
E = 1, DDIM. Tables go to docs/studies/steps_<dataset>.{json,md}.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

STEPS = (1, 2, 5, 10, 20)
ENSEMBLES = (1, 4)
SAMPLERS = ("ddim", "ddpm")
CONSENSUS = "mean_logits"
PICK = {"steps": 10, "ensemble": 1, "sampler": "ddim"}  # the setting that ranks arms for the combination

CONFIGS = {"kvasir": "train/configs/study_steps_kvasir.toml", "brats": "train/configs/study_steps_brats.toml"}
# arm -> overrides of the base config; the factors the combination draws from are named in FACTORS
ARMS: dict[str, list[str]] = {
    "today": [],
    "self_cond": ["model.self_condition=true"],
    "scale_0.5": ["model.mask_scale=0.5"],
    "scale_0.2": ["model.mask_scale=0.2"],
    "t_high": ["train.t_power=3"],
}
FACTORS = {
    "self_condition": ["today", "self_cond"],
    "mask_scale": ["today", "scale_0.5", "scale_0.2"],
    "t_power": ["today", "t_high"],
}


# -- measures --------------------------------------------------------------------------------


def image_dice(pred: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """(H, W) labels -> mean Dice over the foreground classes in either map; nan if none is."""
    scores = []
    for c in range(1, k):
        p, t = pred == c, truth == c
        total = int(p.sum() + t.sum())
        if total:
            scores.append(2.0 * int((p & t).sum()) / total)
    return float(np.mean(scores)) if scores else math.nan


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the boolean `positive` (Mann-Whitney, ties averaged)."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return math.nan
    return float(spearmanr(a[keep], b[keep]).statistic)


def measure(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    ensemble: int,
    sampler: str,
    seed: int = 0,
    batch: int = 16,
) -> dict:
    """Sample the validation images with one setting and compute every measure of the module docstring."""
    from medconddiff.consensus import fuse
    from medconddiff.sampler import sample_loop

    k = model.config.num_classes
    gen = torch.Generator().manual_seed(seed)
    dice, dice_last, mean_entropy = [], [], []
    changes = np.zeros(max(1, steps - 1))
    errors, disagreement, entropy = [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(labels), batch):
        img = images[start : start + batch].float()
        truth = labels[start : start + batch].long()
        with torch.inference_mode():
            cond = model.encode_image(img)
            records = list(
                sample_loop(model, cond, steps=steps, ensemble=ensemble, sampler=sampler, generator=gen, keep_x_t=False)
            )
        logits = torch.stack([r.logits for r in records])  # (S, E, B, K, H, W)
        votes = torch.stack([r.labels for r in records])  # (S, E, B, H, W)
        logsnr = torch.tensor([r.logsnr for r in records])
        if steps > 1:  # share of pixels whose class changes from one step to the next, per step
            changes += (votes[1:] != votes[:-1]).float().mean(dim=(1, 2, 3, 4)).double().numpy() * len(truth)
        for j in range(len(truth)):
            c = fuse(logits[:, :, j], logsnr, method=CONSENSUS, votes=votes[:, :, j])
            dice.append(image_dice(c.labels, truth[j], k))
            dice_last.append(image_dice(votes[-1, 0, j].long(), truth[j], k))
            mean_entropy.append(float(c.entropy.mean()))
            errors.append((c.labels != truth[j]).numpy().ravel())
            disagreement.append((1.0 - c.agreement).numpy().ravel())
            entropy.append(c.entropy.numpy().ravel())
    seconds = time.perf_counter() - t0
    wrong = np.concatenate(errors)
    per_step_change = (changes / len(labels)).tolist() if steps > 1 else []
    return {
        "steps": steps,
        "ensemble": ensemble,
        "sampler": sampler,
        "dice": float(np.nanmean(dice)),
        "dice_last_step": float(np.nanmean(dice_last)),
        "change_mean": float(np.mean(per_step_change)) if per_step_change else 0.0,
        "change_last": per_step_change[-1] if per_step_change else 0.0,
        "change_per_step": per_step_change,
        "auroc_disagreement": auroc(np.concatenate(disagreement), wrong),
        "auroc_entropy": auroc(np.concatenate(entropy), wrong),
        "rho_entropy_dice": spearman(mean_entropy, dice),
        "error_rate": float(wrong.mean()),
        "seconds": seconds,
    }


# -- one arm: train, then sample the validation split every way --------------------------------


def run_arm(name: str, overrides: list[str], opts: dict) -> dict:
    """Train arm `name` (skipped when its weights exist) and measure it; runs in a worker process."""
    torch.set_num_threads(opts["threads"] or os.cpu_count() or 1)
    from medconddiff.hub import load_model

    from . import train as T

    out = Path(opts["out"]) / name
    if not opts.get("weights") and (out / "study.json").is_file() and (out / "weights" / "model.safetensors").is_file():
        return json.loads((out / "study.json").read_text())  # measured before (a study resumed after a stop)
    common = [f"train.threads={opts['threads']}", *opts["overrides"]]
    args = ["--config", opts["config"], "--out", str(out), "--cache", str(Path(opts["out"]) / "cache")]
    args += [a for o in [*overrides, *common] for a in ("--set", o)]
    t0 = time.time()
    if opts.get("weights"):  # measure a finished model instead of training an arm
        model = load_model(opts["weights"])
    else:
        if not (out / "weights" / "model.safetensors").is_file():
            T.run([*args, "--no-progress"])
        model = load_model(out / "weights")
    train_minutes = (time.time() - t0) / 60
    run = T.load_run_config(opts["config"], [*overrides, *common])
    _, val = T.prepare_data(run, Path(opts["out"]) / "cache")
    keep = (val.labels.flatten(1) > 0).any(1).nonzero().flatten()  # images with something to find
    if opts["max_val"] and keep.numel() > opts["max_val"]:
        keep = keep[torch.linspace(0, keep.numel() - 1, opts["max_val"]).round().long()]
    images, labels = val.images[keep], val.labels[keep]
    rows = []
    for sampler in opts["samplers"]:
        for ensemble in opts["ensembles"]:
            for steps in opts["steps"]:
                rows.append(measure(model, images, labels, steps=steps, ensemble=ensemble, sampler=sampler))
    base = {(r["sampler"], r["ensemble"]): r["dice"] for r in rows if r["steps"] == 1}
    for r in rows:
        r["gain_vs_1"] = r["dice"] - base.get((r["sampler"], r["ensemble"]), math.nan)
    result = {
        "arm": name,
        "overrides": overrides,
        "train_minutes": round(train_minutes, 1),
        "val_images": len(labels),
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=1))
    return result


def pick_row(result: dict) -> dict:
    """The row of the ranking setting (PICK), or the closest one a small sweep has."""
    rows = result["rows"]
    for r in rows:
        if all(r[k] == v for k, v in PICK.items()):
            return r
    return max(rows, key=lambda r: (r["sampler"] == "ddim", r["ensemble"] == 1, r["steps"]))


def combination(results: dict[str, dict]) -> list[str]:
    """For each factor, the overrides of its best single-factor arm (ranked by PICK's Dice)."""
    overrides = []
    for arms in FACTORS.values():
        present = [a for a in arms if a in results]
        if present:
            best = max(present, key=lambda a: pick_row(results[a])["dice"])
            overrides += ARMS[best]
    return overrides


def best_defaults(result: dict) -> dict:
    """The sampling setting with the best validation Dice; ties (within 0.002) go to the cheapest."""
    rows = result["rows"]
    top = max(r["dice"] for r in rows)
    near = [r for r in rows if r["dice"] >= top - 0.002]
    r = min(near, key=lambda r: (r["steps"] * r["ensemble"], r["sampler"] != "ddim"))
    return {
        "steps": r["steps"],
        "ensemble": r["ensemble"],
        "sampler": r["sampler"],
        "consensus": CONSENSUS,
        "dice": r["dice"],
    }


# -- tables ------------------------------------------------------------------------------------


def _f(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def render(dataset: str, results: dict[str, dict], opts: dict) -> str:
    lines = [
        f"# Steps study: {dataset}",
        "",
        f"Command: `{opts['command']}`. Validation split only ({next(iter(results.values()))['val_images']} images "
        f"with foreground), model grid {opts['size']} px, {opts['train_steps']} training steps per arm, seed 0, "
        f"consensus `{CONSENSUS}`. Dice: mean over images of the mean foreground Dice.",
        "",
        "## Summary (DDIM, E = 1 unless said)",
        "",
        "| arm | recipe | Dice S=1 | Dice S=10 | gain S=10 | last-step x0 Dice S=10 | change (mean / last) S=10 "
        "| AUROC dis. / ent. S=10 E=4 | rho(entropy, Dice) S=10 E=4 | best setting | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row_of(res, steps, ensemble, sampler="ddim"):
        for r in res["rows"]:
            if (r["steps"], r["ensemble"], r["sampler"]) == (steps, ensemble, sampler):
                return r
        return None

    s_hi = 10 if 10 in opts["steps"] else max(opts["steps"])
    e_hi = max(opts["ensembles"])
    for name, res in results.items():
        r1, r10, r10e = row_of(res, 1, 1), row_of(res, s_hi, 1), row_of(res, s_hi, e_hi)
        if r1 is None or r10 is None or r10e is None:
            continue
        best = best_defaults(res)
        lines.append(
            f"| {name} | {' '.join(res['overrides']) or 'today'} | {_f(r1['dice'])} | {_f(r10['dice'])} | "
            f"{r10['gain_vs_1']:+.3f} | {_f(r10['dice_last_step'])} | {_f(r10['change_mean'], 4)} / "
            f"{_f(r10['change_last'], 4)} | {_f(r10e['auroc_disagreement'])} / {_f(r10e['auroc_entropy'])} | "
            f"{_f(r10e['rho_entropy_dice'], 2)} | S={best['steps']} E={best['ensemble']} {best['sampler']} "
            f"({_f(best['dice'])}) | {res['train_minutes']} |"
        )
    lines += [
        "",
        "## Every setting",
        "",
        "| arm | sampler | E | S | Dice | gain vs S=1 | last-step Dice | change mean | change last | AUROC dis. "
        "| AUROC ent. | rho | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for r in res["rows"]:
            lines.append(
                f"| {name} | {r['sampler']} | {r['ensemble']} | {r['steps']} | {_f(r['dice'])} | "
                f"{r['gain_vs_1']:+.3f} | {_f(r['dice_last_step'])} | {_f(r['change_mean'], 4)} | "
                f"{_f(r['change_last'], 4)} | {_f(r['auroc_disagreement'])} | {_f(r['auroc_entropy'])} | "
                f"{_f(r['rho_entropy_dice'], 2)} | {r['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def measure_weights(args) -> dict:
    """The study's measures on a finished model's validation split (no training)."""
    from medconddiff.hub import load_model, resolve

    model = load_model(args.weights)
    name = resolve(args.weights).name
    opts = {
        "config": CONFIGS[args.dataset],
        "out": str(Path(args.runs) / f"steps_{args.dataset}_{name}"),
        "threads": args.threads,
        "steps": STEPS,
        "ensembles": ENSEMBLES,
        "samplers": SAMPLERS,
        "max_val": args.max_val,
        "size": model.config.image_size,
        "train_steps": 0,
        "weights": str(resolve(args.weights)),
        "overrides": [f"model.image_size={model.config.image_size}"],
        "command": f"python -m train.studies steps --dataset {args.dataset} --weights {args.weights}",
    }
    result = run_arm(name, [], opts)
    result["train_minutes"] = "–"
    results = {name: result}
    out = Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"steps_{args.dataset}_{name}"
    summary = {name: {"overrides": [], "best": best_defaults(result)}}
    (out / f"{stem}.json").write_text(json.dumps({"options": opts, "summary": summary, "arms": results}, indent=1))
    table = render(args.dataset, results, opts).replace(
        f"{opts['train_steps']} training steps per arm, seed 0", f"the finished model `{name}`"
    )
    (out / f"{stem}.md").write_text(table)
    print(table)
    return results


def study_steps(args) -> dict:
    if args.weights:
        return measure_weights(args)
    dataset = args.dataset
    tiny = args.tiny
    opts = {
        "config": CONFIGS[dataset],
        "out": str(Path(args.runs) / (f"steps_{dataset}" + ("_tiny" if tiny else ""))),
        "threads": args.threads,
        "steps": (1, 2) if tiny else STEPS,
        "ensembles": (1, 2) if tiny else ENSEMBLES,
        "samplers": SAMPLERS,
        "max_val": 4 if tiny else args.max_val,
        "size": 32 if tiny else args.size,
        "train_steps": 2 if tiny else args.train_steps,
        "command": "python -m train.studies steps --dataset " + dataset + (" --tiny" if tiny else ""),
    }
    opts["overrides"] = [
        f"model.image_size={opts['size']}",
        f"train.steps={opts['train_steps']}",
        "train.val_every=1000000",
        "train.ckpt_every=1000000",
    ]
    if tiny:
        opts["overrides"] += ["train.batch_size=2", "train.warmup=1", f"data.split_file={args.tiny_split}"]
    arms = {a: ARMS[a] for a in (args.arms or (["today", "self_cond"] if tiny else list(ARMS)))}
    results: dict[str, dict] = {}
    jobs = 1 if tiny else args.jobs
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(run_arm, name, ov, opts) for name, ov in arms.items()}
        for name, fut in futures.items():
            results[name] = fut.result()
            r = pick_row(results[name])
            print(
                f"{name}: dice {r['dice']:.3f} at S={r['steps']} (trained {results[name]['train_minutes']} min)",
                flush=True,
            )
        combo = combination(results)
        if not args.arms and combo and combo not in arms.values():
            results["combo"] = pool.submit(run_arm, "combo", combo, opts).result()
    table = render(dataset, results, opts)
    out = Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"steps_{dataset}" + ("_tiny" if tiny else "")
    summary = {name: {"overrides": r["overrides"], "best": best_defaults(r)} for name, r in results.items()}
    (out / f"{stem}.json").write_text(json.dumps({"options": opts, "summary": summary, "arms": results}, indent=1))
    (out / f"{stem}.md").write_text(table)
    print(table)
    return results


def add_parser(sub) -> None:
    s = sub.add_parser("steps", help="training recipes x steps x ensemble x sampler: do later steps help?")
    s.add_argument("--dataset", choices=sorted(CONFIGS), default="kvasir")
    s.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="only these arms (no combination arm)")
    s.add_argument("--size", type=int, default=64, help="model grid in px")
    s.add_argument("--train-steps", type=int, default=800)
    s.add_argument("--max-val", type=int, default=96, help="at most this many validation images (evenly spaced)")
    s.add_argument("--jobs", type=int, default=1, help="arms trained at once (default: one at a time, on every core)")
    s.add_argument("--threads", type=int, default=0, help="torch threads per arm (0: every core)")
    s.add_argument("--runs", default="runs/studies", help="where the arms' runs go")
    s.add_argument("--docs", default="docs/studies", help="where the tables go")
    s.add_argument("--weights", help="measure this finished model on the dataset's validation split (no training)")
    s.add_argument("--tiny", action="store_true", help="a seconds-long run on a few images (tests, CI)")
    s.add_argument("--tiny-split", default="tests/data/tiny_split_kvasir.json", help="split file for --tiny")
