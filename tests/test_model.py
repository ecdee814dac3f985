"""The network: shapes, finiteness, fusion arms, parameter budget, save -> load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import WeightsError
from medconddiff.hub import load_model, save_model
from medconddiff.model import MedCondDiff


@pytest.mark.parametrize("fusion", ["add", "concat", "none"])
@pytest.mark.parametrize(("size", "channels", "classes"), [(64, 1, 2), (96, 2, 5), (128, 4, 3)])
def test_shapes_and_finite(fusion, size, channels, classes):
    torch.manual_seed(0)
    cfg = MedCondDiffConfig(
        image_size=size,
        image_channels=channels,
        channel_names=[f"c{i}" for i in range(channels)],
        num_classes=classes,
        class_names=[f"k{i}" for i in range(classes)],
        fusion=fusion,
    )
    model = MedCondDiff(cfg).eval()
    image = torch.randn(2, channels, size, size)
    x_t = torch.randn(2, classes, size, size)
    t = torch.tensor([0.1, 0.9])
    with torch.no_grad():
        cond = model.encode_image(image)
        logits = model.denoise(x_t, t, cond)
    assert cond.shape == (2, 0 if fusion == "none" else cfg.denoiser_width, size // 4, size // 4)
    assert logits.shape == (2, classes, size, size)
    assert torch.isfinite(logits).all()


def test_default_parameter_budget_matches_paper():
    counts = MedCondDiff(MedCondDiffConfig()).parameter_counts()
    assert 24.0e6 <= counts["total"] <= 25.5e6  # paper: 24.7M
    assert counts["backbone"] + counts["rest"] == counts["total"]


def test_channels_come_from_timm_feature_info():
    model = MedCondDiff(MedCondDiffConfig(image_size=64))
    chans = model.backbone.feature_info.channels()
    assert [m.in_channels for m in model.decoder.lateral] == chans


def test_conditioning_changes_the_prediction(tiny_model):
    """With fusion=add the image matters: two different images give different logits."""
    x_t = torch.randn(1, 5, 64, 64)
    t = torch.tensor([0.5])
    with torch.no_grad():
        a = tiny_model.denoise(x_t, t, tiny_model.encode_image(torch.randn(1, 2, 64, 64)))
        b = tiny_model.denoise(x_t, t, tiny_model.encode_image(torch.randn(1, 2, 64, 64)))
    assert not torch.allclose(a, b)


def test_forward_shares_cond_across_noise_draws(tiny_model):
    image = torch.randn(2, 2, 64, 64)
    x_t = torch.randn(4, 5, 64, 64)  # 2 draws per image, image-major
    t = torch.rand(4)
    with torch.no_grad():
        joint = tiny_model(image, x_t, t)
        cond = tiny_model.encode_image(image)
        sep = tiny_model.denoise(x_t, t, cond.repeat_interleave(2, dim=0))
    torch.testing.assert_close(joint, sep)


@pytest.mark.parametrize("half", [False, True])
def test_save_load_round_trip_is_bit_identical(tiny_model, tmp_path, half):
    image = torch.randn(1, 2, 64, 64)
    x_t = torch.randn(1, 5, 64, 64)
    t = torch.tensor([0.3])
    save_model(tiny_model, tmp_path / "w", half=half)
    loaded = load_model(tmp_path / "w")
    if half:  # fp16 storage: a second save/load cycle must not change anything further
        save_model(loaded, tmp_path / "w2", half=True)
        ref, loaded = loaded, load_model(tmp_path / "w2")
    else:
        ref = tiny_model
    assert loaded.config == ref.config
    with torch.no_grad():
        a = ref.denoise(x_t, t, ref.encode_image(image))
        b = loaded.denoise(x_t, t, loaded.encode_image(image))
    assert torch.equal(a, b)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # fp16 storage is upcast


def _weights_with(tiny_weights, folder, change) -> str:
    """A copy of the tiny weights folder whose tensors went through `change(state) -> state`."""
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_weights / "config.json").read_bytes())
    save_file(change(load_file(str(tiny_weights / "model.safetensors"))), str(folder / "model.safetensors"))
    return str(folder)


def test_strict_loading_refuses_a_missing_an_unexpected_and_a_misshapen_tensor(tiny_weights, tmp_path):
    """Both entry points (load_model and the Hub mixin's from_pretrained) refuse partial or mismatched weights."""
    state = load_model(str(tiny_weights)).state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4)  # a convolution kernel
    broken = {
        "missing": (lambda sd: {k: v for k, v in sd.items() if k != key}, rf"1 tensor\(s\) missing \(e\.g\. {key}\)"),
        "unexpected": (lambda sd: {**sd, "extra.weight": torch.zeros(3)}, r"1 unexpected \(e\.g\. extra\.weight\)"),
        "wrong shape": (
            lambda sd: {**sd, key: torch.zeros(1, *sd[key].shape[1:])},
            rf"1 with the wrong shape \(e\.g\. {key}",
        ),
    }
    for name, (change, message) in broken.items():
        folder = _weights_with(tiny_weights, tmp_path / name.replace(" ", "-"), change)
        for load in (load_model, MedCondDiff.from_pretrained):
            with pytest.raises(WeightsError, match=message):
                load(folder)
    untouched = _weights_with(tiny_weights, tmp_path / "untouched", lambda sd: sd)  # the control: it loads
    assert torch.equal(MedCondDiff.from_pretrained(untouched).state_dict()[key], state[key])


