"""Weights from a Hub repo id, against a local stand-in for the Hub (tests/hubserver.py) on 127.0.0.1.

Each case runs the real command line in a subprocess with HF_ENDPOINT pointed at the local server
and a fresh HF_HOME, so huggingface_hub reads its settings the way a user's shell sets them.
Nothing leaves the machine: every request goes to 127.0.0.1, and the count is bounded.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hubserver import HubServer
from PIL import Image

from medconddiff.errors import WeightsError
from medconddiff.hub import load_folder, resolve

REPO = Path(__file__).resolve().parent.parent
MAX_REQUESTS_PER_RUN = 8  # two files, HEAD + GET each, the card's HEAD, with room for a retry


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medconddiff", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line `error: ...` on stderr holding every fragment, and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)


class Unpickled:
    """Pickles to a call that creates `marker` when (and only when) something unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """A second, different tiny model (3 classes, concat fusion): tells revisions apart."""
    import torch

    from medconddiff.config import MedCondDiffConfig
    from medconddiff.hub import save_model
    from medconddiff.model import MedCondDiff

    torch.manual_seed(1)
    cfg = MedCondDiffConfig(
        image_size=64, num_classes=3, class_names=["background", "a", "b"], fusion="concat", width=64
    )
    return save_model(MedCondDiff(cfg).eval(), tmp_path_factory.mktemp("other") / "other")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> list[Path]:
    """A FLAIR + T1c pair of 8-bit PNG slices (48x40) with some structure in them."""
    d = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("flair", "t1c"):
        img = np.zeros((48, 40), np.uint8)
        img[8:40, 6:34] = rng.integers(30, 250, (32, 28))
        Image.fromarray(img).save(d / f"{name}.png")
        paths.append(d / f"{name}.png")
    return paths


def classes_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("classes:"))


def test_repo_id_downloads_and_segments_like_the_local_folder(hub, tiny_weights, pair, tmp_path):
    commit = hub.add_folder("lab/tiny", tiny_weights)
    env = hub.env(tmp_path / "hf")
    common = [*map(str, pair), "--steps", "2", "--seed", "3", "--quiet"]
    r_hub = run_cli("segment", *common, "-o", str(tmp_path / "hub.png"), "--weights", "lab/tiny", env=env)
    assert r_hub.returncode == 0, r_hub.stderr
    r_dir = run_cli("segment", *common, "-o", str(tmp_path / "dir.png"), "--weights", str(tiny_weights), env=env)
    assert r_dir.returncode == 0, r_dir.stderr
    a, b = np.asarray(Image.open(tmp_path / "hub.png")), np.asarray(Image.open(tmp_path / "dir.png"))
    assert a.shape == (48, 40)
    np.testing.assert_array_equal(a, b)
    cached = list((tmp_path / "hf" / "hub" / "models--lab--tiny" / "snapshots").glob("*/model.safetensors"))
    assert len(cached) == 1
    assert {p for _, p in hub.requests} == {
        "/lab/tiny/resolve/main/config.json",
        "/lab/tiny/resolve/main/model.safetensors",
        f"/lab/tiny/resolve/{commit}/README.md",  # the model card at the same commit (this repo has none)
    }
    assert len(hub.requests) <= MAX_REQUESTS_PER_RUN


def test_revision_pins_a_tag_or_a_commit(hub, tiny_weights, other_weights, tmp_path):
    main = hub.add_folder("lab/tiny", tiny_weights)
    v1 = hub.add_folder("lab/tiny", other_weights, revision="v1.0")  # a dotted tag must not look like a file name
    env = hub.env(tmp_path / "hf")
    for spec, classes in (("lab/tiny", 5), ("lab/tiny@v1.0", 3), (f"lab/tiny@{v1}", 3), (f"lab/tiny@{main}", 5)):
        r = run_cli("info", "--weights", spec, env=env)
        assert r.returncode == 0, (spec, r.stderr)
        assert classes_line(r.stdout).startswith(f"classes:    {classes} "), (spec, r.stdout)


