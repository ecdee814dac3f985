"""Scans reach the network at one scale: a model's `pixel_spacing` (mm per model pixel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medconddiff import io
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import WeightsError
from medconddiff.pipeline import prepare_slice


def _ct_config(pixel_spacing: float) -> MedCondDiffConfig:
    return MedCondDiffConfig(
        image_channels=1,
        channel_names=["CT"],
        num_classes=2,
        class_names=["background", "organ"],
        image_size=64,
        modality="ct",
        crop_foreground=True,
        pixel_spacing=pixel_spacing,
    )


def _body(side: int, spacing: float) -> np.ndarray:
    """(1, side, side) HU slice of a 240 x 180 mm elliptic body (soft tissue, a denser disc) in air."""
    mm = (np.arange(side) + 0.5) * spacing - side * spacing / 2
    y, x = np.meshgrid(mm, mm, indexing="ij")
    hu = np.full((side, side), -1000.0, np.float32)
    hu[(y / 90.0) ** 2 + (x / 120.0) ** 2 <= 1] = 40.0
    hu[(y - 20) ** 2 + (x + 30) ** 2 <= 30.0**2] = 150.0
    return hu[None]


def test_a_fine_and_a_coarse_scan_of_one_body_meet_the_network_at_one_scale():
    config = _ct_config(pixel_spacing=5.0)  # 64 px x 5 mm = a 320 mm field of view
    coarse = prepare_slice(_body(100, 3.0), config, kind="nifti", spacing=3.0)  # 300 mm at 3 mm
    fine = prepare_slice(_body(400, 0.75), config, kind="nifti", spacing=0.75)  # the same 300 mm at 0.75 mm
    assert coarse.geometry.side == round(64 * 5.0 / 3.0) and fine.geometry.side == round(64 * 5.0 / 0.75)
    diff = (coarse.image - fine.image).abs()
    assert diff.mean() < 0.03, diff.mean()
    # the body is 240 mm wide: 48 model pixels on both grids, whatever the scan's pixel size
    for p in (coarse, fine):
        widths = (p.image[0] > -0.9).sum(dim=1)
        assert abs(int(widths.max()) - 48) <= 2


def test_without_a_model_spacing_the_crop_is_fitted_whatever_the_pixel_size():
    config = _ct_config(pixel_spacing=0.0)
    a = prepare_slice(_body(100, 3.0), config, kind="nifti", spacing=3.0)
    b = prepare_slice(_body(100, 3.0), config, kind="nifti", spacing=0.5)
    assert a.geometry == b.geometry
    assert a.geometry.side == max(a.geometry.box[1] - a.geometry.box[0], a.geometry.box[3] - a.geometry.box[2])
    # pictures have no spacing: a spacing-aware model fits them too
    c = prepare_slice(_body(100, 3.0), _ct_config(5.0), kind="image", spacing=3.0)
    assert c.geometry.side == max(c.geometry.box[1] - c.geometry.box[0], c.geometry.box[3] - c.geometry.box[2])


def test_a_body_wider_than_the_field_of_view_is_cropped_about_its_centre_and_maps_back_exactly():
    config = _ct_config(pixel_spacing=2.0)  # 128 mm field of view: narrower than the 240 mm body
    prepared = prepare_slice(_body(400, 0.75), config, kind="nifti", spacing=0.75)
    g = prepared.geometry
    assert g.side == round(64 * 2.0 / 0.75)
    assert g.box[1] - g.box[0] <= g.side and g.box[3] - g.box[2] <= g.side
    centre = ((g.box[0] + g.box[1]) / 2, (g.box[2] + g.box[3]) / 2)
    assert abs(centre[0] - 200) <= 2 and abs(centre[1] - 200) <= 2
    # a map on the model grid comes back onto the slice's own grid: inside the box, outside gets the fill
    maps = torch.ones(1, 64, 64)
    back = io.from_model_grid(maps, g, fill=torch.tensor([0.0]))[0]
    assert back.shape == (400, 400)
    inside = back[g.box[0] : g.box[1], g.box[2] : g.box[3]]
    assert torch.allclose(inside, torch.ones_like(inside)) and back.sum() == inside.numel()
    labels = np.zeros((400, 400), np.int64)
    labels[150:250, 150:250] = 1
    grid = io.labels_to_model_grid(labels, g)
    up = F.interpolate(grid[None, None].float(), size=(g.side, g.side), mode="nearest")[0, 0]
    assert 0.8 < float(up.sum()) / 100**2 < 1.2


def test_scan_slice_spacing_is_the_in_plane_voxel_size_of_volumes_only():
    vol = io.Scan(
        data=np.zeros((1, 4, 4, 3), np.float32), affine=None, header=None, spacing=(0.7, 0.9, 3.0), kind="nifti"
    )
    assert vol.slice_spacing == pytest.approx(0.8)
    pic = io.Scan(data=np.zeros((3, 4, 4), np.float32), affine=None, header=None, spacing=(1.0, 1.0), kind="image")
    assert pic.slice_spacing is None


@pytest.mark.parametrize("bad", [-1.0, 0.01, 50.0, float("nan")])
def test_an_impossible_pixel_spacing_is_refused_by_name(bad):
    with pytest.raises(WeightsError, match="pixel_spacing"):
        _ct_config(bad)


def test_config_files_older_than_the_field_mean_no_resampling():
    data = _ct_config(0.0).to_dict()
    data.pop("pixel_spacing")
    assert MedCondDiffConfig.from_dict(data).pixel_spacing == 0.0


def test_contrast_like_brightens_only_soft_tissue():
    """The CT study's contrast stand-in: soft tissue +80 HU; air, fat and bone as they were; input untouched."""
    from train.ct_scale import CONTRAST_HU, contrast_like

    hu = np.array([[-1000.0, -100.0, -20.0, 0.0, 60.0, 249.0, 250.0, 700.0]])
    out = contrast_like(hu)
    np.testing.assert_array_equal(out - hu, [[0, 0, 0, CONTRAST_HU, CONTRAST_HU, CONTRAST_HU, 0, 0]])
    assert hu[0, 3] == 0.0
