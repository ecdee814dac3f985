"""Finding cases on disk, remapping labels, the slice cache, weighted sampling and augmentation.

Layouts understood by `find_cases`:
    brats    <root>/**/<case>/{Flair_subtrMeanDivStd,T1c_...,OTMultiClass}.nii.gz (file names from the config)
    nnunet   <root>/imagesTr/<case>_0000.nii.gz ... and <root>/labelsTr/<case>.nii.gz (Decathlon style)
    single   <root>/<image files> + <root>/<label file>: one case (e.g. the abdominal CT)
    images   <root>/images/NAME.ext + <root>/masks/NAME.ext: 2D pictures (Kvasir-SEG, PH2), one case each;
             masks hold class indices, or are binarised with `mask_threshold` (JPEG masks are not exact)
A `split_file` (train/splits/*.json: "train", "val" (or "validation"), "test" lists of case names) fixes
the parts. In the brats layout a file name may hold `{case}`, the case folder's name
(`{case}_flair.nii.gz` for BraTS 2018). `sources` joins several data folders into one dataset, each
with its own files, label map and split (e.g. BraTS 2015 and 2018 with their labels merged).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medconddiff import io
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import MedCondDiffError
from medconddiff.pipeline import prepare_slice


class DataError(MedCondDiffError):
    """A training data folder that is missing or not in the layout its config names.

    The training commands print it as one line and exit with code 2: what is missing, where it
    looked, and what layout is expected (`expected_layout`).
    """


def command_main(run):
    """A training command's `main(argv)`: `run(argv)`, with any `MedCondDiffError` (a missing or malformed
    data folder, bad weights, an unreadable file) as one line on stderr and exit code 2, never a traceback."""

    def main(argv: list[str] | None = None) -> int:
        try:
            return run(argv)
        except MedCondDiffError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return main


def expected_layout(data: DataSettings) -> str:
    """The layout `find_cases` reads for these settings, in words (for error messages)."""
    files = ", ".join(data.channel_files or []) or "the config's data.channel_files"
    return {
        "brats": f"one folder per case under the root, each holding {files} and {data.label_file}",
        "nnunet": "imagesTr/CASE_0000.nii.gz (one file per channel: _0000, _0001, ...) and labelsTr/CASE.nii.gz",
        "single": f"one case: {files} and {data.label_file} directly in the root",
        "images": "images/NAME.png|jpg and masks/NAME.png|jpg (the same NAME for an image and its mask)",
    }.get(data.layout, "one of the layouts brats, nnunet, single, images")


def _fail(root: Path, data: DataSettings, what: str) -> DataError:
    return DataError(
        f"{what} (looked in {root.resolve()}); expected the {data.layout!r} layout: {expected_layout(data)}"
    )


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
    split_file: str | None = None  # JSON with "train" / "val" / "test" case names (train/splits/)
    mask_threshold: int | None = None  # images layout: mask > threshold is class 1; None: values are classes
    # several data folders as one dataset: each entry overrides the settings above for one folder
    # (root, layout, channel_files, label_file, label_map, split_file, val_cases, ...); None: just `root`
    sources: list[dict] | None = None


@dataclass
class Case:
    name: str
    images: list[Path]  # one file per modality
    labels: Path | None
    source: DataSettings | None = None  # the settings of the data folder it came from, with `sources`


def sources_of(data: DataSettings) -> list[DataSettings]:
    """The settings of each data folder: `data` itself, or one per entry of `data.sources`."""
    if not data.sources:
        return [data]
    names = {f.name for f in dataclasses.fields(DataSettings)} - {"sources"}
    out = []
    for i, entry in enumerate(data.sources):
        bad = sorted(set(entry) - names)
        if bad:
            raise DataError(f"data.sources[{i}]: unknown key(s) {bad}; accepted: {', '.join(sorted(names))}")
        out.append(dataclasses.replace(data, sources=None, **entry))
    return out


def _named(pattern: str, case: str) -> str:
    return pattern.replace("{case}", case)


def find_cases(root: str | Path, data: DataSettings) -> list[Case]:
    """All cases under `root` in the given layout, sorted by name; `DataError` when the folder is
    missing or holds no case in that layout, or a case lacks one of its files."""
    if data.sources:
        cases = []
        for src in sources_of(data):
            cases += [dataclasses.replace(c, source=src) for c in find_cases(src.root, src)]
        names = [c.name for c in cases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"data.sources: case name(s) found in more than one folder, e.g. {twice[0]!r}")
        return sorted(cases, key=lambda c: c.name)
    root = Path(root)
    if data.layout not in ("brats", "nnunet", "single", "images"):
        raise DataError(f"unknown data layout {data.layout!r}; accepted: brats, nnunet, single, images")
    if not root.is_dir():
        raise _fail(root, data, f"data folder {root} not found" if not root.exists() else f"{root} is not a folder")
    cases: list[Case] = []
    if data.layout == "nnunet":
        images = root / "imagesTr"
        for sub in (images, root / "labelsTr"):
            if not sub.is_dir():
                raise _fail(root, data, f"no {sub.name}/ folder in {root}")
        for lab in sorted((root / "labelsTr").glob("*.nii*")):
            name = lab.name.split(".nii")[0]
            chans = sorted(images.glob(f"{name}_[0-9][0-9][0-9][0-9].nii*"))
            if not chans:
                raise _fail(root, data, f"labelsTr/{lab.name} has no image imagesTr/{name}_0000.nii.gz")
            cases.append(Case(name, chans, lab))
    elif data.layout in ("brats", "single"):
        files = data.channel_files or []
        if not files:
            raise _fail(root, data, "the config names no image files (data.channel_files is empty)")
        if data.layout == "single":
            folders = [root]
        else:  # a case folder holds the label file (named after the folder where the name has {case})
            hits = root.rglob(_named(data.label_file, "*"))
            folders = sorted({p.parent for p in hits if p.name == _named(data.label_file, p.parent.name)})
        for folder in folders:
            chans = [folder / _named(f, folder.name) for f in files]
            lab = folder / _named(data.label_file, folder.name)
            needed = chans + ([lab] if data.layout == "single" else [])
            missing = [c.name for c in needed if not c.is_file()]
            if missing:
                where = folder if folder == root else folder.relative_to(root)
                raise _fail(root, data, f"case {where} lacks {', '.join(missing)}")
            cases.append(Case(folder.name, chans, lab if lab.is_file() else None))
    else:
        for sub in ("images", "masks"):
            if not (root / sub).is_dir():
                raise _fail(root, data, f"no {sub}/ folder in {root}")
        masks = {p.stem: p for p in (root / "masks").glob("*") if p.suffix.lower() in io.IMAGE_SUFFIXES}
        for img in sorted((root / "images").glob("*")):
            if img.suffix.lower() in io.IMAGE_SUFFIXES:
                cases.append(Case(img.stem, [img], masks.get(img.stem)))
        unlabelled = [c.name for c in cases if c.labels is None]
        if unlabelled:
            raise _fail(root, data, f"{len(unlabelled)} image(s) without a mask, e.g. images/{unlabelled[0]}.*")
    if not cases:
        looked = {
            "brats": f"no case folder holding {data.label_file}",
            "nnunet": "no label files in labelsTr/",
            "images": "no PNG/JPG images in images/",
        }
        raise _fail(root, data, f"no cases found under {root}: {looked.get(data.layout, 'nothing')}")
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
    """A case's label volume (X, Y, Z) or 2D mask (H, W), as class indices; None for an unlabelled case."""
    if case.labels is None:
        return None
    data = case.source or data  # a case of one of several data folders: that folder's label map
    if data.layout == "images":
        mask = io.read_image(case.labels)[0]  # (H, W): the first channel of a grey or RGB mask
        if data.mask_threshold is not None:
            return (mask > data.mask_threshold).astype(np.int64)
        return remap(mask, data.label_map)
    return remap(io.read_nifti_voxels(case.labels, "NIfTI label map"), data.label_map)


