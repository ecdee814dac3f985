"""Train MedCondDiff from a TOML config; one process or many (torchrun, DistributedDataParallel).

    python -m train.train --config train/configs/brats_demo.toml [--set train.steps=100 ...]
    torchrun --nproc_per_node 2 -m train.train --config ... (gloo on CPU, nccl on CUDA)

Everything a run does is in its output folder: train.log, checkpoint.safetensors (resumable,
no pickle), and the final EMA weights saved with `save_pretrained` (config.json +
model.safetensors + README.md model card).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
import torch
import torch.distributed as dist

from medconddiff import precision as P
from medconddiff.config import MedCondDiffConfig
from medconddiff.diffusion import Recycle, class_weights_from_counts, hybrid_loss, labels_to_x0, q_sample
from medconddiff.model import MedCondDiff
from medconddiff.pipeline import SamplingSettings, segment_model_grid

from . import data as D
from .checkpoint import (
    RESUMABLE_CHANGES,
    Deadline,
    MetricsLog,
    Progress,
    identity_differences,
    load_checkpoint,
    read_checkpoint_identity,
    run_identity,
    save_checkpoint,
)

log = logging.getLogger("train")
CACHE_VERSION = 2  # 2: MRI foreground = differs from the constant background fill (not merely non-zero)


@dataclass
class TrainSettings:
    out: str = "runs/brats_demo"
    seed: int = 0
    steps: int = 2000
    batch_size: int = 8  # per process
    noise_draws: int = 2  # noisy masks per image; they share one backbone pass
    lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup: int = 100
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    dice_weight: float = 0.3
    ce_weight: float = 0.7
    # training times t are drawn with density p * t^(p-1) on [0, 1]: 1 = uniform; above 1 leans to
    # high noise, where the image pathway must do the work (docs/studies/steps.md)
    t_power: float = 1.0
    self_condition_prob: float = 0.5  # share of rows trained with an x0-hat fed back (self-conditioned models)
    val_every: int = 250
    val_slices: int = 48  # validation slices with foreground, sampled with val_steps steps
    val_steps: int = 5
    ckpt_every: int = 250
    threads: int = 0  # torch CPU threads per process; 0 = every core, shared among the processes
    half_weights: bool = True  # store the released weights in fp16 (loading upcasts)
    # the forward pass under autocast: "auto" = bf16 on a CPU with native bf16 or on CUDA, fp32 elsewhere.
    # Weights, optimiser state, EMA, losses and validation stay fp32 (docs/studies/precision_parity.md)
    precision: str = "auto"
    # recycling (Fu et al., MELBA 2024): x_t is built from the model's own no-grad x0-hat instead of the
    # truth, as sampling will feed it. "from_noise": x0-hat from pure noise at t = 1; "from_next": from
    # the truth noised to t + recycle_gap. recycle_prob: the share of rows recycled.
    recycle: str = "off"
    recycle_prob: float = 1.0
    recycle_gap: float = 0.1
    # "diffusion", or "segmenter": the same network trained as a one-pass segmenter (x_t = 0 at t = 1),
    # the baseline the sampling steps must beat (docs/studies/steps_recycling.md)
    objective: str = "diffusion"


@dataclass
class RunConfig:
    model: MedCondDiffConfig
    data: D.DataSettings = field(default_factory=D.DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    augment: D.AugmentSettings = field(default_factory=D.AugmentSettings)


def _coerce(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def load_run_config(path: str | Path, overrides: list[str]) -> RunConfig:
    """TOML file + `section.key=value` overrides -> RunConfig; unknown keys are errors."""
    raw = tomllib.loads(Path(path).read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name:
            raise SystemExit(f"override {item!r}: expected section.key=value")
        raw.setdefault(section, {})[name] = _coerce(value)
    unknown = set(raw) - {"model", "data", "train", "augment"}
    if unknown:
        raise SystemExit(f"{path}: unknown section(s) {sorted(unknown)}")

    def build(cls, section):
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(raw.get(section, {})) - names
        if bad:
            raise SystemExit(f"{path}: unknown key(s) in [{section}]: {sorted(bad)}")
        return cls(**raw.get(section, {}))

    model_raw = {**MedCondDiffConfig().to_dict(), **raw.get("model", {})}
    return RunConfig(
        model=MedCondDiffConfig.from_dict(model_raw, source=f"{path} [model]"),
        data=build(D.DataSettings, "data"),
        train=build(TrainSettings, "train"),
        augment=build(D.AugmentSettings, "augment"),
    )


# -- distributed helpers ----------------------------------------------------------------------


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def one_pass(model: MedCondDiff, image: torch.Tensor) -> torch.Tensor:
    """A model trained with `train.objective = "segmenter"`: (B, C, H, W) image -> (B, K, H, W) logits in
    one forward pass from an empty mask (x_t = 0 at t = 1), as it was trained."""
    cond = model.encode_image(image)
    b, k = image.shape[0], model.config.num_classes
    x_t = image.new_zeros(b, k, *image.shape[-2:])
    return model.denoise(x_t, image.new_ones(b), cond)


# -- validation -------------------------------------------------------------------------------


def validation_indices(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Up to `n` validation slices with foreground, evenly spread over all of them.

    Cases are stored one after the other, so the first `n` slices with foreground would all come from
    the first case or two (for BraTS, one of the four validation patients): the spread takes slices
    from every case, in order, and the same ones at every validation of a run.
    """
    fg = (labels.flatten(1) > 0).any(1).nonzero().flatten()
    if fg.numel() <= n:
        return fg
    return fg[torch.linspace(0, fg.numel() - 1, n).round().long()]


