"""Download cache for pretrained CLIP weights (standard library + tqdm only).

* :func:`cache_dir` — ``$VCLIP_CACHE`` or ``~/.cache/vclip``.
* :data:`PRETRAINED` — OpenAI's CLIP checkpoints by name (``openai/ViT-B-32`` ...).
* :func:`download` — one URL into one cache file: resumable, checksummed, retried, locked.
* :func:`resolve_pretrained` — a known name to its ``.pt`` file, or a Hugging Face hub id
  (``org/name``) to a directory holding ``config.json`` and the weights.

How a download works: bytes stream into ``<file>.part`` beside the final path; a ``.part`` left by
an interrupted run is resumed with an HTTP ``Range`` request. Only a file whose SHA-256 matched
(when one is known) is moved to the final name with :func:`os.replace`, so a file under the final
name is always complete. The verified digest is remembered in ``<file>.sha256`` together with the
file's size and mtime, so later loads do not hash hundreds of megabytes again. Writers of the same
file are serialised by an advisory lock on ``<file>.lock`` (``flock``; the kernel drops it when a
process dies, so a lock file left behind by a killed run never blocks anyone).
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

from tqdm import tqdm

from vclip import __version__
from vclip.errors import DownloadError
from vclip.io import atomic_write_text, sha256_file as _sha256_file

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

__all__ = ["PRETRAINED", "Pretrained", "cache_dir", "download", "hf_endpoint", "resolve_pretrained"]

log = logging.getLogger(__name__)

_USER_AGENT = f"vclip/{__version__} (python-urllib)"
_CHUNK = 1 << 20
#: Seconds before the first retry; doubles for each further one. Tests set it to 0.
_BACKOFF_S = 1.0
#: Seconds between two tries to take a lock held by another process.
_LOCK_POLL_S = 0.2
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Pretrained:
    """A named checkpoint: where it lives, its SHA-256, the cache file name and the architecture
    (a name of ``vclip.backbone.config``)."""

    url: str
    sha256: str
    filename: str
    arch: str


def _openai(url: str, arch: str) -> Pretrained:
    # OpenAI publishes each file under a folder named after its SHA-256: .../<sha256>/<file>
    *_, digest, filename = url.split("/")
    return Pretrained(url=url, sha256=digest, filename=filename, arch=arch)


_OPENAI = "https://openaipublic.azureedge.net/clip/models"

#: Known names: OpenAI's released ``.pt`` checkpoints of the four ViT CLIPs.
PRETRAINED: dict[str, Pretrained] = {
    "openai/ViT-B-32": _openai(
        f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        "ViT-B-32",
    ),
    "openai/ViT-B-16": _openai(
        f"{_OPENAI}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        "ViT-B-16",
    ),
    "openai/ViT-L-14": _openai(
        f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        "ViT-L-14",
    ),
    "openai/ViT-L-14-336": _openai(
        f"{_OPENAI}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/"
        "ViT-L-14-336px.pt",
        "ViT-L-14-336",
    ),
}


# --------------------------------------------------------------------------------------------
# Environment


def cache_dir() -> Path:
    """Root of the weight cache: ``$VCLIP_CACHE`` if set, else ``~/.cache/vclip``."""
    env = os.environ.get("VCLIP_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vclip"


def hf_endpoint() -> str:
    """Base URL of the Hugging Face hub: ``$VCLIP_HF_ENDPOINT``, else ``$HF_ENDPOINT``, else
    https://huggingface.co."""
    for var in ("VCLIP_HF_ENDPOINT", "HF_ENDPOINT"):
        value = os.environ.get(var, "").strip()
        if value:
            return value.rstrip("/")
    return "https://huggingface.co"


