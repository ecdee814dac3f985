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
import multiprocessing
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
# workers are started fresh, not forked: a fork of a process whose OpenMP threads have run deadlocks in the
# child's first multi-threaded operator (seen with two threads per arm)
SPAWN = multiprocessing.get_context("spawn")
ONE_PASS = "one_pass"  # the sampler name of the one-pass segmenter arm's only row
PICK = {"steps": 10, "ensemble": 1, "sampler": "ddim"}  # the setting that ranks arms for the combination

CONFIGS = {"kvasir": "train/configs/study_steps_kvasir.toml", "brats": "train/configs/study_steps_brats.toml"}
# the recycling round trains at the shipped models' size with their own recipes (augmentation included); for
# BraTS the recipe of the model trained on both copies (2015 + 2018), whose recipe the round decides
SHIPPED_CONFIGS = {"kvasir": "train/configs/kvasir_demo.toml", "brats": "train/configs/brats_demo.toml"}
# arm -> overrides of the base config; the factors the combination draws from are named in FACTORS
ARMS: dict[str, list[str]] = {
    "today": [],
    "self_cond": ["model.self_condition=true"],
    "scale_0.5": ["model.mask_scale=0.5"],
    "scale_0.2": ["model.mask_scale=0.2"],
    "t_high": ["train.t_power=3"],
    # the recycling round (Fu et al., MELBA 2024): today's best recipe, with and without recycling, and the
    # same network as a one-pass segmenter: the number the diffusion steps have to beat
    # recycle "off" said outright: a shipped config may recycle already (kvasir_demo.toml adopted it)
    "best_today": ["model.mask_scale=0.2", "train.t_power=3", 'train.recycle="off"'],
    "recycle": ["model.mask_scale=0.2", "train.t_power=3", 'train.recycle="from_noise"'],
    "recycle_next": ["model.mask_scale=0.2", "train.t_power=3", 'train.recycle="from_next"'],
    "plain": ['train.objective="segmenter"', 'train.recycle="off"'],
}
ROUNDS = {
    "recipes": ["today", "self_cond", "scale_0.5", "scale_0.2", "t_high"],
    "recycling": ["best_today", "recycle", "plain"],
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
            if sampler == ONE_PASS:  # the segmenter arm: one forward pass, no sampling
                from .train import one_pass

                logits = one_pass(model, img)[None, None]  # (1, 1, B, K, H, W)
                votes = logits.argmax(dim=3).to(torch.uint8)  # (1, 1, B, H, W)
                logsnr = model.schedule.logsnr(torch.ones(1))
            else:
                cond = model.encode_image(img)
                records = list(
                    sample_loop(
                        model, cond, steps=steps, ensemble=ensemble, sampler=sampler, generator=gen, keep_x_t=False
                    )
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
            extra = ["--no-progress", "--resume"]  # --resume: continue an arm a time limit stopped
            if opts.get("deadline"):
                left = (opts["deadline"] - time.time()) / 60
                if left < 2:
                    raise SystemExit(f"time limit reached before arm {name}; run the same command to continue")
                extra += ["--time-limit", f"{left:.2f}"]
            T.run([*args, *extra])
            if not (out / "weights" / "model.safetensors").is_file():
                raise SystemExit(f"time limit reached while training arm {name}; run the same command to continue")
        model = load_model(out / "weights")
    info_path = out / "weights" / "training.json"
    train_minutes = (time.time() - t0) / 60
    if info_path.is_file():  # the arm's own training wall time, summed over its parts
        train_minutes = json.loads(info_path.read_text()).get("wall_minutes", train_minutes)
    run = T.load_run_config(opts["config"], [*overrides, *common])
    _, val = T.prepare_data(run, Path(opts["out"]) / "cache")
    # images with something to find, evenly thinned to --max-val (0: all of them), as training validates
    keep = T.validation_indices(val.labels, opts["max_val"] or len(val.labels))
    images, labels = val.images[keep], val.labels[keep]
    rows = []
    plain = 'train.objective="segmenter"' in overrides
    settings = (
        [(ONE_PASS, 1, 1)]
        if plain
        else [(sp, e, st) for sp in opts["samplers"] for e in opts["ensembles"] for st in opts["steps"]]
    )
    for sampler, ensemble, steps in settings:
        rows.append(measure(model, images, labels, steps=steps, ensemble=ensemble, sampler=sampler))
    if opts.get("figure"):  # x0-hat across the steps for one validation image, the same for every arm
        figure = Path(opts["figure"].format(arm=name))
        figure.parent.mkdir(parents=True, exist_ok=True)
        trajectory_strip(model, images, labels, index=opts.get("figure_index", 0), plain=plain, name=name, path=figure)
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


def trajectory_strip(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    index: int,
    plain: bool,
    name: str,
    path: Path,
    steps: int = 10,
) -> Path:
    """A PNG strip for validation image `index`: the image with its truth, then x0-hat's argmax at each of
    `steps` DDIM steps (E = 1, seed 0) with its Dice, then the consensus; the segmenter arm has one pass."""
    from PIL import Image

    from medconddiff import viz
    from medconddiff.consensus import fuse
    from medconddiff.sampler import sample_loop

    k = model.config.num_classes
    img, truth = images[index : index + 1].float(), labels[index].long()
    c = img[0].numpy()
    if model.config.modality == "natural":  # the model grid holds [0, 1] colours
        base = (np.clip(np.moveaxis(c[:3], 0, -1), 0, 1) * 255).round().astype(np.uint8)
    else:
        base = viz.to_display(c, modality=model.config.modality, kind="nifti")
    colours = viz.class_colours(k)
    tile = lambda lab, text: viz.caption(viz.upscale(viz.overlay(base, lab, colours), min_side=160), text)  # noqa: E731
    tiles = [tile(truth.numpy(), "truth")]
    with torch.inference_mode():
        if plain:
            from .train import one_pass

            lab = one_pass(model, img).argmax(1)[0]
            tiles.append(tile(lab.numpy(), f"one pass {image_dice(lab, truth, k):.2f}"))
        else:
            g = torch.Generator().manual_seed(0)
            recs = list(
                sample_loop(model, model.encode_image(img), steps=steps, ensemble=1, sampler="ddim", generator=g)
            )
            for i, r in enumerate(recs):
                lab = r.labels[0, 0].long()
                tiles.append(tile(lab.numpy(), f"step {i + 1} {image_dice(lab, truth, k):.2f}"))
            fused = fuse(
                torch.stack([r.logits[:, 0] for r in recs]),
                torch.tensor([r.logsnr for r in recs]),
                method=CONSENSUS,
                votes=torch.stack([r.labels[:, 0] for r in recs]),
            )
            tiles.append(tile(fused.labels.numpy(), f"consensus {image_dice(fused.labels, truth, k):.2f}"))
    strip = viz.caption(viz.side_by_side(tiles), f"{name}: x0-hat per step (DDIM, E = 1), Dice per tile")
    Image.fromarray(strip).save(path)
    return path


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


def sweep_options(args, *, size: int) -> dict:
    """What every round shares: threads, the sampling sweep, the validation images, size and steps (--tiny: a few)."""
    tiny = args.tiny
    return {
        "threads": args.threads,
        "steps": (1, 2) if tiny else STEPS,
        "ensembles": (1, 2) if tiny else ENSEMBLES,
        "samplers": SAMPLERS,
        "max_val": 4 if tiny else args.max_val,
        "size": 32 if tiny else size,
        "train_steps": 2 if tiny else args.train_steps,
    }


def study_steps(args) -> dict:
    if args.weights:
        return measure_weights(args)
    if args.round == "recycling":
        return study_recycling(args)
    dataset = args.dataset
    tiny = args.tiny
    opts = {
        "config": CONFIGS[dataset],
        "out": str(Path(args.runs) / (f"steps_{dataset}" + ("_tiny" if tiny else ""))),
        **sweep_options(args, size=args.size),
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
    arms = {a: ARMS[a] for a in (args.arms or (["today", "self_cond"] if tiny else ROUNDS["recipes"]))}
    results: dict[str, dict] = {}
    jobs = 1 if tiny else args.jobs
    with ProcessPoolExecutor(max_workers=jobs, mp_context=SPAWN) as pool:
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


def study_recycling(args) -> dict:
    """The recycling round: best_today, recycle and plain at the shipped model's size and recipe, equal steps.

    Each arm trains in its own run folder (resumable: a `--time-limit` stop is continued by the same
    command), then every sampling setting is measured on the validation split; the tables of every
    dataset measured so far go into docs/studies/steps_recycling.md."""
    dataset, tiny = args.dataset, args.tiny
    config = SHIPPED_CONFIGS[dataset]
    from . import train as T

    size = T.load_run_config(config, []).model.image_size
    command = f"python -m train.studies steps --round recycling --dataset {dataset} --train-steps {args.train_steps}"
    opts = {
        "config": config,
        "out": str(Path(args.runs) / (f"steps_recycling_{dataset}" + ("_tiny" if tiny else ""))),
        **sweep_options(args, size=size),
        "command": command + (" --tiny" if tiny else ""),
        "deadline": time.time() + 60 * args.time_limit if args.time_limit else None,
    }
    stem = f"steps_recycling_{dataset}" + ("_tiny" if tiny else "")
    docs = Path(args.docs)
    opts["figure"] = str(docs / f"{stem}_{{arm}}.png")
    opts["overrides"] = [
        f"train.steps={opts['train_steps']}",
        f"train.val_every={max(1, args.val_every)}",
        "train.ckpt_every=100",  # an arm stopped from outside loses at most 100 steps
    ]
    if tiny:
        opts["overrides"] += [
            f"model.image_size={opts['size']}",
            "train.batch_size=2",
            "train.warmup=1",
            f"data.split_file={args.tiny_split}",
        ]
    names = args.arms or (["recycle", "plain"] if tiny else ROUNDS["recycling"])
    results: dict[str, dict] = {}
    for name in names:  # one arm at a time, each on every core
        with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:  # a fresh process per arm
            results[name] = pool.submit(run_arm, name, ARMS[name], opts).result()
        r = pick_row(results[name])
        print(
            f"{name}: dice {r['dice']:.3f} at S={r['steps']} (trained {results[name]['train_minutes']} min)", flush=True
        )
    docs.mkdir(parents=True, exist_ok=True)
    summary = {name: {"overrides": r["overrides"], "best": best_defaults(r)} for name, r in results.items()}
    verdict = recycling_verdict(results)
    (docs / f"{stem}.json").write_text(
        json.dumps({"options": opts, "summary": summary, "verdict": verdict, "arms": results}, indent=1)
    )
    found = sorted(docs.glob("steps_recycling_*.json"))
    datasets = {
        p.stem.removeprefix("steps_recycling_"): json.loads(p.read_text())
        for p in found
        if not p.stem.endswith("_tiny") or tiny
    }
    text = render_recycling(datasets)
    (docs / ("steps_recycling_tiny.md" if tiny else "steps_recycling.md")).write_text(text)
    print(text)
    return results


def _row(result: dict, steps: int, ensemble: int, sampler: str) -> dict | None:
    for r in result["rows"]:
        if (r["steps"], r["ensemble"], r["sampler"]) == (steps, ensemble, sampler):
            return r
    return None


def recycling_verdict(results: dict[str, dict]) -> dict:
    """The bar for each diffusion arm: Dice at S = 10 >= Dice at S = 1 + 0.01 (DDIM, E = 1), and its best
    setting >= the one-pass segmenter's Dice - 0.01."""
    plain = results.get("plain")
    plain_dice = plain["rows"][0]["dice"] if plain else math.nan
    out = {"plain_dice": plain_dice}
    for name, res in results.items():
        if name == "plain":
            continue
        r1, r10 = _row(res, 1, 1, "ddim"), _row(res, 10, 1, "ddim")
        if r1 is None or r10 is None:
            continue
        best = best_defaults(res)
        out[name] = {
            "dice_s1": r1["dice"],
            "dice_s10": r10["dice"],
            "gain_s10": r10["dice"] - r1["dice"],
            "steps_refine": r10["dice"] >= r1["dice"] + 0.01,
            "best": best,
            "beats_plain": bool(plain) and best["dice"] >= plain_dice - 0.01,
        }
    return out


def render_recycling(datasets: dict[str, dict]) -> str:
    lines = [
        "# Steps that refine: recycling training and the one-pass segmenter",
        "",
        "Arms, each trained from scratch with the shipped model's config (size, augmentation, schedule) and the",
        "same number of steps, seed 0:",
        "",
        "- `best_today`: masks scaled by 0.2 before noising, training times drawn towards high noise (3 t^2);",
        "- `recycle`: the same, with recycling (Fu et al., MELBA 2024): every training row's noisy mask is built",
        "  from the model's own x0-hat, predicted without gradient from pure noise at t = 1, instead of from the",
        "  truth;",
        "- `plain`: the same network trained as a one-pass segmenter (an empty mask at t = 1 in, the mask out):",
        "  the number the diffusion steps have to beat.",
        "",
        "Validation split only (the sampling defaults are chosen on it too). Dice: mean over images of the mean",
        "foreground Dice on the model grid. The bar: Dice at S = 10 at least Dice at S = 1 + 0.01 (DDIM, E = 1),",
        "and the best setting at least the one-pass segmenter - 0.01.",
    ]
    for dataset, data in datasets.items():
        opts, arms, verdict = data["options"], data["arms"], data.get("verdict", {})
        lines += [
            "",
            f"## {dataset}",
            "",
            f"Command: `{opts['command']}`; {opts['train_steps']} training steps per arm at {opts['size']} px; "
            f"{next(iter(arms.values()))['val_images']} validation images with foreground. JSON: "
            f"[`steps_recycling_{dataset}.json`](steps_recycling_{dataset}.json).",
            "",
            "| arm | S=1 | S=2 | S=5 | S=10 | S=20 | DDPM S=10 | E=4 S=10 | last-step x0 S=10 | change/step S=10 "
            "| AUROC ent. S=10 E=4 | best setting | bar | train min |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, res in arms.items():
            if name == "plain":
                r = res["rows"][0]
                lines.append(
                    f"| plain | {_f(r['dice'])} (one pass) | | | | | | | | | {_f(r['auroc_entropy'])} (one pass) | "
                    f"one pass | baseline | {res['train_minutes']} |"
                )
                continue
            cells = [_f((_row(res, st, 1, "ddim") or {}).get("dice", math.nan)) for st in STEPS]
            r10p, r10e = _row(res, 10, 1, "ddpm"), _row(res, 10, 4, "ddim")
            r10 = _row(res, 10, 1, "ddim")
            v = verdict.get(name, {})
            bar = (
                ("refines" if v.get("steps_refine") else "no refinement")
                + ", "
                + ("matches plain" if v.get("beats_plain") else "below plain")
                if v
                else "–"
            )
            b = best_defaults(res)
            lines.append(
                f"| {name} | "
                + " | ".join(cells)
                + f" | {_f((r10p or {}).get('dice', math.nan))} | {_f((r10e or {}).get('dice', math.nan))} | "
                f"{_f((r10 or {}).get('dice_last_step', math.nan))} | {_f((r10 or {}).get('change_mean', math.nan), 4)} | "
                f"{_f((r10e or {}).get('auroc_entropy', math.nan))} | S={b['steps']} E={b['ensemble']} {b['sampler']} "
                f"({_f(b['dice'])}) | {bar} | {res['train_minutes']} |"
            )
        lines += ["", "x0-hat across the steps for the same validation image (DDIM, E = 1, seed 0):", ""]
        stem = f"steps_recycling_{dataset}"
        lines += [f"![{name}]({stem}_{name}.png)" for name in arms]
        lines += ["", "<details><summary>Every setting</summary>", ""]
        lines += render(dataset, arms, opts).split("## Every setting", 1)[1].strip().splitlines()
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


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
    s.add_argument(
        "--round",
        choices=["recipes", "recycling"],
        default="recipes",
        help="recipes: the first round's arms at --size; recycling: best_today / recycle / plain at the shipped size",
    )
    s.add_argument("--val-every", type=int, default=500, help="validation points of each arm's learning curve")
    s.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop (resumably) before this much time")
    s.add_argument("--tiny-split", default="tests/data/tiny_split_kvasir.json", help="split file for --tiny")
