"""Large 2D pictures are reduced while they are read, and their masks come back at full size.

A picture whose longer side exceeds the model's reading size (`pipeline.READ_SIDE_FACTOR` times its
image size) is decoded reduced (JPEG at DCT scale, the rest by area averaging) before any float copy
exists; the mask and the agreement map are written back on the original pixel grid.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medconddiff import io

REPO = Path(__file__).resolve().parent.parent
SLICE = [REPO / "assets" / "examples" / f"brats_pat0003_z080_{m}.png" for m in ("flair", "t1c")]


def scaled(src: Path, side: tuple[int, int], out: Path) -> Path:
    Image.open(src).resize(side, Image.Resampling.BICUBIC).save(
        out, **({"quality": 95} if out.suffix == ".jpg" else {})
    )
    return out


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_a_large_picture_is_reduced_at_read_time_and_maps_go_back_to_its_size(tmp_path, ext):
    path = scaled(SLICE[0], (2000, 1600), tmp_path / f"big.{ext}")
    scan = io.read_scan([path], max_side=512)
    assert scan.data.shape == (1, 410, 512) and scan.full_size == (1600, 2000)
    full = np.asarray(Image.open(path).convert("L").resize((512, 410), Image.Resampling.BOX), np.float32)
    assert np.abs(scan.data[0] - full).mean() < 2.0  # the same picture, averaged down (JPEG: at DCT scale)
    labels = (scan.data[0] > 100).astype(np.uint8)
    back = scan.to_source(labels)
    assert back.shape == (1600, 2000) and back.dtype == np.uint8
    assert abs(back.mean() - labels.mean()) < 0.01  # nearest neighbour keeps the class areas
    np.testing.assert_array_equal(scan.to_canonical(back), labels)  # full size -> reduced is the exact inverse


def test_small_pictures_are_read_as_they_are():
    scan = io.read_scan(SLICE, max_side=512)
    assert scan.full_size is None and scan.data.shape == (2, 240, 240)
    np.testing.assert_array_equal(scan.data, io.read_scan(SLICE).data)


def test_the_command_line_writes_a_large_pictures_mask_at_full_size(tmp_path, capfd):
    from medconddiff import hub
    from medconddiff.__main__ import main

    if "brats-demo" not in hub.bundled_models():
        pytest.skip("brats-demo weights are not bundled")
    big = [scaled(s, (1800, 1800), tmp_path / f"big_{s.name}") for s in SLICE]
    small = [scaled(s, (450, 450), tmp_path / f"small_{s.name}") for s in SLICE]  # under 4 x 128: not reduced
    masks = {}
    for name, files in (("big", big), ("small", small)):
        out, agree = tmp_path / f"{name}_mask.png", tmp_path / f"{name}_agree.png"
        with warnings.catch_warnings():
            argv = ["segment", *map(str, files), "-o", str(out), "--uncertainty", str(agree), "--weights", "brats-demo"]
            assert main([*argv, "--steps", "2", "--quiet", "--device", "cpu"]) == 0
        masks[name] = np.asarray(Image.open(out))
        assert np.asarray(Image.open(agree)).shape == masks[name].shape
    assert masks["big"].shape == (1800, 1800) and masks["small"].shape == (450, 450)
    big_area, small_area = ((masks[n] > 0).mean() for n in ("big", "small"))
    assert small_area > 0.005 and abs(big_area - small_area) < 0.25 * small_area  # the same tumour, at any size
    assert "1800x1800" in capfd.readouterr().out


def test_a_full_size_ground_truth_is_reduced_with_its_picture(tmp_path):
    from medconddiff.config import MedCondDiffConfig
    from medconddiff.pipeline import read_case

    files = [scaled(s, (1024, 1024), tmp_path / s.name) for s in SLICE]
    truth = np.zeros((1024, 1024), np.uint8)
    truth[100:300, 400:700] = 2
    io.write_png_labels(truth, tmp_path / "truth.png")
    case = read_case(list(map(str, files)), MedCondDiffConfig(image_size=128), truth=str(tmp_path / "truth.png"))
    assert case.image.shape == (2, 512, 512) and case.truth.shape == (512, 512)
    assert set(np.unique(case.truth)) == {0, 2} and abs((case.truth > 0).mean() - (truth > 0).mean()) < 0.005
    assert case.on_file_grid(case.truth).shape == (1024, 1024)