def _offline_var() -> str | None:
    """The environment variable that puts vclip offline (``VCLIP_OFFLINE`` / ``HF_HUB_OFFLINE``)."""
    for var in ("VCLIP_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


# --------------------------------------------------------------------------------------------
# Checksums and the sidecar


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_sidecar(dest: Path, digest: str) -> None:
    """Remember that ``dest`` (at its current size and mtime) has SHA-256 ``digest``. Best effort:
    a read-only cache only costs a re-hash on the next load."""
    try:
        st = dest.stat()
        atomic_write_text(_sidecar(dest), f"{digest} {st.st_size} {st.st_mtime_ns}\n")
    except OSError as e:
        log.debug("could not write %s: %s", _sidecar(dest), e)


def _sidecar_says(dest: Path, digest: str) -> bool:
    """True when the sidecar records ``digest`` for ``dest`` as it is now (same size and mtime)."""
    try:
        fields = _sidecar(dest).read_text().split()
        st = dest.stat()
    except OSError:
        return False
    return fields == [digest, str(st.st_size), str(st.st_mtime_ns)]


def _check_existing(url: str, dest: Path, sha256: str | None) -> None:
    """Accept a file already under its final name, or say why it cannot be used."""
    if sha256 is None or _sidecar_says(dest, sha256):
        return
    actual = _sha256_file(dest)
    if actual != sha256:
        raise DownloadError(
            f"{dest} exists but its SHA-256 is {actual}, expected {sha256} (the file at {url}); "
            f"it is damaged or a different file. Delete it and run again to download a fresh copy."
        )
    _write_sidecar(dest, actual)


def _linked_etag(headers_seen) -> str | None:
    """The LFS SHA-256 the hub sends as ``X-Linked-Etag`` (possibly quoted / weak), if any."""
    for headers in headers_seen:
        value = headers.get("X-Linked-Etag") if headers is not None else None
        if not value:
            continue
        value = value.strip()
        if value.startswith("W/"):
            value = value[2:]
        value = value.strip('"').lower()
        if _HEX64.fullmatch(value):
            return value
    return None


# --------------------------------------------------------------------------------------------
# Lock


class _FileLock:
    """Exclusive advisory lock on ``path`` between processes (and threads opening it separately).

    ``flock`` is released by the kernel when its holder dies, so a leftover lock file is harmless.
    The holder removes the file when done; a waiter that locked a file removed meanwhile (its inode
    no longer sits at ``path``) lets go and tries again on the new one.
    """

    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        self.fd: int | None = None

    def __enter__(self) -> _FileLock:
        waiting = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DownloadError(f"cannot create lock file {self.path}: {e}") from e
            try:
                if _try_lock(fd):
                    if _same_file(fd, self.path):
                        self.fd = fd
                        try:
                            os.ftruncate(fd, 0)
                            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                        except OSError:
                            pass
                        return self
                    _unlock(fd)
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if not waiting:
                waiting = True
                log.warning("waiting for another process downloading %s (lock file %s)",
                            self.what, self.path)
            time.sleep(_LOCK_POLL_S)

    def __exit__(self, *exc) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if os.name == "posix":  # an open file cannot be removed on Windows; leave it there
            try:
                os.unlink(self.path)
            except OSError:
                pass
        _unlock(fd)
        os.close(fd)


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    return True  # pragma: no cover - no locking primitive: single writer assumed


def _unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --------------------------------------------------------------------------------------------
# Transfer


class _NotFound(DownloadError):
    """HTTP 404 (lets the hub fall back from one file name to another)."""


class _Transient(Exception):
    """A failure worth another attempt (connection reset, timeout, 5xx, short body)."""


class _Restart(Exception):
    """The ``.part`` cannot be resumed; drop it and start from byte zero."""


class _RecordRedirects(HTTPRedirectHandler):
    """Follows redirects like urllib does, keeping each hop's headers: the hub sends
    ``X-Linked-Etag`` on its redirect to the CDN, not on the CDN's answer."""

    def __init__(self):
        self.hops = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"Download {url} on a machine with internet access and copy it to {dest}; "
        f"the next run will pick it up."
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _attempt(url: str, dest: Path, part: Path, want_header_digest: bool, progress: bool,
             timeout: float) -> str | None:
    """One request: bring ``part`` up to the full file. Returns the ``X-Linked-Etag`` digest when
    asked for and sent. Raises ``_Transient`` / ``_Restart`` / ``DownloadError``."""
    offset = part.stat().st_size if part.exists() else 0
    req = Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    redirects = _RecordRedirects()
    opener = build_opener(redirects)
    try:
        resp = opener.open(req, timeout=timeout)
    except HTTPError as e:
        seen = [e.headers, *reversed(redirects.hops)]
        e.close()
        if e.code == 416:
            _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
            if total is not None and total == offset:  # the .part already holds every byte
                return _linked_etag(seen) if want_header_digest else None
            raise _Restart(f"server refused the range bytes={offset}- (HTTP 416)") from e
        if e.code == 404:
            raise _NotFound(f"{url} does not exist (HTTP 404 Not Found).") from e
        if e.code in (408, 425, 429) or 500 <= e.code < 600:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        if e.code in (401, 403):
            raise DownloadError(
                f"{url} refused access (HTTP {e.code} {e.reason}): the file does not exist or is "
                f"private/gated (vclip sends no credentials). {_manual_hint(url, dest)}"
            ) from e
        raise DownloadError(f"{url} could not be downloaded: HTTP {e.code} {e.reason}.") from e
    except URLError as e:
        reason = e.reason
        unreachable = isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
            isinstance(reason, OSError)
            and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)
        )
        if unreachable:
            host = urlsplit(url).hostname
            raise DownloadError(
                f"cannot reach {host} to download {url} ({reason}); this machine looks offline. "
                f"{_manual_hint(url, dest)}"
            ) from e
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"TLS certificate check failed for {url}: {reason}.") from e
        raise _Transient(str(reason)) from e
    except (OSError, http.client.HTTPException) as e:  # raised while reading the status line
        raise _Transient(f"{type(e).__name__}: {e}") from e

    with resp:
        digest = None
        if want_header_digest:
            digest = _linked_etag([resp.headers, *reversed(redirects.hops)])
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and resp.status == 206:
            start, _ = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                raise _Restart(f"server answered bytes={offset}- from byte {start}")
            mode = "ab"
        else:  # 200: the server ignored the range (or there was none) — the body starts at zero
            offset, mode = 0, "wb"
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(
                        f"{type(e).__name__} after {offset + received} bytes: {e}"
                    ) from e
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DownloadError(f"cannot write {part}: {e}") from e
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < length:
            raise _Transient(
                f"connection closed after {offset + received} of {total} bytes"
            )
    return digest


