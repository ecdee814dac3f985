"""Reading a weights folder's model card (README.md) and training record (training.json).

`train/card.py` writes these files; this module reads them back for people: what the model was
trained on, how it validated, the facts of its training run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PAPER_URL = "https://arxiv.org/abs/2512.00350"
METHOD = (
    f"MedCondDiff ([arXiv 2512.00350]({PAPER_URL})) segments medical images with a *conditional diffusion "
    "model*: the segmentation mask is what gets noised and denoised, the image is the condition. A PVT-v2 "
    "backbone encodes the image once; at every sampling step a light denoiser predicts the clean mask x0-hat "
    "from the noisy mask x_t and the image features (fused by addition). A *consensus* function fuses the "
    "predictions of all steps (and ensemble members) into the final mask; where they disagree is shown as "
    "uncertainty."
)
NOT_CLINICAL = (
    "This is a research demo. It is not a medical device, has not been clinically validated and must not "
    "be used for diagnosis or treatment. The shipped models were trained on a few cases only."
)
TRAINING_FACTS = ("steps", "train_slices", "val_slices", "wall_minutes", "device", "world_size")


@dataclass(frozen=True)
class ModelCard:
    text: str  # the card's Markdown ("" when the folder has none)
    training: dict  # training.json ({} when absent or unreadable)

    @property
    def sections(self) -> list[tuple[str, str]]:
        return sections(self.text)

    def trained_on(self) -> str | None:
        """The body of the first section about training or data, if any."""
        return next((b for h, b in self.sections if re.search(r"train|data", h, re.I)), None)

    def validation(self) -> str:
        """The card's validation / evaluation section(s), else its tables, else a 'not yet evaluated' note."""
        secs = self.sections
        picked = [(h, b) for h, b in secs if re.search(r"valid|evaluat|result|metric|score|benchmark", h, re.I)]
        picked = picked or [(h, b) for h, b in secs if re.search(r"^\s*\|.*\|\s*$", b, re.M)]
        if not picked:
            return "_Not yet evaluated: this model's card holds no validation numbers._"
        return "\n\n".join(f"#### {h}\n\n{b}" if h else b for h, b in picked)

    def training_facts(self) -> str | None:
        """'steps 1800, train slices 240, ...' from training.json, or None."""
        facts = ", ".join(f"{k.replace('_', ' ')} {self.training[k]}" for k in TRAINING_FACTS if k in self.training)
        return facts or None


def sections(markdown: str) -> list[tuple[str, str]]:
    """Markdown -> [(heading, body), ...] of the sections with a body; YAML front matter dropped."""
    text = re.sub(r"\A---\n.*?\n---\n", "", markdown, flags=re.S)
    out, heading, body = [], "", []
    for line in text.splitlines():
        if re.match(r"#{1,6}\s", line):
            out.append((heading, "\n".join(body).strip()))
            heading, body = line.lstrip("#").strip(), []
        else:
            body.append(line)
    out.append((heading, "\n".join(body).strip()))
    return [(h, b) for h, b in out if b]


def read_card(folder: str | Path) -> ModelCard:
    """A weights folder's README.md and training.json (either may be missing)."""
    folder = Path(folder)
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    try:
        training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        training = {}
    return ModelCard(text=text, training=training if isinstance(training, dict) else {})


def describe(name: str, folder: str | Path, config) -> str:
    """Markdown about one model: its weights, input and classes, what it was trained on, how it validated."""
    card = read_card(folder)
    parts = [
        f"Weights: `{name}` (folder `{Path(folder).name}`).",
        f"Input: {', '.join(config.channel_names)} ({config.modality.upper()}) at {config.image_size} px; "
        f"classes: {', '.join(config.class_names)}.",
    ]
    if card.trained_on():
        parts.append("**Trained on:** " + card.trained_on())
    if card.training_facts():
        parts.append(f"Training run: {card.training_facts()}.")
    return "\n\n".join([*parts, "### Validation", card.validation()])


def about_markdown(name: str, folder: str | Path, config, *, examples: str = "") -> str:
    """Markdown for people meeting a model: what MedCondDiff is, this model (`describe`), the caveats,
    and where the example data come from (`examples`, e.g. `medconddiff.examples.attribution()`)."""
    parts = ["### What MedCondDiff is", METHOD, "### This model", describe(name, folder, config)]
    parts += ["### Not for clinical use", NOT_CLINICAL]
    return "\n\n".join(parts + (["### Example data", examples] if examples else []))
