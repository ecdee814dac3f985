"""Does an input look like what the model was trained on? A warning, never a refusal.

Each slice, as the model sees it (normalised, on the model grid: `pipeline.prepare_slice`), is
summarised by a few numbers (`FEATURES`: per channel the mean, spread, 1st/50th/99th percentiles and
edge strength of its content pixels; the share of the grid with content; the correlation between
channels). `summarise` turns the training slices' numbers into ranges, stored in config.json as
`input_stats` (`python -m train.input_stats`). At inference `assess` says, in one plain sentence,
when most slices fall outside those ranges, or when the consensus is far less certain (mean
normalised entropy over the content) than on the training slices. A config.json without
`input_stats` gets no check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import MedCondDiffConfig

VERSION = 1
PER_CHANNEL = ("mean", "std", "p01", "p50", "p99", "edge")
WIDEN = 0.25  # a feature's range: the training slices' 0.5th-99.5th percentiles, widened by this share each side
MIN_OUTSIDE = 1  # a slice is unlike the training slices when at least this many features leave their range
ENTROPY_FACTOR = 2.0  # "very uncertain": mean entropy above this many times the training slices' 99th percentile
MIN_ENTROPY_LIMIT = 0.05


def feature_names(channels: int) -> list[str]:
    """The names of `slice_features`' values for a model with `channels` input channels."""
    names = [f"c{c}_{f}" for c in range(channels) for f in PER_CHANNEL] + ["content_fraction"]
    return names + [f"corr_c{a}_c{b}" for a in range(channels) for b in range(a + 1, min(channels, 3))]


_WORDS = {
    "mean": "mean",
    "std": "contrast",
    "p01": "darkest 1%",
    "p50": "median",
    "p99": "brightest 1%",
    "edge": "edges",
}


def plain_name(name: str, channel_names: list[str]) -> str:
    """A feature name in words: 'c0_p99' -> 'FLAIR brightest 1%', 'corr_c0_c1' -> 'FLAIR-T1c correlation'."""
    if name == "content_fraction":
        return "share of the image with content"
    parts = name.split("_")
    if parts[0] == "corr":
        a, b = (channel_names[int(p[1:])] for p in parts[1:])
        return f"{a}-{b} correlation"
    return f"{channel_names[int(parts[0][1:])]} {_WORDS.get(parts[1], parts[1])}"


def content_mask(image: np.ndarray, background: float) -> np.ndarray:
    """(C, H, W) normalised image -> (H, W) pixels that differ from empty space in any channel."""
    return (np.abs(image - background) > 1e-6).any(axis=0)


def slice_features(image: np.ndarray, background: float) -> np.ndarray | None:
    """(C, S, S) normalised model-grid slice -> the `feature_names` values; None for an empty slice."""
    image = np.asarray(image, dtype=np.float32)
    fg = content_mask(image, background)
    if fg.sum() < 16:
        return None
    out = []
    for ch in image:
        vals = ch[fg]
        p01, p50, p99 = np.percentile(vals, [1, 50, 99])
        dx, dy = np.abs(np.diff(ch, axis=1))[fg[:, 1:] & fg[:, :-1]], np.abs(np.diff(ch, axis=0))[fg[1:] & fg[:-1]]
        edge = float(np.concatenate([dx, dy]).mean()) if dx.size + dy.size else 0.0
        out += [float(vals.mean()), float(vals.std()), float(p01), float(p50), float(p99), edge]
    out.append(float(fg.mean()))
    c = image.shape[0]
    for a in range(c):
        for b in range(a + 1, min(c, 3)):
            x, y = image[a][fg], image[b][fg]
            sx, sy = float(x.std()), float(y.std())
            out.append(float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy)) if sx > 0 and sy > 0 else 1.0)
    return np.asarray(out, dtype=np.float64)


def mean_entropy(entropy: np.ndarray, content: np.ndarray) -> float:
    """(H, W) normalised entropy map -> its mean over the content pixels (the whole map if none)."""
    return float(entropy[content].mean()) if content.any() else float(entropy.mean())


