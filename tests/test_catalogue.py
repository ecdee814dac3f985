"""The models catalogue (assets/models.toml) and where an offered model's weights come from.

The shipped catalogue is held to the shipped models, their examples and their configs; a malformed
catalogue is refused with a message saying what is accepted; MEDCONDDIFF_WEIGHTS_SOURCE picks the
bundled folder or the Hub; and with neither a bundled folder nor a cached copy, offline, the command
line exits with 2 and one line naming the repo, the revision and the `hf download` command. The
publishing round trip against the local Hub stand-in is in test_publish.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import HubServer

from medconddiff import catalogue, examples, hub
from medconddiff.config import MedCondDiffConfig
from medconddiff.errors import WeightsError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["brats-demo", "abdomen-ct-demo", "kvasir-demo", "ph2-demo", "acdc-demo"]  # DESIGN.md's shipped models
GHOST = (
    '[[models]]\nname = "ghost-demo"\nrepo = "lab/ghost"\nrevision = "v1.0"\nbundled = "ghost-demo"\npurpose = "x"\n'
)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medconddiff", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def assert_clean_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line `error: ...` on stderr holding every fragment, and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped catalogue ----------------------------------------------------------------------------------


def test_the_shipped_catalogue_offers_the_shipped_models_default_first():
    models = catalogue.load(catalogue.CATALOGUE_FILE)
    assert [m.name for m in models] == SHIPPED and models[0].name == hub.DEFAULT_WEIGHTS
    for m in models:
        assert m.repo == f"medconddiff/{m.name}" and m.bundled == m.name, m
        assert m.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", m.revision), m  # until published: main


def test_each_catalogued_example_is_a_gallery_example_of_its_model():
    found = {e.caption: e for e in examples.load_examples()}
    for m in catalogue.load():
        assert m.example in found, f"{m.name}: no example captioned {m.example!r} in examples.json"
        assert found[m.example].model == m.name, m.example


@pytest.mark.parametrize("name", SHIPPED)
def test_a_purpose_line_names_the_models_inputs_and_classes(name):
    """The picker's line comes from the catalogue: it must not drift from the model's own config."""
    model = catalogue.find(name)
    folder = hub.bundled_folder(model)
    if folder is None:
        pytest.skip(f"{name} is not bundled here")
    config = MedCondDiffConfig.from_json(folder / hub.CONFIG_NAME)
    assert f"input {', '.join(config.channel_names)}" in model.purpose
    assert f"finds {', '.join(config.class_names[1:])}" in model.purpose


def test_the_installed_package_carries_the_catalogue():
    from medconddiff.catalogue import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["medconddiff.assets"] == "assets"
    assert "models.toml" in setuptools["package-data"]["medconddiff.assets"]
    assert catalogue.INSTALLED_CATALOGUE_FILE == REPO / "medconddiff" / "assets" / "models.toml"


# -- reading a catalogue -------------------------------------------------------------------------------------


def test_a_catalogue_file_is_read_in_order_and_missing_means_none(tmp_path, monkeypatch):
    path = write(tmp_path, GHOST + '\n[[models]]\nname = "b"\nrepo = "o/b"\nrevision = "main"\npurpose = "y"\n')
    ghost, b = catalogue.load(path)
    assert (ghost.name, ghost.repo, ghost.revision, ghost.bundled, ghost.example) == (
        "ghost-demo", "lab/ghost", "v1.0", "ghost-demo", None,
    )  # fmt: skip
    assert b.bundled is None and b.download_command == "hf download o/b --revision main --local-dir DIR"
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(path))
    assert catalogue.names() == ["ghost-demo", "b"] and catalogue.path() == path
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(tmp_path / "none.toml"))
    assert catalogue.load() == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (GHOST + 'colour = "red"\n', "unknown field(s) colour; accepted fields: bundled, example, name"),
        ('[[models]]\nname = "a"\nrepo = "o/a"\npurpose = "x"\n', "missing revision"),
        (GHOST + GHOST, "ghost-demo catalogued more than once"),
        (GHOST.replace("lab/ghost", "not a repo"), "is not a Hub repo id; accepted: owner/name"),
        (GHOST.replace('bundled = "ghost-demo"', 'bundled = "../elsewhere"'), "not paths"),
        (GHOST.replace('"v1.0"', '""'), "revision must be non-empty text"),
        (GHOST.replace('"v1.0"', "3"), "revision must be non-empty text"),
        ("[[models]\nname = 1\n", "not a readable TOML catalogue"),
        ('default = "a"\n' + GHOST, "expected only [[models]] tables"),
    ],
)
def test_a_malformed_catalogue_says_what_is_accepted(tmp_path, text, fragment):
    with pytest.raises(WeightsError) as info:
        catalogue.load(write(tmp_path, text))
    assert fragment in str(info.value) and str(tmp_path / "models.toml") in str(info.value)


def test_an_unknown_weights_source_lists_the_accepted_ones(monkeypatch):
    monkeypatch.setenv(catalogue.SOURCE_ENV, "cloud")
    with pytest.raises(
        WeightsError, match=r"MEDCONDDIFF_WEIGHTS_SOURCE='cloud' is not a weights source; accepted: auto"
    ):
        catalogue.weights_source()
    message = str(pytest.raises(WeightsError, hub.resolve, "kvasir-demo").value)
    assert all(f"{s} (" in message for s in catalogue.SOURCES)
    monkeypatch.setenv(catalogue.SOURCE_ENV, " HUB ")
    assert catalogue.weights_source() == "hub"


# -- where an offered model comes from ------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """This process's Hub client offline, with an empty cache: only bundled folders can load."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return tmp_path


