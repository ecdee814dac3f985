"""The model card (README.md of a weights folder): data, licence, training command, evaluation table."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import markdown_table

DATA_NOTES = {
    "mri": (
        "BraTS 2015 training cases (brain tumour MRI, FLAIR + T1c, manual labels 0 background, 1 necrosis, "
        "2 oedema, 3 non-enhancing tumour, 4 enhancing tumour), as prepared for the DeepMedic examples. "
        "Licence: CC BY-NC-SA 3.0 CH (non-commercial, share-alike, attribution). Cite: B. H. Menze et al., "
        '"The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", IEEE TMI 34(10), 2015.'
    ),
    "ct": (
        "One abdominal/pelvic CT (3 mm) from the example files of the TotalSegmentator project. Its organ labels "
        "were produced by the TotalSegmentator model, not drawn by hand, and were mapped to AbdomenCT-1K's "
        "organs (liver, kidney, spleen, pancreas). With a single patient, validation uses a held-out block of "
        "slices of the same patient: the numbers show the pipeline works, not that the model generalises."
    ),
}


def model_card(weights_dir: Path, report: dict | None, *, notes: str = "") -> str:
    cfg = json.loads((weights_dir / "config.json").read_text())
    training = (
        json.loads((weights_dir / "training.json").read_text()) if (weights_dir / "training.json").is_file() else {}
    )
    lines = [
        "---",
        "library_name: medconddiff",
        "license: cc-by-nc-sa-3.0",
        "tags: [medical-imaging, segmentation, diffusion, pytorch_model_hub_mixin]",
        "---",
        f"# MedCondDiff — {weights_dir.name}",
        "",
        "A MedCondDiff model (arXiv 2512.00350): a PVT-v2-B1 image encoder whose features are **added** to a "
        "denoising network for the segmentation mask; sampling records the predicted mask at every step and a "
        "consensus fuses them. Research demo weights: **not for clinical use**.",
        "",
        "## Model",
        f"- input: {cfg['image_channels']} channel(s) {cfg['channel_names']} ({cfg['modality']}), {cfg['image_size']} px",
        f"- classes: {', '.join(f'{i} {n}' for i, n in enumerate(cfg['class_names']))}",
        f"- fusion: {cfg['fusion']}; sampling defaults: {cfg['default_steps']} steps {cfg['default_sampler']}, "
        f"consensus {cfg['default_consensus']}",
        f"- network: {cfg['backbone']} backbone, decoder width {cfg['width']}, per-step mask branch width "
        f"{cfg.get('denoiser_width', cfg['width'])} with its last convolutions at stride {cfg.get('head_stride', 1)}",
        "- weights: fp16 safetensors (upcast to fp32 on load); trained from scratch (no ImageNet initialisation)",
        "",
        "## Data and licence",
        DATA_NOTES.get(cfg["modality"], ""),
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
    if notes:
        lines += ["", notes]
    lines += ["", "## Evaluation"]
    if report:
        where = report["data"]
        lines += [
            f"Whole volumes through the shared pipeline (`python -m train.evaluate`), settings {report['settings']}, "
            f"data `{where['root']}`"
            + (f", held-out slices {where['val_range_only']}" if where.get("val_range_only") else "")
            + ".",
            'Dice per case; HD95 in mm; "fg" averages the foreground classes, "all" includes background '
            "(the paper's apparent convention).",
            "",
            markdown_table(report),
        ]
    else:
        lines.append("Not evaluated yet.")
    return "\n".join(lines) + "\n"


def write_card(weights_dir: str | Path, report_json: str | Path | None = None, *, notes: str = "") -> Path:
    weights_dir = Path(weights_dir)
    report = json.loads(Path(report_json).read_text()) if report_json else None
    (weights_dir / "README.md").write_text(model_card(weights_dir, report, notes=notes), encoding="utf-8")
    if report is not None:
        (weights_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    return weights_dir / "README.md"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.card", description="Write a weights folder's model card.")
    ap.add_argument("weights")
    ap.add_argument("--report", help="evaluation JSON from train.evaluate")
    ap.add_argument("--notes", default="", help="extra Markdown for the Training section")
    a = ap.parse_args()
    print(write_card(a.weights, a.report, notes=a.notes))
