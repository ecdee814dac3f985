"""Load test of the demo's public API: N concurrent gradio_client users on loopback, good and bad inputs mixed.

    python benchmarks/load.py                         # the long run: 8 users for 180 s (documented figures)
    python benchmarks/load.py --users 4 --duration 30 # the short run (what tests/test_load.py does in CI)
    python benchmarks/load.py --json load.json        # also write the figures as JSON

It starts the app on 127.0.0.1 (`tests/support/appserver.py`; nothing else is contacted), warms it
up, then lets N users send the bundled example slices and bad inputs for a bounded time, and checks:
every good request gets a valid mask and every bad one its own gr.Error; zero server errors (client
failures, tracebacks other than gr.Error, a server that stops answering); at most the app's
concurrency limit of threads running the network at once (the server's probe); resident memory after
the run within 20% of after warm-up; an upload one byte over `max_file_size` refused. Requests name
the offered models, as a public server offers them (custom weights off): `brats-demo` (else a
random-init model: robustness, not quality) and `abdomen-ct-demo` when bundled; naming a model the
server does not offer is a bad input. The exit code is 0 only if every check passes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import report as render  # noqa: E402
import torch  # noqa: E402
from harness import finish, machine, write_json  # noqa: E402
from support.appserver import AppServer, unexpected_tracebacks  # noqa: E402  (the app launcher lives in test support)

from medconddiff import hub  # noqa: E402
from medconddiff.config import MedCondDiffConfig  # noqa: E402
from medconddiff.model import MedCondDiff  # noqa: E402

EXAMPLES = REPO / "assets" / "examples"
RSS_TOLERANCE = 0.20
WARM_CONCURRENT_S = 30.0  # all users at once before the baseline (a quarter of a shorter run)
RSS_SAMPLES = 6  # server RSS readings during the run


# -- the requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    name: str
    files: tuple[Path, ...]
    shape: tuple[int, int] | None  # the mask's (H, W) for a good request
    error: str | None = None  # a fragment of the error message for a bad one
    steps: int = 4
    ensemble: int = 1
    consensus: str = ""
    model: str = ""  # an offered model's name ("" = the app's default weights)

    @property
    def good(self) -> bool:
        return self.error is None


def _png_shape(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def build_requests(folder: Path, *, steps: int, model: str = "", ct_model: str | None = None) -> list[Request]:
    """Good: the bundled example slices and slabs. Bad: files, settings and models the app must refuse.

    The BraTS inputs name `model` (the offered 2-channel model); with `ct_model` (the bundled CT
    weights' name) the CT example slices go to that model too.
    """
    import gzip

    good = []
    for flair in sorted(EXAMPLES.glob("brats_*_z*_flair.png")):
        t1c = flair.with_name(flair.name.replace("_flair", "_t1c"))
        good.append(
            Request(flair.stem.replace("_flair", ""), (flair, t1c), _png_shape(flair), steps=steps, model=model)
        )
    slab = (EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz")
    if all(p.is_file() for p in slab):
        import nibabel as nib

        shape = tuple(nib.load(slab[0]).shape[:2])
        good.append(Request("brats_pat0004_slab", slab, shape, steps=steps, model=model))
    if good:
        good.append(
            Request(good[0].name + "_ensemble2", good[0].files, good[0].shape, steps=2, ensemble=2, model=model)
        )
    if not good:
        raise FileNotFoundError(f"no BraTS example slices in {EXAMPLES}")
    if ct_model:
        for ct in sorted(EXAMPLES.glob("ct_z*[0-9].png")):
            good.append(Request(ct.stem + "_ct_model", (ct,), _png_shape(ct), steps=steps, model=ct_model))

    folder.mkdir(parents=True, exist_ok=True)
    first = good[0].files
    empty = folder / "empty.nii.gz"
    empty.write_bytes(b"")
    text = folder / "notes_flair.png"
    text.write_bytes(b"this is a text file renamed .png\n" * 20)
    truncated = folder / "truncated_flair.nii.gz"
    truncated.write_bytes(slab[0].read_bytes()[:5000] if slab[0].is_file() else gzip.compress(b"\0" * 9000)[:100])
    nan = folder / "nan_t1c.tif"
    arr = np.asarray(Image.open(first[1]), dtype=np.float32).copy()
    arr[arr.shape[0] // 2, :] = np.nan
    Image.fromarray(arr).save(nan)
    bad = [
        Request("empty_file", (empty, empty), None, "the file is empty", model=model),
        Request("text_renamed_png", (text, first[1]), None, "not a readable image", model=model),
        Request("truncated_gzip", (truncated, truncated), None, "not a readable NIfTI file", model=model),
        Request("one_modality_for_two", (first[0],), None, "modality channel(s)", model=model),
        Request("nan_pixels", (first[0], nan), None, "NaN/Inf value(s)", model=model),
        Request("unknown_consensus", first, None, "unknown consensus 'loudest'", consensus="loudest", model=model),
        Request("steps_over_the_demo_limit", first, None, "this demo runs at most", steps=500, model=model),
        # a folder on the server that is not an offered model: refused, never loaded
        Request("model_not_offered", first, None, "is not one of its models", model=str(REPO / "assets")),
    ]
    return good + bad


@dataclass
class Outcome:
    request: str
    good: bool
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Report:
    users: int
    duration_s: float
    weights: str
    models: list[str] = field(default_factory=list)  # the model names the requests use
    steps: int = 0
    requests: int = 0
    good_sent: int = 0
    good_ok: int = 0
    bad_sent: int = 0
    bad_ok: int = 0
    failures: list[str] = field(default_factory=list)
    server_tracebacks: list[str] = field(default_factory=list)
    server_alive_after: bool = False
    server_pid: int | None = None
    server_exit_code: int | None = None  # after SIGTERM
    concurrency_limit: int | None = None
    max_concurrent_samplings: int | None = None
    network_calls: int | None = None  # top-level module calls the probe saw
    max_file_size: str | int | None = None
    oversized_upload_status: int | None = None
    rss_warm_mib: float = 0.0
    rss_samples_mib: list[int] = field(default_factory=list)
    warm_concurrent_s: float = 0.0
    rss_end_mib: float = 0.0
    rss_change: float = 0.0
    temp_files_warm: int = 0
    temp_files_end: int = 0
    temp_files_end_by_kind: dict[str, int] = field(default_factory=dict)
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    throughput_per_min: float = 0.0
    per_request: dict[str, list[int]] = field(default_factory=dict)  # name -> [sent, answered as expected]

    @property
    def server_errors(self) -> int:
        return len(self.failures) + len(self.server_tracebacks) + (0 if self.server_alive_after else 1)

    def checks(self) -> dict[str, bool]:
        return {
            "every good request answered with a valid mask": self.good_sent > 0 and self.good_ok == self.good_sent,
            "every bad request answered with its error": self.bad_sent > 0 and self.bad_ok == self.bad_sent,
            "zero server errors": self.server_errors == 0,
            "the queue bounds concurrent samplings": self.max_concurrent_samplings is not None
            and self.concurrency_limit is not None
            and 1 <= self.max_concurrent_samplings <= self.concurrency_limit,
            "resident memory within 20% of after warm-up": abs(self.rss_change) <= RSS_TOLERANCE,
            "uploads over max_file_size refused": self.oversized_upload_status in (400, 413),
        }

    @property
    def passed(self) -> bool:
        return all(self.checks().values())


def _check_answer(req: Request, result, error: BaseException | None) -> tuple[bool, str]:
    """Is this the right answer to `req`? (ok, what was wrong)."""
    from gradio_client.exceptions import AppError

    if req.good:
        if error is not None:
            return False, f"good request failed: {type(error).__name__}: {error}"
        mask, summary = result
        shape = _png_shape(Path(mask))
        if shape != req.shape or list(summary.get("shape", [])) != list(req.shape):
            return False, f"mask shape {shape} / summary {summary.get('shape')} != {req.shape}"
        labels = np.asarray(Image.open(mask))
        k = len(summary["classes"])
        if labels.max() >= k or np.bincount(labels.ravel(), minlength=k).tolist() != summary["areas"]:
            return False, "mask values do not match the summary's classes and areas"
        return True, ""
    if isinstance(error, AppError) and req.error in str(error):
        return True, ""
    if error is None:
        return False, f"bad request {req.name} was answered with a mask"
    return False, f"bad request {req.name}: {type(error).__name__}: {str(error)[:200]} (expected {req.error!r})"


def send(client, req: Request, *, timeout: float) -> Outcome:
    from gradio_client import handle_file

    started = time.perf_counter()
    result, error = None, None
    try:
        files = [handle_file(str(p)) for p in req.files]
        job = client.submit(files, req.model, req.steps, req.ensemble, req.consensus, 0, api_name="/segment")
        result = job.result(timeout=timeout)
    except Exception as err:  # every failure is recorded and judged, none stops a user
        error = err
    ok, detail = _check_answer(req, result, error)
    return Outcome(req.name, req.good, ok, time.perf_counter() - started, detail)


def _client(url: str, download: Path):
    from gradio_client import Client

    download.mkdir(parents=True, exist_ok=True)
    return Client(url, verbose=False, download_files=str(download), analytics_enabled=False)


def oversized_upload(url: str, limit_bytes: int, folder: Path) -> int:
    """POST a (sparse) file one byte over the cap to the upload route; return the HTTP status."""
    import httpx

    big = folder / "oversized.nii.gz"
    with open(big, "wb") as f:
        f.truncate(limit_bytes + 1)
    try:
        with open(big, "rb") as f:
            r = httpx.post(url + "gradio_api/upload", files={"files": (big.name, f)}, timeout=120)
        return r.status_code
    finally:
        big.unlink()


def _parse_size(value) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(value).lower())
    if not m:
        raise ValueError(f"cannot read max_file_size {value!r}")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_"))


def run_load(
    *,
    users: int,
    duration: float,
    workdir: Path,
    weights: str | None = None,
    steps: int = 4,
    seed: int = 0,
    request_timeout: float = 300.0,
    log=print,
) -> Report:
    """Start the app, warm it up, run `users` concurrent users for `duration` seconds, stop it, report."""
    workdir.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = default_weights(workdir)
    ct_model = bundled_ct_model()
    requests = build_requests(workdir / "inputs", steps=steps, model=weights, ct_model=ct_model)
    models = [weights] + ([ct_model] if ct_model else [])
    report = Report(users=users, duration_s=duration, weights=weights, models=models, steps=steps)
    # as a public server runs: only the offered models load (MEDCONDDIFF_WEIGHTS and the bundled ones)
    server = AppServer(workdir / "server", weights=weights, env={"MEDCONDDIFF_CUSTOM_WEIGHTS": "off"})
    log(f"starting the app on {server.url} (weights: {weights})")
    server.start()
    report.server_pid = server.pid
    try:
        config = json.loads(urllib.request.urlopen(server.url + "config", timeout=30).read())
        report.max_file_size = config.get("max_file_size")
        # warm-up: every request once from one user, then every user at once for a short while, so that
        # the baseline already holds both models, the worker threads and their allocator arenas
        warm = _client(server.url, workdir / "downloads" / "warm")
        for req in requests:
            out = send(warm, req, timeout=request_timeout)
            if not out.ok:
                report.failures.append(f"warm-up {out.request}: {out.detail}")

        def hammer(seconds: float, outcomes: list[Outcome]) -> float:
            """`users` concurrent users sending random requests for `seconds`; returns the time it took."""
            lock = threading.Lock()
            deadline = time.monotonic() + seconds

            def user(i: int) -> None:
                rng = random.Random(seed + i + 1000 * len(outcomes))
                client = _client(server.url, workdir / "downloads" / f"user{i}")
                while time.monotonic() < deadline:
                    out = send(client, rng.choice(requests), timeout=request_timeout)
                    with lock:
                        outcomes.append(out)

            threads = [threading.Thread(target=user, args=(i,), name=f"user{i}") for i in range(users)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.monotonic() - started

        warm_outcomes: list[Outcome] = []
        report.warm_concurrent_s = min(WARM_CONCURRENT_S, duration / 4)
        hammer(report.warm_concurrent_s, warm_outcomes)
        report.failures += [f"warm-up {o.request}: {o.detail}" for o in warm_outcomes if not o.ok]
        time.sleep(2.0)
        report.rss_warm_mib = server.rss_kib() / 1024
        report.temp_files_warm = len(server.temp_files())
        log(f"warmed up: RSS {report.rss_warm_mib:.0f} MiB; {users} users for {duration:.0f} s ...")

        outcomes: list[Outcome] = []
        done = threading.Event()

        def watch_rss() -> None:  # the server's RSS at even intervals: a leak climbs, a steady state levels off
            while not done.wait(duration / RSS_SAMPLES):
                report.rss_samples_mib.append(round(server.rss_kib() / 1024))

        watcher = threading.Thread(target=watch_rss, name="rss", daemon=True)
        watcher.start()
        elapsed = hammer(duration, outcomes)
        done.set()
        watcher.join()

        time.sleep(2.0)  # let the server finish its bookkeeping
        report.rss_end_mib = server.rss_kib() / 1024
        report.rss_change = report.rss_end_mib / report.rss_warm_mib - 1.0
        report.temp_files_end = len(server.temp_files())
        report.temp_files_end_by_kind = server.temp_files_by_kind()
        if report.max_file_size:
            report.oversized_upload_status = oversized_upload(server.url, _parse_size(report.max_file_size), workdir)
        # the server still answers a good request after everything
        final = send(warm, requests[0], timeout=request_timeout)
        report.server_alive_after = final.ok and server.alive()
        stats = server.stats()
        report.concurrency_limit = stats.get("concurrency_limit")
        report.max_concurrent_samplings = stats.get("max_active")
        report.network_calls = stats.get("network_calls")
    finally:
        report.server_exit_code = server.stop()
        report.server_tracebacks = unexpected_tracebacks(server.log())

    report.requests = len(outcomes)
    report.good_sent = sum(o.good for o in outcomes)
    report.good_ok = sum(o.good and o.ok for o in outcomes)
    report.bad_sent = sum(not o.good for o in outcomes)
    report.bad_ok = sum(not o.good and o.ok for o in outcomes)
    report.failures += [f"{o.request}: {o.detail}" for o in outcomes if not o.ok]
    sent, right = Counter(o.request for o in outcomes), Counter(o.request for o in outcomes if o.ok)
    report.per_request = {name: [sent[name], right[name]] for name in sorted(sent)}
    times = sorted(o.seconds for o in outcomes)
    if times:
        report.latency_p50_s = round(times[len(times) // 2], 2)
        report.latency_p95_s = round(times[min(len(times) - 1, int(len(times) * 0.95))], 2)
        report.throughput_per_min = round(len(times) / elapsed * 60, 1)
    return report


def bundled_ct_model() -> str | None:
    return "abdomen-ct-demo" if "abdomen-ct-demo" in hub.bundled_models() else None


def default_weights(workdir: Path) -> str:
    """The bundled BraTS demo weights, else a random-init 2-channel model (robustness only, not quality)."""
    if "brats-demo" in hub.bundled_models():
        return "brats-demo"
    torch.manual_seed(0)
    model = MedCondDiff(MedCondDiffConfig(image_size=64)).eval()
    return str(hub.save_model(model, workdir / "random-init-weights"))


def to_json(report: Report, *, command: str, info: dict | None = None) -> dict:
    """The figures as `report.py` reads them: the command, the machine (`harness.machine`), the report, the checks."""
    notes: list[str] = []
    if info is not None:
        finish(info, notes)
    data = {"command": command, "machine": info, "notes": notes}
    data |= {**asdict(report), "server_errors": report.server_errors, "checks": report.checks()}
    return data | {"passed": report.passed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=8, help="concurrent gradio_client users (default 8)")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load after warm-up (default 180)")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per good request (default 4)")
    ap.add_argument("--weights", default=None, help="weights for the app (default: brats-demo, else random-init)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (server log, downloads)")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    info = machine(torch.device("cpu"))  # the load average and busy cores at the start
    workdir = Path(tempfile.mkdtemp(prefix="medconddiff-load-"))
    try:
        report = run_load(
            users=args.users, duration=args.duration, workdir=workdir, weights=args.weights, steps=args.steps
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder kept: {workdir}")
    data = to_json(report, command="python benchmarks/load.py " + shlex.join(argv), info=info)
    print("\n".join(render.load_section(data)))
    if args.json:
        write_json(args.json, data)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
