"""Finding cases on disk, remapping labels, the slice cache, weighted sampling and augmentation.

Layouts understood by `find_cases`:
    brats    <root>/**/<case>/{Flair_subtrMeanDivStd,T1c_...,OTMultiClass}.nii.gz (file names from the config)
    nnunet   <root>/imagesTr/<case>_0000.nii.gz ... and <root>/labelsTr/<case>.nii.gz (Decathlon style)
    single   <root>/<image files> + <root>/<label file>: one case (e.g. the abdominal CT)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medconddiff import io
from medconddiff.config import MedCondDiffConfig
from medconddiff.pipeline import prepare_slice


@dataclass
class DataSettings:
    root: str = "../shared/data/brats2015"
    layout: str = "brats"  # brats | nnunet | single
    channel_files: list[str] | None = None  # per-modality file names (brats/single layouts)
    label_file: str = "OTMultiClass.nii.gz"
    label_map: dict[str, int] | None = None  # source label -> class index; None keeps labels as they are
    train_cases: list[str] | None = None  # case names (folder names); None: every case not in val
    val_cases: list[str] | None = None
    val_range: list[int] | None = None  # single-case layout: slices [start, stop) along Z are validation


@dataclass
class Case:
    name: str
    images: list[Path]  # one file per modality
    labels: Path | None


def find_cases(root: str | Path, data: DataSettings) -> list[Case]:
    """All cases under `root` in the given layout, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found")
    cases: list[Case] = []
    if data.layout == "nnunet":
        images = root / "imagesTr"
        for lab in sorted((root / "labelsTr").glob("*.nii*")):
            name = lab.name.split(".nii")[0]
            chans = sorted(images.glob(f"{name}_[0-9][0-9][0-9][0-9].nii*"))
            cases.append(Case(name, chans, lab))
    elif data.layout in ("brats", "single"):
        files = data.channel_files or []
        folders = [root] if data.layout == "single" else sorted({p.parent for p in root.rglob(data.label_file)})
        for folder in folders:
            chans = [folder / f for f in files]
            if all(c.is_file() for c in chans):
                lab = folder / data.label_file
                cases.append(Case(folder.name, chans, lab if lab.is_file() else None))
    else:
        raise ValueError(f"unknown layout {data.layout!r}; accepted: brats, nnunet, single")
    if not cases:
        raise FileNotFoundError(f"no cases found under {root} in the {data.layout!r} layout")
    return sorted(cases, key=lambda c: c.name)


def remap(labels: np.ndarray, label_map: dict[str, int] | None) -> np.ndarray:
    """Source label values -> class indices; values not in the map become background (0)."""
    labels = np.rint(labels).astype(np.int64)
    if not label_map:
        return labels
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    for src, dst in label_map.items():
        if int(src) < lut.size:
            lut[int(src)] = dst
    return lut[labels]


def read_labels(case: Case, data: DataSettings) -> np.ndarray | None:
    """A case's label volume (X, Y, Z), remapped to class indices; None for an unlabelled case."""
    if case.labels is None:
        return None
    import nibabel as nib

    return remap(np.asarray(nib.load(str(case.labels)).dataobj), data.label_map)


def read_case(case: Case, data: DataSettings) -> tuple[io.Scan, np.ndarray | None]:
    """Raw scan (C, X, Y, Z) and remapped labels (X, Y, Z)."""
    return io.read_nifti(case.images), read_labels(case, data)


def split_cases(cases: list[Case], data: DataSettings) -> tuple[list[Case], list[Case]]:
    val = [c for c in cases if data.val_cases and c.name in data.val_cases]
    train = [c for c in cases if (c.name in data.train_cases if data.train_cases else c not in val)]
    return train, val


