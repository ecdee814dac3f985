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
