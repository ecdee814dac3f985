"""The benchmark harness's maths, and each benchmark script run end to end at its smallest setting.

No timing thresholds: timings on shared machines are noise. The checks are on the maths (medians of
per-round ratios, extrapolation, interleaving), on the contract (keys, finite positive numbers, the
DDPM figure flagged and extrapolated as stated, targets judged as stated), on one behaviour (the
authors' structure, backbone every step, gives the same masks as ours through the public pipeline),
and on RESULTS.md holding exactly the tables its JSON renders to.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import benchmark_script

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
KEYS = ("default_seconds_256", "ratio_vs_backbone_every_step", "ratio_vs_ddpm1000", "ratio_ensemble4_vs_1")
harness = benchmark_script("harness")
report = benchmark_script("report")


# -- the harness ------------------------------------------------------------------------------------


def test_median_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    a, b = [2.0, 9.0, 3.0], [1.0, 3.0, 3.0]  # per round: 2, 3, 1 -> median 2; medians 3 / 3 = 1
    assert harness.median_ratio(a, b) == 2.0
    assert statistics.median(a) / statistics.median(b) == 1.0
    with pytest.raises(ValueError):
        harness.median_ratio([1.0, 2.0], [1.0])  # rounds must pair up


def test_extrapolation_is_linear_in_steps():
    assert math.isclose(harness.extrapolate(2.0, 20, 1000), 100.0)
    assert math.isclose(harness.extrapolate(0.5, 1, 155), 77.5)
    with pytest.raises(ValueError):
        harness.extrapolate(1.0, 0, 1000)


def test_interleaved_alternates_the_arms_in_every_round():
    import torch

    calls: list[str] = []
    arms = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = harness.interleaved(arms, rounds=3, device=torch.device("cpu"), warmup=1)
    assert calls == ["a", "b", "c"] * 4  # one warm-up call each, then three rounds in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_compare_names_the_arms_and_uses_the_median_of_ratios():
    out = harness.compare({"off": [4.0, 6.0, 30.0], "on": [2.0, 2.0, 3.0]}, "off", "on")
    assert out["before"] == "off" and out["after"] == "on"
    assert out["speedup"] == 3.0 and out["off"]["median"] == 6.0 and out["on"]["samples"] == [2.0, 2.0, 3.0]


def test_busy_note_only_for_a_busy_machine():
    assert harness.busy_note({"other_busy_cores_at_start": 0.1, "cores_available": 2}) is None
    assert "busy" in harness.busy_note({"other_busy_cores_at_start": 1.0, "cores_available": 2})


# -- the scripts at their smallest setting ------------------------------------------------------------


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = ["benchmarks/bench.py", "--sizes", "64", "--quick", "--threads", "1"]
    cmd += ["--volume-slices", "3", "--amp", "bf16", "--dice-slices", "1", "--json", str(out)]
    proc = _run(cmd)
    return json.loads(out.read_text()), proc.stdout, out


@pytest.fixture(scope="module")
def ablate_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ablate") / "ablate.json"
    cmd = ["benchmarks/ablate.py", "--sizes", "64", "--repeats", "1", "--volume-slices", "2", "--threads", "1"]
    _run(cmd + ["--experiments", "autograd,layout,denoiser,chunk", "--json", str(out)])
    return json.loads(out.read_text()), out


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_writes_the_headline_keys(quick_run):
    result, _, _ = quick_run
    for key in KEYS:
        assert _positive(result.get(key)), (key, result.get(key))
    assert result["headline_size"] == 64 and any("measured at 64 px" in n for n in result["notes"])
    row = result["sizes"]["64"]
    for key in ("backbone_ms", "denoiser_ms_per_step"):
        assert _positive(row[key]), key
    assert _positive(row["memory_default"]["peak_rss_mb"])
    assert row["default"]["settings"]["steps"] == 10 and row["default"]["settings"]["ensemble"] == 1


def test_backbone_every_step_gives_the_same_masks_and_the_ratio_is_every_step_over_default(quick_run):
    row = quick_run[0]["sizes"]["64"]
    assert row["every_step_same_labels"] is True
    rounds = zip(row["every_step"]["samples"], row["default"]["samples"], strict=True)
    assert math.isclose(row["ratio_vs_backbone_every_step"], statistics.median(a / b for a, b in rounds), rel_tol=1e-3)


def test_ddpm_figure_is_extrapolated_from_the_timed_steps(quick_run):
    result, stdout, _ = quick_run
    row = result["sizes"]["64"]
    ddpm = row["ddpm1000"]
    assert ddpm["extrapolated"] is True and ddpm["timed_steps"] == 2
    assert math.isclose(ddpm["seconds"], 1000 * ddpm["seconds_per_step"])
    assert math.isclose(row["ratio_vs_ddpm1000"], ddpm["seconds"] / row["default"]["median"])
    assert "EXTRAPOLATED from 2 of 1000 steps" in stdout


def test_ensemble_ratios_are_medians_of_within_round_ratios(quick_run):
    result, _, _ = quick_run
    ens = result["ensemble"]
    assert set(ens) == {"1", "4", "8"}
    for e, r in ens.items():
        rounds = [a / b for a, b in zip(r["one_batch"]["samples"], ens["1"]["one_batch"]["samples"], strict=True)]
        assert math.isclose(r["ratio_vs_1"], statistics.median(rounds), rel_tol=1e-3), e
        assert _positive(r["separate_runs"]["median"]) and _positive(r["speedup_vs_separate"]), e
    assert result["ratio_ensemble4_vs_1"] == ens["4"]["ratio_vs_1"]


def test_volume_goes_through_the_command_line(quick_run):
    vol = quick_run[0]["volume"]
    assert vol["slices"] == 3 and vol["extrapolated_to_155"] and _positive(vol["slices_per_second"])
    assert vol["command"].startswith("python -m medconddiff segment ") and "--batch-size 8" in vol["command"]
    assert _positive(vol["segment_volume_seconds"])
    assert math.isclose(vol["seconds_for_155_slices"], vol["seconds"] * 155 / 3)


def test_targets_are_judged_as_stated_and_not_applied_to_a_smoke_run(quick_run):
    result, _, _ = quick_run
    t = result["targets"]
    assert t["applies"] is False and set(t["checks"]) == set(KEYS)
    for key, c in t["checks"].items():
        assert c["value"] == result[key]
        assert c["met"] == (c["value"] <= c["bound"] if c["op"] == "<=" else c["value"] >= c["bound"])


def test_machine_and_precision_check_are_recorded(quick_run):
    result, _, _ = quick_run
    m = result["machine"]
    assert m["threads"] == 1 and m["device"] == "cpu" and m["torch"] and m["loadavg_at_end"]
    pc = result["precision_check"]
    assert pc["precision"] == "bf16" and pc["slices"] >= 1
    assert 0.0 <= pc["dice_min"] <= 1.0 and 0.0 <= pc["pixels_equal"] <= 1.0


def test_ablations_report_before_after_pairs(ablate_run):
    out, _ = ablate_run
    row = out["sizes"]["64"]
    assert set(row) == {
        "autograd",
        "channels_last_denoiser",
        "channels_last_weights",
        "denoiser_architecture_e1",
        "denoiser_architecture_e4",
        "denoiser_chunk_e8",
    }
    params = row["denoiser_architecture_e4"]["denoiser_parameters"]
    assert params["width96_stride2_head"] < params["width256_full_res_head"] / 2  # the per-step branch shrank
    for name, r in row.items():
        assert _positive(r[r["before"]]["median"]) and _positive(r[r["after"]]["median"]), name
        assert math.isclose(r["speedup"], r[r["before"]]["samples"][0] / r[r["after"]]["samples"][0], rel_tol=1e-3)
    assert set(out["volume_batch"]) >= {"1", "4", "8", "16", "speedup"}


def test_ablate_refuses_an_unknown_experiment():
    proc = subprocess.run(
        [sys.executable, "benchmarks/ablate.py", "--experiments", "consensus"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown experiment(s) consensus" in proc.stderr


# -- the renderer -----------------------------------------------------------------------------------


def test_report_renders_a_smoke_run_without_passing_it_off_as_the_results(quick_run, ablate_run):
    new = report.sections(report.load_inputs([quick_run[2], ablate_run[1]]))
    assert set(new) == {"machine", "targets", "speed", "ensemble", "volume", "precision", "ablations"}
    md = "\n".join(line for lines in new.values() for line in lines)
    assert "do not test the bounds" in md and "a --quick smoke test" in md
    assert "**extrapolated** from 2 timed steps" in md and "Ratios are against *default*" in md
    assert md.count("| met |") + md.count("**not met**") == 4


def test_results_md_holds_exactly_what_the_committed_json_renders_to():
    """RESULTS.md's tables are the committed JSON's: regenerating them changes nothing."""
    text = (REPO / "benchmarks" / "RESULTS.md").read_text()
    runs = report.load_inputs(sorted(RESULTS.glob("*.json")))
    assert (
        {"bench", "ablate", "load", "big_images", "train_speed"}
        <= set(runs)
        <= {"bench", "ablate", "load", "big_images", "train_speed", "volume_cli"}
    )
    assert report.update(text, report.sections(runs)) == text
    assert report.update(text, {"speed": ["changed"]}) != text  # the check can fail


def test_train_speed_times_every_arm_and_reports_the_ratios(tmp_path):
    """The training-throughput benchmark at its smallest: every precision the CPU runs natively x one thread
    and every core, steps/s and images/s per arm, ratios taken round by round, and a renderable section."""
    out = tmp_path / "train_speed.json"
    proc = _run(["benchmarks/train_speed.py", "--sizes", "32", "--rounds", "1", "--steps", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["kind"] == "train_speed" and "bf16 support" in proc.stderr
    bf16 = result["machine"]["cpu_bf16"]
    row = result["sizes"]["32"]
    expected = {
        f"{p} {t}t" for p in (["fp32", "bf16"] if bf16 else ["fp32"]) for t in sorted({1, harness.os.cpu_count()})
    }
    assert set(row["arms"]) == expected
    for arm in row["arms"].values():
        assert _positive(arm["median"]) and arm["images_per_s"] == pytest.approx(8 * arm["steps_per_s"])
    if bf16:
        assert _positive(row["ratios"][f"bf16 vs fp32, {max({1, harness.os.cpu_count()})} threads"]["speedup"])
    else:
        assert "skipped" in result["notes"][0] and not any("bf16" in k for k in row["ratios"])
    section = report.train_speed_section(result)
    assert any(line.startswith("| 32 px | fp32 | 1 |") for line in section)


def test_report_refuses_an_unknown_json_and_a_file_without_markers(tmp_path):
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(
        SystemExit, match="not a bench.py, ablate.py, load.py, big_images.py, train_speed.py or volume_cli.py JSON"
    ):
        report.main([str(other)])
    with pytest.raises(SystemExit, match="no <!-- begin speed -->"):
        report.update("# results\n", {"speed": ["x"]})


def test_big_images_runs_end_to_end_and_renders(tmp_path):
    """benchmarks/big_images.py at its smallest setting: every arm's mask at the input's size, and a table."""
    out = tmp_path / "big.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "big_images.py"), "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {name: arm["mask_shape"] for name, arm in data["arms"].items()} == {
        "png_128": [128, 128],
        "png_600": [600, 600],
        "jpg_600": [600, 600],
    }
    assert data["ratio_big_png_vs_small"] > 0 and data["volume"]["peak_rss_mb"] > 0
    lines = report.sections(report.load_inputs([out]))["big_images"]
    assert any(line.startswith("| PNG pair, 600x600 | 600x600 |") for line in lines)


def test_volume_cli_pairs_a_baseline_worktree_with_this_checkout_and_renders(tmp_path):
    """benchmarks/volume_cli.py at its smallest setting, against HEAD: both commands ran in their own checkout
    (the worktree is gone afterwards), the ratios are the medians of per-round ratios, and a table renders."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the baseline worktree needs the history")
    before = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    out = tmp_path / "volume_cli.json"
    _run(["benchmarks/volume_cli.py", "--quick", "--baseline", "HEAD", "--json", str(out)])
    data = json.loads(out.read_text())
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert data["baseline"]["commit"] == head.stdout.strip() and data["shape"] == [240, 240, 6]
    seg = data["segment"]
    assert data["rounds"] == 1 and all(_positive(seg[n]["median"]) and _positive(seg[n]["peak_rss_mb"]) for n in seg)
    assert math.isclose(data["speedup"], seg["baseline"]["samples"][0] / seg["current"]["samples"][0], rel_tol=1e-6)
    assert _positive(data["startup"]["current"]["median"]) and _positive(data["startup_speedup"])
    assert data["current_output"].startswith("wrote ") and data["current_precision"] in ("fp32", "bf16")
    assert data["masks"]["dice_foreground"] > 0.9 and 0 <= data["masks"]["voxels_equal"] <= 1
    authors = data["authors"]
    assert (
        authors["same_labels"] is True and authors["slices"] == 2 and _positive(authors["ratio_vs_backbone_every_step"])
    )
    after = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout
    assert after == before  # the baseline's worktree was removed
    lines = report.sections(report.load_inputs([out]))["volume_cli"]
    assert lines[0].startswith("> A --quick smoke run") and any(line.startswith("| speed-up") for line in lines)
