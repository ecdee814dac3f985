"""`MedCondDiffConfig`: everything needed to rebuild a model, saved as config.json.

Every field is JSON-native (str, int, float, bool, list, dict) so the file round-trips exactly.
Loading is strict: an unknown or missing field is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError

FUSION_MODES = ("add", "concat", "none")
MODALITIES = ("mri", "ct", "natural")
SAMPLERS = ("ddim", "ddpm")

# Hounsfield windows as (level, width); "abdomen" is the usual soft-tissue abdominal window.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "soft_tissue": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
}


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
    # --- the network
    backbone: str = "pvt_v2_b1"  # timm name; the paper's lightweight choice
    pretrained_backbone: bool = False  # fetch ImageNet weights from the Hub when building from scratch
    fusion: str = "add"  # how image features meet the mask branch: add | concat | none (paper Table 3)
    width: int = 256  # channels of the fused stride-4 map (the authors' decoder width)
    context_blocks: int = 2  # residual blocks on the stride-32 features: global context, cheap to run
    time_embed_dim: int = 256  # size of the log-SNR embedding
    # --- the diffusion process
    logsnr_min: float = -15.0  # the cosine log-SNR schedule's range (authors' choice)
    logsnr_max: float = 15.0
    schedule_shift: bool = True  # shift the log-SNR by 2*ln(64/image_size): noisier at larger sizes
    # --- sampling defaults (the app and the command line start from these)
    default_steps: int = 10  # the authors' default
    default_sampler: str = "ddim"
    default_ensemble: int = 1
    default_consensus: str = "mean_logits"  # the authors' consensus

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `WeightsError` naming the first field that cannot build a model."""
        problems = []
        if self.image_channels < 1:
            problems.append(f"image_channels must be >= 1, got {self.image_channels}")
        if len(self.channel_names) != self.image_channels:
            problems.append(f"channel_names has {len(self.channel_names)} names for {self.image_channels} channels")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            problems.append(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        if self.image_size < 32 or self.image_size % 32:
            problems.append(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.fusion not in FUSION_MODES:
            problems.append(f"fusion must be one of {', '.join(FUSION_MODES)}; got {self.fusion!r}")
        if self.modality not in MODALITIES:
            problems.append(f"modality must be one of {', '.join(MODALITIES)}; got {self.modality!r}")
        if self.ct_window not in CT_WINDOWS:
            problems.append(f"ct_window must be one of {', '.join(CT_WINDOWS)}; got {self.ct_window!r}")
        if self.default_sampler not in SAMPLERS:
            problems.append(f"default_sampler must be one of {', '.join(SAMPLERS)}")
        if not self.logsnr_min < self.logsnr_max:
            problems.append("logsnr_min must be below logsnr_max")
        if problems:
            raise WeightsError("invalid model config: " + "; ".join(problems))

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
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown:
            raise WeightsError(f"{source}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
        if missing:
            raise WeightsError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as err:  # e.g. a list where an int belongs
            raise WeightsError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> MedCondDiffConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{path}: config.json not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))