@torch.inference_mode()
def validate(model, val: D.SliceSet, settings: TrainSettings, device) -> dict[str, float]:
    """Foreground Dice per class on validation slices (model grid), fast sampling settings.

    Samples through the library (`pipeline.segment_model_grid`, the pipeline's own sampling and
    consensus) with one generator across batches, so a run's validation numbers are reproducible.
    """
    model.eval()
    k = model.config.num_classes
    fg = validation_indices(val.labels, settings.val_slices)
    if fg.numel() == 0:
        return {}
    inter = torch.zeros(k)
    total = torch.zeros(k)
    sampling = SamplingSettings(steps=settings.val_steps, seed=1234)  # DDIM, one member, mean_logits
    g = torch.Generator().manual_seed(sampling.seed)
    for start in range(0, fg.numel(), 16):
        idx = fg[start : start + 16]
        img = val.images[idx].float().to(device)
        if settings.objective == "segmenter":
            pred = one_pass(model, img).argmax(1)  # (B, S, S)
        else:
            pred = segment_model_grid(model, img, sampling, generator=g).labels  # (B, S, S)
        lab = val.labels[idx].long()
        for c in range(1, k):
            inter[c] += ((pred == c) & (lab == c)).sum()
            total[c] += (pred == c).sum() + (lab == c).sum()
    dice = {f"dice_{c}": float(2 * inter[c] / total[c]) if total[c] > 0 else float("nan") for c in range(1, k)}
    vals = [v for v in dice.values() if not math.isnan(v)]
    dice["dice_fg_mean"] = sum(vals) / max(1, len(vals))
    return dice


# -- the loop ---------------------------------------------------------------------------------


def noisy_masks(labels: torch.Tensor, config: MedCondDiffConfig, s: TrainSettings, schedule, gen: torch.Generator):
    """(N, H, W) labels -> (t (N,), noise, x_t (N, K, H, W), self-conditioning row mask (N,) or None).

    t has density t_power * t^(t_power - 1); x0 is scaled by the model's mask_scale before noising.
    The generator is drawn from in the same order as before these options existed, so the default
    recipe reproduces earlier runs.
    """
    n, k = labels.shape[0], config.num_classes
    t = torch.rand(n, generator=gen)
    if s.t_power != 1.0:
        t = t.pow(1.0 / s.t_power)
    noise = torch.randn((n, k, *labels.shape[-2:]), generator=gen)
    x0 = labels_to_x0(labels, k)
    if config.mask_scale != 1.0:
        x0 = x0 * config.mask_scale
    x_t = q_sample(x0, t, noise, schedule)
    sc = torch.rand(n, generator=gen) < s.self_condition_prob if config.self_condition else None
    return t, noise, x_t, sc