def read_case(case: Case, data: DataSettings, config: MedCondDiffConfig) -> tuple[io.Scan, np.ndarray | None]:
    """Raw scan (C, X, Y, Z) and remapped labels (X, Y, Z); for the images layout (C, H, W) and (H, W).

    Volumes and their labels are turned to `config.orientation` by `io.reorient`, as the pipeline's
    `load_case` turns every input: the model is trained on the slices it will be given.
    """
    try:
        if data.layout == "images":
            return io.read_scan(case.images), read_labels(case, data)
        scan = io.reorient(io.read_nifti(case.images), config.orientation)
        labels = read_labels(case, data)
    except io.InputError as err:  # say which case of the data folder, not only the file name
        raise DataError(f"case {case.name} ({case.images[0].parent}): {err}") from None
    return scan, None if labels is None else scan.to_canonical(labels)


def read_split(path: str | Path) -> dict[str, list[str]]:
    """A committed split file -> {"train": [...], "val": [...], "test": [...]} case names."""
    import json

    accepted = "accepted: a JSON file with 'train', 'val' and 'test' lists of case names (train/splits/)"
    try:
        split = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} not found (looked in {Path(path).resolve().parent}); {accepted}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as err:
        raise DataError(f"split file {path} is not readable JSON ({type(err).__name__}); {accepted}") from None
    if isinstance(split, dict) and "val" not in split and "validation" in split:  # BraTS 2018's splits.json
        split = {**split, "val": split["validation"]}
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise DataError(f"split file {path} lacks a 'train', 'val' or 'test' list; {accepted}")
    return split


