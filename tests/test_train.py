"""Training: 2-process DDP on the CPU ends with identical weights on both ranks; resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file

from train.train import load_run_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A synthetic single-case dataset and a 64 px config that trains in seconds."""
    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    img = np.zeros((48, 48, 6), np.float32)
    lab = np.zeros((48, 48, 6), np.int16)
    img[8:40, 8:40] = rng.normal(0, 1, (32, 32, 6))
    lab[16:30, 18:32] = 1
    img[lab > 0] += 2.0
    nib.save(nib.Nifti1Image(img, np.eye(4)), d / "image.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), d / "labels.nii.gz")
    (d / "tiny.toml").write_text(f"""
[model]
image_channels = 1
channel_names = ["MR"]
num_classes = 2
class_names = ["background", "lesion"]
image_size = 64
[data]
root = "{d}"
layout = "single"
channel_files = ["image.nii.gz"]
label_file = "labels.nii.gz"
val_range = [4, 6]
[train]
steps = 4
batch_size = 2
warmup = 1
val_every = 1000
val_slices = 2
ckpt_every = 2
threads = 1
half_weights = false
""")
    return d


def _train(cfg: Path, out: Path, *extra: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port", "29517"]
        if torchrun
        else [sys.executable]
    )
    cmd = [
        *launcher,
        "-m",
        "train.train",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--cache",
        str(out.parent / "cache"),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_config_overrides_and_unknown_keys(tiny_run):
    run = load_run_config(tiny_run / "tiny.toml", ["train.steps=7", 'model.fusion="concat"'])
    assert run.train.steps == 7 and run.model.fusion == "concat"
    with pytest.raises(SystemExit, match="unknown key"):
        load_run_config(tiny_run / "tiny.toml", ["train.stepz=7"])


def test_single_process_training_saves_loadable_weights_and_log(tiny_run, tmp_path):
    out = tmp_path / "single"
    _train(tiny_run / "tiny.toml", out)
    assert (out / "weights" / "model.safetensors").is_file() and (out / "weights" / "config.json").is_file()
    info = json.loads((out / "weights" / "training.json").read_text())
    assert info["steps"] == 4 and info["seed"] == 0 and "train.train" in info["command"]
    assert "step 4 loss" in (out / "train.log").read_text()
    from medconddiff.hub import load_model

    assert load_model(out / "weights").config.num_classes == 2


def test_resume_is_exact(tiny_run, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(tiny_run / "tiny.toml", straight)
    _train(tiny_run / "tiny.toml", split, "--stop-after", "2")
    assert not (split / "weights").exists()  # stopped early: only the checkpoint
    r = _train(tiny_run / "tiny.toml", split, "--resume")
    assert "resumed" in (split / "train.log").read_text(), r.stderr
    a = load_file(straight / "weights" / "model.safetensors")
    b = load_file(split / "weights" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def _records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its wall times (they differ from run to run)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _same_weights(a: Path, b: Path) -> bool:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k].numpy(), tb[k].numpy()) for k in ta)


def test_time_limit_stops_cleanly_and_resumed_parts_equal_one_run(tiny_run, tmp_path):
    """--time-limit saves a checkpoint and exits; resumed part by part, the run ends with the weights,
    best-validation weights and learning-curve records of the uninterrupted run, bit for bit."""
    more = ["--set", "train.steps=6", "--set", "train.val_every=2", "--set", "train.ckpt_every=100"]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    _train(tiny_run / "tiny.toml", straight, *more)
    # a limit shorter than start-up: every part stops after its first step, so the run takes six parts
    first = _train(tiny_run / "tiny.toml", parts, *more, "--time-limit", "0.001")
    assert "stopped at step 1 of 6" in first.stdout
    assert (parts / "checkpoint.safetensors").is_file() and not (parts / "weights").exists()
    for _ in range(5):
        _train(tiny_run / "tiny.toml", parts, *more, "--resume", "--time-limit", "0.001")
    log = (parts / "train.log").read_text()
    assert log.count("resumed from") == 5 and "finished 6 steps" in log
    assert _same_weights(straight / "weights", parts / "weights")
    assert _same_weights(straight / "best", parts / "best")
    assert _records(straight) == _records(parts)
    info = json.loads((parts / "weights" / "training.json").read_text())
    assert info["precision"] in ("fp32", "bf16") and info["best_validation"]["step"] in (2, 4, 6)


def test_resume_with_other_settings_is_refused_naming_them(tiny_run, tmp_path):
    out = tmp_path / "run"
    _train(tiny_run / "tiny.toml", out, "--stop-after", "1")
    cmd = [sys.executable, "-m", "train.train", "--config", str(tiny_run / "tiny.toml"), "--out", str(out)]
    cmd += ["--cache", str(tmp_path / "cache"), "--no-progress", "--resume", "--set", "train.seed=5"]
    cmd += ["--set", "model.denoiser_width=64", "--set", "train.threads=2"]  # threads may change, the rest not
    r = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert r.returncode != 0
    assert "train.seed: 0 -> 5" in r.stderr and "model.denoiser_width: 96 -> 64" in r.stderr
    assert "train.threads" not in r.stderr.split("(only")[0]


@pytest.mark.parametrize(
    "override, message",
    [
        ('train.precision="fp8"', "accepted: auto, fp32, bf16, fp16"),
        ('train.recycle="sometimes"', "accepted: off, from_noise, from_next"),
        ('train.objective="gan"', "accepted: diffusion, segmenter"),
    ],
)
def test_unknown_training_options_are_clear_errors(tiny_run, tmp_path, override, message):
    cmd = [sys.executable, "-m", "train.train", "--config", str(tiny_run / "tiny.toml"), "--out", str(tmp_path)]
    r = subprocess.run([*cmd, "--set", override], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_plot_draws_the_learning_curve(tiny_run, tmp_path):
    from PIL import Image

    from train import plot

    out = tmp_path / "run"
    _train(tiny_run / "tiny.toml", out, "--set", "train.val_every=2")
    png = out / "weights" / plot.FIGURE  # a finished run draws it into its weights folder
    assert png.is_file() and Image.open(png).size[0] > 500
    train, val = plot.read(out)
    assert [r["step"] for r in val] == [2, 4] and all(0.0 <= r["dice_fg_mean"] <= 1.0 for r in val)
    assert plot.main([str(out), "--out", str(tmp_path / "again.png")]) == 0 and (tmp_path / "again.png").is_file()
    with pytest.raises(SystemExit, match="metrics.jsonl: not found"):
        plot.read(tmp_path / "nothing")


def test_two_process_ddp_ranks_end_identical(tiny_run, tmp_path):
    out = tmp_path / "ddp"
    _train(tiny_run / "tiny.toml", out, torchrun=2)
    sums = json.loads((out / "ddp_check.json").read_text())["param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert json.loads((out / "weights" / "training.json").read_text())["world_size"] == 2


def test_init_backbone_copies_only_the_image_encoder(tiny_model, tiny_weights):
    """--init-backbone: adapter and PVT backbone come from the donor, the rest stays fresh; a donor with
    another channel count is refused with a message naming both encoders."""
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.errors import WeightsError
    from medconddiff.model import MedCondDiff
    from train.train import INIT_PREFIXES, init_backbone

    torch.manual_seed(1)  # not the donor's seed: every tensor starts different
    model = MedCondDiff(MedCondDiffConfig(image_size=64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = init_backbone(model, str(tiny_weights))
    donor = tiny_model.state_dict()
    after = model.state_dict()
    encoder = [k for k in after if k.startswith(INIT_PREFIXES)]
    assert n == len(encoder) > 100
    assert all(torch.equal(after[k], donor[k]) for k in encoder)
    rest = [k for k in after if not k.startswith(INIT_PREFIXES) and after[k].is_floating_point()]
    changed = [k for k in rest if not torch.equal(after[k], before[k])]
    assert rest and not changed
    assert any(not torch.equal(after[k], donor[k]) for k in rest if "weight" in k)

    rgb = MedCondDiff(MedCondDiffConfig(image_size=64, image_channels=3, channel_names=["R", "G", "B"]))
    with pytest.raises(WeightsError, match="2 channel.*on 3"):
        init_backbone(rgb, str(tiny_weights))


def test_init_whole_copies_every_weight_at_another_image_size(tiny_model, tiny_weights):
    """--init: the 64 px donor's every tensor reaches a 96 px model (the network is convolutional); a
    donor with other classes is refused with a message naming the tensors that differ."""
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.errors import WeightsError
    from medconddiff.model import MedCondDiff
    from train.train import init_whole

    torch.manual_seed(1)
    model = MedCondDiff(MedCondDiffConfig(image_size=96))
    n = init_whole(model, str(tiny_weights))
    donor, after = tiny_model.state_dict(), model.state_dict()
    assert n == len(after) == len(donor)
    assert all(torch.equal(after[k], donor[k]) for k in after)

    three = MedCondDiff(MedCondDiffConfig(image_size=64, num_classes=3, class_names=["bg", "a", "b"]))
    with pytest.raises(WeightsError, match="not the same network.*other shape"):
        init_whole(three, str(tiny_weights))


def test_init_and_init_backbone_are_exclusive(tiny_run, tiny_weights, tmp_path):
    cmd = [sys.executable, "-m", "train.train", "--config", str(tiny_run / "tiny.toml"), "--out", str(tmp_path / "o")]
    cmd += ["--init", str(tiny_weights), "--init-backbone", str(tiny_weights)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "give one of them" in r.stderr


def test_validation_slices_are_spread_over_every_case():
    """Validation takes its slices from the whole validation set, not from its first case: with three cases
    stored one after the other, each holding tumour slices, every case is sampled, none twice, in order."""
    import torch

    from train.train import validation_indices

    labels = torch.zeros(30, 4, 4, dtype=torch.uint8)
    labels[[1, 2, 3, 4, 5, 11, 12, 13, 14, 21, 22, 23, 24, 25, 26], 0, 0] = 1  # three cases of ten slices
    picked = validation_indices(labels, 6)
    assert picked.tolist() == sorted(set(picked.tolist())) and len(picked) == 6
    assert all(bool(labels[i].any()) for i in picked)
    assert {int(i) // 10 for i in picked} == {0, 1, 2}
    assert validation_indices(labels, 100).tolist() == (labels.flatten(1) > 0).any(1).nonzero().flatten().tolist()
    assert validation_indices(torch.zeros(5, 4, 4, dtype=torch.uint8), 3).numel() == 0