RECYCLE_MODES = ("off", "from_noise", "from_next")
OBJECTIVES = ("diffusion", "segmenter")


def check_settings(s: TrainSettings) -> None:
    """Refuse settings with no meaning, naming what is accepted."""
    try:
        P.check(s.precision)
    except ValueError as err:
        raise SystemExit(f"train.precision: {err}") from None
    if s.precision == "fp16":
        raise SystemExit(
            "train.precision: fp16 training needs loss scaling, which is not implemented; accepted: auto, fp32, bf16"
        )
    if s.recycle not in RECYCLE_MODES:
        raise SystemExit(f"train.recycle: unknown mode {s.recycle!r}; accepted: {', '.join(RECYCLE_MODES)}")
    if s.objective not in OBJECTIVES:
        raise SystemExit(f"train.objective: unknown {s.objective!r}; accepted: {', '.join(OBJECTIVES)}")
    if s.objective == "segmenter" and s.recycle != "off":
        raise SystemExit('train.recycle needs train.objective = "diffusion" (a one-pass segmenter has no x_t)')
    if not 0.0 <= s.recycle_prob <= 1.0 or not 0.0 < s.recycle_gap <= 1.0:
        raise SystemExit("train.recycle_prob must lie in [0, 1] and train.recycle_gap in (0, 1]")


def recycle_inputs(
    labels: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    config: MedCondDiffConfig,
    s: TrainSettings,
    schedule,
    gen,
) -> Recycle | None:
    """What the model's no-grad pass starts from, for the rows to recycle (None when recycling is off).

    labels (N, H, W), t (N,), noise (N, K, H, W): the batch's own draws. "from_noise": pure noise at
    t = 1, as the first sampling step sees; "from_next": the truth noised to t + recycle_gap, one
    sampling step earlier (noisier) than t.
    """
    if s.recycle == "off":
        return None
    n = labels.shape[0]
    rows = torch.rand(n, generator=gen) < s.recycle_prob
    if s.recycle == "from_noise":
        t_start = torch.ones(n)
        x_start = torch.randn(noise.shape, generator=gen)
    else:
        t_start = (t + s.recycle_gap).clamp(max=1.0)
        x0 = labels_to_x0(labels, config.num_classes) * config.mask_scale
        x_start = q_sample(x0, t_start, torch.randn(noise.shape, generator=gen), schedule)
    return Recycle(x_start=x_start, t_start=t_start, noise=noise, rows=rows)


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    p = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def prepare_data(run: RunConfig, cache: Path) -> tuple[D.SliceSet, D.SliceSet]:
    cases = D.find_cases(run.data.root, run.data)
    m = run.model
    # CACHE_VERSION changes whenever the library's normalisation or geometry changes
    key = f"v{CACHE_VERSION}_{m.modality}_{m.image_channels}ch_{m.image_size}px_crop{int(m.crop_foreground)}"
    if m.pixel_spacing:  # resampled to mm per pixel: another grid (older caches keep their names)
        key += f"_{m.pixel_spacing:g}mm"
    if run.data.layout != "images":  # volumes are sliced in the model's orientation (`io.reorient`)
        key += f"_{m.orientation}"
    if run.data.layout == "single":
        tr = D.load_or_build(
            cache,
            f"{cases[0].name}_train_{key}_val{run.data.val_range}",
            lambda: D.build_slices(cases, run.data, m, part="train"),
        )
        va = D.load_or_build(
            cache,
            f"{cases[0].name}_val_{key}_val{run.data.val_range}",
            lambda: D.build_slices(cases, run.data, m, part="val"),
        )
        return tr, va
    train_cases, val_cases = D.split_cases(cases, run.data)
    if run.data.layout == "images":  # thousands of small cases: one cache file per part
        import hashlib

        def part(name, part_cases):
            digest = hashlib.sha256(json.dumps([c.name for c in part_cases]).encode()).hexdigest()[:12]
            folder = Path(run.data.root).name
            return D.load_or_build(
                cache,
                f"{folder}_{name}_{key}_thr{run.data.mask_threshold}_{digest}",
                lambda: D.build_slices(part_cases, run.data, m),
            )

        return part("train", train_cases), part("val", val_cases)

    def case_key(c: D.Case) -> str:  # a label map changes the cached labels: it is part of the name
        label_map = (c.source or run.data).label_map
        if not label_map:
            return f"{c.name}_{key}"
        import hashlib

        return f"{c.name}_{key}_lm{hashlib.sha256(json.dumps(label_map, sort_keys=True).encode()).hexdigest()[:8]}"

    tr = [D.load_or_build(cache, case_key(c), lambda c=c: D.build_slices([c], run.data, m)) for c in train_cases]
    va = [D.load_or_build(cache, case_key(c), lambda c=c: D.build_slices([c], run.data, m)) for c in val_cases]

    def cat(sets):
        if not sets:
            return D.SliceSet(
                torch.zeros(0, m.image_channels, m.image_size, m.image_size), torch.zeros(0, m.image_size, m.image_size)
            )
        return D.SliceSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]))

    return cat(tr), cat(va)