def split_cases(cases: list[Case], data: DataSettings, *, part: str | None = None):
    """(train cases, validation cases); with `part` ("train" | "val" | "test") only that part's cases.

    With `sources`, each data folder's cases are split by that folder's own split file or case lists."""
    if data.sources:
        parts = [
            split_cases([c for c in cases if c.source is not None and c.source.root == src.root], src, part=part)
            for src in sources_of(data)
        ]
        if part is not None:
            return [c for p in parts for c in p]
        return [c for tr, _ in parts for c in tr], [c for _, va in parts for c in va]
    if data.split_file:
        split = read_split(data.split_file)
        by_part = {k: [c for c in cases if c.name in set(split[k])] for k in ("train", "val", "test")}
        if split["train"] and not by_part["train"]:
            raise DataError(
                f"none of the {len(split['train'])} training cases named in {data.split_file} "
                f"(e.g. {split['train'][0]!r}) is among the {len(cases)} case(s) found under {data.root}; "
                "accepted: a split file whose names are the case names of this data folder"
            )
        if part is not None:
            return by_part[part]
        return by_part["train"], by_part["val"]
    val = [c for c in cases if data.val_cases and c.name in data.val_cases]
    train = [c for c in cases if (c.name in data.train_cases if data.train_cases else c not in val)]
    if part is not None:
        return {"train": train, "val": val}.get(part, [])
    return train, val


def case_slices(scan: io.Scan, labels: np.ndarray | None, layout: str):
    """(raw (C, H, W) slice, labels (H, W) or None) for every slice of a case; a 2D case is one slice."""
    if layout == "images":
        yield scan.data, labels
        return
    for k in range(scan.data.shape[-1]):
        yield scan.data[..., k], (None if labels is None else labels[..., k])


def expand_grey(raw: np.ndarray, config: MedCondDiffConfig) -> np.ndarray:
    """A grey picture for an RGB model (io reads equal-channel RGB as grey): repeat it on 3 channels."""
    if raw.shape[0] == 1 and config.image_channels == 3:
        return np.repeat(raw, 3, axis=0)
    return raw


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
    kind = "image" if data.layout == "images" else "nifti"
    for case in cases:
        scan, labels = read_case(case, data, config)
        held_out = set(range(*data.val_range)) if data.val_range else set()
        for k, (raw, lab) in enumerate(case_slices(scan, labels, data.layout)):
            if (part == "val" and k not in held_out) or (part == "train" and k in held_out):
                continue
            # as the pipeline prepares it
            prepared = prepare_slice(expand_grey(raw, config), config, kind=kind, spacing=scan.slice_spacing)
            if prepared.image is None:
                continue  # outside the head/body: nothing to learn
            imgs.append(prepared.image.half())
            labs.append(io.labels_to_model_grid(lab, prepared.geometry).to(torch.uint8))
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
    # photographs (endoscopy, dermoscopy): lighting, white balance and focus vary between devices
    color_jitter: float = 0.0  # brightness, contrast and saturation each scaled by 1 +- this
    hue_shift: float = 0.0  # each channel's gain scaled by 1 +- this (a white-balance shift)
    blur_prob: float = 0.0  # share of images blurred with a Gaussian of sigma in [0.5, blur_sigma]
    blur_sigma: float = 1.5


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
    if aug.color_jitter or aug.hue_shift:
        images = photo_jitter(images, aug, g)
    if aug.blur_prob:
        images = random_blur(images, aug, g)
    fg = (images - background).abs() > 1e-6
    c = images.shape[1]
    scale = 1.0 + (torch.rand(b, c, 1, 1, generator=g) * 2 - 1) * aug.intensity_scale
    shift = (torch.rand(b, c, 1, 1, generator=g) * 2 - 1) * aug.intensity_shift
    noise = torch.randn(images.shape, generator=g) * aug.noise_std
    images = torch.where(fg, (images - background) * scale + background + shift + noise, images)
    return images, labels


def _uniform(shape, spread: float, g: torch.Generator) -> torch.Tensor:
    return 1.0 + (torch.rand(shape, generator=g) * 2 - 1) * spread


def photo_jitter(images: torch.Tensor, aug: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) pictures in [0, 1] -> brightness, contrast, saturation and white balance varied."""
    b, c = images.shape[:2]
    j = aug.color_jitter
    out = images * _uniform((b, 1, 1, 1), j, g)  # brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * _uniform((b, 1, 1, 1), j, g) + mean  # contrast
    if c == 3:
        grey = out.mean(dim=1, keepdim=True)
        out = (out - grey) * _uniform((b, 1, 1, 1), j, g) + grey  # saturation
        out = out * _uniform((b, 3, 1, 1), aug.hue_shift, g)  # white balance
    return out.clamp(0.0, 1.0)


def random_blur(images: torch.Tensor, aug: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """Blur a `blur_prob` share of the images with a separable Gaussian (sigma 0.5..blur_sigma)."""
    pick = torch.rand(images.shape[0], generator=g) < aug.blur_prob
    sigmas = 0.5 + torch.rand(images.shape[0], generator=g) * max(0.0, aug.blur_sigma - 0.5)
    out = images.clone()
    for i in pick.nonzero().flatten().tolist():
        sigma = float(sigmas[i])
        radius = max(1, math.ceil(2 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=images.dtype)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        c = images.shape[1]
        img = F.pad(images[i : i + 1], (radius, radius, radius, radius), mode="replicate")
        img = F.conv2d(img, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        img = F.conv2d(img, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        out[i] = img[0]
    return out
