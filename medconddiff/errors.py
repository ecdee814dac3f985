"""The exceptions the library raises for things a user can fix.

One small hierarchy: the command line turns any `MedCondDiffError` into exit code 2 and one
line of text, and the app into a `gr.Error`. Each message says what was wrong and what is
accepted. Programming errors (a bug in this package) stay ordinary exceptions.
"""

from __future__ import annotations


class MedCondDiffError(Exception):
    """Base class: something about the user's input, weights or settings is not usable."""


class InputError(MedCondDiffError, ValueError):
    """An image, volume or mask that cannot be read or does not fit the model."""


class WeightsError(MedCondDiffError):
    """A weights folder, Hub repo id or config.json that cannot be loaded."""


class SettingsError(MedCondDiffError, ValueError):
    """A sampling setting out of range (steps, ensemble size, consensus name, ...)."""


def one_line(err: BaseException) -> str:
    """An exception's text on one line (library messages such as huggingface_hub's span several)."""
    return " ".join(str(err).split())
