"""Atomic file writes: a file under its final name is always complete.

Every file vclip writes for later use (results, configs, split files, descriptor files, caches,
figures, weights) goes through this module. A write happens in three steps:

1. the content is written to a temporary file in the **same folder** as the target (so the final
   rename never crosses a file system). Its name is hidden and unique per writer —
   ``.<name>.<pid>-<random>.tmp`` — so concurrent writers (threads or processes) never share a
   temporary file;
2. on success the temporary file is ``fsync``'ed and moved onto the target with :func:`os.replace`
   (atomic on POSIX and Windows: a reader sees the old file or the new one, never a mix), then the
   folder is ``fsync``'ed so the rename itself survives a power cut (best effort: skipped where the
   platform cannot open folders);
3. on failure (any exception, ``KeyboardInterrupt`` included) the temporary file is removed and an
   existing target is left untouched.

Conventions:

* **Missing parent folders are created** (``mkdir -p``): every caller wanted that, so it is not an
  option.
* Concurrent writers of one target: the last rename wins; the file is always exactly one writer's
  content.
* The new file gets the default permissions (``0o666`` minus the umask), not the old target's —
  whatever mode the writer created it with (``safetensors`` creates ``0o600`` files) — and a
  symlink at the target is replaced by the file, not followed.
* Text is encoded as given (UTF-8 by default), with no newline translation.

API:

* :func:`atomic_write_text` / :func:`atomic_write_bytes` — write a ``str`` / ``bytes`` in one call;
* :func:`atomic_write` — a context manager yielding the temporary path, for writers that want a
  file name (``torch.save``, ``safetensors``, matplotlib, PyAV, ...);
* :func:`fsync_file` / :func:`fsync_dir` — the two flushes, for code that makes whole folders
  atomic itself (training checkpoints); :func:`default_file_mode` / :func:`set_default_mode` — the
  permissions such code gives its files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "temp_path", "fsync_file", "fsync_dir",
           "default_file_mode", "set_default_mode"]

PathLike = str | os.PathLike


def temp_path(path: PathLike, suffix: str = "") -> Path:
    """A fresh temporary sibling of ``path``: ``.<name>.<pid>-<12 hex digits>.tmp<suffix>``.
    Hidden, named after the target (so a leftover is easy to attribute), and unique per process and
    call. Nothing is created."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp{suffix}")


def _umask() -> int:
    """The process umask. Read from ``/proc/self/status`` where it can be (Linux: no change to the
    process state); elsewhere set and restored at once, as ``os.umask`` is the only way to read it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives a new file: ``0o666`` minus the umask."""
    return 0o666 & ~_umask()


def set_default_mode(path: PathLike) -> None:
    """Give the file ``path`` :func:`default_file_mode` — for files a library created with narrower
    permissions (``safetensors`` and ``tempfile`` create ``0o600`` files). Best effort: a file
    system without POSIX modes is left as it is."""
    try:
        os.chmod(path, default_file_mode())
    except (OSError, NotImplementedError):
        pass


def fsync_file(path: PathLike) -> None:
    """Flush a file's data to the storage device."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: PathLike) -> None:
    """Flush a folder's entries (renames, new files) to the storage device. Best effort: does
    nothing where folders cannot be opened or synced (e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit, move the file written there onto
    ``path`` atomically (fsync'ed); on an exception, delete it and leave ``path`` as it was.

    The caller creates the file (``open(tmp, "wb")``, ``torch.save(obj, tmp)``, ...) and must have
    closed it when the block ends. ``suffix`` ends the temporary name, for writers that infer the
    format from the extension (``suffix=".png"`` for matplotlib). Parent folders are created.
    Raises :class:`FileNotFoundError` when the block ends without having created the file. ::

        with atomic_write("out/model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{path}: nothing was written to the temporary file {tmp.name}")
        set_default_mode(tmp)  # the writer's own mode may be narrower (safetensors: 0o600)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:  # never created, or already gone
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); return ``path`` as a Path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
    return path


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`), encoded with ``encoding``
    and no newline translation; return ``path`` as a Path."""
    return atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
