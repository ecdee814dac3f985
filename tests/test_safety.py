"""Safety: the app serves only its own files, weights never come from a pickle, requests leave no files behind.

The app is the session's shared server (conftest `app_server`: a subprocess on 127.0.0.1 with its
own temp folders, custom weights off). Paths are sent with http.client, byte for byte: an HTTP library that normalises
`../` before sending would make the traversal tests pass without testing anything.
"""

from __future__ import annotations

import ast
import http.client
import pickle
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
EXAMPLE = EXAMPLES / "brats_pat0003_z080_flair.png"
PAIR = [EXAMPLE, EXAMPLES / "brats_pat0003_z080_t1c.png"]
WEIGHTS = REPO / "assets" / "weights" / "brats-demo"  # the server's default model


class Secrets:
    """Files and a loopback URL the app must never hand out, each holding a unique marker."""

    def __init__(self, root: Path) -> None:
        self.marker = f"SECRET-{uuid.uuid4().hex}"
        self.file = root / "private" / "secret.txt"  # outside every folder the app may serve
        self.file.parent.mkdir(parents=True)
        self.file.write_text(self.marker)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/secret.txt"
        self.hits = 0

    def _handler(self):
        secrets = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                secrets.hits += 1
                body = secrets.marker.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    s = Secrets(tmp_path_factory.mktemp("secrets"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(app_server):
    if not EXAMPLE.is_file():
        pytest.skip("no bundled example slices")
    return app_server


def get(server, raw_path: str) -> tuple[int, bytes]:
    """GET exactly `raw_path` (no normalisation of `..` or percent-escapes) from the app."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


ROUTES = ["/gradio_api/file=", "/file=", "/gradio_api/file/", "/static/", "/assets/", "/svelte/"]


def targets(server, secrets) -> dict[str, str]:
    """Name -> path as a client would put it after the route."""
    repo_up = "../" * (len(REPO.parts) + 2)
    return {
        "absolute_secret": str(secrets.file),
        "absolute_etc_passwd": "/etc/passwd",
        "absolute_app_source": str(REPO / "app.py"),
        "absolute_weights": str(WEIGHTS / "model.safetensors"),
        "relative_app_source": "app.py",
        "relative_library_source": "medconddiff/hub.py",
        "dot_slash_app_source": "./app.py",
        "dotdot_etc_passwd": repo_up + "etc/passwd",
        "dotdot_secret": repo_up + str(secrets.file).lstrip("/"),
        "encoded_dotdot_secret": quote(repo_up + str(secrets.file).lstrip("/"), safe=""),
        "encoded_dots_only": ("%2e%2e/" * (len(REPO.parts) + 2)) + "etc/passwd",
        "double_encoded_dotdot": quote(quote(repo_up, safe=""), safe="") + "etc/passwd",
        "backslash_dotdot": "..\\" * (len(REPO.parts) + 2) + "etc\\passwd",
        "from_examples_up_to_app": str(EXAMPLES) + "/../../app.py",
        "from_gradio_tmp_up_to_secret": str(server.gradio_tmp) + "/../../" + "/".join(secrets.file.parts[-3:]),
        "from_app_scratch_up": str(server.tmp) + "/../server.log",
        "loopback_url_ssrf": secrets.url,
        "file_url": "file://" + str(secrets.file),
    }


def _target_names() -> list[str]:
    class Fake:
        gradio_tmp = Path("/g")
        tmp = Path("/t")

    class FakeSecrets:
        file = Path("/s/private/secret.txt")
        url = "http://127.0.0.1:1/secret.txt"

    return list(targets(Fake(), FakeSecrets()))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("target", _target_names())
def test_file_routes_refuse_everything_outside_the_app(server, secrets, route, target):
    path = targets(server, secrets)[target]
    forbidden = {
        "secret": secrets.marker.encode(),
        "passwd": b"root:",
        "app source": b"def segment_api",
        "library source": b"def _download",
        "server log": b"Traceback",
        "weights": (WEIGHTS / "model.safetensors").read_bytes()[:64],
    }
    hits_before = secrets.hits
    status, body = get(server, route + path)
    leaked = [name for name, content in forbidden.items() if content in body]
    assert not leaked, (status, leaked)
    assert status in (400, 403, 404, 405, 422), (status, body[:200])
    assert secrets.hits == hits_before, "the app fetched a loopback URL for a client (SSRF)"


def test_the_apps_own_files_are_served(server):
    """The positive control: an example (in allowed_paths) and a mask the API returned are fetchable."""
    from gradio_client import Client, handle_file

    status, body = get(server, "/gradio_api/file=" + str(EXAMPLE))
    assert status == 200 and body == EXAMPLE.read_bytes()
    client = Client(server.url, verbose=False, download_files=False)
    mask, summary = client.predict([handle_file(str(p)) for p in PAIR], "", 2, 1, "", 0, api_name="/segment")
    url = mask["url"] if isinstance(mask, dict) else mask.url
    status, body = get(server, "/" + url.split("/", 3)[3])
    assert status == 200 and body.startswith(b"\x89PNG")
    import io as _io

    from PIL import Image

    assert np.asarray(Image.open(_io.BytesIO(body))).shape == tuple(summary["shape"])


# -- weights: safetensors only ---------------------------------------------------------------------


def _calls(path: Path) -> set[str]:
    """Dotted names of everything called in a Python file (e.g. 'torch.load', 'pickle.loads')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            names.add(".".join(reversed(parts)))
    return names


UNPICKLERS = {
    "torch.load",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "joblib.load",
    "np.load",
    "numpy.load",
    "dill.load",
    "cloudpickle.load",
}


@pytest.mark.parametrize(
    "source", [*sorted((REPO / "medconddiff").glob("*.py")), REPO / "app.py"], ids=lambda p: p.name
)
def test_library_and_app_never_call_an_unpickler(source):
    if not source.is_file():
        pytest.skip(f"{source.name} not there")
    assert not (_calls(source) & UNPICKLERS), f"{source.name} calls {_calls(source) & UNPICKLERS}"


def test_loading_weights_never_unpickles(tiny_weights, monkeypatch, tmp_path):
    """With every unpickler booby-trapped, good weights still load; a pickle in their place is refused."""
    import torch

    from medconddiff.errors import WeightsError
    from medconddiff.hub import load_model

    def trap(*args, **kwargs):
        raise AssertionError("an unpickler was called while loading weights")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(target, name, trap)
    model = load_model(str(tiny_weights))
    assert sum(p.numel() for p in model.parameters()) > 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((tiny_weights / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes(pickle.dumps({"weight": [1, 2, 3]}, protocol=2))
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_model(str(bad))


# -- what a request leaves behind -----------------------------------------------------------------


def _segment(server, n: int) -> None:
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    for seed in range(n):
        client.predict([handle_file(str(p)) for p in PAIR], "", 2, 1, "", seed, api_name="/segment")


def test_repeated_uploads_are_cached_once(server):
    """The same file uploaded again does not add another copy (Gradio's cache is content-addressed)."""
    _segment(server, 1)
    before = sorted(p for p in server.temp_files() if p.name in {f.name for f in PAIR})
    _segment(server, 3)
    after = sorted(p for p in server.temp_files() if p.name in {f.name for f in PAIR})
    assert after == before and len(before) >= len(PAIR)  # other tests on this server may have cached them too


def test_no_stray_files_in_gradio_temp_after_requests(server):
    _segment(server, 2)
    stray = [p for p in server.gradio_tmp.iterdir() if p.is_file()]
    assert stray == [], f"{len(stray)} stray file(s), e.g. {stray[:3]}"


def test_app_scratch_holds_no_request_files_after_requests(server):
    before = {p for p in server.tmp.rglob("*") if p.is_file()}  # e.g. the gallery, or browser sessions' runs
    _segment(server, 2)
    left = sorted(p for p in server.tmp.rglob("*") if p.is_file() and p not in before)
    assert left == [], f"{len(left)} file(s) left by requests, e.g. {left[:3]}"


def test_api_refuses_weights_it_does_not_offer(server, tmp_path, tiny_weights):
    import shutil

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    elsewhere = tmp_path / "not-offered"
    shutil.copytree(tiny_weights, elsewhere)
    client = Client(server.url, verbose=False, download_files=False)
    for spec in (str(elsewhere), "/etc", "someone/some-model"):
        with pytest.raises(AppError, match="accepted"):
            client.predict([handle_file(str(p)) for p in PAIR], spec, 2, 1, "", 0, api_name="/segment")
    offered = "brats-demo"  # a bundled model: one of the models it offers
    _, summary = client.predict([handle_file(str(p)) for p in PAIR], offered, 2, 1, "", 0, api_name="/segment")
    assert summary["model"] == offered and summary["shape"] == [240, 240]
