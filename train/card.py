"""The model card (README.md of a weights folder): Hub metadata, data, licence, training, evaluation.

    python -m train.card assets/weights/*          # regenerate cards from their evaluation.json
    python -m train.card WEIGHTS --report eval.json [--notes "..."]

The front matter is the Hub's metadata: `pipeline_tag`, `license`, `datasets` and a `model-index`
whose results (metric, value, split) are generated from the evaluation report of `train.evaluate`,
never typed by hand; the card's tables come from the same report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from medconddiff import metrics
from medconddiff.modelcard import sections

from .evaluate import markdown_table

REPORT_NAME = "evaluation.json"  # the evaluation report kept beside the weights
CURVE_ALT = "learning curve: loss and validation Dice against steps and wall time"
TAGS = ["medical-imaging", "segmentation", "diffusion", "pytorch_model_hub_mixin"]

DATA_NOTES = {
    "brats2015": (
        "BraTS 2015 training cases (brain tumour MRI, FLAIR + T1c, manual labels 0 background, 1 necrosis, "
        "2 oedema, 3 non-enhancing tumour, 4 enhancing tumour), as prepared for the DeepMedic examples. "
        "Licence: CC BY-NC-SA 3.0 CH (non-commercial, share-alike, attribution). Cite: B. H. Menze et al., "
        '"The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 34(10), 2015.'
    ),
    "brats": (
        "BraTS brain tumour MRI (FLAIR + T1c, manual labels), two copies trained together in the BraTS 2017+ "
        "classes (0 background, 1 necrotic and non-enhancing tumour core, 2 oedema, 3 enhancing tumour; BraTS "
        "2015's labels 1 necrosis and 3 non-enhancing tumour merged into 1, its label 4 renumbered 3): four BraTS "
        "2015 patients as prepared for the DeepMedic examples (intensities z-scored inside the brain; 2 train, 2 "
        "validation) and fourteen BraTS 2018 patients with raw scanner intensities (10 train, 2 validation, 2 "
        "test, the copy's `splits.json`). Every slice is z-scored inside the head before the network sees it, so "
        "raw and z-scored files reach it alike; intensity scaling and shifts in training cover the rest. Licence: "
        "BraTS 2015 is CC BY-NC-SA 3.0 CH (non-commercial, share-alike, attribution), BraTS 2018 research use: "
        'these weights are non-commercial and share-alike. Cite: B. H. Menze et al., "The Multimodal Brain Tumor '
        'Image Segmentation Benchmark (BRATS)", IEEE TMI 34(10), 2015; S. Bakas et al., Scientific Data 4:170117, '
        "2017; S. Bakas et al., arXiv:1811.02629, 2018."
    ),
    "abdomen-ct": (
        "One abdominal/pelvic CT (3 mm) from the example files of the TotalSegmentator project. Its organ labels "
        "were produced by the TotalSegmentator model, not drawn by hand, and were mapped to AbdomenCT-1K's "
        "organs (liver, kidney, spleen, pancreas). With a single patient, validation uses a held-out block of "
        "slices of the same patient: the numbers show the pipeline works, not that the model generalises."
    ),
    "kvasir-seg": (
        "Kvasir-SEG (Simula Research Laboratory): colonoscopy frames (RGB, 256 px in the copy used here) with "
        "polyp masks drawn by a doctor and verified by an experienced gastroenterologist. Licence: free for "
        "research and education, commercial use needs the owners' permission: these weights inherit that. "
        'Cite: D. Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020. Split: '
        "`train/splits/kvasir-seg.json`, 718 train / 90 validation / 90 test images (fixed seed); training "
        "used the train part, the checkpoint and sampling defaults were chosen on validation only."
    ),
    "ph2": (
        "PH2 (Universidade do Porto, Hospital Pedro Hispano): dermoscopy images (RGB, half the original "
        "resolution, about 383x283) with lesion outlines by expert dermatologists. Licence: free for research "
        "and benchmarking with citation; research only, and so are these weights. Cite: T. Mendonca et al., "
        '"PH2 - A dermoscopic image database for research and benchmarking", EMBC 2013. Split: '
        "`train/splits/ph2.json`, 110 train / 20 validation / 20 test images (fixed seed)."
    ),
    "acdc": (
        "ACDC (Creatis, Universite de Lyon): cardiac cine-MRI, end-diastole and end-systole frames, manual "
        "labels 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity; the SSL4MIS copy (intensities scaled per "
        "volume, voxel spacing lost: HD95 is in pixels). Licence: research use, non-commercial: these weights "
        'too. Cite: O. Bernard et al., "Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures '
        'Segmentation and Diagnosis: Is the Problem Solved?", IEEE TMI 37(11), 2018. Split (by patient, '
        "`train/splits/acdc.json`): 60 train / 10 validation patients carved out of ACDC's `train` part, and "
        "its 10 `val` patients as the test part (120 / 20 / 20 volumes)."
    ),
}
# what a dataset's numbers do not say, in the card's data section (models trained on a single scan or
# on a copy too small for a test part)
CAVEATS = {
    "brats": (
        "**A small test part.** Two BraTS 2018 patients are the test part; the four validation patients (two of "
        "each copy) chose the checkpoint and the sampling defaults. Two patients cannot say how the model does "
        "across sites and tumour grades: the low-grade gliomas (TCIA10) are the hardest in this copy, and none is "
        "among the test patients."
    ),
    "brats2015": (
        "**No test part.** The four-patient copy used here gives two training and two validation patients; "
        "the validation patients also chose the sampling defaults, so every number below is a validation "
        "result, not a test result. On two further BraTS 2015 patients kept outside this project the model "
        "scored whole-tumour Dice 0.76-0.80, with oedema over-segmented and false positives far from the "
        "tumour (WT HD95 34-73 mm): expect that on new brain scans."
    ),
    "abdomen-ct": (
        "**It does not generalise.** One training CT cannot teach a model what other patients, scanners and "
        "contrast phases look like. The previous version of this model (the body crop fitted to the grid, "
        "milder intensity shifts), tried on an unseen contrast-enhanced abdominal CT (0.73 mm pixels, manual "
        "liver labels), found almost no liver (Dice 0.00); this version has not been tried on that scan. It "
        "resamples every scan to 4 mm per pixel and was trained with contrast-like intensity shifts: on the "
        "held-out slices with the soft tissue made 80 HU brighter, as contrast does, it keeps a mean organ "
        "Dice of 0.686 (liver 0.818) where the previous version fell to 0.569 (liver 0.602), and resampled to"
        " 0.73 mm pixels it keeps 0.704 (`python -m train.studies ct-scale`, `docs/studies/ct_scale.md`). "
        "That is a simulation on the training patient, not evidence about other patients: use the model to "
        "see the pipeline work on CT, not to segment your own CTs."
    ),
}
# the card's licence field: every shipped model is derived from non-commercial or research-only data
LICENCES = {
    "brats2015": ("cc-by-nc-sa-3.0", None),
    "brats": ("cc-by-nc-sa-3.0", None),
    "abdomen-ct": ("cc-by-nc-sa-3.0", None),
    "kvasir-seg": ("other", "kvasir-seg-research-and-education-only"),
    "ph2": ("other", "ph2-research-only"),
    "acdc": ("other", "acdc-non-commercial-research"),
}
# the card's `anatomy:` (the demo's model picker shows it)
ANATOMY = {
    "brats2015": "brain tumour",
    "brats": "brain tumour",
    "abdomen-ct": "abdominal organs",
    "kvasir-seg": "colon polyps",
    "ph2": "skin lesions",
    "acdc": "heart",
}
# the card's `datasets` and the model-index's dataset: (id, name) of each training dataset
DATASETS = {
    "brats2015": ("brats2015", "BraTS 2015"),
    "brats": ("brats2018", "BraTS 2015 + 2018"),
    "abdomen-ct": ("totalsegmentator-example-ct", "TotalSegmentator example CT"),
    "kvasir-seg": ("kvasir-seg", "Kvasir-SEG"),
    "ph2": ("ph2", "PH2"),
    "acdc": ("acdc", "ACDC"),
}
# the split names of `train.evaluate --split` and of data folders, as the Hub's model-index spells them
SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
PUBLISHED = {
    "brats": "the top of the BraTS 2018 challenge (its validation set, 3D networks on all four MRI modalities, GPU): "
    "WT about 0.90-0.91, TC about 0.85-0.87, ET about 0.80-0.82 mean Dice per patient",
    "kvasir-seg": "mean Dice per image on Kvasir-SEG's usual 100-image test split: U-Net about 0.82, PraNet about "
    "0.90, Polyp-PVT (PVT-v2 with ImageNet weights, 352 px, GPU) about 0.92",
    "ph2": "no figure exists for this split; papers on PH2 use their own splits, and supervised CNNs are "
    "commonly reported at about 0.90 mean Dice per image or above",
    "acdc": "mean Dice over RV / MYO / LV per volume on this kind of split: fully supervised 2D U-Net about "
    "0.89-0.91, nnU-Net about 0.92",
}
NOT_FOR = (
    "Not for clinical use, diagnosis or treatment decisions; not validated on other scanners, sites, "
    "populations or image types than its training data; uncertainty maps are a qualitative aid, not calibrated "
    "probabilities of error."
)


def dataset_key(training: dict, cfg: dict) -> str:
    """Which dataset a weights folder was trained on: the last folder of its training data root; "brats" for
    a run on both BraTS copies (`data.sources`)."""
    sources = {
        str(s.get("root", "")).rstrip("/").rsplit("/", 1)[-1] for s in training.get("data", {}).get("sources") or []
    }
    if {"brats2015", "brats2018"} <= sources:
        return "brats"
    root = str(training.get("data", {}).get("root", "")).rstrip("/")
    name = root.rsplit("/", 1)[-1]
    if name in DATA_NOTES:
        return name
    parent = root.rsplit("/", 2)[-2] if root.count("/") >= 1 else ""
    if parent in DATA_NOTES:
        return parent
    return "brats2015" if cfg.get("modality") == "mri" else "abdomen-ct" if cfg.get("modality") == "ct" else ""


def report_split(report: dict) -> str:
    """Which split an evaluation report scored, read from its `data` record (`train.evaluate`).

    `--split PART` of a split file names it; a held-out block of one volume's slices is validation
    data; else the data folder's own name (".../validation") says it. `ValueError` when nothing does.
    """
    data = report.get("data", {})
    if data.get("split"):
        return SPLITS[data["split"]["part"]]
    if data.get("val_range_only"):
        return "validation"
    folder = Path(str(data.get("root", ""))).name.lower()
    if folder in SPLITS:
        return SPLITS[folder]
    raise ValueError(
        f"the evaluation of {data.get('root')!r} names no split; accepted: a report of `train.evaluate --split PART`, "
        f"of held-out slices, or of a folder named {', '.join(sorted(SPLITS))}"
    )


def _metric(kind: str, name: str, value: float) -> dict | None:
    return {"type": kind, "name": name, "value": round(float(value), 4)} if math.isfinite(value) else None


def report_metrics(report: dict) -> list[dict]:
    """The model-index metrics of an evaluation report: its mean Dice and IoU, per class and per BraTS region.

    Means over the report's cases, as the card's table's **mean** row; HD95 in mm.
    """
    mean, names = report["mean"], report["class_names"]
    found = [
        _metric("dice", "mean Dice (foreground classes)", mean["dice_mean"]["foreground"]),
        _metric("dice", "mean Dice (all classes, background included)", mean["dice_mean"]["all"]),
        _metric("mean_iou", "mean IoU (foreground classes)", mean["iou_mean"]["foreground"]),
    ]
    if len(names) > 2:  # one foreground class: its Dice is the foreground mean above
        found += [_metric("dice", f"Dice {n}", d) for n, d in zip(names[1:], mean["dice"][1:], strict=True)]
    for region in metrics.BRATS_REGIONS if "brats" in mean else ():
        found.append(_metric("dice", f"Dice {region}", mean["brats"][region]["dice"]))
        found.append(_metric("hd95", f"HD95 {region} (mm)", mean["brats"][region]["hd95"]))
    return [m for m in found if m is not None]


def model_index(name: str, key: str, report: dict) -> list[dict]:
    """The Hub's `model-index` for a model evaluated by `report` on dataset `key`."""
    dataset_id, dataset_name = DATASETS.get(key, (key or "unknown", key or "unknown"))
    return [
        {
            "name": name,
            "results": [
                {
                    "task": {"type": "image-segmentation", "name": "Image segmentation"},
                    "dataset": {"type": dataset_id, "name": dataset_name, "split": report_split(report)},
                    "metrics": report_metrics(report),
                }
            ],
        }
    ]


