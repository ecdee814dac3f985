"""What bench.py, ablate.py and load.py share: timing, peak memory, the machine record, JSON.

Timing on a shared machine drifts: a neighbour starts, the CPU clocks down. `interleaved` times
every arm once per round, in turn, so that drift hits all arms alike, and `median_ratio` compares
two arms round by round (the median of the per-round ratios), not as a ratio of two medians.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/NAME.py` from a checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from medconddiff.precision import cpu_has_native_bf16, proc_field  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call of `fn` (CUDA work included: synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    arms: dict[str, Callable[[], object]], *, rounds: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every arm: `warmup` untimed calls each, then `rounds` rounds timing each arm once."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            times[name].append(timed(fn, device))
    return times


def stats(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "samples": [round(t, 6) for t in times]}


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[i] / b[i]: what arm a costs relative to arm b, drift cancelled."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def extrapolate(seconds: float, done: int, total: int) -> float:
    """Seconds for `total` equal steps from `seconds` measured over `done` of them (linear)."""
    if done < 1:
        raise ValueError("at least one step must be timed")
    return seconds / done * total


def compare(times: dict[str, list[float]], before: str, after: str) -> dict:
    """An ablation's record: each arm's stats, which is before/after, and the speed-up (median of ratios)."""
    out: dict = {name: stats(t) for name, t in times.items()}
    out.update(before=before, after=after, speedup=median_ratio(times[before], times[after]))
    return out


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a `with` block, in `.result`.

    CPU: the resident set's high-water mark (VmHWM, reset on entry through /proc/self/clear_refs),
    else ru_maxrss, the peak of the whole process so far (said in `method`). CUDA: max_memory_allocated
    and max_memory_reserved, with the cache emptied and the peaks reset on entry.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._before = _status_kib("VmRSS") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
            self._method = "VmHWM (reset at the start of the run)"
        except OSError:
            self._method = "ru_maxrss (peak over the whole process, not just this run)"
        return self

    def __exit__(self, *exc: object) -> None:
        mb = 1024.0**2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result = {
                "max_memory_allocated_mb": torch.cuda.max_memory_allocated(self.device) / mb,
                "max_memory_reserved_mb": torch.cuda.max_memory_reserved(self.device) / mb,
            }
            return
        peak = _status_kib("VmHWM") if self._method.startswith("VmHWM") else None
        peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.result = {"peak_rss_mb": peak / 1024.0, "rss_before_mb": self._before / 1024.0, "method": self._method}


def _cpu_ticks() -> tuple[int, int] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # (all, idle + iowait)


def other_busy_cores(seconds: float = 1.0) -> float | None:
    """Cores that other processes kept busy over `seconds` while this one slept (Linux /proc/stat).

    The load average cannot tell: right after a run it still counts that run's threads. This
    process's own CPU time in the window (OpenMP threads spin on a while) is taken out.
    """
    before, own0, wall0 = _cpu_ticks(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    after, own, wall = _cpu_ticks(), time.process_time() - own0, time.perf_counter() - wall0
    if before is None or after is None or after[0] == before[0]:
        return None
    busy = (1 - (after[1] - before[1]) / (after[0] - before[0])) * (os.cpu_count() or 1) - own / wall
    return round(max(0.0, busy), 2)


def busy_note(info: dict) -> str | None:
    """A warning when other work kept more than a quarter of the cores busy as the run started."""
    busy, cores = info.get("other_busy_cores_at_start"), info.get("cores_available") or 1
    if busy is None or busy <= 0.25 * cores:
        return None
    return (
        f"the machine was busy (other processes kept {busy:.1f} of {cores} cores busy at the start): "
        "the times are inflated; take the final figures on an idle machine"
    )


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def machine(device: torch.device) -> dict:
    """What the figures were taken on: CPU, cores, threads, torch, commit, load and busy cores at the start."""
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": cpu_has_native_bf16(),
        "cuda_available": torch.cuda.is_available(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        info["commit"] = commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except OSError:
        info["commit"] = None
    if cpu := proc_field("model name"):
        info["cpu"] = cpu
    if memory := proc_field("MemTotal", "/proc/meminfo"):
        info["memory_total_mb"] = int(memory.split()[0]) // 1024
    if device.type == "cuda":
        info["gpu"], info["cuda"] = torch.cuda.get_device_name(device), torch.version.cuda
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["other_busy_cores_at_start"] = other_busy_cores()
    return info


def finish(info: dict, notes: list[str]) -> None:
    """Close a machine record at the end of a run: the load average then, and the busy-machine note."""
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    note = busy_note(info)
    if note:
        notes.append(note)


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
