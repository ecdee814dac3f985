"""MedCondDiff: semantically guided diffusion for medical image segmentation (arXiv 2512.00350).

`import medconddiff` is light: torch and numpy only. Gradio and the training code live elsewhere.
"""

from .config import MedCondDiffConfig
from .errors import InputError, MedCondDiffError, SettingsError, WeightsError

__version__ = "0.1.0"

__all__ = ["MedCondDiffConfig", "MedCondDiffError", "InputError", "WeightsError", "SettingsError", "__version__"]