def metadata(name: str, key: str, report: dict | None) -> dict:
    """The card's front matter (the Hub's metadata): library, task, anatomy, licence, dataset, tags, results."""
    licence, licence_name = LICENCES.get(key, ("other", "see-the-data-section"))
    meta = {"library_name": "medconddiff", "pipeline_tag": "image-segmentation"}
    meta |= {"anatomy": ANATOMY[key]} if key in ANATOMY else {}
    meta |= {"license": licence} | ({"license_name": licence_name} if licence_name else {})
    meta |= {"datasets": [DATASETS[key][0]]} if key in DATASETS else {}
    meta["tags"] = TAGS
    if report is not None:
        meta["model-index"] = model_index(name, key, report)
    return meta


def model_card(weights_dir: Path, report: dict | None, *, notes: str = "") -> str:
    cfg = json.loads((weights_dir / "config.json").read_text())
    training = (
        json.loads((weights_dir / "training.json").read_text()) if (weights_dir / "training.json").is_file() else {}
    )
    key = dataset_key(training, cfg)
    front = yaml.safe_dump(metadata(weights_dir.name, key, report), sort_keys=False, allow_unicode=True, width=1000)
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        f"# MedCondDiff — {weights_dir.name}",
        "",
        "A MedCondDiff model (arXiv 2512.00350): a PVT-v2-B1 image encoder whose features are **added** to a "
        "denoising network for the segmentation mask; sampling records the predicted mask at every step and a "
        "consensus fuses them. Research demo weights: **not for clinical use**.",
        "",
        "## Model",
        f"- input: {cfg['image_channels']} channel(s) {cfg['channel_names']} ({cfg['modality']}), {cfg['image_size']} px"
        + (f" at {cfg['pixel_spacing']:g} mm per pixel" if cfg.get("pixel_spacing") else ""),
        f"- classes: {', '.join(f'{i} {n}' for i, n in enumerate(cfg['class_names']))}",
        f"- fusion: {cfg['fusion']}; sampling defaults: {cfg['default_steps']} steps {cfg['default_sampler']}, "
        f"consensus {cfg['default_consensus']}",
        f"- network: {cfg['backbone']} backbone, decoder width {cfg['width']}, per-step mask branch width "
        f"{cfg.get('denoiser_width', cfg['width'])} with its last convolutions at stride {cfg.get('head_stride', 1)}",
        "- weights: fp16 safetensors (upcast to fp32 on load); trained from scratch (no ImageNet initialisation)",
        "",
        "## Data and licence",
        DATA_NOTES.get(key, ""),
        *(["", CAVEATS[key]] if key in CAVEATS else []),
        "",
        "## Training",
    ]
    if training:
        lines += [
            f"- command: `{training['command']}`",
            f"- seed {training['seed']}, {training['steps']} steps, {training.get('world_size', 1)} process(es) on "
            f"{training.get('device', 'cpu')}, {training['wall_minutes']} min wall time",
            f"- {training['train_slices']} training slices, {training['val_slices']} validation slices",
        ]
        if "precision" in training:  # recorded since training resolves train.precision
            lines.append(
                f"- precision: {training['precision']} forward pass (weights, optimiser, loss and validation in fp32), "
                f"{training.get('threads', '?')} thread(s) per process"
            )
        best = training.get("best_validation")
        if best and best.get("step"):
            lines.append(f"- best validation foreground Dice {best['dice_fg_mean']:.3f} at step {best['step']}")
        if (weights_dir / "learning_curve.png").is_file():
            lines += ["", f"![{CURVE_ALT}](learning_curve.png)"]
    if notes:
        lines += ["", notes]
    lines += ["", "## Not for", NOT_FOR, "", "## Evaluation"]
    if report:
        where = report["data"]
        lines += [
            f"Whole images / volumes through the shared pipeline (`python -m train.evaluate`), settings {report['settings']}, "
            f"data `{where['root']}`"
            + (f", held-out slices {where['val_range_only']}" if where.get("val_range_only") else "")
            + (f", the **{where['split']['part']}** part of `{where['split']['file']}`" if where.get("split") else "")
            + ".",
            'Dice per case; HD95 in mm; "fg" averages the foreground classes, "all" includes background '
            "(the paper's apparent convention).",
            "",
            markdown_table(report),
        ]
        if key in PUBLISHED:
            lines += ["", f"Published, for comparison: {PUBLISHED[key]}."]
    else:
        lines.append("Not evaluated yet.")
    return "\n".join(lines) + "\n"


