"""A run's state on disk and in time: the resumable checkpoint, the learning-curve log, the time limit.

checkpoint.safetensors   weights, EMA, optimiser state, random states (tensors, no pickle) and, as
                         metadata, the `Progress` and the settings that decide the weights (`run_identity`)
metrics.jsonl            `MetricsLog`: what `train.plot` draws
--time-limit             `Deadline`: stop while a checkpoint still fits inside the limit
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .train import RunConfig

# settings a resumed run may change: where it writes and how fast it runs, never what it computes
RESUMABLE_CHANGES = {"train.out", "train.threads", "train.ckpt_every"}


def run_identity(run: RunConfig, precision: str) -> dict[str, object]:
    """Every setting that decides a run's weights, flattened to 'section.key' -> value (precision resolved)."""
    flat: dict[str, object] = {f"model.{k}": v for k, v in run.model.to_dict().items()}
    for section in ("data", "train", "augment"):
        for k, v in dataclasses.asdict(getattr(run, section)).items():
            flat[f"{section}.{k}"] = v
    flat["train.precision"] = precision
    return {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES}


def identity_differences(saved: dict, now: dict) -> list[str]:
    """'key: checkpoint value -> this run's value' for every setting that differs."""
    return [
        f"{k}: {json.dumps(saved.get(k))} -> {json.dumps(now.get(k))}"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


@dataclass
class Progress:
    """What a checkpoint carries besides tensors: where the run is, and its best validation so far."""

    step: int = 0
    wall_s: float = 0.0  # training wall time before this process started (summed over the parts)
    best_dice: float = -1.0
    best_step: int = 0
    loss_sum: float = 0.0  # training losses since the last validation (its record shows their mean)
    loss_count: int = 0


def save_checkpoint(
    path: Path, model, ema, opt, gen: torch.Generator, progress: Progress, identity: dict[str, object]
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = (
                v.detach().reshape(v.shape).contiguous() if torch.is_tensor(v) else torch.tensor(v)
            )
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()  # nothing draws from it today; a dropout would
    meta = {
        "step": str(progress.step),
        "progress": json.dumps(dataclasses.asdict(progress)),
        "param_groups": json.dumps(opt_state["param_groups"]),
        "identity": json.dumps(identity),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # never leave a half-written checkpoint behind


def read_checkpoint_identity(path: Path) -> dict | None:
    """The settings a checkpoint was written under (None for checkpoints older than this record)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["identity"]) if "identity" in meta else None


def load_checkpoint(path: Path, model, ema, opt, gen: torch.Generator) -> Progress:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    gen.set_state(tensors["rng.generator"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "progress" in meta:
        return Progress(**json.loads(meta["progress"]))
    return Progress(step=int(meta["step"]))


class MetricsLog:
    """OUT/metrics.jsonl: one JSON object per line, `kind` "train" (every 25 steps) or "val" (every
    validation), each with step and cumulative training wall time; what `train.plot` draws.

    On resume the lines past the checkpoint's step are dropped: the resumed run writes them again."""

    def __init__(self, path: Path, *, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Deadline:
    """`--time-limit`: stop while a checkpoint can still be written inside the limit.

    After each step it asks whether the next step, the validation or checkpoint that may follow it,
    and the final save would all fit; the estimates are the slowest seen so far, with a margin."""

    def __init__(self, minutes: float | None):
        self.end = None if minutes is None else time.time() + 60.0 * minutes
        self.step_s = 0.0
        self.val_s = 0.0
        self.save_s = 5.0  # before the first save has been timed

    def note(self, kind: str, seconds: float) -> None:
        attr = {"step": "step_s", "val": "val_s", "save": "save_s"}[kind]
        setattr(self, attr, max(getattr(self, attr), seconds))

    def must_stop(self, *, val_next: bool) -> bool:
        if self.end is None:
            return False
        need = 1.5 * (self.step_s + (self.val_s if val_next else 0.0)) + 2.0 * self.save_s
        return time.time() + need > self.end