INIT_PREFIXES = ("adapter.", "backbone.")  # the image encoder: what an ImageNet initialisation would cover


def init_backbone(model: MedCondDiff, spec: str) -> int:
    """Copy the image encoder (channel adapter + PVT backbone) of another trained model into `model`.

    The stand-in for ImageNet initialisation where none can be downloaded: e.g. start PH2 from the
    Kvasir-SEG model's encoder. Everything else (decoder, denoiser, head) keeps its fresh initialisation.
    Returns the number of tensors copied; a model with another backbone or channel count is refused.
    """
    from medconddiff.errors import WeightsError
    from medconddiff.hub import load_model

    donor = load_model(spec)
    mine, theirs = model.config, donor.config
    if not model.has_image_pathway or not donor.has_image_pathway:
        raise WeightsError(f"--init-backbone needs two models with an image pathway (fusion 'none' has none): {spec}")
    if (mine.backbone, mine.image_channels) != (theirs.backbone, theirs.image_channels):
        raise WeightsError(
            f"--init-backbone {spec}: its encoder is {theirs.backbone} on {theirs.image_channels} channel(s), "
            f"this model's is {mine.backbone} on {mine.image_channels}; they must match"
        )
    src = {k: v for k, v in donor.state_dict().items() if k.startswith(INIT_PREFIXES)}
    return _copy_into(model, src)


def init_whole(model: MedCondDiff, spec: str) -> int:
    """Start every weight of `model` from a trained model with the same network (`--init`).

    The second stage of "train most steps small, finish larger": the network is convolutional, so the
    same weights run at another image size; classes, channels and widths must match tensor for tensor.
    Returns the number of tensors copied; a donor whose tensors differ is refused, naming the first ones.
    """
    from medconddiff.errors import WeightsError
    from medconddiff.hub import load_model

    src = load_model(spec).state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(src))
    extra = sorted(set(src) - set(own))
    shapes = [k for k in own.keys() & src.keys() if own[k].shape != src[k].shape]
    if missing or extra or shapes:
        parts = [
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing there", missing), ("not in this model", extra), ("other shape", sorted(shapes)))
            if keys
        ]
        raise WeightsError(
            f"--init {spec}: not the same network as this config's ({'; '.join(parts)}); only the image size "
            "and the sampling defaults may differ"
        )
    return _copy_into(model, src)


def _copy_into(model: torch.nn.Module, src: dict[str, torch.Tensor]) -> int:
    own = model.state_dict()
    with torch.no_grad():
        for k, v in src.items():
            own[k].copy_(v.to(own[k].dtype))
    return len(src)


