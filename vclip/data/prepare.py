"""``vclip data prepare SRC DST``: re-encode a video dataset for fast training-time decoding.

Every video under ``SRC`` (by extension) is decoded and written to the same relative path under
``DST`` as an H.264 ``.mp4``: short side resized to ``--short-side`` (never upscaled; both sides
even), a keyframe every ``--gop-seconds`` (1 s by default, so sparse frame reads can seek), constant
frame rate at the source's average rate with the source's frames in decode order (a
variable-frame-rate source keeps its frame count, so frame indices do not change), no audio.
With ``--frames`` it writes mmaction2 "rawframes" JPEG folders (``img_00001.jpg`` ...) instead;
with ``--cache`` a frame cache (uint8 frames in memory-mapped ``.npy`` shards + metadata and a
manifest; short side 256 unless ``--short-side`` says otherwise; see :mod:`vclip.data.cache`).

The run is parallel (one process per worker), shows a progress bar and is resumable: an output is
first written to ``name.tmp.mp4`` (``name.tmp/`` for frames), checked by decoding it, then renamed,
so an existing output is a finished one and is skipped on the next run (after a quick check that it
opens). A video that fails is logged, listed in ``DST/prepare_failures.txt`` (``path<TAB>reason``)
and counted; the others go on. Exit status 0 when every video is ready, 1 when some failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from vclip.errors import VclipError, VideoDecodeError
from vclip.io import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_EXTS = ("mp4", "avi", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "3gp", "ogv")
FAILURES_FILE = "prepare_failures.txt"


@dataclass
class PrepareOptions:
    short_side: int = 320
    crf: int = 23
    preset: str = "veryfast"
    gop_seconds: float = 1.0
    frames: bool = False
    jpeg_quality: int = 90
    template: str = "img_{:05d}.jpg"
    threads: int = 1  # FFmpeg threads per worker
    cache: bool = False  # write a frame cache (vclip.data.cache) instead of videos
    verify: bool = False  # with cache: re-hash finished shards, rebuild mismatches


@dataclass
class Result:
    rel: str
    status: str  # "done" | "skipped" | "failed"
    reason: str = ""
    frames: int = 0


# --------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------
def find_videos(src: Path, exts, exclude: Path | None = None) -> list[Path]:
    """Relative paths of the files under ``src`` whose extension is in ``exts``, sorted."""
    exts = {e.lower().lstrip(".") for e in exts}
    found = []
    for root, dirs, files in os.walk(src):
        rootp = Path(root)
        if exclude is not None and (rootp == exclude or exclude in rootp.parents):
            dirs[:] = []
            continue
        dirs.sort()
        for name in files:
            if name.endswith(".tmp.mp4"):
                continue
            if name.rsplit(".", 1)[-1].lower() in exts and "." in name:
                found.append((rootp / name).relative_to(src))
    return sorted(found)


def output_path(dst: Path, rel: Path, frames: bool, cache: bool = False) -> Path:
    if cache:
        return dst / rel.with_suffix(".npy")
    return dst / rel.with_suffix("") if frames else dst / rel.with_suffix(".mp4")


def temp_path(out: Path, frames: bool) -> Path:
    return out.with_name(out.name + ".tmp") if frames else out.with_name(out.stem + ".tmp.mp4")


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` (no upscaling; 0: keep), both even."""
    short = min(width, height)
    if short_side and short > short_side:
        scale = short_side / short
        if width <= height:
            w, h = short_side, height * scale
        else:
            w, h = width * scale, short_side
    else:
        w, h = width, height
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


# --------------------------------------------------------------------------------------------
# one video (runs in a worker process)
# --------------------------------------------------------------------------------------------
def is_finished(out: Path, frames: bool) -> bool:
    """Whether ``out`` is a finished output (written by a rename, so only a quick check)."""
    from vclip.data.decode import open_video

    if frames:
        return out.is_dir() and any(out.iterdir())
    if not out.is_file():
        return False
    try:
        with open_video(out) as r:
            return r.num_frames > 0
    except VideoDecodeError:
        return False


