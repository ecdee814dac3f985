"""`MedCondDiffConfig`: everything needed to rebuild a model, saved as config.json.

Every field is JSON-native (str, int, float, bool, list, dict) so the file round-trips exactly.
Loading is strict: an unknown or missing field is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import SettingsError, WeightsError

FUSION_MODES = ("add", "concat", "none")
MODALITIES = ("mri", "ct", "natural")

MAX_CHANNELS = 64
MAX_CLASSES = 256  # label maps are written as 8-bit images
MAX_IMAGE_SIZE = 2048
MAX_WIDTH = 4096
# fields added after config.json files were first published, with the value that reproduces the
# model those files describe
LEGACY_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"mask_scale": 1.0, "self_condition": False, "pixel_spacing": 0.0, "orientation": "RAS", "input_stats": {}}
)
_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list, "dict": dict}

# Hounsfield windows as (level, width); "abdomen" is the usual soft-tissue abdominal window.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "soft_tissue": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
}


_BODY_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def check_axes(codes: str) -> tuple[str, str, str]:
    """'RAS', 'LPS', ... -> a tuple of three codes naming each body axis once; `SettingsError` otherwise."""
    text = str(codes).upper()
    if len(text) != 3 or sorted(_BODY_AXIS.get(c, 9) for c in text) != [0, 1, 2]:
        raise SettingsError(
            f"orientation {codes!r} is not three axis codes; accepted: one of R/L, A/P, S/I each, e.g. RAS or LPS"
        )
    return tuple(text)


@dataclass
class MedCondDiffConfig:
    # --- the data the model sees
    image_channels: int = 2  # BraTS demo: FLAIR + T1c
    channel_names: list[str] = field(default_factory=lambda: ["FLAIR", "T1c"])
    num_classes: int = 5  # K, background included
    class_names: list[str] = field(
        default_factory=lambda: [
            "background",
            "necrosis",
            "oedema",
            "non-enhancing tumour",
            "enhancing tumour",
        ]
    )
    image_size: int = 352  # the paper's resolution; must be a multiple of 32 (backbone stride)
    modality: str = "mri"  # picks the normalisation: mri z-score, ct window, natural [0, 1]
    ct_window: str = "abdomen"  # default window preset when modality == "ct"
    crop_foreground: bool = True  # crop to the non-zero bounding box first: more pixels on the brain
    # millimetres per model pixel for scans whose pixel spacing is known (NIfTI): the crop is
    # resampled so a 512 px slice at 0.7 mm and a 122 px slice at 3 mm reach the network at the same
    # scale (the field of view is image_size x pixel_spacing mm, centred on the crop). 0 = resize the
    # crop to fit the grid whatever its size (2D pictures always do); config.json files older than
    # the field mean 0.
    pixel_spacing: float = 0.0
    # axis codes (nibabel letters: where each array axis points) of the volumes the model was trained
    # on; every volume is turned to them (`io.reorient`, in training too) and sliced along the third
    # axis, so a file stored LPS, RAS or sagittally gives the same slices. config.json files older
    # than the field mean RAS (the shipped BraTS model saw its LPS files as stored: its config says so).
    orientation: str = "RAS"
    # statistics of the training inputs after normalisation (`medconddiff.ood`, written by
    # `python -m train.input_stats`): inputs far outside them get a warning. {} = no input check.
    input_stats: dict = field(default_factory=dict)
    # --- the network
    backbone: str = "pvt_v2_b1"  # timm name; the paper's lightweight choice
    pretrained_backbone: bool = False  # fetch ImageNet weights from the Hub when building from scratch
    fusion: str = "add"  # how image features meet the mask branch: add | concat | none (paper Table 3)
    width: int = 256  # channels of the semantic decoder's stride-4 map (the authors' decoder width)
    # channels of the per-step mask branch; `cond` is projected from `width` to this once per image.
    # The denoiser runs S x E times per image, so its width sets the cost of steps and members
    # (benchmarks/RESULTS.md); config.json files older than this field mean denoiser_width = width.
    denoiser_width: int = 96
    # where the mask branch's last convolution runs: 2 = at half resolution, its 4K outputs
    # pixel-shuffled into the K full-resolution logits (no full-resolution feature maps);
    # 1 = a feature map at full resolution first (config.json files older than the field).
    head_stride: int = 2
    context_blocks: int = 2  # residual blocks on the stride-32 features: global context, cheap to run
    time_embed_dim: int = 256  # size of the log-SNR embedding
    # --- the diffusion process
    logsnr_min: float = -15.0  # the cosine log-SNR schedule's range (authors' choice)
    logsnr_max: float = 15.0
    schedule_shift: bool = True  # shift the log-SNR by 2*ln(64/image_size): noisier at larger sizes
    # x0 in {-1, +1} is multiplied by this before noising (Chen et al.'s input scaling): below 1 the
    # mask signal is weaker at every t, so fewer training samples are solved by copying x_t
    # (docs/studies/steps.md). config.json files older than the field mean 1.0.
    mask_scale: float = 1.0
    # feed the previous step's x0-hat back as K extra input channels (self-conditioning, Chen et
    # al. "Analog Bits"): later steps see what the earlier ones predicted and can correct it.
    # config.json files older than the field mean False.
    self_condition: bool = False
    # --- sampling defaults (the app and the command line start from these)
    default_steps: int = 10  # the authors' default
    default_sampler: str = "ddim"
    default_ensemble: int = 1
    default_consensus: str = "mean_logits"  # the authors' consensus

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `WeightsError` naming the first field that cannot build a model."""
        problems = self._type_problems()
        if problems:  # comparing a string with a number below would fail with a TypeError
            raise WeightsError("invalid model config: " + "; ".join(problems))
        if not 1 <= self.image_channels <= MAX_CHANNELS:
            problems.append(f"image_channels must be between 1 and {MAX_CHANNELS}, got {self.image_channels}")
        if len(self.channel_names) != self.image_channels:
            problems.append(f"channel_names has {len(self.channel_names)} names for {self.image_channels} channels")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            problems.append(
                f"num_classes must be between 2 and {MAX_CLASSES} (8-bit label maps), got {self.num_classes}"
            )
        if len(self.class_names) != self.num_classes:
            problems.append(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE or self.image_size % 32:
            problems.append(
                f"image_size must be a multiple of 32 between 32 and {MAX_IMAGE_SIZE}, got {self.image_size}"
            )
        if not 8 <= self.width <= MAX_WIDTH or self.width % 8:
            problems.append(f"width must be a multiple of 8 between 8 and {MAX_WIDTH}, got {self.width}")
        if not 8 <= self.denoiser_width <= MAX_WIDTH or self.denoiser_width % 8:
            problems.append(
                f"denoiser_width must be a multiple of 8 between 8 and {MAX_WIDTH}, got {self.denoiser_width}"
            )
        if self.head_stride not in (1, 2):
            problems.append(f"head_stride must be 1 or 2, got {self.head_stride}")
        if not 2 <= self.time_embed_dim <= MAX_WIDTH or self.time_embed_dim % 2:
            problems.append(f"time_embed_dim must be even, between 2 and {MAX_WIDTH}, got {self.time_embed_dim}")
        if not 0 <= self.context_blocks <= 16:
            problems.append(f"context_blocks must be between 0 and 16, got {self.context_blocks}")
        if self.fusion not in FUSION_MODES:
            problems.append(f"fusion must be one of {', '.join(FUSION_MODES)}; got {self.fusion!r}")
        if self.modality not in MODALITIES:
            problems.append(f"modality must be one of {', '.join(MODALITIES)}; got {self.modality!r}")
        if self.ct_window not in CT_WINDOWS:
            problems.append(f"ct_window must be one of {', '.join(CT_WINDOWS)}; got {self.ct_window!r}")
        try:  # the sampling defaults obey the same rules as any other sampling settings
            from .sampler import SamplingSettings

            SamplingSettings(
                steps=self.default_steps,
                ensemble=self.default_ensemble,
                sampler=self.default_sampler,
                consensus=self.default_consensus,
            )
        except SettingsError as err:
            problems.append(f"default sampling settings: {err}")
        if not (math.isfinite(self.pixel_spacing) and (self.pixel_spacing == 0 or 0.05 <= self.pixel_spacing <= 20)):
            problems.append(
                f"pixel_spacing must be 0 (fit the crop) or between 0.05 and 20 mm, got {self.pixel_spacing}"
            )
        try:
            check_axes(self.orientation)
        except SettingsError as err:
            problems.append(str(err))
        if not (math.isfinite(self.mask_scale) and 0.01 <= self.mask_scale <= 10.0):
            problems.append(f"mask_scale must be between 0.01 and 10, got {self.mask_scale}")
        if not (
            math.isfinite(self.logsnr_min) and math.isfinite(self.logsnr_max) and self.logsnr_min < self.logsnr_max
        ):
            problems.append("logsnr_min must be below logsnr_max, both finite")
        if problems:
            raise WeightsError("invalid model config: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        """Each field holds its declared JSON type (an int is accepted where a float belongs)."""
        problems = []
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES[str(f.type)]
            if kind is list:
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            if not ok:
                want = "a list of strings" if kind is list else kind.__name__
                problems.append(f"{f.name} must be {want}, got {type(value).__name__} {value!r:.40}")
        return problems

    @property
    def logsnr_shift(self) -> float:
        """Added to the log-SNR: 2*ln(64/size), so a larger image gets more noise at equal t."""
        return 2.0 * math.log(64.0 / self.image_size) if self.schedule_shift else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> MedCondDiffConfig:
        """Build from a dict; unknown or missing fields are errors that name the field."""
        if not isinstance(data, dict):
            raise WeightsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if "denoiser_width" not in data and "width" in data:  # saved before these fields existed:
            data = {**data, "denoiser_width": data["width"], "head_stride": data.get("head_stride", 1)}
        # fields added later: a file without them builds (and samples) exactly as before they existed
        data = {**LEGACY_DEFAULTS, **data}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown:
            raise WeightsError(f"{source}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
        if missing:
            raise WeightsError(
                f"{source}: missing field(s) {', '.join(missing)}; accepted: a config.json with every field "
                "(as save_model writes it)"
            )
        try:
            return cls(**data)
        except (WeightsError, TypeError) as err:
            raise WeightsError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> MedCondDiffConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(
                f"{path}: config.json not found; accepted: a folder with config.json and model.safetensors"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(
                f"{path}: not valid JSON ({err}); accepted: the config.json saved with the weights"
            ) from None
        return cls.from_dict(data, source=str(path))