def train_step(
    net: torch.nn.Module,
    model: MedCondDiff,
    ema: MedCondDiff,
    opt: torch.optim.Optimizer,
    img: torch.Tensor,
    lab: torch.Tensor,
    run: RunConfig,
    *,
    step: int,
    class_w: torch.Tensor,
    gen: torch.Generator,
    amp: str,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """One optimisation step on an augmented batch: img (B, C, S, S), lab (B, S, S) -> (loss, parts, grad norm).

    Builds the R noisy masks per image (or the segmenter's empty mask), runs the forward pass under
    autocast for the resolved precision `amp`, and takes the loss, the clipped AdamW step and the EMA
    update in fp32. `net` is `model` or its DDP wrapper. The benchmark times exactly this function.
    """
    s, k = run.train, run.model.num_classes
    device = next(model.parameters()).device
    lab_r = lab.repeat_interleave(s.noise_draws, dim=0)  # (B*R, S, S), image-major like MedCondDiff.forward
    if s.objective == "segmenter":  # one pass from an empty mask: no noise, no time
        n_rows = lab_r.shape[0]
        t = torch.ones(n_rows)
        x_t = torch.zeros(n_rows, k, *lab_r.shape[-2:])
        sc, rec = None, None
    else:
        t, noise, x_t, sc = noisy_masks(lab_r, run.model, s, model.schedule, gen)
        rec = recycle_inputs(lab_r, t, noise, run.model, s, model.schedule, gen)
    for group in opt.param_groups:
        group["lr"] = lr_at(step, s)
    with P.autocast(device, amp):  # the forward pass only: the loss below is computed in fp32
        logits = net(
            img.to(device),
            x_t.to(device),
            t.to(device),
            self_cond_mask=None if sc is None else sc.to(device),
            recycle=rec,
        )
    loss, parts = hybrid_loss(
        logits.float(), lab_r.to(device), class_weights=class_w, dice_weight=s.dice_weight, ce_weight=s.ce_weight
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    opt.step()
    with torch.no_grad():
        decay = min(s.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)
    return loss, parts, gnorm


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="TOML file under train/configs/")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    ap.add_argument("--out", help="output folder (overrides train.out)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    ap.add_argument("--cache", default=None, help="slice cache folder (default: OUT/../cache)")
    ap.add_argument("--push-to-hub", metavar="REPO", help="publish the final weights to this Hub repo")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--init-backbone",
        metavar="WEIGHTS",
        help="start the image encoder from another model (bundled name or folder), e.g. PH2 from kvasir-demo",
    )
    ap.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start every weight from a trained model of the same network (bundled name or folder), e.g. to "
        "finish a 160 px run at 224 px",
    )
    ap.add_argument("--stop-after", type=int, metavar="N", help="save a checkpoint and exit at step N")
    ap.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="save a checkpoint and exit before this much wall time has passed; continue with --resume",
    )
    args = ap.parse_args(argv)
    if args.init and args.init_backbone:
        ap.error("--init starts every weight, --init-backbone only the image encoder: give one of them")
    deadline = Deadline(args.time_limit)

    run = load_run_config(args.config, args.set)
    if args.out:
        run.train.out = args.out
    s = run.train
    check_settings(s)
    out = Path(s.out)
    rank, world, device = setup_distributed()
    is_main = rank == 0
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(out / "train.log")] if is_main else [logging.NullHandler()],
        force=True,  # a second run in the same process (the studies) logs to its own folder
    )
    threads = s.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    amp = P.resolve(s.precision, device, allow_fp16=False)
    identity = run_identity(run, amp)
    ckpt = out / "checkpoint.safetensors"
    resuming = args.resume and ckpt.is_file()
    if resuming:
        saved = read_checkpoint_identity(ckpt)
        diff = identity_differences(saved, identity) if saved is not None else []
        if diff:
            raise SystemExit(
                f"--resume: {ckpt} was written by a run with other settings ({'; '.join(diff)}); a resumed run "
                f"must continue the same run (only {', '.join(sorted(RESUMABLE_CHANGES))} may change): use "
                "the checkpoint's settings, or a new --out to start afresh"
            )
    cmd = "python -m train.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if is_main:
        log.info("command: %s (world size %d, device %s)", cmd, world, device)
        native = "native" if P.native_bf16(device) else "no native"
        log.info(
            "precision %s (asked %s; %s bf16 on this %s), %d thread(s)", amp, s.precision, native, device.type, threads
        )
        log.info(
            "config: %s",
            json.dumps(
                {
                    "model": run.model.to_dict(),
                    "data": dataclasses.asdict(run.data),
                    "train": dataclasses.asdict(s),
                    "augment": dataclasses.asdict(run.augment),
                }
            ),
        )

    cache = Path(args.cache) if args.cache else out.parent / "cache"
    if is_main:
        train_set, val_set = prepare_data(run, cache)
    if world > 1:
        dist.barrier()  # rank 0 built the cache; the others read it
    if not is_main:
        train_set, val_set = prepare_data(run, cache)
    k = run.model.num_classes
    class_w = class_weights_from_counts(D.class_counts(train_set.labels, k))
    weights = D.slice_weights(train_set.labels, class_w)
    if is_main:
        log.info(
            "train slices %d, val slices %d, class weights %s",
            len(train_set),
            len(val_set),
            [round(float(w), 3) for w in class_w],
        )

    torch.manual_seed(s.seed)  # identical initial weights on every rank
    model = MedCondDiff(run.model)
    if args.init_backbone and not resuming:  # a checkpoint replaces it anyway
        n = init_backbone(model, args.init_backbone)
        if is_main:
            log.info("image encoder (%d tensors) initialised from %s", n, args.init_backbone)
    if args.init and not resuming:
        n = init_whole(model, args.init)
        if is_main:
            log.info("every weight (%d tensors) initialised from %s", n, args.init)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed * 1000 + rank)  # data, augmentation and noise for this rank
    progress = Progress()
    if resuming:
        progress = load_checkpoint(ckpt, model, ema, opt, gen)
        if is_main:
            log.info("resumed from %s at step %d", ckpt, progress.step)
    step = progress.step
    curves = MetricsLog(out / "metrics.jsonl", resume_step=step if resuming else None) if is_main else None
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    bg = -1.0 if run.model.modality == "ct" else 0.0

    bar = None
    if is_main and not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    t0 = time.time() - progress.wall_s  # wall time counts every part of a run in parts
    model.train()
    while step < s.steps:
        t_step = time.time()
        idx = torch.multinomial(weights, s.batch_size, replacement=True, generator=gen)
        img, lab = D.augment(
            train_set.images[idx].float(), train_set.labels[idx].long(), run.augment, gen, background=bg
        )
        loss, parts, gnorm = train_step(
            net, model, ema, opt, img, lab, run, step=step, class_w=class_w, gen=gen, amp=amp
        )
        step += 1
        loss_value = loss.item()
        progress.loss_sum += loss_value
        progress.loss_count += 1
        deadline.note("step", time.time() - t_step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if is_main and (step % 25 == 0 or step == s.steps):
            log.info(
                "step %d loss %.4f dice_loss %.4f ce %.4f grad %.2f lr %.2e (%.1f s)",
                step,
                loss_value,
                parts["dice_loss"],
                parts["ce"],
                float(gnorm),
                lr_at(step - 1, s),
                time.time() - t0,
            )
            curves.write(
                kind="train",
                step=step,
                wall_s=round(time.time() - t0, 2),
                loss=round(loss_value, 5),
                dice_loss=round(parts["dice_loss"], 5),
                ce=round(parts["ce"], 5),
                lr=lr_at(step - 1, s),
            )
        if is_main and len(val_set) and (step % s.val_every == 0 or step == s.steps):
            t_val = time.time()
            v = validate(ema, val_set, s, device)
            deadline.note("val", time.time() - t_val)
            log.info("step %d validation %s", step, json.dumps({a: round(b, 4) for a, b in v.items()}))
            dice = v.get("dice_fg_mean", float("nan"))
            better = dice > progress.best_dice
            if better:  # the best validation so far: its EMA weights are kept in OUT/best
                progress.best_dice, progress.best_step = dice, step
                from medconddiff.hub import save_model

                save_model(ema, out / "best", half=s.half_weights)
            curves.write(
                kind="val",
                step=step,
                wall_s=round(time.time() - t0, 2),
                loss=round(progress.loss_sum / max(1, progress.loss_count), 5),
                best=better,
                **{a: round(b, 5) for a, b in v.items()},
            )
            progress.loss_sum, progress.loss_count = 0.0, 0
            if bar is not None:
                bar.write(f"step {step}: validation foreground Dice {dice:.3f}" + (" (best)" if better else ""))
        stopping = args.stop_after is not None and step >= args.stop_after
        if not stopping and step < s.steps:
            stopping = deadline.must_stop(val_next=(step + 1) % s.val_every == 0)
            if stopping and is_main:
                log.info("time limit of %g min: stopping at step %d", args.time_limit, step)
        if world > 1 and args.time_limit is not None:  # every rank stops at the same step
            flag = torch.tensor([int(stopping)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopping = bool(flag.item())
        if is_main and (step % s.ckpt_every == 0 or step == s.steps or stopping):
            t_save = time.time()
            progress.step, progress.wall_s = step, time.time() - t0
            save_checkpoint(ckpt, model, ema, opt, gen, progress, identity)
            deadline.note("save", time.time() - t_save)
        if stopping:
            if is_main:
                log.info("stopped at step %d of %d; continue with --resume", step, s.steps)
                if bar is not None:
                    bar.close()
                print(f"stopped at step {step} of {s.steps}: continue with the same command and --resume", flush=True)
            if world > 1:
                dist.destroy_process_group()
            return 0
    if bar is not None:
        bar.close()
    if world > 1:
        check = torch.tensor([sum(float(p.double().sum()) for p in model.parameters())], dtype=torch.float64)
        gathered = [torch.zeros_like(check) for _ in range(world)]
        dist.all_gather(gathered, check)
        if is_main:
            (out / "ddp_check.json").write_text(json.dumps({"param_sums": [float(x) for x in gathered]}))
    if is_main:
        minutes = (time.time() - t0) / 60
        log.info("finished %d steps in %.1f min", s.steps, minutes)
        from medconddiff.hub import save_model

        save_model(ema, out / "weights", half=s.half_weights)
        (out / "weights" / "training.json").write_text(
            json.dumps(
                {
                    "command": cmd,
                    "seed": s.seed,
                    "steps": s.steps,
                    "world_size": world,
                    "wall_minutes": round(minutes, 1),
                    "device": str(device),
                    "precision": amp,
                    "threads": threads,
                    "objective": s.objective,
                    "recycle": s.recycle,
                    "best_validation": {"dice_fg_mean": progress.best_dice, "step": progress.best_step},
                    "train_slices": len(train_set),
                    "data": dataclasses.asdict(run.data),
                    "val_slices": len(val_set),
                },
                indent=2,
            )
        )
        from .input_stats import compute, describe, write

        stats = compute(ema.eval(), train_set, description=describe(run.model, run.data))  # for the input check
        ema.config.input_stats = stats
        write(out / "weights", stats)
        log.info("input_stats from %d training slices written to config.json", stats["slices"])
        from . import plot

        if plot.draw(out, out / "weights" / plot.FIGURE) is not None:
            log.info("learning curve drawn into %s", out / "weights" / plot.FIGURE)
        if args.push_to_hub:
            ema.push_to_hub(args.push_to_hub)
    if world > 1:
        dist.destroy_process_group()
    return 0


main = D.command_main(run)  # errors as one line, exit code 2

if __name__ == "__main__":
    sys.exit(main())