def process_one(src: str, out: str, rel: str, opts: PrepareOptions) -> Result:
    """Convert one video; never raises (a failure is a ``Result`` with a reason)."""
    src_p, out_p = Path(src), Path(out)
    if opts.cache:
        from vclip.data.cache import build_one

        try:
            status, n = build_one(src_p, out_p, opts.short_side, opts.threads, opts.verify)
            return Result(rel, status, frames=n)
        except VideoDecodeError as e:
            return Result(rel, "failed", str(e))
        except Exception as e:  # noqa: BLE001 - a worker must report, not die
            return Result(rel, "failed", f"{src}: {type(e).__name__}: {e}")
    tmp = temp_path(out_p, opts.frames)
    try:
        if is_finished(out_p, opts.frames):
            return Result(rel, "skipped")
        out_p.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        if opts.frames:
            n = _extract_frames(src_p, tmp, opts)
        else:
            n = _reencode(src_p, tmp, opts)
        _verify(tmp, n, opts)
        if opts.frames and out_p.exists():
            shutil.rmtree(out_p)  # an incomplete leftover (empty folder)
        os.replace(tmp, out_p)
        return Result(rel, "done", frames=n)
    except VideoDecodeError as e:
        _remove(tmp)
        return Result(rel, "failed", str(e))
    except Exception as e:  # noqa: BLE001 - a worker must report, not die
        _remove(tmp)
        return Result(rel, "failed", f"{src}: {type(e).__name__}: {e}")


def _remove(p: Path) -> None:
    try:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    except OSError:
        pass


def _decoded_frames(src: Path, opts: PrepareOptions):
    """(reader metadata, iterator of av.VideoFrame) for a full sequential decode of ``src``."""
    import av

    from vclip.data.decode import open_video

    with open_video(src, backend="pyav") as r:  # validates: zero bytes, no video stream, size guard ...
        meta = (r.width, r.height, r.fps, r.num_frames)
    try:
        container = av.open(str(src), metadata_errors="ignore")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = opts.threads
        if opts.threads != 1:
            stream.codec_context.thread_type = "AUTO"
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(f"{src}: cannot open as a video container: {e}") from None

    def frames():
        try:
            for frame in container.decode(stream):
                yield frame
        except Exception as e:  # noqa: BLE001 - av errors mid-stream
            raise VideoDecodeError(f"{src}: decoding failed (corrupt or truncated data?): {e}") from None
        finally:
            container.close()

    return meta, frames()


def _reencode(src: Path, tmp: Path, opts: PrepareOptions) -> int:
    import av

    (width, height, fps, _), frames = _decoded_frames(src, opts)
    w, h = target_size(width, height, opts.short_side)
    rate = _rate(fps)
    gop = max(1, int(round(float(rate) * opts.gop_seconds)))
    n = 0
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.gop_size = gop
        stream.codec_context.thread_count = opts.threads
        stream.options = {
            "crf": str(opts.crf),
            "preset": opts.preset,
            "x264-params": f"keyint={gop}:min-keyint={max(1, gop // 2)}",
        }
        for frame in frames:
            img = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
            img.pts = n
            img.time_base = 1 / rate
            n += 1
            for packet in stream.encode(img):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if n == 0:
        raise VideoDecodeError(f"{src}: no frame could be decoded")
    return n


def _rate(fps: float):
    from fractions import Fraction

    if not fps or fps <= 0 or fps > 1000:
        return Fraction(30)
    return Fraction(fps).limit_denominator(1001)


def _extract_frames(src: Path, tmp: Path, opts: PrepareOptions) -> int:
    (width, height, _, _), frames = _decoded_frames(src, opts)
    w, h = target_size(width, height, opts.short_side)
    tmp.mkdir(parents=True)
    n = 0
    for frame in frames:
        img = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_image()
        n += 1
        img.save(tmp / opts.template.format(n), quality=opts.jpeg_quality)
    if n == 0:
        raise VideoDecodeError(f"{src}: no frame could be decoded")
    return n


def _verify(tmp: Path, n: int, opts: PrepareOptions) -> None:
    from vclip.data.decode import open_video

    kwargs = {"backend": "rawframes", "template": opts.template} if opts.frames else {"backend": "pyav"}
    with open_video(tmp, **kwargs) as r:
        if r.num_frames != n:
            raise VideoDecodeError(f"{tmp}: wrote {n} frames but {r.num_frames} read back")
        r.get_frames([0, n - 1])


