"""Frame cache: every frame of a video decoded once, stored as uint8 and memory-mapped at load time.

``vclip data prepare --cache SRC DST`` decodes each video under ``SRC`` with the PyAV reader
(``short_side``: resized as :class:`vclip.data.decode.PyAVReader` does with the same option) and
writes, for ``SRC/a/b.mp4``:

``DST/a/b.npy``        the shard: uint8 ``[N, H, W, 3]`` RGB, a plain NumPy ``.npy`` file (its header
                       is the index: shape and data offset), read with ``np.load(mmap_mode="r")``.
``DST/a/b.npy.json``   its metadata: source path, size and modification time, frame count, fps,
                       sizes, the decode settings (``short_side``, interpolation, cache format
                       version), the decoder's versions and the shard's byte size and SHA-256.
``DST/cache_manifest.json``  all videos' metadata together, rewritten at the end of each build.

Writes are atomic (temporary file, then rename) and the metadata file is written last: it is the
commit marker, so an interrupted build leaves only finished videos, and the next run skips them
(source size/mtime, settings and shard size unchanged) and continues with the rest. A video whose
source or decode settings changed is rebuilt; ``--verify`` also re-hashes every finished shard and
rebuilds the ones whose SHA-256 differs. Shards and their metadata are not fsync'ed (a cache is
derived data, and the fsyncs cost ≈ 15 ms per video on a 2-core VM, more than half the decoding of
one of the demo's tiny videos): after
a machine crash or power loss, run the build once with ``--verify``. The manifest is fsync'ed.

The reader (backend ``cache``: ``data.backend: cache`` with ``data.root`` the cache folder) opens
the metadata and the shard's header, checks the shard's size against both, and serves frame
indices by slicing the memory map: no decoding, one copy of the wanted frames. When the recorded
source still exists and its size or mtime changed, it refuses with a message telling to rebuild;
a missing or corrupt shard names the file and the command that fixes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from vclip.data.decode import VideoReader
from vclip.errors import VideoDecodeError
from vclip.io import atomic_write_text, sha256_file, temp_path

#: bumped when the shard layout or the decoding rule changes (invalidates every shard)
CACHE_VERSION = 1
#: swscale interpolation of the resize (as ``vclip data prepare``'s re-encoding)
INTERPOLATION = "AREA"
MANIFEST = "cache_manifest.json"
#: frames decoded per ``get_frames`` call while building (bounds memory for long videos)
CHUNK = 64


def shard_path(video_path) -> Path:
    """The shard of a video path under the cache folder (``a/b.mp4`` → ``a/b.npy``)."""
    p = Path(video_path)
    return p if p.suffix == ".npy" else p.with_suffix(".npy")


def meta_path(shard) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name + ".json")


def settings(short_side: int) -> dict:
    """The decode settings a shard depends on: a change of any rebuilds it."""
    return {"cache_version": CACHE_VERSION, "short_side": int(short_side), "interpolation": INTERPOLATION}


def _source_stat(src: Path) -> dict:
    st = os.stat(src)
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def _decoder_versions() -> dict:
    try:
        import av

        return {"pyav": av.__version__, "libavcodec": ".".join(str(x) for x in av.library_versions.get("libavcodec", ()))}
    except Exception:  # noqa: BLE001
        return {}


def read_meta(shard) -> dict | None:
    """The metadata of ``shard``, or None when it is missing or unreadable."""
    try:
        with open(meta_path(shard), encoding="utf-8") as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def is_current(src: Path, shard: Path, short_side: int, verify: bool = False) -> bool:
    """Whether ``shard`` is a finished cache of ``src`` with these settings (metadata present and
    matching the source's size/mtime and the settings, shard size as recorded; with ``verify`` the
    SHA-256 too)."""
    meta = read_meta(shard)
    if meta is None or meta.get("settings") != settings(short_side):
        return False
    try:
        if {k: meta.get(k) for k in ("source_size", "source_mtime_ns")} != _source_stat(src):
            return False
        if os.path.getsize(shard) != meta.get("bytes"):
            return False
    except OSError:
        return False
    return not verify or sha256_file(shard) == meta.get("sha256")


def _replace_into(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` onto ``path`` (atomic; no fsync, see the module docstring);
    the temporary file is removed when ``write`` fails or is interrupted."""
    tmp = temp_path(path, path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def build_one(src: Path, shard: Path, short_side: int = 0, threads: int = 1, verify: bool = False) -> tuple[str, int]:
    """Cache ``src`` into ``shard`` (+ its metadata). Returns ``("skipped" | "done", frames)``.
    Raises :class:`VideoDecodeError` for a video that cannot be decoded."""
    from vclip.data.decode import PyAVReader

    src, shard = Path(src), Path(shard)
    if is_current(src, shard, short_side, verify):
        return "skipped", int(read_meta(shard)["num_frames"])
    stat = _source_stat(src)
    shard.parent.mkdir(parents=True, exist_ok=True)
    mp = meta_path(shard)
    if mp.exists():
        mp.unlink()  # uncommit first: a crash below must not leave old metadata over a new shard
    with PyAVReader(str(src), threads=threads, short_side=short_side) as r:
        n, h, w = r.num_frames, r.height, r.width

        def write_shard(tmp):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
            for a in range(0, n, CHUNK):
                arr[a : a + CHUNK] = r.get_frames(np.arange(a, min(n, a + CHUNK)))
            arr.flush()
            del arr

        _replace_into(shard, write_shard)
        meta = {
            "source": str(src.resolve()), **stat, "num_frames": n, "fps": float(r.fps),
            "duration": float(r.duration), "height": h, "width": w,
            "source_height": r.source_height, "source_width": r.source_width,
            "settings": settings(short_side), "decoder": _decoder_versions(),
            "bytes": os.path.getsize(shard), "sha256": sha256_file(shard), "created": time.time(),
        }
    _replace_into(mp, lambda tmp: tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
    return "done", n


def write_manifest(dst: Path, rels: list[str], short_side: int) -> Path:
    """``DST/cache_manifest.json``: the settings and every finished video's metadata, by relative path."""
    videos = {}
    for rel in rels:
        meta = read_meta(shard_path(dst / rel))
        if meta is not None:
            videos[rel] = meta
    record = {"cache_version": CACHE_VERSION, "settings": settings(short_side), "videos": videos}
    return atomic_write_text(dst / MANIFEST, json.dumps(record, indent=1))


def _build_job(job):
    src, shard, short_side = job
    build_one(Path(src), Path(shard), short_side)
    return shard


def build_many(videos, dst, short_side: int = 0, workers: int = 1) -> list[Path]:
    """Cache ``videos`` (paths) under ``dst``, keeping their paths relative to their common folder;
    returns the paths to open with backend ``cache`` (one per video, in order). Finished shards
    are reused; a video that cannot be decoded raises. (``vclip data prepare --cache`` is the
    command for datasets; this is the building block benchmarks use.)"""
    videos = [Path(v).resolve() for v in videos]
    dst = Path(dst)
    base = Path(os.path.commonpath([str(v.parent) for v in videos])) if videos else Path("/")
    rels = [v.relative_to(base) for v in videos]
    jobs = [(str(v), str(shard_path(dst / r)), int(short_side)) for v, r in zip(videos, rels)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            list(pool.imap_unordered(_build_job, jobs, chunksize=4))
    else:
        for job in jobs:
            _build_job(job)
    return [dst / r for r in rels]


_FIX = "rebuild it with `vclip data prepare --cache SRC CACHE_DIR` (only missing or changed videos are redone)"


class CacheReader(VideoReader):
    """Reads a video's frames from its frame-cache shard (memory-mapped; see the module docstring).

    ``check_source``: when the recorded source file exists, refuse a shard whose source's size or
    mtime changed since it was built (one ``stat``). ``verify``: re-hash the shard at open and
    compare with the recorded SHA-256 (reads the whole shard; for audits, not for training).
    """

    backend = "cache"

    def __init__(self, path, *, check_source: bool = True, verify: bool = False, max_pixels: int = 0):
        self.path = os.fspath(path)
        shard = shard_path(self.path)
        self.shard = str(shard)
        self._frames = None
        meta = read_meta(shard)
        if meta is None:
            what = "unreadable" if meta_path(shard).exists() else "missing"
            raise VideoDecodeError(f"{meta_path(shard)}: frame cache metadata {what} (video not cached, or its build "
                                   f"was interrupted); {_FIX}")
        try:
            n, h, w = int(meta["num_frames"]), int(meta["height"]), int(meta["width"])
            size = int(meta["bytes"])
        except (KeyError, TypeError, ValueError):
            raise VideoDecodeError(f"{meta_path(shard)}: corrupt frame cache metadata; {_FIX}") from None
        if check_source:
            src = meta.get("source")
            try:
                now = _source_stat(Path(src)) if src else None
            except OSError:
                now = None  # the sources are elsewhere (e.g. only the cache was copied): trust the shard
            if now is not None and now != {k: meta.get(k) for k in now}:
                raise VideoDecodeError(f"{self.shard}: stale frame cache: its source {src} changed since the cache was "
                                       f"built (size or modification time); {_FIX}")
        try:
            actual = os.path.getsize(shard)
        except FileNotFoundError:
            raise VideoDecodeError(f"{self.shard}: frame cache shard missing; {_FIX}") from None
        except OSError as e:
            raise VideoDecodeError(f"{self.shard}: cannot access frame cache shard ({e.strerror or e}); {_FIX}") from None
        if actual != size:
            raise VideoDecodeError(f"{self.shard}: corrupt frame cache shard ({actual} bytes, {size} recorded: "
                                   f"truncated or overwritten); delete it and {_FIX}")
        if verify and sha256_file(shard) != meta.get("sha256"):
            raise VideoDecodeError(f"{self.shard}: corrupt frame cache shard (SHA-256 differs from the recorded one); "
                                   f"delete it and {_FIX}")
        try:
            frames = np.load(shard, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - ValueError/OSError/EOFError on a damaged header
            raise VideoDecodeError(f"{self.shard}: corrupt frame cache shard ({type(e).__name__}: {e}); "
                                   f"delete it and {_FIX}") from None
        if frames.dtype != np.uint8 or frames.shape != (n, h, w, 3):
            raise VideoDecodeError(f"{self.shard}: corrupt frame cache shard (array {frames.dtype} "
                                   f"{list(frames.shape)}, metadata says uint8 {[n, h, w, 3]}); delete it and {_FIX}")
        if n <= 0:
            raise VideoDecodeError(f"{self.shard}: frame cache shard holds no frames; {_FIX}")
        self._frames = frames
        self.meta = meta
        self.num_frames, self.height, self.width = n, h, w
        self.fps = float(meta.get("fps") or 30.0)
        self.duration = float(meta.get("duration") or n / self.fps)

    def get_frames(self, indices) -> np.ndarray:
        idx = self._check_indices(indices)
        return np.ascontiguousarray(self._frames[idx])  # fancy indexing copies only these frames

    def _read(self, wanted):  # pragma: no cover - get_frames is overridden
        return dict(zip(wanted, self.get_frames(wanted)))

    def close(self) -> None:
        self._frames = None  # drops the memory map