def test_config_is_strict(tmp_path):
    d = MedCondDiffConfig().to_dict()
    assert MedCondDiffConfig.from_dict(d) == MedCondDiffConfig()
    with pytest.raises(WeightsError, match="unknown field"):
        MedCondDiffConfig.from_dict({**d, "colour": "blue"})
    d.pop("fusion")
    with pytest.raises(WeightsError, match="missing field"):
        MedCondDiffConfig.from_dict(d)
    with pytest.raises(WeightsError, match="fusion must be one of"):
        MedCondDiffConfig(fusion="multiply")
    with pytest.raises(WeightsError, match="multiple of 32"):
        MedCondDiffConfig(image_size=100)


def test_config_without_the_denoiser_fields_builds_the_earlier_layout(tmp_path):
    """config.json files saved before `denoiser_width` / `head_stride` existed load as what they were:
    the mask branch at the decoder's width and a full-resolution head, with their weights intact."""
    legacy = MedCondDiffConfig(image_size=64, width=64, denoiser_width=64, head_stride=1)
    d = legacy.to_dict()
    del d["denoiser_width"], d["head_stride"]
    assert MedCondDiffConfig.from_dict(d) == legacy
    torch.manual_seed(0)
    model = MedCondDiff(legacy).eval()
    assert isinstance(model.up2, torch.nn.Sequential) and isinstance(model.cond_proj, torch.nn.Identity)
    assert not any(k.startswith("cond_proj.") for k in model.state_dict())
    save_model(model, tmp_path / "w")
    (tmp_path / "w" / "config.json").write_text(json.dumps(d))
    loaded = load_model(tmp_path / "w")
    image, x_t, t = torch.randn(1, 2, 64, 64), torch.randn(1, 5, 64, 64), torch.tensor([0.4])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.denoise(x_t, t, loaded.encode_image(image)), model.denoise(x_t, t, model.encode_image(image))
        )


def test_denoiser_runs_at_its_own_width_and_never_at_full_resolution():
    """The per-step branch is `denoiser_width` wide (cond projected once per image) and, with
    head_stride 2, holds no feature map at full resolution: only the K logits are full size."""
    torch.manual_seed(0)
    model = MedCondDiff(MedCondDiffConfig(image_size=64, width=64, denoiser_width=32)).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for m in model.head]
    with torch.no_grad():
        cond = model.encode_image(torch.randn(1, 2, 64, 64))
        logits = model.denoise(torch.randn(1, 5, 64, 64), torch.tensor([0.5]), cond)
    for h in hooks:
        h.remove()
    assert cond.shape == (1, 32, 16, 16)
    assert logits.shape == (1, 5, 64, 64)
    assert all(s[-1] == 32 for s in shapes[:-1]) and shapes[-1] == (1, 5, 64, 64)  # stride 2 until the shuffle
    with pytest.raises(WeightsError, match="head_stride must be 1 or 2"):
        MedCondDiffConfig(head_stride=4)
    with pytest.raises(WeightsError, match="denoiser_width must be a multiple of 8"):
        MedCondDiffConfig(denoiser_width=100)


def test_mask_input_as_one_strided_conv_equals_unshuffle_then_1x1(tiny_model):
    """`denoise` runs the mask input as a 4x4 stride-4 conv with the 1x1 conv's weights reshaped;
    it must equal the module it stands for (pixel-unshuffle x4, then the 1x1 conv)."""
    x_t = torch.randn(3, 5, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model._mask_in(x_t), tiny_model.mask_in(x_t), rtol=1e-5, atol=1e-5)
        cl = x_t.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(tiny_model._mask_in(cl), tiny_model.mask_in(x_t), rtol=1e-5, atol=1e-5)
