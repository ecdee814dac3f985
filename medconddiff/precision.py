"""Numeric precision of the network: names, hardware support, and the autocast they mean.

    "fp32"  no autocast: the reference, what the regression fingerprints are pinned to
    "bf16"  torch.autocast(dtype=bfloat16): fast on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs
    "fp16"  torch.autocast(dtype=float16): for CUDA GPUs without bf16
    "auto"  bf16 on a CPU with native bf16 or on a CUDA GPU that supports it, fp16 on an older GPU,
            fp32 everywhere else

Only the network's forward pass runs in reduced precision; weights, optimiser state, sampling
state, losses and metrics stay float32. Training and sampling resolve "auto" through the same
function, so a run's log, `medconddiff info` and the app name the same choice on the same machine.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from .errors import SettingsError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = ("auto", *PRECISIONS)  # what a user may ask for


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the instructions that run bf16 natively


def proc_field(name: str, path: str = "/proc/cpuinfo") -> str | None:
    """The value of the first `name : value` line of a Linux /proc file (the first CPU's, for cpuinfo),
    or None where the file or the line is missing (not Linux)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(name):
                    return line.partition(":")[2].strip()
    except OSError:
        return None
    return None


def cpu_flags() -> set[str] | None:
    """This machine's CPU feature flags as Linux lists them (None off Linux)."""
    flags = proc_field("flags")
    return None if flags is None else set(flags.split())


def cpu_has_native_bf16() -> bool:
    """True where the CPU runs bf16 natively (AVX512-BF16 or AMX).

    oneDNN's own probe (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on any AVX-512 CPU,
    where it emulates bf16: measured on such a Xeon (no AVX512-BF16), a bf16 training step took 1.6x
    as long as fp32. So on Linux the CPU's flags decide; elsewhere oneDNN's answer is kept."""
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN's bf16 probe
        return False
    flags = cpu_flags()
    if flags is None:
        return onednn
    return onednn and any(flag in flags for flag in BF16_CPU_FLAGS)


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bf16 natively (CPU: AVX512-BF16 / AMX; CUDA: compute capability 8.0 and up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and cpu_has_native_bf16()


def check(precision: str) -> str:
    """The name itself, or a SettingsError listing the accepted ones."""
    if precision not in CHOICES:
        raise SettingsError(f"unknown precision {precision!r}; accepted: {', '.join(CHOICES)}")
    return precision


def resolve(precision: str, device: torch.device | str, *, warn: bool = True, allow_fp16: bool = True) -> str:
    """Resolve "auto" to the best precision for `device`; an explicit name is kept.

    Forcing bf16 where the hardware would emulate it still runs (bit-for-bit the same maths), with
    one warning that it will be slower than fp32; fp16 on a CPU likewise. `allow_fp16=False` (training):
    "auto" on a GPU without bf16 gives fp32.
    """
    check(precision)
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":  # fp16 only where it may be used (training would need loss scaling)
            return "bf16" if native_bf16(device) else "fp16" if allow_fp16 else "fp32"
        return "bf16" if native_bf16(device) else "fp32"
    if warn and device.type == "cpu" and precision != "fp32" and not (precision == "bf16" and native_bf16(device)):
        warnings.warn(
            f"precision {precision} on a CPU without native support is emulated and will be slower than fp32",
            stacklevel=2,
        )
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """A resolved precision name -> its autocast dtype (None for fp32)."""
    if precision == "auto":
        raise SettingsError("precision 'auto' must be resolved for a device first (precision.resolve)")
    check(precision)
    return PRECISIONS[precision]


def autocast(device: torch.device | str, precision: str):
    """The context manager for a resolved precision: torch.autocast, or nothing for fp32."""
    dtype = autocast_dtype(precision)
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
