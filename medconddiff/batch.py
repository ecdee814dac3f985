"""A folder of cases: finding them (nnU-Net naming, DICOM sub-folders or zips) and the summary table.

`find_cases` groups the files of IN_DIR into cases without reading them:
    CASE_0000.nii.gz, CASE_0001.nii.gz, ...   one case, one file per channel (multi-channel models)
    any other NIfTI or 2D image               one case per file (one-channel and RGB models)
    a sub-folder or a .zip                    one case: one DICOM series
A case whose files cannot form an input for the model (a channel file missing, a stray file type)
is returned with its problem, so the caller reports it and goes on with the others.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES

SUMMARY_NAME = "summary.csv"
IGNORED_SUFFIXES = (".json", ".csv", ".txt", ".md", ".pdf")  # notes beside the scans (e.g. nnU-Net's dataset.json)
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class FolderCase:
    """One case of a folder: its name (the output's stem), its input paths in channel order, or why not."""

    name: str
    paths: list[Path]
    problem: str | None = None  # set: the case cannot be read; the message says why and what is accepted


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_cases(
    folder: str | Path, *, channels: int, channel_names: list[str], one_file_per_case: bool
) -> list[FolderCase]:
    """The cases of `folder`, sorted by name. `one_file_per_case`: each file holds every channel (RGB, one channel)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; -i takes a folder of cases")
    cases: list[FolderCase] = []
    groups: dict[str, dict[int, Path]] = {}
    loose_dicom: list[Path] = []
    for path in sorted(folder.iterdir()):
        low = path.name.lower()
        if path.name.startswith(".") or low.endswith(IGNORED_SUFFIXES):
            continue
        if path.is_dir() or low.endswith(".zip"):
            cases.append(FolderCase(_stem(path) if not path.is_dir() else path.name, [path]))
        elif low.endswith(DICOM_SUFFIXES):
            loose_dicom.append(path)
        elif low.endswith(NIFTI_SUFFIXES + IMAGE_SUFFIXES):
            stem = _stem(path)
            match = _NNUNET.match(stem)
            if one_file_per_case:
                name = match["case"] if match and match["channel"] == "0000" else stem
                cases.append(FolderCase(name, [path]))
            elif match:
                groups.setdefault(match["case"], {})[int(match["channel"])] = path
            else:
                cases.append(
                    FolderCase(
                        stem,
                        [path],
                        f"{path.name}: not named CASE_0000, CASE_0001, ...; this {channels}-channel model needs one "
                        f"file per channel ({', '.join(f'_{i:04d} = {n}' for i, n in enumerate(channel_names))})",
                    )
                )
        else:
            cases.append(FolderCase(path.name, [path], f"{path.name}: unsupported file type"))
    for name, found in groups.items():
        want = set(range(channels))
        problem = None
        if set(found) != want:
            missing = [f"{name}_{i:04d} ({channel_names[i]})" for i in sorted(want - set(found))]
            extra = [found[i].name for i in sorted(set(found) - want)]
            problem = (
                f"{name}: "
                + "; ".join(
                    ([f"missing {', '.join(missing)}"] if missing else [])
                    + ([f"unexpected {', '.join(extra)}"] if extra else [])
                )
                + f"; accepted: {channels} files {name}_0000 .. {name}_{channels - 1:04d}"
            )
        cases.append(FolderCase(name, [found[i] for i in sorted(found)], problem))
    if loose_dicom:
        cases.append(
            FolderCase(
                "(loose .dcm files)",
                loose_dicom,
                f"{len(loose_dicom)} .dcm file(s) directly in {folder.name}; accepted: one sub-folder (or zip) per series",
            )
        )
    names = [c.name for c in cases]
    for c in cases:
        if names.count(c.name) > 1 and c.problem is None:
            c.problem = (
                f"{c.name}: several inputs give this case name ({', '.join(p.name for p in c.paths)}); rename one"
            )
    return sorted(cases, key=lambda c: c.name)


def class_measures(
    labels: np.ndarray, class_names: list[str], *, spacing: tuple[float, ...] | None
) -> dict[str, float]:
    """Per foreground class: volume in ml (`spacing` in mm per voxel) or, without spacing, the area in pixels."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    if spacing is None:
        return {f"{n}_px": int(counts[i]) for i, n in enumerate(class_names) if i > 0}
    voxel_ml = float(np.prod(spacing[: labels.ndim])) / 1000.0
    return {f"{n}_ml": round(float(counts[i]) * voxel_ml, 4) for i, n in enumerate(class_names) if i > 0}


@dataclass
class Summary:
    """The rows of summary.csv: one per case, written again after each case (a crash keeps what was done)."""

    path: Path
    class_names: list[str]
    rows: list[dict] = field(default_factory=list)

    FIRST = ("case", "status", "inputs", "output", "shape", "spacing_mm", "precision", "slices", "skipped_slices")
    FIRST += ("read_s", "segment_s", "total_s")

    def add(self, **row) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        measures = [
            f"{n}_{unit}"
            for unit in ("ml", "px")
            for n in self.class_names[1:]
            if any(f"{n}_{unit}" in r for r in self.rows)
        ]
        columns = [*self.FIRST, *measures, "error"]
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