@dataclass
class SliceSet:
    """Slices on the model grid: images (N, C, S, S) float16, labels (N, S, S) uint8."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def build_slices(cases: list[Case], data: DataSettings, config: MedCondDiffConfig, *, part: str = "all") -> SliceSet:
    """Every non-empty slice of every case, prepared for the model by the library (`pipeline.prepare_slice`).

    `part` selects slices of a single case by block: "val" = slices in `val_range`, "train" = the others.
    """
    imgs, labs = [], []
    for case in cases:
        scan, labels = read_case(case, data)
        held_out = set(range(*data.val_range)) if data.val_range else set()
        for k in range(scan.data.shape[-1]):
            if (part == "val" and k not in held_out) or (part == "train" and k in held_out):
                continue
            prepared = prepare_slice(scan.data[..., k], config, kind="nifti")  # as the pipeline prepares it
            if prepared.image is None:
                continue  # outside the head/body: nothing to learn
            imgs.append(prepared.image.half())
            labs.append(io.labels_to_model_grid(labels[..., k], prepared.geometry).to(torch.uint8))
    if not imgs:
        size, c = config.image_size, config.image_channels
        return SliceSet(
            torch.zeros(0, c, size, size, dtype=torch.float16), torch.zeros(0, size, size, dtype=torch.uint8)
        )
    return SliceSet(torch.stack(imgs), torch.stack(labs))


def load_or_build(cache_dir: Path, key: str, builder) -> SliceSet:
    """A SliceSet cached as safetensors (no pickle), rebuilt when missing."""
    from safetensors.torch import load_file, save_file

    path = cache_dir / f"{key}.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return SliceSet(d["images"], d["labels"])
    ss = builder()
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"images": ss.images.contiguous(), "labels": ss.labels.contiguous()}, str(path))
    return ss


def class_counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(labels.reshape(-1).long(), minlength=k)[:k]


def slice_weights(labels: torch.Tensor, class_w: torch.Tensor) -> torch.Tensor:
    """(N, S, S) labels -> (N,) sampling weights: 1 + the weights of the foreground classes present.

    A slice holding a rare class (enhancing tumour, pancreas) is drawn more often than one
    holding only background: the paper's "weighted sampling".
    """
    k = class_w.numel()
    present = torch.stack([(labels == c).flatten(1).any(1) for c in range(k)], dim=1).float()  # (N, K)
    present[:, 0] = 0.0
    return 1.0 + present @ class_w.float()


@dataclass
class AugmentSettings:
    flip: bool = True
    rot90: bool = True  # slices come in any orientation (NIfTI arrays vs. pictures)
    rotate_deg: float = 15.0
    scale: float = 0.1  # +-10 %
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.03


def augment(images: torch.Tensor, labels: torch.Tensor, aug: AugmentSettings, g: torch.Generator, *, background: float):
    """images (B, C, S, S) float, labels (B, S, S) long -> augmented copies (same shapes)."""
    b = images.shape[0]
    if aug.rot90:
        for i, k in enumerate(torch.randint(0, 4, (b,), generator=g).tolist()):
            if k:
                images[i] = torch.rot90(images[i], k, dims=(-2, -1))
                labels[i] = torch.rot90(labels[i], k, dims=(-2, -1))
    if aug.flip:
        flip = torch.rand(b, generator=g) < 0.5
        images[flip] = images[flip].flip(-1)
        labels[flip] = labels[flip].flip(-1)
    if aug.rotate_deg or aug.scale:
        ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(aug.rotate_deg)
        sc = 1.0 + (torch.rand(b, generator=g) * 2 - 1) * aug.scale
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack(
            [torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = (
            F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            + background
        )
        labels = F.grid_sample(
            labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0].long()
    fg = (images - background).abs() > 1e-6
    c = images.shape[1]
    scale = 1.0 + (torch.rand(b, c, 1, 1, generator=g) * 2 - 1) * aug.intensity_scale
    shift = (torch.rand(b, c, 1, 1, generator=g) * 2 - 1) * aug.intensity_shift
    noise = torch.randn(images.shape, generator=g) * aug.noise_std
    images = torch.where(fg, (images - background) * scale + background + shift + noise, images)
    return images, labels
