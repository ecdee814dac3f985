"""Photographs (endoscopy, dermoscopy) as a modality: normalisation, the image-folder layout, a training run.

Uses the bundled Kvasir-SEG and PH2 examples (assets/examples), so it runs without ../shared/data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medconddiff import io
from medconddiff.config import MedCondDiffConfig
from medconddiff.hub import load_model
from medconddiff.pipeline import prepare_slice
from train import data as D
from train.train import main as train_main

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
PHOTOS = {"kvasir_cju0roaw": ".jpg", "kvasir_cju0s2a9": ".jpg", "ph2_IMD002": ".png", "ph2_IMD085": ".png"}


def _rgb_config(**kw) -> MedCondDiffConfig:
    base = dict(
        image_channels=3,
        channel_names=["R", "G", "B"],
        num_classes=2,
        class_names=["background", "polyp"],
        image_size=64,
        modality="natural",
        crop_foreground=False,
    )
    return MedCondDiffConfig(**{**base, **kw})


def test_a_photograph_is_scaled_per_channel_into_0_1_on_a_square_grid():
    raw = io.read_scan([str(EXAMPLES / "ph2_IMD002.png")]).data  # (3, 286, 382) as stored
    assert raw.shape[0] == 3 and raw.max() > 1.0
    prepared = prepare_slice(raw, _rgb_config(), kind="image")
    np.testing.assert_allclose(prepared.normalised, raw / 255.0, atol=1e-6)
    assert prepared.image.shape == (3, 64, 64)
    assert float(prepared.image.min()) >= 0.0 and float(prepared.image.max()) <= 1.0
    # the whole frame is kept (no crop) and padded to a square: the short side gets padding
    g = prepared.geometry
    assert g.box == (0, 286, 0, 382) and g.side == 382 and sum(g.pad[:2]) == 382 - 286


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """The four bundled photographs in the images layout, masks written 0 / 255 as the datasets ship them."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for stem, ext in PHOTOS.items():
        shutil.copyfile(EXAMPLES / f"{stem}{ext}", root / "images" / f"{stem}{ext}")
        mask = np.asarray(Image.open(EXAMPLES / f"{stem}_seg.png")) * 255
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}{ext.replace('.jpg', '.png')}")
    return root


def test_the_images_layout_pairs_each_photograph_with_its_mask(photo_folder):
    data = D.DataSettings(root=str(photo_folder), layout="images", mask_threshold=127)
    cases = D.find_cases(photo_folder, data)
    assert [c.name for c in cases] == sorted(PHOTOS)
    slices = D.build_slices(cases, data, _rgb_config())
    assert slices.images.shape == (4, 3, 64, 64) and slices.labels.shape == (4, 64, 64)
    assert set(np.unique(slices.labels.numpy())) == {0, 1}
    for c in cases:
        labels = D.read_labels(c, data)
        assert set(np.unique(labels)) == {0, 1}


def test_a_two_image_rgb_training_run_writes_weights_that_segment_a_photograph(photo_folder, tmp_path):
    split = tmp_path / "split.json"
    names = sorted(PHOTOS)
    split.write_text(json.dumps({"train": names[:2], "val": names[2:3], "test": names[3:]}))
    config = tmp_path / "rgb.toml"
    config.write_text(f"""
[model]
image_channels = 3
channel_names = ["R", "G", "B"]
num_classes = 2
class_names = ["background", "lesion"]
image_size = 64
modality = "natural"
crop_foreground = false
mask_scale = 0.2
[data]
root = "{photo_folder}"
layout = "images"
split_file = "{split}"
mask_threshold = 127
[train]
steps = 3
batch_size = 2
warmup = 1
val_every = 3
val_slices = 1
ckpt_every = 3
threads = 1
t_power = 3.0
[augment]
color_jitter = 0.2
hue_shift = 0.05
blur_prob = 0.5
""")
    out = tmp_path / "run"
    assert (
        train_main(["--config", str(config), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"])
        == 0
    )
    info = json.loads((out / "weights" / "training.json").read_text())
    assert info["train_slices"] == 2 and info["val_slices"] == 1
    model = load_model(out / "weights")
    assert model.config.modality == "natural" and model.config.image_channels == 3
    from medconddiff.pipeline import SamplingSettings, segment_image

    raw = io.read_scan([str(photo_folder / "images" / f"{names[3]}{PHOTOS[names[3]]}")]).data
    res = segment_image(model, raw, SamplingSettings(steps=1), kind="image", keep_trajectory=False)
    assert res.labels.shape == raw.shape[1:] and set(np.unique(res.labels)) <= {0, 1}
