"""The MedCondDiff network: image encoder (run once) + mask denoiser (run every step).

    image (B, C, H, W) --1x1 adapter--> (B, 3, H, W) --PVT-v2 (timm)--> C1..C4 (strides 4..32)
        --semantic decoder--> (B, width, H/4, W/4) --1x1--> cond (B, dw, H/4, W/4)  [encode_image, once per image]
    x_t (B, K, H, W) --pixel-unshuffle x4, 1x1--> time-conditioned block --> z (B, dw, H/4, W/4)
    fuse(z, cond): z + cond (add, the paper's choice) | 1x1(cat) (concat) | z (none)
        --> time-conditioned block --> 1x1, PixelShuffle(2) --> depthwise 3x3, 1x1 to 4K, PixelShuffle(2)
        --> x0 logits (B, K, H, W)                                        [denoise, every step]

The backbone sees only the image, so `cond` is computed once and reused at every sampling
step and for every ensemble member. The per-step part uses depthwise-separable convolutions at
stride 4 at `denoiser_width` (dw, 96 by default, against the decoder's 256) to stay cheap,
because it runs S x E times per image; the parameters that give capacity sit where compute is
paid once (the backbone, the stride-32 context blocks, the decoder). benchmarks/RESULTS.md has
the measurements behind these choices.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from .config import MedCondDiffConfig
from .diffusion import CosineLogSNR, Recycle, probs_to_x0, recycled_x_t
from .errors import WeightsError, one_line

CONFIG_NAME = "config.json"  # a weights folder: this file + WEIGHTS_NAME (+ README.md, the model card)
WEIGHTS_NAME = "model.safetensors"


def _groups(ch: int) -> int:
    return math.gcd(32, ch)


def logsnr_embedding(logsnr: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) log-SNR values -> (B, dim) sinusoidal features (log-SNR lies in about [-20, 15])."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=logsnr.device))
    angles = logsnr.float()[:, None] * freqs[None, :] / 20.0  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ConvBlock(nn.Module):
    """Pre-activation residual block with two full 3x3 convolutions (used where maps are small)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(ch), ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(ch), ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class SepConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1: a 3x3 receptive field at a ninth of the cost."""

    def __init__(self, ch: int):
        super().__init__(nn.Conv2d(ch, ch, 3, padding=1, groups=ch), nn.Conv2d(ch, ch, 1))


class TimeBlock(nn.Module):
    """Residual block whose second norm is scaled and shifted by the time embedding (FiLM)."""

    def __init__(self, ch: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(ch), ch)
        self.conv1 = SepConv(ch)
        self.film = nn.Linear(time_dim, 2 * ch)
        self.norm2 = nn.GroupNorm(_groups(ch), ch)
        self.conv2 = SepConv(ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)  # (B, ch, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return x + h


class SemanticDecoder(nn.Module):
    """Fuses the four backbone stages top-down into one stride-4 map of `width` channels."""

    def __init__(self, in_channels: list[int], width: int, context_blocks: int):
        super().__init__()
        c4 = in_channels[-1]
        self.context = nn.Sequential(*[ConvBlock(c4) for _ in range(context_blocks)])
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        # one 3x3 smoothing after the stride-8 merge: a small map, so affordable, and it removes
        # the blockiness of nearest-neighbour upsampling before the last merge
        self.smooth = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), SepConv(width))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: [(B, C_i, H/2^(i+2), W/2^(i+2)) for i in 0..3] -> (B, width, H/4, W/4)."""
        top = self.lateral[-1](self.context(feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            top = self.lateral[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="nearest")
            if i == 1:
                top = self.smooth(top)
        return top + self.out(top)


class AddFusion(nn.Module):
    """The paper's fusion: z + cond."""

    def __init__(self, ch: int):
        super().__init__()

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return z + cond


class ConcatFusion(nn.Conv2d):
    """The concatenation ablation: a 1x1 conv over [z, cond] (its weights keep the name `fuse`)."""

    def __init__(self, ch: int):
        super().__init__(2 * ch, ch, 1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([z, cond], dim=1))


class NoFusion(nn.Module):
    """The no-conditioning ablation: the image is ignored."""

    def __init__(self, ch: int):
        super().__init__()

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return z


FUSIONS = {"add": AddFusion, "concat": ConcatFusion, "none": NoFusion}


class MedCondDiff(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="medconddiff",
    tags=["medical-imaging", "segmentation", "diffusion"],
    repo_url="https://arxiv.org/abs/2512.00350",
    license="cc-by-nc-sa-3.0",
):
    """MedCondDiff: `encode_image` once per image, `denoise` at every sampling step."""

    def __init__(self, config: MedCondDiffConfig):
        super().__init__()
        if isinstance(config, dict):  # from_pretrained hands over a plain dict on some paths
            config = MedCondDiffConfig.from_dict(config)
        self.config = config
        k, w = config.num_classes, config.denoiser_width
        self.schedule = CosineLogSNR.from_config(config)

        self.has_image_pathway = config.fusion != "none"  # the "none" ablation arm has no image pathway
        if self.has_image_pathway:
            import timm  # imported here: building the model needs it, `import medconddiff` does not

            self.adapter = nn.Conv2d(config.image_channels, 3, 1)
            self.backbone = timm.create_model(
                config.backbone, features_only=True, pretrained=config.pretrained_backbone
            )
            self.decoder = SemanticDecoder(self.backbone.feature_info.channels(), config.width, config.context_blocks)
            # once per image: the denoiser never pays for the decoder's width
            self.cond_proj = nn.Conv2d(config.width, w, 1) if w != config.width else nn.Identity()
        self.fuse = FUSIONS[config.fusion](w)

        t = config.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(t, 2 * t), nn.SiLU(), nn.Linear(2 * t, t))
        # self-conditioning adds the previous x0-hat as K more input channels
        self.mask_channels = 2 * k if config.self_condition else k
        self.mask_in = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(16 * self.mask_channels, w, 1))
        self.mask_block = TimeBlock(w, t)
        self.mid_block = TimeBlock(w, t)
        self.up1 = nn.Sequential(nn.Conv2d(w, 4 * (w // 2), 1), nn.PixelShuffle(2))  # stride 4 -> 2
        if config.head_stride == 2:  # last convs at stride 2, 4K outputs shuffled into K logits
            self.head = nn.Sequential(
                nn.GroupNorm(_groups(w // 2), w // 2),
                nn.SiLU(),
                nn.Conv2d(w // 2, w // 2, 3, padding=1, groups=w // 2),
                nn.Conv2d(w // 2, 4 * k, 1),
                nn.PixelShuffle(2),
            )
            self.up2 = nn.Identity()
        else:  # head_stride 1: a w/8-channel map at full resolution, then the conv
            self.up2 = nn.Sequential(
                nn.GroupNorm(_groups(w // 2), w // 2),
                nn.SiLU(),
                nn.Conv2d(w // 2, 4 * (w // 8), 1),
                nn.PixelShuffle(2),
            )
            self.head = nn.Sequential(
                nn.GroupNorm(_groups(w // 8), w // 8), nn.SiLU(), nn.Conv2d(w // 8, k, 3, padding=1)
            )

    # -- the two entry points -------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised image -> cond (B, dw, H/4, W/4); (B, 0, H/4, W/4) for fusion "none"."""
        b, _, h, w = image.shape
        if not self.has_image_pathway:
            return image.new_zeros(b, 0, h // 4, w // 4)
        return self.cond_proj(self.decoder(self.backbone(self.adapter(image))))

    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, x0_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t (B, K, H, W), t (B,) in [0, 1], cond (B, dw, H/4, W/4) -> x0 logits (B, K, H, W).

        x0_prev (B, K, H, W): the previous step's x0-hat in value space [-1, 1], for a
        self-conditioned model (`config.self_condition`); None means "no previous estimate"
        (zeros, as at the first step and in half of the training samples). Ignored otherwise.
        """
        temb = self.time_mlp(logsnr_embedding(self.schedule.logsnr(t.float()), self.config.time_embed_dim))
        if self.mask_channels != x_t.shape[1]:  # self-conditioned: [x_t, x0_prev] on the channels
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev.to(x_t.dtype)], dim=1)
        z = self.mask_block(self._mask_in(x_t), temb)  # (B, dw, H/4, W/4)
        z = self.mid_block(self.fuse(z, cond), temb)
        z = self.up1(z)  # (B, dw/2, H/2, W/2)
        return self.head(self.up2(z))

    def _mask_in(self, x_t: torch.Tensor) -> torch.Tensor:
        """`self.mask_in` (pixel-unshuffle x4, then a 1x1 conv) computed as the one 4x4 stride-4
        convolution it equals: the 1x1 weights reshaped, since unshuffled channel c*16 + 4i + j
        is pixel (i, j) of channel c. Same parameters, no unshuffled copy (0.48 -> 0.20 ms per
        row at 256 px here)."""
        conv = self.mask_in[1]
        weight = conv.weight.reshape(conv.out_channels, self.mask_channels, 4, 4)
        return F.conv2d(x_t, weight, conv.bias, stride=4)

    def forward(
        self,
        image: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        self_cond_mask: torch.Tensor | None = None,
        recycle: Recycle | None = None,
    ) -> torch.Tensor:
        """Training entry: image (B, C, H, W), x_t (B*R, K, H, W), t (B*R,) -> logits (B*R, K, H, W).

        R noise draws per image share one `cond` (rows grouped image-major). For a self-conditioned
        model, the rows where `self_cond_mask` (B*R,) bool is True first get an x0-hat from a
        gradient-free pass without one, and are then denoised with it (Chen et al.'s recipe); the
        other rows see zeros, as the first sampling step does. With `recycle`, its rows' x_t is first
        rebuilt from the model's own gradient-free x0-hat (`diffusion.Recycle`); one image pass serves both.
        """
        cond = self.encode_image(image)
        repeats = x_t.shape[0] // image.shape[0]
        if repeats > 1:
            cond = cond.repeat_interleave(repeats, dim=0)  # (B*R, dw, H/4, W/4)
        if recycle is not None and bool(recycle.rows.any()):
            with torch.no_grad():
                first = self.denoise(recycle.x_start.to(x_t), recycle.t_start.to(t), cond.detach())
            x_t = recycled_x_t(first, x_t, t, recycle, self.schedule, self.config.mask_scale)
        x0_prev = None
        if self.config.self_condition and self_cond_mask is not None and bool(self_cond_mask.any()):
            with torch.no_grad():
                first = self.denoise(x_t, t, cond.detach())
            x0_prev = probs_to_x0(first.float().softmax(dim=1)) * self_cond_mask.to(first.dtype)[:, None, None, None]
        return self.denoise(x_t, t, cond, x0_prev)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, map_location: str = "cpu", **kwargs):
        """`MedCondDiff.from_pretrained(folder or repo id)`: config.json + model.safetensors only, loaded
        strictly (`from_folder`); a pickled checkpoint is never read. `medconddiff.hub.load_model`
        adds bundled names and friendlier download errors."""
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
        return cls.from_folder(folder, device=map_location)

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> MedCondDiff:
        """Build from folder/config.json and load folder/model.safetensors strictly: every tensor
        present with its shape, nothing extra; fp16 files are upcast to fp32."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config = MedCondDiffConfig.from_json(folder / CONFIG_NAME)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            hint = f" (found {', '.join(others)}: pickled weights are never loaded)" if others else ""
            raise WeightsError(
                f"{folder}: {WEIGHTS_NAME} not found{hint}; accepted: a folder with {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(
                f"{weights}: not a valid safetensors file ({one_line(err)}); accepted: weights written by save_model"
            ) from None
        if config.fusion != "none":
            import timm

            if not timm.is_model(config.backbone):
                raise WeightsError(
                    f"{folder / CONFIG_NAME}: backbone {config.backbone!r} is not a timm model; accepted: a timm "
                    "model name with features_only support, e.g. pvt_v2_b1"
                )
        # The file holds every backbone tensor: never fetch ImageNet weights while loading. The network is
        # built on the meta device (shapes, no storage): every tensor comes from the file, so the random
        # initialisation would only be overwritten (it was most of a small model's load time).
        with torch.device("meta"):
            model = cls(dataclasses.replace(config, pretrained_backbone=False))
        model.config = config
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} tensor(s) missing (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
            if wrong:
                k = wrong[0]
                parts.append(
                    f"{len(wrong)} with the wrong shape (e.g. {k}: {tuple(state[k].shape)} vs "
                    f"{tuple(expected[k].shape)})"
                )
            raise WeightsError(
                f"{weights}: does not match its config.json: " + "; ".join(parts) + "; accepted: the "
                f"{WEIGHTS_NAME} saved together with this {CONFIG_NAME}"
            )
        # copies of the file's tensors become the model's own, in the model's dtype (fp16 files are upcast to
        # fp32); copied, because safetensors hands out views at unaligned offsets of the file's buffer, and oneDNN
        # sums in another order on unaligned weights (outputs 3e-7 apart from the saved model's)
        own = {k: state[k].to(v.dtype, copy=True) for k, v in expected.items()}
        model.load_state_dict(own, strict=True, assign=True)
        return model.to(device).eval()

    # -- bookkeeping --------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: backbone (timm + input adapter), the rest, and the total."""
        total = sum(p.numel() for p in self.parameters())
        bb = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("backbone.", "adapter.")))
        return {"backbone": bb, "rest": total - bb, "total": total}
