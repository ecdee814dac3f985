"""The demo app in a subprocess on 127.0.0.1, for the tests and `benchmarks/load.py`.

`AppServer` starts `python tests/support/appserver.py serve --port P`, which imports `app.py`, adds
a probe counting the threads that run the network at once (PyTorch's global module hooks; no
library or app function is replaced), writes its counts to stats.json once a second, and calls
`app.main`. The server has its own process group and temp folders and is
stopped with SIGTERM; it exits by itself if the process that started it goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc (no psutil needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def files_under(*folders: Path) -> list[Path]:
    return [p for d in folders if d.is_dir() for p in d.rglob("*") if p.is_file()]


class AppServer:
    """`app.py` in its own process group on 127.0.0.1, with its own temp folders; stopped with SIGTERM.

    The server runs `python tests/support/appserver.py serve`: app.py with a concurrency probe
    (writing stats.json), started through `app.main`.
    """

    def __init__(self, workdir: Path, *, weights: str | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.weights = weights
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.gradio_tmp = self.workdir / "gradio-tmp"
        self.tmp = self.workdir / "tmp"
        self.stats_path = self.workdir / "stats.json"
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, *, timeout: float = 240.0) -> AppServer:
        for d in (self.gradio_tmp, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            GRADIO_TEMP_DIR=str(self.gradio_tmp),
            GRADIO_EXAMPLES_CACHE=str(self.workdir / "examples-cache"),
            TMPDIR=str(self.tmp),  # the app's own scratch folder lives under tempfile.gettempdir()
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            MPLBACKEND="Agg",
            NO_PROXY="127.0.0.1,localhost",
            MEDCONDDIFF_LOAD_STATS=str(self.stats_path),
            PYTHONUNBUFFERED="1",
        )
        if self.weights:
            env["MEDCONDDIFF_WEIGHTS"] = self.weights
        env.update(self.extra_env)
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(self.port)]
        cmd += ["--parent-pid", str(os.getpid())]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the app did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def temp_files(self) -> list[Path]:
        return files_under(self.gradio_tmp, self.tmp)

    def temp_files_by_kind(self) -> dict[str, int]:
        """What is left in the temp folders: Gradio's upload/output cache, stray empty files, the app's scratch."""
        out: Counter = Counter()
        for p in self.temp_files():
            if p.is_relative_to(self.tmp):
                out["app scratch: " + "/".join(p.relative_to(self.tmp).parts[1:-1] or ["."])] += 1
            elif p.parent == self.gradio_tmp and p.stat().st_size == 0:
                out["gradio: stray empty files"] += 1
            else:
                out["gradio: cached uploads and outputs"] += 1
        return dict(out)

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM to the server's process group (background servers ignore SIGINT), SIGKILL if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unexpected_tracebacks(log: str) -> list[str]:
    """Traceback blocks in the server log whose exception is not the app's own gr.Error."""
    out = []
    for block in re.split(r"(?m)^(?=Traceback \(most recent call last\):)", log):
        if not block.startswith("Traceback"):
            continue
        lines = [line for line in block.splitlines() if line and not line.startswith((" ", "\t", "Traceback"))]
        last = lines[0] if lines else block.splitlines()[-1]
        if not last.startswith("gradio.exceptions.Error"):
            out.append(last[:300])
    return out


def serve(port: int, parent_pid: int | None) -> None:
    """Server side: app.py with a probe counting the threads running the network at once, then `app.main`."""
    sys.path.insert(0, str(REPO))
    if parent_pid:  # never outlive the test or script that started us

        def watch() -> None:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    os._exit(3)

        threading.Thread(target=watch, daemon=True).start()
    from torch.nn.modules import module as nn_module

    import app

    # The probe: PyTorch's global module hooks (documented for debugging and profiling) see every
    # module call in the process. A thread is running the network from its first module call until
    # that call returns; the most threads doing so at once is what the queue must bound.
    stats_path = Path(os.environ["MEDCONDDIFF_LOAD_STATS"])
    lock, depth = threading.Lock(), threading.local()
    stats = {"active": 0, "max_active": 0, "network_calls": 0, "concurrency_limit": app.CONCURRENCY}

    def enter(module, args) -> None:
        depth.n = getattr(depth, "n", 0) + 1
        if depth.n == 1:
            with lock:
                stats["active"] += 1
                stats["network_calls"] += 1
                stats["max_active"] = max(stats["max_active"], stats["active"])

    def leave(module, args, output) -> None:
        depth.n -= 1
        if depth.n == 0:
            with lock:
                stats["active"] -= 1

    def dump_every_second() -> None:
        while True:
            with lock:
                text = json.dumps(stats)
            stats_path.with_suffix(".tmp").write_text(text)
            stats_path.with_suffix(".tmp").replace(stats_path)
            time.sleep(1.0)

    nn_module.register_module_forward_pre_hook(enter)
    nn_module.register_module_forward_hook(leave, always_call=True)  # also when a forward raises
    threading.Thread(target=dump_every_second, name="stats", daemon=True).start()
    app.main(["--host", "127.0.0.1", "--port", str(port)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="(internal) run app.py with the concurrency probe")
    sub = ap.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    serve(args.port, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