def test_a_bundled_folder_wins_in_auto_and_bundled_mode(tmp_path, tiny_weights, offline_hub, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ghost-demo").symlink_to(tiny_weights, target_is_directory=True)
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(write(tmp_path, GHOST)))
    for source in ("", "auto", "bundled"):
        monkeypatch.setenv(catalogue.SOURCE_ENV, source)
        assert hub.resolve("ghost-demo") == tmp_path / "mine" / "ghost-demo"
        assert hub.availability(catalogue.find("ghost-demo")).startswith("bundled (")
    monkeypatch.setenv(catalogue.SOURCE_ENV, "hub")  # the folder is there, but the Hub is asked (and is offline)
    with pytest.raises(
        WeightsError, match=r"ghost-demo: MEDCONDDIFF_WEIGHTS_SOURCE=hub, and cannot reach the Hugging Face Hub"
    ):
        hub.resolve("ghost-demo")
    assert hub.availability(catalogue.find("ghost-demo")) == "Hub lab/ghost@v1.0, downloaded when first used"


def test_bundled_mode_never_asks_the_hub(tmp_path, offline_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("bundled mode reached the Hub"))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(write(tmp_path, GHOST)))
    monkeypatch.setenv(catalogue.SOURCE_ENV, "bundled")
    with pytest.raises(WeightsError) as info:
        hub.resolve("ghost-demo")
    message = str(info.value)
    assert "ghost-demo: MEDCONDDIFF_WEIGHTS_SOURCE=bundled, but its folder 'ghost-demo' is in none of" in message
    assert "hf download lab/ghost --revision v1.0 --local-dir DIR" in message and "=auto" in message
    assert hub.availability(catalogue.find("ghost-demo")) == "not bundled here"


def test_offline_without_folder_or_cache_names_repo_revision_and_command(tmp_path, offline_hub, monkeypatch):
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(write(tmp_path, GHOST)))
    monkeypatch.delenv(catalogue.SOURCE_ENV, raising=False)
    with pytest.raises(WeightsError) as info:
        hub.resolve("ghost-demo")
    message = str(info.value)
    assert message.startswith("ghost-demo: not bundled here (no ghost-demo in ") and "\n" not in message
    assert "lab/ghost@v1.0 (HF_HUB_OFFLINE is set) and no cached copy exists" in message
    assert "`hf download lab/ghost --revision v1.0 --local-dir DIR`" in message


# -- the command line, as a user's shell runs it ----------------------------------------------------------------


def test_cli_offline_with_neither_folder_nor_cache_exits_2_with_the_download_command(tmp_path):
    with HubServer() as server:
        env = server.env(tmp_path / "empty-hf", offline=True) | {catalogue.SOURCE_ENV: "hub"}
        r = run_cli("info", "--weights", "kvasir-demo", env=env)
        assert_clean_error(
            r, "kvasir-demo:", "medconddiff/kvasir-demo@main", "hf download medconddiff/kvasir-demo --revision main"
        )
        listing = run_cli("info", env=env)  # the offered models are listed before the default fails to load
        assert_clean_error(listing, "brats-demo:", "hf download medconddiff/brats-demo --revision main")
        assert all(f"Hub medconddiff/{n}@main, downloaded when first used" in listing.stdout for n in SHIPPED)
        bad = run_cli("info", "--weights", "kvasir-demo", env=env | {catalogue.SOURCE_ENV: "somewhere"})
        assert_clean_error(bad, "MEDCONDDIFF_WEIGHTS_SOURCE='somewhere'", "auto (", "hub (", "bundled (")
        assert server.requests == []


def test_cli_lists_the_offered_models_and_where_each_loads_from(tmp_path):
    if hub.bundled_models() != sorted(SHIPPED):
        pytest.skip("the shipped weights are not all bundled here")
    with HubServer() as server:  # online, but every offered model is bundled: nothing is downloaded
        env = server.env(tmp_path / "hf")
        r = run_cli("info", env=env)
        assert r.returncode == 0, r.stderr
        assert f"offered models ({catalogue.CATALOGUE_FILE}; weights source: auto):" in r.stdout
        for m in catalogue.load():
            assert re.search(rf"^  {m.name} +{re.escape(m.purpose)}$", r.stdout, re.M), (m.name, r.stdout)
            assert f"bundled ({hub.WEIGHTS_DIR / m.name})" in r.stdout
        assert f"weights:    {hub.WEIGHTS_DIR / 'brats-demo'} (brats-demo, bundled)" in r.stdout
        assert server.requests == []
