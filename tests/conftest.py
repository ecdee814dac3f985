"""Shared fixtures. Tests run offline: the environment below keeps Gradio and the Hub quiet."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
_tmp = Path(tempfile.mkdtemp(prefix="medconddiff-tests-"))
os.environ.setdefault("GRADIO_TEMP_DIR", str(_tmp / "gradio"))
os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(_tmp / "examples-cache"))

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
EXAMPLES = REPO / "assets" / "examples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: a fresh clone without it still passes the rest of the suite."""
    if not (SHARED_DATA / "brats2015").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see README: Data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised full-architecture model at 64 px (fast on the CPU)."""
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.model import MedCondDiff

    torch.manual_seed(0)
    return MedCondDiff(MedCondDiffConfig(image_size=64)).eval()


@pytest.fixture(scope="session")
def tiny_weights(tiny_model, tmp_path_factory) -> Path:
    """A weights folder (config.json + model.safetensors) holding `tiny_model`."""
    from medconddiff.hub import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("weights") / "tiny")


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """ONE `app.py` server for the whole test session (the API, safety, bad-input and browser tests share it).

    It serves the bundled weights (the default model: brats-demo) with custom weights off, as a
    public server would: only the offered models load. It runs in its own process group on
    127.0.0.1 with its own temp folders (benchmarks/load.py's AppServer) and is stopped with SIGTERM.
    """
    from scripts import benchmark_script

    load = benchmark_script("load")
    server = load.AppServer(tmp_path_factory.mktemp("app-server"), env={"MEDCONDDIFF_CUSTOM_WEIGHTS": "off"})
    server.start()
    yield server
    server.stop()
