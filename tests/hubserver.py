"""A tiny stand-in for the Hugging Face Hub, on 127.0.0.1, for offline tests with the real `huggingface_hub` client.

It answers what `hf_hub_download` asks to read a file, and what `HfApi.create_repo` + `HfApi.create_commit`
ask to publish one (the regular and the Git LFS "basic" upload paths; the client must not use Xet:
`env()` sets HF_HUB_DISABLE_XET):

    HEAD|GET /{owner}/{name}/resolve/{revision}/{filename}
        200 with X-Repo-Commit (40 hex), ETag and Content-Length (GET also sends the bytes)
        404 with X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound
    POST /api/repos/create                          {"name", "organization", "type"} -> {"url"}; 409 if it exists
    POST /api/validate-yaml                         {"content"}: the card's front matter must be a YAML mapping
    POST /api/models/{owner}/{name}/preupload/{rev} each file's upload mode: "lfs" for weights and big files
    POST /{owner}/{name}.git/info/lfs/objects/batch where to PUT each LFS object
    PUT  /lfs/{sha256}                              the object's bytes (checked against the sha256)
    POST /api/models/{owner}/{name}/commit/{rev}    NDJSON: a header, then file / lfsFile / deletedFile lines
    anything else: 404 RepoNotFound

The write routes want `Authorization: Bearer <token>` with the server's `token` (the client sends
HF_TOKEN, which `env(token=True)` sets); else 401. Use it as a context manager and point the Hub
client at it with `hub.env(cache)` (the environment for a subprocess: HF_ENDPOINT, HF_HOME,
HF_HUB_CACHE, offline off, no proxies):

    with HubServer() as hub:
        commit = hub.add_repo("owner/name", {"config.json": b"...", "model.safetensors": b"..."})
        env = hub.env(tmp_path / "hf")
        subprocess.run([sys.executable, "-m", "medconddiff", "info", "--weights", "owner/name"], env=env)

Every request is recorded in `hub.requests` as (method, path), and every commit made through the
API in `hub.commit_log`, so a test can bound the traffic and count the commits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

LFS_PATTERNS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # what the Hub's default .gitattributes sends to LFS
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_PATTERNS).encode()
Reply = tuple[int, dict[str, str], bytes]


class _Repo:
    """Branches/tags -> commit hash, and commit hash -> {filename: bytes}."""

    def __init__(self) -> None:
        self.refs: dict[str, str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}

    def lookup(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


def _error(status: int, code: str, message: str) -> Reply:
    body = json.dumps({"error": message}).encode()
    return status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body


def _json(value: object, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


class HubServer:
    """A threaded HTTP server holding in-memory repos, read and written the way the Hub's routes are."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str = "hf_test_write_token") -> None:
        self.token = token
        self._repos: dict[str, _Repo] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 hex -> bytes of the LFS objects uploaded
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.commit_log: list[dict] = []  # {"repo", "revision", "commit", "summary", "files"} of each API commit
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

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` ({} if there is no such repo or revision)."""
        with self._lock:
            repo = self._repos.get(repo_id)
            commit = repo.lookup(revision) if repo else None
            return dict(repo.commits[commit]) if commit else {}

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

    def env(
        self, hf_home: str | Path, *, offline: bool = False, token: bool = False, base: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Environment for a subprocess that talks to this server only, with its own Hub cache (and its token)."""
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
        if token:
            env["HF_TOKEN"] = self.token
        for key in ("MEDCONDDIFF_WEIGHTS", "MEDCONDDIFF_WEIGHTS_SOURCE", "MEDCONDDIFF_CATALOGUE"):
            env.pop(key, None)
        return env

    # -- HTTP: reading --------------------------------------------------------------------
    def _answer(self, method: str, raw_path: str, headers, body: bytes) -> Reply:
        path = urlsplit(raw_path).path
        with self._lock:
            self.requests.append((method, path))
        parts = path.lstrip("/").split("/")
        if method in ("HEAD", "GET") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(parts)
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs":
            return self._store_lfs(parts[1], body)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(body)
        if method != "POST":
            return _error(404, "RepoNotFound", "Repository not found")
        if headers.get("Authorization", "") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            return self._create(json.loads(body))
        found = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if found:
            repo_id, route, revision = found.group(1), found.group(2), unquote(found.group(3))
            if route == "preupload":
                return self._preupload(repo_id, revision, json.loads(body))
            return self._commit(repo_id, revision, body)
        found = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if found:
            return self._lfs_batch(json.loads(body))
        return _error(404, "RepoNotFound", "Repository not found")

    def _head(self, repo_id: str, revision: str) -> tuple[_Repo | None, str | None]:
        with self._lock:
            repo = self._repos.get(repo_id)
            return repo, (repo.lookup(revision) if repo else None)

    def _resolve(self, parts: list[str]) -> Reply:
        # /{owner}/{name}/resolve/{revision}/{filename...}; the revision is URL-quoted ("refs%2Fpr%2F1")
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
        repo, commit = self._head(repo_id, revision)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if commit is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        blobs = repo.commits[commit]
        if filename not in blobs:
            status, headers, body = _error(404, "EntryNotFound", "Entry not found")
            return status, headers | {"X-Repo-Commit": commit}, body
        body = blobs[filename]
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        return 200, {"X-Repo-Commit": commit, "ETag": etag, "Content-Type": "application/octet-stream"}, body

    # -- HTTP: writing (create a repo, then one commit: preupload, LFS objects, the commit itself) --------------------
    def _create(self, payload: dict) -> Reply:
        if payload.get("type") not in (None, "model"):
            return _error(400, "BadRequest", "this stand-in holds model repos only")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        with self._lock:
            exists = repo_id in self._repos
        if exists:
            status, headers, body = _json(
                {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, 409
            )
            return status, headers, body
        self.add_repo(repo_id, {".gitattributes": GITATTRIBUTES})  # the Hub's first commit: LFS patterns
        return _json({"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, body: bytes) -> Reply:
        content = json.loads(body).get("content", "")
        front = re.match(r"\A---\n(.*?)\n---\n", content, flags=re.S)
        try:
            meta = yaml.safe_load(front.group(1)) if front else {}
        except yaml.YAMLError as err:
            return _json({"errors": [{"message": f"YAML does not parse: {err}"}]}, 400)
        if not isinstance(meta, dict):
            return _json({"errors": [{"message": "the metadata must be a mapping"}]}, 400)
        return _json({"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> Reply:
        repo, commit = self._head(repo_id, revision)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if commit is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        modes = []
        for f in payload["files"]:
            lfs = f["path"].endswith(LFS_PATTERNS) or f["size"] >= LFS_MIN_SIZE
            modes.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return _json({"files": modes, "commitOid": commit})

    def _lfs_batch(self, payload: dict) -> Reply:
        objects = []
        for obj in payload["objects"]:
            with self._lock:
                stored = obj["oid"] in self._lfs
            upload = {"upload": {"href": f"{self.url}/lfs/{obj['oid']}"}}
            objects.append({"oid": obj["oid"], "size": obj["size"], **({} if stored else {"actions": upload})})
        return _json({"transfer": "basic", "objects": objects})

    def _store_lfs(self, oid: str, body: bytes) -> Reply:
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, "BadRequest", "the uploaded bytes do not match their sha256")
        with self._lock:
            self._lfs[oid] = body
        return 200, {}, b""

    def _commit(self, repo_id: str, revision: str, body: bytes) -> Reply:
        repo, parent = self._head(repo_id, revision)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if parent is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return _error(400, "BadRequest", "a commit starts with its header line")
        files = dict(repo.commits[parent])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                with self._lock:
                    blob = self._lfs.get(value["oid"])
                if blob is None:
                    return _error(422, "BadRequest", f"LFS object of {value['path']} was never uploaded")
                files[value["path"]] = blob
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                return _error(400, "BadRequest", f"this stand-in does not take {line['key']!r} operations")
        commit = hashlib.sha1(parent.encode() + body).hexdigest()
        with self._lock:
            repo.commits[commit] = files
            repo.refs[revision] = commit
            summary = lines[0]["value"]["summary"]
            self.commit_log.append(
                {"repo": repo_id, "revision": revision, "commit": commit, "summary": summary, "files": sorted(files)}
            )
        return _json({"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit, "success": True})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                """The request's bytes, sent with a Content-Length or chunked."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the chunk's CRLF
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)

            def _reply(self) -> None:
                body = self._body() if self.command in ("POST", "PUT") else b""
                status, headers, out = server._answer(self.command, self.path, self.headers, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD" and out:
                    self.wfile.write(out)

            do_HEAD = do_GET = do_POST = do_PUT = _reply  # noqa: N815 (http.server's naming)

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                pass

        return Handler