def test_dotted_repo_name_is_a_repo_id(hub, tiny_weights, tmp_path):
    hub.add_folder("lab/tiny-1.5", tiny_weights)
    r = run_cli("info", "--weights", "lab/tiny-1.5", env=hub.env(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert "classes:    5 " in r.stdout


def test_unknown_repo(hub, tmp_path):
    r = run_cli("info", "--weights", "lab/does-not-exist", env=hub.env(tmp_path / "hf"))
    assert_clean_error(r, "lab/does-not-exist", "not found")
    assert len(hub.requests) <= MAX_REQUESTS_PER_RUN


def test_unknown_revision(hub, tiny_weights, tmp_path):
    hub.add_folder("lab/tiny", tiny_weights)
    r = run_cli("info", "--weights", "lab/tiny@v9", env=hub.env(tmp_path / "hf"))
    assert_clean_error(r, "lab/tiny", "revision 'v9' does not exist")


def test_repo_with_only_pickled_weights_is_refused_and_never_unpickled(hub, tiny_weights, tmp_path):
    marker = tmp_path / "UNPICKLED"
    hub.add_repo(
        "lab/pickled",
        {"config.json": tiny_weights / "config.json", "pytorch_model.bin": pickle.dumps(Unpickled(marker))},
    )
    r = run_cli("info", "--weights", "lab/pickled", env=hub.env(tmp_path / "hf"))
    assert_clean_error(r, "lab/pickled", "no model.safetensors", "pickled")
    assert not marker.exists()
    assert not any("pytorch_model.bin" in p for _, p in hub.requests)  # not even downloaded


def test_repo_whose_safetensors_is_a_pickle_is_refused(hub, tiny_weights, tmp_path):
    marker = tmp_path / "UNPICKLED"
    hub.add_repo(
        "lab/disguised",
        {"config.json": tiny_weights / "config.json", "model.safetensors": pickle.dumps(Unpickled(marker))},
    )
    r = run_cli("info", "--weights", "lab/disguised", env=hub.env(tmp_path / "hf"))
    assert_clean_error(r, "model.safetensors", "not a valid safetensors file")
    assert not marker.exists()


def test_offline_loads_from_the_prefilled_cache_without_traffic(hub, tiny_weights, tmp_path):
    hub.add_folder("lab/tiny", tiny_weights)
    online = run_cli("info", "--weights", "lab/tiny", env=hub.env(tmp_path / "hf"))
    assert online.returncode == 0, online.stderr
    seen = len(hub.requests)
    offline = run_cli("info", "--weights", "lab/tiny", env=hub.env(tmp_path / "hf", offline=True))
    assert offline.returncode == 0, offline.stderr
    assert len(hub.requests) == seen  # not one request while offline
    assert classes_line(offline.stdout) == classes_line(online.stdout)


def test_offline_without_cache_names_the_repo_and_the_fix(hub, tmp_path):
    r = run_cli("info", "--weights", "lab/tiny@v2", env=hub.env(tmp_path / "empty-hf", offline=True))
    assert_clean_error(r, "lab/tiny@v2", "no cached copy", "hf download lab/tiny", "--weights")
    assert hub.requests == []


def test_unreachable_hub_without_cache(tmp_path):
    with HubServer() as gone:
        env = gone.env(tmp_path / "hf")  # the address of a server that is then shut down
    r = run_cli("info", "--weights", "lab/tiny", env=env, timeout=90)
    assert_clean_error(r, "cannot reach the Hugging Face Hub", "lab/tiny")


def test_local_folder_with_only_a_pickle_is_refused(tiny_weights, tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_weights / "config.json").read_bytes())
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Unpickled(marker)))
    with pytest.raises(WeightsError, match=r"model\.safetensors not found .*pytorch_model\.bin: pickled weights"):
        load_folder(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("not a repo id", "not a Hub repo id"),
        ("lab/tiny/extra", "not a Hub repo id"),
        ("./missing-folder", "no such weights folder"),
        ("lab/model.safetensors", "no such weights folder"),
    ],
)
def test_specs_that_are_neither_folder_nor_repo_id_make_no_request(spec, fragment, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"{spec!r} reached the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(WeightsError, match=fragment):
        resolve(spec)


# -- bundled names, from any working directory ---------------------------------------------------------------


def test_bundled_names_resolve_from_any_folder_and_the_weights_dir_env_comes_first(tmp_path, tiny_weights, monkeypatch):
    from medconddiff import hub

    monkeypatch.chdir(tmp_path)  # no assets/ here
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    if "brats-demo" in hub.bundled_models():
        assert resolve("brats-demo") == hub.WEIGHTS_DIR / "brats-demo"
    mine = tmp_path / "my-models"
    mine.mkdir()
    (mine / "brats-demo").symlink_to(tiny_weights, target_is_directory=True)
    (mine / "lab-model").symlink_to(tiny_weights, target_is_directory=True)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(mine))
    assert resolve("brats-demo") == mine / "brats-demo"  # searched first
    assert resolve("lab-model") == mine / "lab-model"
    assert "lab-model" in hub.bundled_models()


def test_an_unknown_name_says_where_it_looked(tmp_path, monkeypatch):
    from medconddiff import hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / "mine"))
    with pytest.raises(WeightsError) as info:
        resolve("no-such-model")
    message = str(info.value)
    for where in (tmp_path / "mine", hub.WEIGHTS_DIR, hub.INSTALLED_WEIGHTS_DIR):
        assert str(where) in message
    assert hub.WEIGHTS_DIR_ENV in message and "\n" not in message
