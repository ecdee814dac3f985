"""medconddiff.viz: pictures are (H, W, 3) uint8 on the image's grid, and say what they should."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medconddiff import io, viz


def test_class_colours_background_black_and_distinct():
    cols = viz.class_colours(5)
    assert cols.shape == (5, 3) and cols.dtype == np.uint8
    assert (cols[0] == 0).all()
    assert len({tuple(c) for c in cols}) == 5
    assert viz.hex_colours(3)[0] == "#000000" and all(len(h) == 7 for h in viz.hex_colours(3))
    assert viz.class_colours(40).shape == (40, 3)  # more classes than the palette: colours repeat


def test_overlay_keeps_background_and_blends_foreground():
    base = np.full((4, 5, 3), 100, np.uint8)
    labels = np.zeros((4, 5), np.int64)
    labels[1, 2] = 1
    cols = viz.class_colours(2)
    out = viz.overlay(base, labels, cols, alpha=0.5)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out[labels == 0] == 100).all()
    np.testing.assert_array_equal(out[1, 2], np.round(0.5 * 100 + 0.5 * cols[1]).astype(np.uint8))
    np.testing.assert_array_equal(viz.overlay(base, labels, cols, alpha=0.0), base)
    np.testing.assert_array_equal(viz.overlay(base, labels, cols, alpha=1.0)[1, 2], cols[1])


def test_to_display_modalities():
    mri = np.zeros((2, 6, 7), np.float32)
    mri[:, 2:4, 2:5] = np.arange(12, dtype=np.float32).reshape(2, 2, 3) + 1
    pic = viz.to_display(mri, modality="mri", kind="image")
    assert pic.shape == (6, 7, 3) and pic.dtype == np.uint8
    assert pic[0, 0].tolist() == [0, 0, 0] and pic.max() == 255  # empty space black, brightest brain white
    hu = np.array([[[-1000.0, 40.0, 240.0]]])  # air, soft tissue, above the abdomen window
    assert viz.to_display(hu, modality="ct", kind="nifti", ct_window="abdomen")[0, :, 0].tolist() == [0, 128, 255]
    rgb = np.stack([np.full((3, 3), v, np.float32) for v in (255, 0, 0)])
    assert viz.to_display(rgb, modality="natural", kind="image")[0, 0].tolist() == [255, 0, 0]


def test_display_orientation_rotates_nifti_only():
    a = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(viz.display_orientation(a, "nifti"), np.rot90(a))
    assert viz.display_orientation(a, "image") is a


def test_noisy_mask_clean_onehot_shows_class_colours():
    cols = viz.class_colours(3)
    labels = np.array([[0, 1, 2]])
    x0 = 2.0 * np.eye(3)[labels].transpose(2, 0, 1) - 1.0  # (K, H, W) in value space
    pic = viz.noisy_mask(x0, cols).astype(int)
    assert pic.shape == (1, 3, 3)
    for j, k in enumerate(labels[0]):  # each pixel is mostly its own class colour
        assert np.abs(pic[0, j] - cols[k].astype(int)).max() <= 0.1 * 255


def test_heatmap_and_change_ranges():
    assert viz.heatmap(np.array([[0.0, 1.0, np.nan]])).shape == (1, 3, 3)
    p = np.zeros((2, 2, 2), np.float32)
    p[0] = 1.0
    q = p[::-1].copy()  # everything moved from class 0 to class 1
    assert viz.change(None, p).sum() == 0
    np.testing.assert_allclose(viz.change(p, q), 1.0)
    np.testing.assert_allclose(viz.change(p, p), 0.0)


def test_step_maps_come_back_on_the_image_grid():
    geometry = io.Geometry(shape=(30, 20), box=(5, 25, 0, 20), pad=(0, 0, 0, 0), side=20, size=16)
    logits = torch.randn(3, 4, 16, 16)  # (E, K, s, s)
    probs = viz.step_probs(logits, geometry)
    assert probs.shape == (4, 30, 20)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs[0, :5] == 1.0).all()  # outside the crop: certain background
    noisy = viz.step_noisy(torch.randn(3, 4, 16, 16), geometry)
    assert noisy.shape == (4, 30, 20) and (noisy[0, :5] == 1.0).all() and (noisy[1:, :5] == -1.0).all()


def test_class_areas_and_trajectory_figure():
    labels = np.array([[0, 1, 1], [2, 2, 2]])
    assert viz.class_areas(labels, 4).tolist() == [1, 2, 3, 0]
    fig = viz.trajectory_figure(
        np.random.rand(5, 3), ["bg", "a", "b"], ylabel="Dice", title="t", colours=viz.class_colours(3)
    )
    rgb = viz.figure_to_rgb(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8 and rgb.std() > 0
    assert len(fig.axes[0].lines) == 2  # background left out


def test_resizing_and_composition():
    pic = np.zeros((10, 20, 3), np.uint8)
    assert viz.upscale(pic, min_side=25).shape == (30, 60, 3)
    assert viz.upscale(pic, min_side=5) is pic
    assert viz.fit(np.zeros((2000, 1000, 3), np.uint8), max_side=500).shape == (500, 250, 3)
    assert viz.side_by_side([pic, pic], gap=3).shape == (10, 43, 3)
    assert viz.caption(pic, "step 1").shape == (26, 20, 3)


def test_write_gif_frames_and_loop(tmp_path):
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 120, 250)]
    path = viz.write_gif(frames, tmp_path / "t.gif", frame_ms=100, hold_last_ms=700)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info.get("loop") == 0
        gif.seek(2)
        assert gif.info["duration"] == 700
    with pytest.raises(ValueError):
        viz.write_gif([], tmp_path / "empty.gif")
