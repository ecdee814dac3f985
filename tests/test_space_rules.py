"""The repository works as a Hugging Face Space on its first push: checked from the files themselves.

Front matter (README.md) parsed, the Gradio it names is the one requirements.txt allows, a Python the
Space offers, torch >= 2.8; weights over 10 MB go through Git LFS; `import spaces` comes before
torch; every function that samples is a ZeroGPU entry point; nothing touches CUDA at import time.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
SPACE_PYTHONS = {"3.10", "3.12"}
LFS_LIMIT = 10 * 1024 * 1024  # Hugging Face refuses plain files above this
SAMPLING = {"iter_segment_slices", "segment_slices", "segment_volume", "segment_image", "sample_loop"}
TORCH_IMPORTERS = {"torch", "timm", "torchvision", "medconddiff", "demo_server"}


def _front_matter() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.match(r"\A---\n(.*?)\n---\n", text, flags=re.S)
    assert found, "README.md must start with the Space's YAML front matter between --- lines"
    return yaml.safe_load(found.group(1))


def _requirements() -> dict[str, Requirement]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs}


def test_front_matter_names_sdk_version_python_and_app():
    meta = _front_matter()
    assert meta["sdk"] == "gradio" and (REPO / meta["app_file"]).is_file()
    assert str(meta["python_version"]) in SPACE_PYTHONS, meta.get("python_version")
    sdk = Version(str(meta["sdk_version"]))
    assert sdk.major == 6
    assert sdk in _requirements()["gradio"].specifier, "sdk_version must be a Gradio that requirements.txt allows"
    assert len(meta.get("short_description", "")) <= 60  # the Hub's limit


def test_requirements_resolve_with_a_recent_torch():
    reqs = _requirements()
    torch_spec = reqs["torch"].specifier
    assert Version("2.8.0") in torch_spec and Version("2.7.1") not in torch_spec
    assert "spaces" in reqs and "gradio" in reqs
    for name, req in reqs.items():  # no pin that rules out either Space Python
        assert req.marker is None or all(req.marker.evaluate({"python_version": v}) for v in SPACE_PYTHONS), name


def _lfs_patterns() -> list[str]:
    path = REPO / ".gitattributes"
    assert path.is_file(), ".gitattributes is missing: weights must be stored with Git LFS"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            out.append(parts[0])
    return out


def test_weights_and_large_files_are_lfs_tracked():
    patterns = _lfs_patterns()
    assert "*.safetensors" in patterns
    try:
        tracked = (
            subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [REPO / p for p in tracked if p]
    paths += list((REPO / "assets" / "weights").rglob("*.safetensors"))  # also weights not committed yet
    large = {p for p in paths if p.is_file() and p.stat().st_size > LFS_LIMIT}
    assert large, "expected the bundled weights to be larger than 10 MB"
    for p in large:
        rel = p.relative_to(REPO).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in patterns), rel


def _module(name: str) -> ast.Module:
    return ast.parse((REPO / name).read_text(encoding="utf-8"))


def _imported(node: ast.stmt) -> list[str]:
    """Top-level module names an import statement (or a try: block of imports) brings in."""
    if isinstance(node, ast.Try):
        return [m for sub in node.body for m in _imported(sub)]
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module.split(".")[0]]
    return []


@pytest.mark.parametrize("name", ["app.py", "demo_server.py"])
def test_spaces_is_imported_before_torch(name):
    order = [m for node in _module(name).body for m in _imported(node)]
    assert "spaces" in order, f"{name} must import spaces (ZeroGPU patches torch when it is imported first)"
    first_torch = next(i for i, m in enumerate(order) if m in TORCH_IMPORTERS)
    assert order.index("spaces") < first_torch, order


def _calls(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


def _is_gpu(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    text = ast.unparse(target)
    return text in ("server.gpu", "gpu", "spaces.GPU")


def test_every_function_that_samples_is_a_gpu_entry_point():
    functions = [n for n in _module("app.py").body if isinstance(n, ast.FunctionDef)]
    sampling = [f for f in functions if _calls(f) & SAMPLING]
    assert {f.name for f in sampling} >= {"run_segment", "run_volume", "segment_api"}
    for f in sampling:
        assert any(_is_gpu(d) for d in f.decorator_list), f"{f.name} samples but is not decorated with server.gpu"


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements run at import time: everything but function and class bodies (decorators included)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out += node.decorator_list
        else:
            out.append(node)
    return out


@pytest.mark.parametrize("name", ["app.py", "demo_server.py"])
def test_no_cuda_call_in_import_time_code(name):
    for node in _module_level(_module(name)):
        text = ast.unparse(node)
        assert "cuda" not in text.lower(), f"{name} touches CUDA at import time: {text[:120]}"
        assert not {"resolve_device", "load_folder", "get_model", "_load"} & _calls(node), text[:120]


def test_importing_the_app_makes_no_cuda_call(tmp_path):
    """Import app.py with every CUDA entry point made to fail: the import must not reach any of them."""
    probe = (
        "import torch\n"
        "def boom(*a, **k):\n"
        "    raise SystemExit('CUDA touched at import time')\n"
        "torch.cuda.is_available = boom\n"
        "torch.cuda.init = boom\n"
        "torch.cuda.device_count = boom\n"
        "import app\n"
        "print('imported', type(app.demo).__name__)\n"
    )
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "g"), TMPDIR=str(tmp_path), MPLBACKEND="Agg")
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "imported Blocks" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
