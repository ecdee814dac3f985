"""`medconddiff.precision`: what "auto" resolves to on each kind of hardware, and the errors and warnings."""

from __future__ import annotations

import warnings

import pytest
import torch

from medconddiff import precision as P
from medconddiff.errors import SettingsError


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch, native):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    assert P.resolve("auto", "cpu") == ("bf16" if native else "fp32")
    assert P.resolve("fp32", "cpu") == "fp32"


def test_auto_on_cuda_is_bf16_or_fp16_and_never_fp16_for_training(monkeypatch):
    monkeypatch.setattr(P, "native_bf16", lambda device: False)
    assert P.resolve("auto", torch.device("cuda")) == "fp16"
    assert P.resolve("auto", torch.device("cuda"), allow_fp16=False) == "fp32"
    monkeypatch.setattr(P, "native_bf16", lambda device: True)
    assert P.resolve("auto", torch.device("cuda"), allow_fp16=False) == "bf16"


def test_forcing_bf16_without_native_support_runs_with_one_warning(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated and will be slower"):
        assert P.resolve("bf16", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve("bf16", "cpu") == "bf16"  # native: no warning


def test_unknown_and_unresolved_precisions_are_clear_errors():
    with pytest.raises(SettingsError, match="unknown precision 'fp8'; accepted: auto, fp32, bf16, fp16"):
        P.resolve("fp8", "cpu")
    with pytest.raises(SettingsError, match="must be resolved"):
        P.autocast_dtype("auto")
    assert P.autocast_dtype("fp32") is None and P.autocast_dtype("bf16") is torch.bfloat16


def test_the_autocast_context_runs_the_matmul_in_the_named_dtype():
    a = torch.randn(4, 4)
    with P.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with P.autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