def _download(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float,
              retries: int, want_header_digest: bool) -> Path:
    dest = Path(dest)
    expected = sha256.strip().lower() if sha256 else None
    if dest.is_file():
        _check_existing(url, dest, expected)
        return dest
    var = _offline_var()
    if var:
        digest = f" (SHA-256 {expected})" if expected else ""
        raise DownloadError(
            f"{dest} is not in the cache and downloads are off ({var}=1). "
            f"Download {url}{digest} elsewhere and copy it to {dest}; the next run will pick it up."
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the cache folder {dest.parent}: {e}") from e

    part = dest.with_name(dest.name + ".part")
    with _FileLock(dest.with_name(dest.name + ".lock"), dest.name):
        if dest.is_file():  # another process finished it while we waited
            _check_existing(url, dest, expected)
            return dest
        failures = 0
        restarts = 0
        while True:
            try:
                header_digest = _attempt(url, dest, part, want_header_digest, progress, timeout)
                break
            except _Restart as e:
                restarts += 1
                part.unlink(missing_ok=True)
                if restarts > 2:
                    raise DownloadError(f"{url}: cannot resume the download ({e}).") from e
                log.info("%s: %s; starting over", url, e)
            except _Transient as e:
                failures += 1
                if failures > retries:
                    kept = ""
                    if part.exists():
                        kept = f" The partial file {part} is kept and will be resumed."
                    raise DownloadError(
                        f"downloading {url} failed after {failures} attempt(s): {e}.{kept} "
                        f"{_manual_hint(url, dest)}"
                    ) from e
                delay = _BACKOFF_S * 2 ** (failures - 1)
                log.warning("%s: %s; retrying in %.0f s", url, e, delay)
                time.sleep(delay)

        expected = expected or header_digest
        if expected:
            actual = _sha256_file(part)
            if actual != expected:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}. "
                    f"The partial download was deleted; run again to retry."
                )
        os.replace(part, dest)
        if expected:
            _write_sidecar(dest, expected)
    return dest


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True,
             timeout: float = 60, *, retries: int = 2) -> Path:
    """Fetch ``url`` into ``dest`` unless it is there already; return ``dest``.

    An existing ``dest`` is checked against ``sha256`` when given (the digest is remembered in
    ``dest.sha256`` so this is cheap the next time). Otherwise the file streams into
    ``dest.part`` — resumed with a ``Range`` request if one is left over — and is moved to
    ``dest`` only once complete and matching ``sha256``. Connection resets, timeouts, short
    bodies and 5xx answers are retried ``retries`` times with backoff. Raises
    :class:`~vclip.errors.DownloadError` on 404, checksum mismatch, exhausted retries, or when
    offline (no network, ``VCLIP_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) — the message names the URL
    and where to put the file by hand.
    """
    try:
        return _download(url, Path(dest), sha256, progress, timeout, retries,
                         want_header_digest=False)
    except _NotFound as e:  # the private subclass is only for the hub's fallback
        raise DownloadError(str(e)) from e.__cause__


