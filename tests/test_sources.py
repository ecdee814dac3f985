"""Several data folders as one dataset (`data.sources`), case-named files (`{case}`), BraTS 2018's split
file, and the BraTS regions of a model with the 2017+ classes (labels 1 and 3 merged)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medconddiff import metrics
from train import data as D


def _volume(path: Path, values: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)


@pytest.fixture()
def two_copies(tmp_path) -> dict:
    """A 2015-style copy (fixed file names, labels 0..4) and a 2018-style one ({case}_*.nii.gz, labels 0/1/2/4)."""
    rng = np.random.default_rng(0)
    old, new = tmp_path / "old", tmp_path / "new"
    for name in ("p1", "p2"):
        case = old / "train" / name
        case.mkdir(parents=True)
        for f in ("Flair.nii.gz", "T1c.nii.gz"):
            _volume(case / f, rng.normal(size=(8, 8, 3)).astype(np.float32))
        _volume(case / "labels.nii.gz", np.arange(5, dtype=np.int16).repeat(40)[:192].reshape(8, 8, 3))
    for name in ("B18_a", "B18_b", "B18_c"):
        case = new / name
        case.mkdir(parents=True)
        for f in ("flair", "t1ce"):
            _volume(case / f"{name}_{f}.nii.gz", rng.integers(0, 3000, (8, 8, 3)).astype(np.int16))
        _volume(case / f"{name}_seg.nii.gz", np.array([0, 1, 2, 4], np.int16).repeat(48).reshape(8, 8, 3))
    (new / "splits.json").write_text(json.dumps({"train": ["B18_a"], "validation": ["B18_b"], "test": ["B18_c"]}))
    sources = [
        {"root": str(old), "channel_files": ["Flair.nii.gz", "T1c.nii.gz"], "label_file": "labels.nii.gz",
         "label_map": {"1": 1, "2": 2, "3": 1, "4": 3}, "val_cases": ["p2"]},
        {"root": str(new), "channel_files": ["{case}_flair.nii.gz", "{case}_t1ce.nii.gz"],
         "label_file": "{case}_seg.nii.gz", "label_map": {"1": 1, "2": 2, "4": 3}, "split_file": str(new / "splits.json")},
    ]  # fmt: skip
    return {"settings": D.DataSettings(root="", layout="brats", sources=sources), "old": old, "new": new}


def test_sources_join_folders_each_with_its_own_files_labels_and_split(two_copies):
    data = two_copies["settings"]
    cases = D.find_cases(data.root, data)
    assert [c.name for c in cases] == ["B18_a", "B18_b", "B18_c", "p1", "p2"]
    b18 = cases[0]
    assert [p.name for p in b18.images] == ["B18_a_flair.nii.gz", "B18_a_t1ce.nii.gz"]
    train, val = D.split_cases(cases, data)
    assert [c.name for c in train] == ["p1", "B18_a"] and [c.name for c in val] == ["p2", "B18_b"]
    assert [c.name for c in D.split_cases(cases, data, part="test")] == ["B18_c"]
    # each folder's label map: 2015's labels 1 and 3 both become class 1, 4 becomes 3; 2018's 4 becomes 3
    assert set(np.unique(D.read_labels(cases[3], data))) == {0, 1, 2, 3}
    lab18 = D.read_labels(b18, data)
    assert set(np.unique(lab18)) == {0, 1, 2, 3} and (lab18 == 3).sum() == 48


def test_a_case_lacking_a_case_named_file_is_a_clear_error(two_copies):
    (two_copies["new"] / "B18_b" / "B18_b_t1ce.nii.gz").unlink()
    with pytest.raises(D.DataError, match="case B18_b lacks B18_b_t1ce.nii.gz"):
        D.find_cases("", two_copies["settings"])


def test_unknown_source_keys_and_duplicate_cases_are_refused(two_copies):
    data = two_copies["settings"]
    bad = D.DataSettings(root="", layout="brats", sources=[{**data.sources[0], "labelfile": "x"}])
    with pytest.raises(D.DataError, match=r"data.sources\[0\]: unknown key\(s\) \['labelfile'\]"):
        D.find_cases("", bad)
    twice = D.DataSettings(root="", layout="brats", sources=[data.sources[1], data.sources[1]])
    with pytest.raises(D.DataError, match="more than one folder"):
        D.find_cases("", twice)


def test_split_files_may_name_the_validation_part_validation(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"train": ["a"], "validation": ["b"], "test": []}))
    assert D.read_split(path)["val"] == ["b"]
    path.write_text(json.dumps({"train": ["a"], "test": []}))
    with pytest.raises(D.DataError, match="lacks a 'train', 'val' or 'test' list"):
        D.read_split(path)


def test_brats_regions_follow_the_models_classes():
    five = ["background", "necrosis", "oedema", "non-enhancing tumour", "enhancing tumour"]
    four = ["background", "necrotic / non-enhancing core", "oedema", "enhancing tumour"]
    assert metrics.regions_for(five) == metrics.BRATS_REGIONS
    assert metrics.regions_for(four) == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert metrics.regions_for(["background", "polyp"]) == {}
    truth = np.array([[0, 1, 2, 3]])
    pred = np.array([[0, 1, 2, 2]])  # the enhancing pixel called oedema: WT right, TC half, ET missed
    r = metrics.evaluate_case(pred, truth, 4, regions=metrics.regions_for(four))["brats"]
    assert r["WT"]["dice"] == 1.0 and r["TC"]["dice"] == pytest.approx(2 / 3) and r["ET"]["dice"] == 0.0


def test_the_combined_brats_config_finds_both_copies(shared_data):
    if not (shared_data / "brats2018").is_dir() or not (shared_data / "brats2015").is_dir():
        pytest.skip("brats2015 / brats2018 not in ../shared/data")
    from train.train import load_run_config

    data = load_run_config(Path(__file__).parent.parent / "train/configs/brats_demo.toml", []).data
    cases = D.find_cases(data.root, data)
    train, val = D.split_cases(cases, data)
    test = D.split_cases(cases, data, part="test")
    assert (len(cases), len(train), len(val)) == (18, 12, 4)
    assert [c.name for c in test] == ["Brats18_2013_3_1", "Brats18_CBICA_AME_1"]


def test_an_evaluation_of_one_source_names_that_folder_and_its_split_file(two_copies, tiny_model):
    """`train.evaluate --data NEW --split test` with a several-folder config: the report (and so the card)
    says the cases came from NEW's test part, not from the config's first folder."""
    from medconddiff.pipeline import SamplingSettings
    from train import card
    from train import evaluate as E

    picked = [s for s in two_copies["settings"].sources if s["root"] == str(two_copies["new"])]  # as --data NEW picks
    data = D.DataSettings(root="", layout="brats", sources=picked)
    report = E.evaluate(tiny_model, data, SamplingSettings(steps=1), split="test", progress=False)
    assert list(report["cases"]) == ["B18_c"]
    assert report["data"]["root"] == str(two_copies["new"])
    assert report["data"]["split"] == {"file": str(two_copies["new"] / "splits.json"), "part": "test"}
    assert card.report_split(report) == "test"


def test_evaluating_a_users_own_copy_uses_the_matching_folders_file_names(two_copies, tmp_path):
    """Weights trained on several folders (training.json's `sources`) evaluate a folder outside them that
    holds cases named as in one of them; a missing folder or one with no such cases is a clear error."""
    import argparse
    import dataclasses
    import shutil

    from train import evaluate as E

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "training.json").write_text(json.dumps({"data": dataclasses.asdict(two_copies["settings"])}))
    own = tmp_path / "mine"
    shutil.copytree(two_copies["new"] / "B18_c", own / "B18_c")

    def settings(folder):
        return E.data_settings(argparse.Namespace(config=None, data=str(folder)), weights, None)

    data = settings(own)
    assert [c.name for c in D.find_cases(data.root, data)] == ["B18_c"]
    assert set(np.unique(D.read_labels(D.find_cases(data.root, data)[0], data))) == {0, 1, 2, 3}  # 4 -> 3
    with pytest.raises(D.DataError, match="not found"):
        settings(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no labelled cases with the file names"):
        settings(tmp_path / "empty")