# --------------------------------------------------------------------------------------------
# the whole folder
# --------------------------------------------------------------------------------------------
def prepare(src, dst, *, workers: int = 1, exts=DEFAULT_EXTS, opts: PrepareOptions | None = None, progress: bool = True) -> list[Result]:
    """Convert every video under ``src`` into ``dst``; returns one ``Result`` per video and writes
    ``dst/prepare_failures.txt`` when some failed (removes a stale one otherwise)."""
    from tqdm import tqdm

    opts = opts or PrepareOptions()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise VclipError(f"{src}: no such directory")
    if src == dst:
        raise VclipError(f"{dst}: the output folder must differ from the source folder")
    rels = find_videos(src, exts, exclude=dst if src in dst.parents else None)
    dst.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    jobs = []
    seen: dict[Path, Path] = {}
    for rel in rels:
        out = output_path(dst, rel, opts.frames, opts.cache)
        if out in seen:
            results.append(Result(str(rel), "failed", f"{src / rel}: output {out} is also the output of {seen[out]}"))
            continue
        seen[out] = rel
        jobs.append((str(src / rel), str(out), str(rel), opts))

    bar = tqdm(total=len(jobs), unit="video", desc="prepare", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_report(process_one(*job), bar))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (torch, tqdm)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(process_one, *job): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    res = Result(job[2], "failed", f"{job[0]}: the worker process died (crash or out of memory)")
                except Exception as e:  # noqa: BLE001
                    res = Result(job[2], "failed", f"{job[0]}: {type(e).__name__}: {e}")
                results.append(_report(res, bar))
    bar.close()
    if opts.cache:
        from vclip.data.cache import write_manifest

        write_manifest(dst, [r.rel for r in results if r.status != "failed"], opts.short_side)

    failures = sorted((r for r in results if r.status == "failed"), key=lambda r: r.rel)
    report = dst / FAILURES_FILE
    if failures:
        atomic_write_text(report, "".join(f"{r.rel}\t{_one_line(r.reason)}\n" for r in failures))
    elif report.exists():
        report.unlink()
    return sorted(results, key=lambda r: r.rel)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(res: Result, bar) -> Result:
    if res.status == "failed":
        log.warning("failed: %s", res.reason)
    bar.update(1)
    return res


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def register_cli(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "prepare",
        help="re-encode a video folder (short side, keyframes every second) or extract frames",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("src", type=Path, help="folder of source videos (searched recursively)")
    p.add_argument("dst", type=Path, help="output folder (same relative paths)")
    p.add_argument("--short-side", type=int, default=None,
                   help="resize the short side to this (0: keep; default 320, 256 with --cache); never upscales")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="parallel processes (default: min(8, CPUs))")
    p.add_argument("--ext", default=",".join(DEFAULT_EXTS), help="comma-separated extensions to convert")
    p.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (lower: better quality)")
    p.add_argument("--preset", default="veryfast", help="x264 preset")
    p.add_argument("--gop-seconds", type=float, default=1.0, help="keyframe interval in seconds")
    p.add_argument("--frames", action="store_true", help="write rawframes JPEG folders (img_00001.jpg ...) instead of mp4")
    p.add_argument("--cache", action="store_true",
                   help="write a frame cache (uint8 frames in memory-mapped .npy shards) for backend 'cache'")
    p.add_argument("--verify", action="store_true", help="with --cache: re-hash finished shards and rebuild mismatches")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality with --frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cli)


def _cli(args) -> int:
    if args.workers < 1:
        raise VclipError(f"--workers must be at least 1, got {args.workers}")
    if args.frames and args.cache:
        raise VclipError("--frames and --cache exclude each other")
    if args.verify and not args.cache:
        raise VclipError("--verify needs --cache")
    if args.short_side is None:
        args.short_side = 256 if args.cache else 320
    if args.short_side < 0:
        raise VclipError(f"--short-side must be >= 0, got {args.short_side}")
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    opts = PrepareOptions(
        short_side=args.short_side,
        crf=args.crf,
        preset=args.preset,
        gop_seconds=args.gop_seconds,
        frames=args.frames,
        jpeg_quality=args.jpeg_quality,
        cache=args.cache,
        verify=args.verify,
    )
    start = time.time()
    results = prepare(args.src, args.dst, workers=args.workers, exts=exts, opts=opts, progress=not args.no_progress)
    if not results:
        print(f"vclip data prepare: no videos with extension {', '.join(exts)} under {args.src}")
        return 1
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    line = (
        f"prepared {counts['done']}, skipped {counts['skipped']} (already done), failed {counts['failed']} "
        f"of {len(results)} videos in {time.time() - start:.1f} s -> {args.dst}"
    )
    if counts["failed"]:
        line += f" (failures listed in {Path(args.dst) / FAILURES_FILE})"
    print(line)
    return 1 if counts["failed"] else 0