# --------------------------------------------------------------------------------------------
# Names


def resolve_pretrained(name: str, revision: str = "main", *, progress: bool = True) -> Path:
    """Local path of pretrained weights, downloading them on first use.

    A name of :data:`PRETRAINED` gives its ``.pt`` file under ``cache_dir()/openai``. Any other
    ``org/name`` is a Hugging Face hub id: ``config.json`` and ``model.safetensors`` (or
    ``pytorch_model.bin`` when the repo has no safetensors) of ``revision`` are fetched into
    ``cache_dir()/hf/org--name/<revision>/``, and that directory is returned.
    """
    entry = PRETRAINED.get(name)
    if entry is not None:
        dest = cache_dir() / "openai" / entry.filename
        return download(entry.url, dest, sha256=entry.sha256, progress=progress)
    if not isinstance(name, str) or not _HUB_ID.fullmatch(name):
        known = ", ".join(PRETRAINED)
        raise DownloadError(
            f"unknown pretrained weights {name!r}: use one of {known}, "
            f"or a Hugging Face hub id of the form 'org/name'."
        )
    return _resolve_hub(name, revision, progress)


_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _resolve_hub(repo_id: str, revision: str, progress: bool) -> Path:
    if not revision or revision in (".", ".."):
        raise DownloadError(f"invalid revision {revision!r} for {repo_id}.")
    org, repo = repo_id.split("/")
    rev = quote(revision, safe="")
    folder = cache_dir() / "hf" / f"{org}--{repo}" / rev
    base = f"{hf_endpoint()}/{org}/{repo}/resolve/{rev}"

    def have_weights() -> bool:
        return any((folder / w).is_file() for w in _HUB_WEIGHTS)

    if (folder / "config.json").is_file() and have_weights():
        return folder
    var = _offline_var()
    if var:
        raise DownloadError(
            f"{repo_id}@{revision} is not in the cache and downloads are off ({var}=1). "
            f"Download {base}/config.json and {base}/model.safetensors "
            f"(or {base}/pytorch_model.bin) elsewhere and copy them into {folder}; "
            f"the next run will pick them up."
        )

    def fetch(filename: str) -> Path:
        return _download(f"{base}/{filename}", folder / filename, None, progress, 60, 2,
                         want_header_digest=True)

    try:
        fetch("config.json")
    except _NotFound as e:
        raise DownloadError(
            f"{base}/config.json does not exist: no Hugging Face repo {repo_id!r} with revision "
            f"{revision!r} at {hf_endpoint()}. Built-in names are {', '.join(PRETRAINED)}."
        ) from e
    if not have_weights():
        try:
            fetch(_HUB_WEIGHTS[0])
        except _NotFound:
            try:
                fetch(_HUB_WEIGHTS[1])
            except _NotFound as e:
                raise DownloadError(
                    f"{repo_id}@{revision} has neither {base}/model.safetensors nor "
                    f"{base}/pytorch_model.bin (sharded checkpoints are not supported)."
                ) from e
    return folder
