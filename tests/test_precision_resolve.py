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


@pytest.mark.parametrize(
    ("flags", "onednn", "native"),
    [
        ("fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni", True, False),  # AVX-512 without bf16: emulated
        ("fpu sse2 avx512f avx512bw avx512_bf16", True, True),
        ("fpu sse2 avx512f amx_tile amx_bf16 amx_int8", True, True),
        ("fpu sse2 avx512f avx512_bf16", False, False),  # a torch build whose oneDNN cannot run bf16
    ],
)
def test_native_bf16_needs_the_cpu_flag_not_only_onednn(monkeypatch, tmp_path, flags, onednn, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(P, "proc_field", lambda name, path=str(cpuinfo), read=P.proc_field: read(name, path))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert P.cpu_has_native_bf16() is native
    assert P.resolve("auto", "cpu", warn=False) == ("bf16" if native else "fp32")


def test_without_readable_cpu_flags_onednn_decides(monkeypatch, tmp_path):
    assert P.proc_field("flags", str(tmp_path / "no-such-file")) is None
    monkeypatch.setattr(P, "cpu_flags", lambda: None)
    for onednn in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda onednn=onednn: onednn)
        assert P.cpu_has_native_bf16() is onednn
