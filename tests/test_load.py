"""The short load test (N = 4 users, about 30 s): the CI version of `python benchmarks/load.py`.

The app runs in a subprocess on 127.0.0.1; four gradio_client users send the bundled example
slices and bad inputs at once. Every good request must get a valid mask, every bad one its own
error, with no server error, at most the app's concurrency limit of samplings at once, resident
memory after the run within 20% of after warm-up, and uploads over the cap refused. The long run
(8 users, 3 minutes) is `python benchmarks/load.py`; its figures are in RESULTS.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from scripts import benchmark_script
from support.appserver import AppServer, unexpected_tracebacks

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"


load = benchmark_script("load")
render = benchmark_script("report")


@pytest.mark.slow
def test_short_load_run(tmp_path):
    if not list(EXAMPLES.glob("brats_*_z*_flair.png")):
        pytest.skip("no bundled BraTS example slices")
    report = load.run_load(users=4, duration=30, workdir=tmp_path, steps=4, log=lambda *a: None)
    shown = "\n".join(render.load_section(load.to_json(report, command="short load run")))
    print(shown)  # shown with -s or on failure
    assert report.requests >= 8, "four users should get through a few requests each in 30 s"
    assert report.good_sent > 0 and report.bad_sent > 0
    failed = [name for name, ok in report.checks().items() if not ok]
    assert not failed, f"{failed}\n{shown}"
    # the server was stopped with SIGTERM and no process of its group is left
    assert report.server_exit_code is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(report.server_pid, 0)


def test_unexpected_tracebacks_ignores_the_apps_own_errors():
    log = (
        'Traceback (most recent call last):\n  File "app.py", line 1\n'
        "gradio.exceptions.Error: 'x.png: the file is empty'\n"
        'Traceback (most recent call last):\n  File "medconddiff/io.py", line 2\n    raise\n'
        "RuntimeError: boom\n"
    )
    assert unexpected_tracebacks(log) == ["RuntimeError: boom"]


def test_requests_name_only_the_offered_models(tmp_path):
    """Every request names brats-demo or abdomen-ct-demo, except the one that must be refused."""
    if not list(EXAMPLES.glob("brats_*_z*_flair.png")):
        pytest.skip("no bundled BraTS example slices")
    requests = load.build_requests(tmp_path, steps=4, model="brats-demo", ct_model="abdomen-ct-demo")
    offered = {"brats-demo", "abdomen-ct-demo"}
    assert {r.model for r in requests if r.name != "model_not_offered"} <= offered
    expected = offered if list(EXAMPLES.glob("ct_z*[0-9].png")) else {"brats-demo"}
    assert {r.model for r in requests if r.good} == expected
    (refused,) = [r for r in requests if r.name == "model_not_offered"]
    assert not refused.good and refused.model not in offered
    assert sum(r.good for r in requests) >= 4 and sum(not r.good for r in requests) >= 7


def test_load_figures_render_as_the_results_section():
    r = load.Report(users=8, duration_s=180, weights="brats-demo", models=["brats-demo"], steps=4)
    r.requests, r.good_sent, r.good_ok, r.bad_sent, r.bad_ok = 10, 6, 6, 4, 3
    r.server_alive_after, r.concurrency_limit, r.max_concurrent_samplings = True, 1, 1
    r.rss_warm_mib, r.rss_end_mib, r.rss_change, r.oversized_upload_status = 1000.0, 1050.0, 0.05, 413
    r.failures = ["nan_pixels: bad request nan_pixels was answered with a mask"]
    data = load.to_json(r, command="python benchmarks/load.py")
    assert data["passed"] is False and data["checks"]["every bad request answered with its error"] is False
    md = "\n".join(render.load_section(json.loads(json.dumps(data))))
    assert "- [ ] every bad request answered with its error" in md and "- [x] the queue bounds" in md
    assert "| bad requests: their own error | 3 / 4 |" in md and "nan_pixels" in md


@pytest.mark.slow
def test_the_concurrency_probe_sees_two_samplings_when_the_queue_allows_two(tmp_path, tiny_weights):
    """The load test's queue check can fail: with a limit of 2 and two users, the probe must count 2."""
    import threading

    from gradio_client import Client, handle_file

    pair = [EXAMPLES / "brats_pat0003_z080_flair.png", EXAMPLES / "brats_pat0003_z080_t1c.png"]
    if not all(p.is_file() for p in pair):
        pytest.skip("no bundled BraTS example slices")
    env = {"MEDCONDDIFF_CONCURRENCY": "2", "MEDCONDDIFF_CUSTOM_WEIGHTS": "off"}
    with AppServer(tmp_path / "server", weights=str(tiny_weights), env=env) as server:

        def user(i: int) -> None:
            client = Client(server.url, verbose=False, download_files=str(tmp_path / f"user{i}"))
            for _ in range(3):
                client.predict([handle_file(str(p)) for p in pair], "", 50, 2, "", i, api_name="/segment")

        threads = [threading.Thread(target=user, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.5)  # the server writes its counts once a second
        stats = server.stats()
    assert stats["concurrency_limit"] == 2 and stats["network_calls"] > 0
    assert stats["max_active"] == 2, stats