def summarise(features: np.ndarray, entropies: np.ndarray, *, description: str, foreground_fraction: float) -> dict:
    """Training slices' features (N, F) and mean entropies (M,) -> the JSON-native `input_stats` of config.json."""
    lo, hi = np.percentile(features, 0.5, axis=0), np.percentile(features, 99.5, axis=0)
    pad = WIDEN * (hi - lo)
    names = feature_names(_channels_of(features.shape[1]))
    stats = {
        n: {
            "mean": round(float(features[:, i].mean()), 5),
            "std": round(float(features[:, i].std()), 5),
            "p005": round(float(lo[i]), 5),
            "p995": round(float(hi[i]), 5),
            "low": round(float(lo[i] - pad[i]), 5),
            "high": round(float(hi[i] + pad[i]), 5),
        }
        for i, n in enumerate(names)
    }
    p50, p99 = (float(np.percentile(entropies, q)) for q in (50, 99)) if len(entropies) else (0.0, 0.0)
    return {
        "version": VERSION,
        "description": description,
        "slices": int(features.shape[0]),
        "foreground_fraction": round(float(foreground_fraction), 5),
        "features": stats,
        "min_outside": MIN_OUTSIDE,
        "entropy": {
            "slices": int(len(entropies)),
            "p50": round(p50, 5),
            "p99": round(p99, 5),
            "limit": round(max(MIN_ENTROPY_LIMIT, ENTROPY_FACTOR * p99), 5),
        },
    }


def _channels_of(n_features: int) -> int:
    for c in range(1, 65):
        if len(feature_names(c)) == n_features:
            return c
    raise ValueError(f"{n_features} features match no channel count")


@dataclass
class Assessment:
    """What the check found for one input (a 2D image or a volume's slices)."""

    slices: int  # slices with content that were checked
    unlike: int  # of them, those outside the training ranges (at least `min_outside` features)
    outside: dict[str, int]  # feature name -> slices where it left its range
    entropy: float  # mean entropy over the content of every checked slice
    entropy_limit: float | None
    message: str | None  # the warning, or None when the input looks like the training data

    @property
    def unusual_input(self) -> bool:
        return self.slices > 0 and self.unlike * 2 > self.slices

    @property
    def uncertain(self) -> bool:
        return self.entropy_limit is not None and self.entropy > self.entropy_limit


def assess(config: MedCondDiffConfig, features: list[np.ndarray], entropies: list[float]) -> Assessment | None:
    """Per-slice features (`slice_features`) and mean entropies of one input -> an `Assessment`;
    None when the model stores no `input_stats` (or stats of another feature set)."""
    stats = config.input_stats
    names = feature_names(config.image_channels)
    if not stats or stats.get("version") != VERSION or set(stats.get("features", {})) != set(names):
        return None
    low = np.array([stats["features"][n]["low"] for n in names])
    high = np.array([stats["features"][n]["high"] for n in names])
    need = int(stats.get("min_outside", MIN_OUTSIDE))
    outside = {n: 0 for n in names}
    unlike = 0
    for f in features:
        out = (f < low) | (f > high)
        unlike += int(out.sum() >= need)
        for i in np.nonzero(out)[0]:
            outside[names[i]] += 1
    limit = stats.get("entropy", {}).get("limit")
    entropy = float(np.mean(entropies)) if entropies else 0.0
    a = Assessment(len(features), unlike, {k: v for k, v in outside.items() if v}, entropy, limit, None)
    what = stats.get("description") or f"{'/'.join(config.channel_names)} {config.modality}"
    reasons = []
    if a.unusual_input:
        worst = [plain_name(k, config.channel_names) for k in sorted(a.outside, key=lambda k: -a.outside[k])[:3]]
        reasons.append(f"{a.unlike} of {a.slices} slice(s) outside the training range of: {', '.join(worst)}")
    if a.uncertain:
        reasons.append(f"the model is unusually uncertain (mean entropy {a.entropy:.2f}, training <= {limit:.2f})")
    if reasons:
        a.message = (
            f"this does not look like the {what} this model was trained on ({'; '.join(reasons)}): "
            "check the mask with care"
        )
    return a
