"""Download cache tests against a local HTTP server (127.0.0.1, port 0) — never the internet."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vclip.backbone import hub
from vclip.errors import DownloadError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes


class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers per path
        self.redirects: dict[str, str] = {}  # path -> Location
        self.cut_first: dict[str, int] = {}  # path -> bytes sent before cutting the first answer
        self.fail_first: dict[str, list[int]] = {}  # path -> statuses answered before serving
        self.ignore_range: set[str] = set()
        self.chunk_delay = 0.0
        self.before_body = None  # called with the path by each GET of a file, before its body is sent
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    def hits(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        st: _State = self.server.state
        path = self.path
        with st.lock:
            st.requests.append((path, dict(self.headers)))
            fail = st.fail_first.get(path)
            status = fail.pop(0) if fail else None
            cut = st.cut_first.pop(path, None)
        extra = st.headers.get(path, {})
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in st.redirects:
            self.send_response(302)
            self.send_header("Location", st.redirects[path])
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path not in st.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = st.files[path]
        start, code = 0, 200
        rng = self.headers.get("Range")
        if rng and path not in st.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        if st.before_body is not None:
            st.before_body(path)
        self.send_response(code)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        data = body[start:]
        if cut is not None:  # send part of the body, then drop the connection
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(data), 2048):
            self.wfile.write(data[i : i + 2048])
            if st.chunk_delay:
                self.wfile.flush()
                time.sleep(st.chunk_delay)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    httpd.state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VCLIP_CACHE", str(tmp_path / "cache"))
    for var in ("VCLIP_OFFLINE", "HF_HUB_OFFLINE", "VCLIP_HF_ENDPOINT", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(hub, "_BACKOFF_S", 0.0)
    monkeypatch.setattr(hub, "_LOCK_POLL_S", 0.01)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []


# ---------------------------------------------------------------------------------------------


def test_cache_dir(monkeypatch, tmp_path):
    assert hub.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("VCLIP_CACHE")
    assert hub.cache_dir() == Path.home() / ".cache" / "vclip"


OPENAI_URLS = {
    "openai/ViT-B-32": "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "openai/ViT-B-16": "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "openai/ViT-L-14": "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "openai/ViT-L-14-336": "https://openaipublic.azureedge.net/clip/models/"
    "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def test_pretrained_table():
    assert {name: e.url for name, e in hub.PRETRAINED.items()} == OPENAI_URLS
    for name, entry in hub.PRETRAINED.items():
        *_, digest, filename = OPENAI_URLS[name].split("/")
        assert (entry.sha256, entry.filename) == (digest, filename)
        assert entry.arch == name.removeprefix("openai/")
    assert hub.PRETRAINED["openai/ViT-L-14-336"].filename == "ViT-L-14-336px.pt"


def test_download_and_cache_hit(server, tmp_path, monkeypatch):
    server.files["/w/model.pt"] = PAYLOAD
    dest = tmp_path / "cache" / "w" / "model.pt"
    url = server.base + "/w/model.pt"
    out = hub.download(url, dest, sha256=sha(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert leftovers(dest) == ["model.pt", "model.pt.sha256"]  # no .part, no .lock
    assert len(server.hits("/w/model.pt")) == 1

    # second call: no request, and thanks to the sidecar no re-hash either
    def no_hash(path):
        raise AssertionError("re-hashed a file the sidecar vouches for")

    monkeypatch.setattr(hub, "_sha256_file", no_hash)
    assert hub.download(url, dest, sha256=sha(PAYLOAD), progress=False) == dest
    assert len(server.hits("/w/model.pt")) == 1


def test_existing_file_with_wrong_digest_is_reported_not_replaced(server, tmp_path):
    dest = tmp_path / "cache" / "model.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError) as err:
        hub.download(server.base + "/model.pt", dest, sha256=sha(PAYLOAD), progress=False)
    assert str(dest) in str(err.value) and sha(PAYLOAD) in str(err.value)
    assert dest.read_bytes() == b"something else"
    assert server.requests == []


def test_wrong_checksum(server, tmp_path):
    corrupted = PAYLOAD[:-1] + b"\x00"
    server.files["/bad.pt"] = corrupted
    url = server.base + "/bad.pt"
    dest = tmp_path / "cache" / "bad.pt"
    with pytest.raises(DownloadError) as err:
        hub.download(url, dest, sha256=sha(PAYLOAD), progress=False)
    msg = str(err.value)
    assert url in msg and sha(PAYLOAD) in msg and sha(corrupted) in msg
    assert not dest.exists()
    assert leftovers(dest) == []  # neither .part nor .lock


def test_cut_midway_then_resume(server, tmp_path):
    server.files["/cut.pt"] = PAYLOAD
    server.cut_first["/cut.pt"] = 3000
    url = server.base + "/cut.pt"
    dest = tmp_path / "cache" / "cut.pt"
    with pytest.raises(DownloadError) as err:
        hub.download(url, dest, sha256=sha(PAYLOAD), progress=False, retries=0)
    assert url in str(err.value)
    assert leftovers(dest) == ["cut.pt.part"]
    assert (dest.parent / "cut.pt.part").read_bytes() == PAYLOAD[:3000]

    assert hub.download(url, dest, sha256=sha(PAYLOAD), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    hits = server.hits("/cut.pt")
    assert len(hits) == 2 and "Range" not in hits[0] and hits[1]["Range"] == "bytes=3000-"
    assert leftovers(dest) == ["cut.pt", "cut.pt.sha256"]


def test_cut_midway_is_retried_within_one_call(server, tmp_path):
    server.files["/cut.pt"] = PAYLOAD
    server.cut_first["/cut.pt"] = 5000
    dest = tmp_path / "cache" / "cut.pt"
    hub.download(server.base + "/cut.pt", dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [h.get("Range") for h in server.hits("/cut.pt")] == [None, "bytes=5000-"]


def test_5xx_retried_then_clear_error(server, tmp_path):
    server.files["/flaky.pt"] = PAYLOAD
    server.fail_first["/flaky.pt"] = [503]
    dest = tmp_path / "cache" / "flaky.pt"
    hub.download(server.base + "/flaky.pt", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.hits("/flaky.pt")) == 2

    server.files["/down.pt"] = PAYLOAD
    server.fail_first["/down.pt"] = [503] * 10
    with pytest.raises(DownloadError) as err:
        hub.download(server.base + "/down.pt", tmp_path / "cache" / "down.pt", progress=False)
    assert "3 attempt" in str(err.value) and "503" in str(err.value)
    assert server.base + "/down.pt" in str(err.value)
    assert len(server.hits("/down.pt")) == 3


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/f.pt"] = PAYLOAD
    server.ignore_range.add("/f.pt")
    dest = tmp_path / "cache" / "f.pt"
    dest.parent.mkdir(parents=True)
    (dest.parent / "f.pt.part").write_bytes(b"stale bytes from another file")
    hub.download(server.base + "/f.pt", dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.hits("/f.pt")[0]["Range"] == "bytes=29-"


def test_416_restarts_and_complete_part_is_kept(server, tmp_path):
    server.files["/f.pt"] = PAYLOAD
    dest = tmp_path / "cache" / "f.pt"
    dest.parent.mkdir(parents=True)
    part = dest.parent / "f.pt.part"
    part.write_bytes(PAYLOAD + b"junk past the end")  # longer than the file: 416, start over
    hub.download(server.base + "/f.pt", dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [h.get("Range") for h in server.hits("/f.pt")] == [f"bytes={len(PAYLOAD) + 17}-", None]

    dest2 = tmp_path / "cache" / "g.pt"
    server.files["/g.pt"] = PAYLOAD
    (dest2.parent / "g.pt.part").write_bytes(PAYLOAD)  # complete already: 416 */size, just verify
    hub.download(server.base + "/g.pt", dest2, sha256=sha(PAYLOAD), progress=False)
    assert dest2.read_bytes() == PAYLOAD and len(server.hits("/g.pt")) == 1


def test_404(server, tmp_path):
    url = server.base + "/missing.pt"
    dest = tmp_path / "cache" / "missing.pt"
    with pytest.raises(DownloadError) as err:
        hub.download(url, dest, progress=False)
    assert url in str(err.value) and "does not exist" in str(err.value)
    assert leftovers(dest) == []


@pytest.mark.parametrize("var", ["VCLIP_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env(server, tmp_path, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    server.files["/m.pt"] = PAYLOAD
    url = server.base + "/m.pt"
    dest = tmp_path / "cache" / "openai" / "m.pt"
    with pytest.raises(DownloadError) as err:
        hub.download(url, dest, sha256=sha(PAYLOAD), progress=False)
    msg = str(err.value)
    assert url in msg and str(dest) in msg and var in msg
    assert server.requests == []
    # a file put there by hand is used offline
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(PAYLOAD)
    assert hub.download(url, dest, sha256=sha(PAYLOAD), progress=False) == dest
    assert server.requests == []


def test_unreachable_host_says_what_to_download(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "http://weights.example.invalid/clip/ViT-B-32.pt"
    dest = tmp_path / "cache" / "openai" / "ViT-B-32.pt"
    with pytest.raises(DownloadError) as err:
        hub.download(url, dest, progress=False)
    msg = str(err.value)
    assert url in msg and str(dest) in msg and "offline" in msg


def test_concurrent_downloads_fetch_once(server, tmp_path):
    """Three threads download the same file at once. The overlap is forced, not left to timing:
    the server holds its first answer until every thread is accounted for — either fetching
    (a GET) or waiting for the lock (hub's "waiting for another process" warning) — so without
    the lock all three fetch; with it, one does and the others take its file."""
    import logging

    server.files["/big.pt"] = PAYLOAD
    dest = tmp_path / "cache" / "big.pt"
    cond = threading.Condition()
    waiters: set[int] = set()
    gate_timed_out = []

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting for another process" in record.getMessage():
                with cond:
                    waiters.add(threading.get_ident())
                    cond.notify_all()

    def before_body(path):
        with cond:
            cond.notify_all()
            ok = cond.wait_for(lambda: len(server.hits(path)) + len(waiters) >= 3, timeout=60)
        if not ok:
            gate_timed_out.append(path)

    server.before_body = before_body
    handler = Waiting(level=logging.WARNING)
    hub_log = logging.getLogger(hub.__name__)
    hub_log.addHandler(handler)
    results, errors = [], []

    def worker():
        try:
            results.append(hub.download(server.base + "/big.pt", dest, sha256=sha(PAYLOAD),
                                        progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)  # a hang guard only
    finally:
        hub_log.removeHandler(handler)
    assert not any(t.is_alive() for t in threads)
    assert gate_timed_out == [] and errors == [] and results == [dest] * 3
    assert dest.read_bytes() == PAYLOAD
    assert len(server.hits("/big.pt")) == 1 and len(waiters) == 2
    assert leftovers(dest) == ["big.pt", "big.pt.sha256"]


def test_leftover_lock_file_does_not_block(server, tmp_path):
    server.files["/x.pt"] = PAYLOAD
    dest = tmp_path / "cache" / "x.pt"
    dest.parent.mkdir(parents=True)
    (dest.parent / "x.pt.lock").write_text("12345 some-dead-host\n")
    hub.download(server.base + "/x.pt", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD and leftovers(dest) == ["x.pt"]


def test_resolve_known_name(server, tmp_path, monkeypatch):
    server.files["/clip/ViT-B-32.pt"] = PAYLOAD
    url = server.base + "/clip/ViT-B-32.pt"
    entry = hub.Pretrained(url, sha(PAYLOAD), "ViT-B-32.pt", "ViT-B-32")
    monkeypatch.setitem(hub.PRETRAINED, "openai/ViT-B-32", entry)
    path = hub.resolve_pretrained("openai/ViT-B-32", progress=False)
    assert path == tmp_path / "cache" / "openai" / "ViT-B-32.pt"
    assert path.read_bytes() == PAYLOAD


def test_resolve_unknown_name():
    with pytest.raises(DownloadError) as err:
        hub.resolve_pretrained("ViT-B-99")
    for name in hub.PRETRAINED:
        assert name in str(err.value)


CONFIG = json.dumps({"model_type": "clip", "projection_dim": 512}).encode()


def _hub_repo(server, repo, weights_name, weights=PAYLOAD, etag=None):
    """HF layout: config.json served directly, the LFS weights through a 302 to a CDN path whose
    redirect carries X-Linked-Etag (quoted), as huggingface.co does."""
    root = f"/{repo}/resolve/main"
    server.files[f"{root}/config.json"] = CONFIG
    cdn = f"/cdn/{sha(weights)}"
    server.files[cdn] = weights
    server.redirects[f"{root}/{weights_name}"] = cdn
    server.headers[f"{root}/{weights_name}"] = {"X-Linked-Etag": f'"{etag or sha(weights)}"'}
    return root


def test_resolve_hub_id(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VCLIP_HF_ENDPOINT", server.base + "/")
    root = _hub_repo(server, "acme/tiny-clip", "model.safetensors")
    folder = hub.resolve_pretrained("acme/tiny-clip", progress=False)
    assert folder == tmp_path / "cache" / "hf" / "acme--tiny-clip" / "main"
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "model.safetensors").read_bytes() == PAYLOAD
    assert (folder / "model.safetensors.sha256").read_text().split()[0] == sha(PAYLOAD)
    assert not (folder / "pytorch_model.bin").exists()
    n = len(server.requests)
    assert server.hits(f"{root}/pytorch_model.bin") == []
    assert hub.resolve_pretrained("acme/tiny-clip", progress=False) == folder
    assert len(server.requests) == n  # cached: no request


def test_resolve_hub_falls_back_to_pytorch_model_bin(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    root = _hub_repo(server, "acme/old-clip", "pytorch_model.bin")
    folder = hub.resolve_pretrained("acme/old-clip", progress=False)
    assert (folder / "pytorch_model.bin").read_bytes() == PAYLOAD
    assert not (folder / "model.safetensors").exists()
    assert len(server.hits(f"{root}/model.safetensors")) == 1  # tried first, 404
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "pytorch_model.bin", "pytorch_model.bin.sha256"]


def test_resolve_hub_checks_linked_etag(server, monkeypatch):
    monkeypatch.setenv("VCLIP_HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # VCLIP_HF_ENDPOINT wins
    _hub_repo(server, "acme/broken", "model.safetensors", etag="ab" * 32)
    with pytest.raises(DownloadError) as err:
        hub.resolve_pretrained("acme/broken", progress=False)
    assert "ab" * 32 in str(err.value) and sha(PAYLOAD) in str(err.value)
    assert "acme/broken/resolve/main/model.safetensors" in str(err.value)


def test_resolve_hub_missing_repo_and_offline(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VCLIP_HF_ENDPOINT", server.base)
    with pytest.raises(DownloadError) as err:
        hub.resolve_pretrained("acme/nope", progress=False)
    assert "acme/nope" in str(err.value) and "does not exist" in str(err.value)

    monkeypatch.setenv("VCLIP_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        hub.resolve_pretrained("acme/tiny-clip", progress=False)
    msg = str(err.value)
    assert f"{server.base}/acme/tiny-clip/resolve/main/model.safetensors" in msg
    assert str(tmp_path / "cache" / "hf" / "acme--tiny-clip" / "main") in msg
