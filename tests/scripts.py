"""The benchmark scripts as modules for the tests (benchmarks/ holds scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # the scripts import their shared `harness` as a top-level module
    sys.path.insert(0, str(BENCHMARKS))


def benchmark_script(name: str):
    """benchmarks/NAME.py, imported once per test session as module `medconddiff_NAME`."""
    module_name = f"medconddiff_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
