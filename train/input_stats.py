"""Store what a model's training inputs look like in its config.json (`input_stats`), for the input check.

    python -m train.input_stats --config train/configs/brats_demo.toml --weights assets/weights/brats-demo

Computed on the TRAINING part of the config's data only (`train.train.prepare_data`, the same slice
cache as training): per slice the `medconddiff.ood` features of the normalised model-grid image, and
on up to --entropy-slices of them the mean entropy of a default sampling. `train.train` writes the
same field at the end of every new training. The field changes no mask: it only feeds the warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from medconddiff import io, ood
from medconddiff.hub import CONFIG_NAME, load_model, resolve
from medconddiff.pipeline import SamplingSettings, segment_model_grid

from . import data as D

MODALITY_WORDS = {"mri": "MRI", "ct": "CT", "natural": "photographs"}


def describe(config, data: D.DataSettings) -> str:
    """'FLAIR/T1c MRI (brats2015)': the channels, the modality and the data folder's name."""
    return f"{'/'.join(config.channel_names)} {MODALITY_WORDS.get(config.modality, config.modality)} ({Path(data.root).name})"


def compute(model, train_set: D.SliceSet, *, description: str, entropy_slices: int = 48, seed: int = 0) -> dict:
    """Training slices on the model grid (N, C, S, S) -> `input_stats` (see `medconddiff.ood.summarise`)."""
    config = model.config
    bg = io.background_value(config)
    images = train_set.images.float().numpy()
    feats = [f for f in (ood.slice_features(img, bg) for img in images) if f is not None]
    if not feats:
        raise D.DataError("the training part holds no slice with content: nothing to describe")
    pick = np.unique(np.linspace(0, len(images) - 1, min(entropy_slices, len(images))).round().astype(int))
    entropies = []
    settings = SamplingSettings.defaults_for(config, seed=seed)
    for start in range(0, len(pick), 16):
        idx = pick[start : start + 16]
        batch = torch.from_numpy(images[idx]).to(next(model.parameters()).device)
        fused = segment_model_grid(model, batch, settings)
        for j, i in enumerate(idx):
            entropies.append(ood.mean_entropy(fused.entropy[j].float().numpy(), ood.content_mask(images[i], bg)))
    foreground = float((train_set.labels > 0).float().mean()) if len(train_set) else 0.0
    return ood.summarise(
        np.stack(feats), np.asarray(entropies), description=description, foreground_fraction=foreground
    )


def write(folder: Path, stats: dict) -> Path:
    """Put `stats` into FOLDER/config.json as `input_stats` (the other fields untouched); its path."""
    path = Path(folder) / CONFIG_NAME
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["input_stats"] = stats
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return path


def run(argv: list[str] | None = None) -> int:
    from .train import load_run_config, prepare_data

    ap = argparse.ArgumentParser(prog="python -m train.input_stats", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the training TOML the weights were trained with")
    ap.add_argument("--weights", required=True, help="weights folder whose config.json gets the field")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--cache", default=None, help="slice cache folder (default: the train.out folder's parent/cache)")
    ap.add_argument("--description", default=None, help="what the warning calls the training data")
    ap.add_argument("--entropy-slices", type=int, default=48)
    args = ap.parse_args(argv)
    run_cfg = load_run_config(args.config, args.set)
    folder = resolve(args.weights)
    model = load_model(folder, device="cpu")
    run_cfg.model = model.config  # slices prepared as this model sees them (its orientation, size, window)
    cache = Path(args.cache) if args.cache else Path(run_cfg.train.out).parent / "cache"
    train_set, _ = prepare_data(run_cfg, cache)
    description = args.description or describe(model.config, run_cfg.data)
    stats = compute(model, train_set, description=description, entropy_slices=args.entropy_slices)
    path = write(folder, stats)
    e = stats["entropy"]
    print(
        f"{path}: input_stats from {stats['slices']} training slices; entropy p99 {e['p99']:.3f} -> limit {e['limit']:.3f}"
    )
    return 0


main = D.command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