def kept_notes(card: str) -> str:
    """The free text of a card's Training section (what follows the facts' bullet list): kept when regenerating."""
    body = next((b for h, b in sections(card) if h == "Training"), "")
    facts = ("- ", f"![{CURVE_ALT}]")  # the bullet list and the learning curve are written from the run's files
    return "\n".join(line for line in body.splitlines() if not line.startswith(facts)).strip()


def write_card(weights_dir: str | Path, report_json: str | Path | None = None, *, notes: str | None = None) -> Path:
    """Write weights_dir/README.md from its config, training record and evaluation report.

    `report_json` defaults to the evaluation.json beside the weights (a new report is copied there);
    `notes` None keeps the Training notes of the card already there.
    """
    weights_dir = Path(weights_dir)
    card = weights_dir / "README.md"
    kept = weights_dir / REPORT_NAME
    report_json = Path(report_json) if report_json else (kept if kept.is_file() else None)
    report = json.loads(report_json.read_text()) if report_json else None
    if notes is None:
        notes = kept_notes(card.read_text(encoding="utf-8")) if card.is_file() else ""
    text = model_card(weights_dir, report, notes=notes)
    if report is not None and report_json.resolve() != kept.resolve():
        kept.write_text(json.dumps(report, indent=2))
    card.write_text(text, encoding="utf-8")
    return card


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.card", description="Write weights folders' model cards.")
    ap.add_argument("weights", nargs="+", help="weights folder(s); each card is regenerated in place")
    ap.add_argument("--report", help=f"evaluation JSON from train.evaluate (default: the folder's {REPORT_NAME})")
    ap.add_argument("--notes", default=None, help="Markdown for the Training section (default: the card's own)")
    a = ap.parse_args(argv)
    if a.report and len(a.weights) > 1:
        ap.error("--report belongs to one weights folder; give one folder with it")
    for folder in a.weights:
        print(write_card(folder, a.report, notes=a.notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
