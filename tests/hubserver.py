"""A tiny stand-in for the Hugging Face Hub's file routes, on 127.0.0.1, for offline tests.

It answers what `huggingface_hub.hf_hub_download` asks for and nothing else:

    HEAD|GET /{owner}/{name}/resolve/{revision}/{filename}
        200 with X-Repo-Commit (40 hex), ETag and Content-Length (GET also sends the bytes)
        404 with X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound
    anything else: 404 RepoNotFound

Use it as a context manager and point the Hub client at it with `hub.env(cache)` (the
environment for a subprocess: HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, offline off, no proxies):

    with HubServer() as hub:
        commit = hub.add_repo("owner/name", {"config.json": b"...", "model.safetensors": b"..."})
        env = hub.env(tmp_path / "hf")
        subprocess.run([sys.executable, "-m", "medconddiff", "info", "--weights", "owner/name"], env=env)

Every request is recorded in `hub.requests` as (method, path), so a test can bound the traffic.
"""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Repo:
    """Branches/tags -> commit hash, and commit hash -> {filename: bytes}."""

    def __init__(self) -> None:
        self.refs: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def lookup(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class HubServer:
    """A threaded HTTP server serving in-memory repos the way the Hub's `resolve` route does."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- content --------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path], *, revision: str = "main") -> str:
        """Add a commit holding `files` to `repo_id` and point `revision` at it. Returns the commit hash.

        Values are bytes, or a path whose bytes are served. Calling it again for the same repo
        with another `revision` adds another commit (e.g. a tag "v1" next to "main").
        """
        blobs = {name: Path(v).read_bytes() if isinstance(v, (str, Path)) else bytes(v) for name, v in files.items()}
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(blobs):
            digest.update(name.encode() + b"\0" + blobs[name])
        digest.update(revision.encode())
        commit = digest.hexdigest()  # 40 hex digits, like a git commit
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[commit] = blobs
            repo.refs[revision] = commit
        return commit

    def add_folder(self, repo_id: str, folder: str | Path, *, revision: str = "main") -> str:
        """Serve every file of a local folder (not recursive) as a commit of `repo_id`."""
        files = {p.name: p for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return self.add_repo(repo_id, files, revision=revision)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, hf_home: str | Path, *, offline: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that talks to this server only, with its own Hub cache."""
        hf_home = Path(hf_home)
        env = dict(os.environ if base is None else base)
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(hf_home),
            HF_HUB_CACHE=str(hf_home / "hub"),
            HF_HUB_OFFLINE="1" if offline else "0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_ETAG_TIMEOUT="5",
            HF_HUB_DOWNLOAD_TIMEOUT="10",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        env.pop("HF_TOKEN", None)
        env.pop("MEDCONDDIFF_WEIGHTS", None)
        return env

    # -- HTTP -----------------------------------------------------------------------------
    def _answer(self, method: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(raw_path).path
        with self._lock:
            self.requests.append((method, path))
        parts = path.lstrip("/").split("/")
        # /{owner}/{name}/resolve/{revision}/{filename...}; the revision is URL-quoted ("refs%2Fpr%2F1")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
        with self._lock:
            repo = self._repos.get(repo_id)
            commit = repo.lookup(revision) if repo else None
            blobs = repo.commits.get(commit) if repo and commit else None
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        if blobs is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
        if filename not in blobs:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}
            return 404, headers, b""
        body = blobs[filename]
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        return 200, {"X-Repo-Commit": commit, "ETag": etag, "Content-Type": "application/octet-stream"}, body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, send_body: bool) -> None:
                status, headers, body = server._answer(self.command, self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body and body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._reply(send_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._reply(send_body=True)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        return Handler
