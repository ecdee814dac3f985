"""The committed splits, the image-folder layout and the photograph augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from train import data as D
from train import splits as S

SPLITS = Path(__file__).resolve().parent.parent / "train" / "splits"


@pytest.mark.parametrize("name", ["kvasir-seg", "ph2", "acdc"])
def test_a_test_part_never_overlaps_train_or_validation(name):
    split = D.read_split(SPLITS / f"{name}.json")
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert train and val and test
    assert not (train & val) and not (train & test) and not (val & test)
    if name == "acdc":  # by patient, never by frame or slice
        patients = {k: {n.split("_")[0] for n in split[k]} for k in ("train", "val", "test")}
        assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
        assert not (patients["val"] & patients["test"])


def test_the_committed_splits_are_what_the_generator_writes(shared_data, tmp_path, monkeypatch):
    for name in ("kvasir-seg", "ph2", "acdc"):
        if not (shared_data / name).is_dir():
            pytest.skip(f"{name} not in ../shared/data")
    monkeypatch.setattr(S, "SPLITS_DIR", tmp_path)
    assert S.main(["--data", str(shared_data)]) == 0
    for name in ("kvasir-seg", "ph2", "acdc"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == D.read_split(SPLITS / f"{name}.json")
    sizes = {k: len(v) for k, v in D.read_split(SPLITS / "kvasir-seg.json").items()}
    assert sizes == {"train": 718, "val": 90, "test": 90}
    assert {k: len(v) for k, v in D.read_split(SPLITS / "ph2.json").items()} == {"train": 110, "val": 20, "test": 20}


def test_split_names_is_deterministic_and_partitions():
    names = [f"c{i:03d}" for i in range(50)]
    a, b = S.split_names(names, val=5, test=7), S.split_names(list(reversed(names)), val=5, test=7)
    assert a == b
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert (len(a["val"]), len(a["test"])) == (5, 7)


def test_the_images_layout_reads_photographs_and_binarises_jpeg_masks(shared_data):
    root = shared_data / "kvasir-seg"
    if not root.is_dir():
        pytest.skip("kvasir-seg not in ../shared/data")
    data = D.DataSettings(
        root=str(root), layout="images", split_file=str(SPLITS / "kvasir-seg.json"), mask_threshold=127
    )
    cases = D.find_cases(root, data)
    assert len(cases) == 898 and all(c.labels is not None for c in cases)
    test = D.split_cases(cases, data, part="test")
    assert len(test) == 90
    from medconddiff.config import MedCondDiffConfig

    config = MedCondDiffConfig(
        image_channels=3,
        channel_names=["R", "G", "B"],
        num_classes=2,
        class_names=["background", "polyp"],
        image_size=64,
        modality="natural",
        crop_foreground=False,
    )
    scan, labels = D.read_case(test[0], data, config)
    assert scan.data.shape[0] == 3 and scan.kind == "image"
    assert labels.shape == scan.data.shape[1:] and set(np.unique(labels)) <= {0, 1} and labels.any()
    built = D.build_slices(test[:2], data, config)
    assert built.images.shape == (2, 3, 64, 64) and built.labels.shape == (2, 64, 64)
    assert float(built.images.min()) >= 0.0 and float(built.images.max()) <= 1.0  # photographs map to [0, 1]


def test_a_grey_picture_feeds_an_rgb_model_on_three_channels():
    from medconddiff.config import MedCondDiffConfig

    rgb = MedCondDiffConfig(
        image_channels=3, channel_names=["R", "G", "B"], num_classes=2, class_names=["b", "f"], modality="natural"
    )
    grey = np.ones((1, 8, 8), np.float32)
    assert D.expand_grey(grey, rgb).shape == (3, 8, 8)
    assert D.expand_grey(grey, MedCondDiffConfig(image_channels=1, channel_names=["x"])).shape == (1, 8, 8)


def test_photograph_augmentation_varies_colour_and_focus_within_range():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g) * 0.8 + 0.1
    aug = D.AugmentSettings(color_jitter=0.3, hue_shift=0.1, blur_prob=1.0, blur_sigma=1.5)
    jittered = D.photo_jitter(images, aug, g)
    assert jittered.shape == images.shape and float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0
    assert not torch.allclose(jittered, images)
    blurred = D.random_blur(images, aug, g)
    # a blur removes fine detail: neighbouring pixels differ less than before
    assert blurred.diff(dim=-1).abs().mean() < 0.6 * images.diff(dim=-1).abs().mean()
    none = D.random_blur(images, D.AugmentSettings(blur_prob=0.0), g)
    assert torch.equal(none, images)


def test_the_nnunet_layout_with_a_split_file_reads_acdc_by_patient(shared_data):
    root = shared_data / "acdc"
    if not root.is_dir():
        pytest.skip("acdc not in ../shared/data")
    from train.train import load_run_config

    run = load_run_config("train/configs/acdc_demo.toml", ["model.image_size=64", f"data.root={root}"])
    cases = D.find_cases(root, run.data)
    train, val = D.split_cases(cases, run.data)
    test = D.split_cases(cases, run.data, part="test")
    assert (len(cases), len(train), len(val), len(test)) == (160, 120, 20, 20)
    built = D.build_slices(val[:1], run.data, run.model)
    assert built.images.shape[1:] == (1, 64, 64) and set(built.labels.unique().tolist()) <= {0, 1, 2, 3}
    assert abs(float(built.images.float().mean())) < 0.1  # z-scored inside the foreground
