"""Data-loading benchmark: decoded clips per second per worker, for each decoding backend.

For every video of a folder (default: a generated set of 10 s, 340x256, 30 fps H.264 clips with a
keyframe every 30 frames, textured and moving so they compress like real footage), it opens the
video and reads one TSN test clip (T evenly spaced segment centres) for T = 8 and T = 32, in one
process. Reported: videos/s for opening + metadata only, clips/s for each T, and the time per clip.

    python benchmarks/bench_data.py                       # generated clips, all backends
    python benchmarks/bench_data.py --folder /data/k400_320 --limit 200 --json out.json

Backends: ``pyav`` (default settings), ``pyav-threads2`` (2 FFmpeg threads), ``pyav-noseek``
(decode forward from the start: what a reader without seeking costs), ``torchcodec`` (when
installed), ``torchcodec-cuda`` (torchcodec on the GPU, NVDEC, frames copied back to host memory as
the data loader gets them: ``data.decode_device: cuda``; when it cannot run, the record says why
under ``unavailable`` and the run still succeeds; its frames are compared with PyAV's), ``rawframes`` (JPEG folders extracted from the same clips at quality 90), ``cache``
(the frame cache of ``vclip data prepare --cache`` built from the same clips at their native size:
uint8 ``.npy`` shards, memory-mapped; its build time is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vclip.data.decode import available_backends, open_video


def tsn_test_indices(num_frames: int, t: int) -> np.ndarray:
    return np.minimum(((np.arange(t) + 0.5) * num_frames / t).astype(np.int64), num_frames - 1)


def make_clip(path: Path, seconds: float = 10, size=(340, 256), fps: int = 30, gop: int = 30, seed: int = 0) -> Path:
    """A textured clip: a noise texture panning behind two moving blocks (x264, crf 23, veryfast)."""
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (h * 2, w * 2, 3), dtype=np.uint8)
    tex = ((tex.astype(np.uint16) + np.roll(tex, 1, 0) + np.roll(tex, 1, 1) + np.roll(tex, 1, (0, 1))) // 4).astype(np.uint8)
    n = int(seconds * fps)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for i in range(n):
            dx, dy = (i * 2) % w, (i // 2) % h
            img = tex[dy : dy + h, dx : dx + w].copy()
            x, y = (i * 5) % (w - 40), (i * 3) % (h - 40)
            img[y : y + 40, x : x + 40] = (255, 60, 30)
            img[h - 40 - y : h - y, w - 40 - x : w - x] = (30, 200, 255)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def extract_rawframes(video: Path, out: Path, quality: int = 90) -> Path:
    import av

    out.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            f.to_image().save(out / f"img_{i + 1:05d}.jpg", quality=quality)
    return out


def build_cache(videos: list[Path], dst: Path) -> tuple[list[Path], dict]:
    """Frame-cache shards of ``videos`` at their native size (one process); returns the paths to
    open with backend ``cache`` and the build's time and size."""
    from vclip.data.cache import build_one

    t0 = time.perf_counter()
    paths = []
    for i, v in enumerate(videos):
        rel = Path(f"{i:04d}") / v.name  # distinct names even for videos of different folders
        build_one(v, dst / rel.with_suffix(".npy"), short_side=0)
        paths.append(dst / rel)
    seconds = time.perf_counter() - t0
    mb = sum(p.stat().st_size for p in dst.rglob("*.npy")) / 1e6
    return paths, {"build_seconds": round(seconds, 2), "cache_megabytes": round(mb, 1)}


def bench_backend(paths: list[Path], backend: str, kwargs: dict, ts=(8, 32), repeats: int = 3) -> dict:
    res = {"backend": backend, "options": kwargs, "videos": len(paths)}
    # open + metadata
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            with open_video(p, **kwargs) as r:
                _ = (r.num_frames, r.fps, r.height, r.width)
        times.append(time.perf_counter() - t0)
    res["open_videos_per_s"] = len(paths) / min(times)
    for t in ts:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for p in paths:
                with open_video(p, **kwargs) as r:
                    frames = r.get_frames(tsn_test_indices(r.num_frames, t))
                    assert frames.shape[0] == t
            times.append(time.perf_counter() - t0)
        best = min(times)
        res[f"clips_per_s_T{t}"] = len(paths) / best
        res[f"ms_per_clip_T{t}"] = 1000 * best / len(paths)
        res[f"ms_per_clip_T{t}_median_run"] = 1000 * statistics.median(times) / len(paths)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="videos to read (default: generate clips)")
    ap.add_argument("--num-videos", type=int, default=8, help="clips to generate")
    ap.add_argument("--limit", type=int, default=0, help="read at most this many videos of --folder")
    ap.add_argument("--backends", default="pyav,pyav-threads2,pyav-noseek,torchcodec,rawframes,cache")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the videos; the best is reported")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    configs = {
        "pyav": ("pyav", {"backend": "pyav"}),
        "pyav-threads2": ("pyav", {"backend": "pyav", "threads": 2, "thread_type": "AUTO"}),
        "pyav-noseek": ("pyav", {"backend": "pyav", "seek_threshold": 10**9}),
        "torchcodec": ("torchcodec", {"backend": "torchcodec"}),
        "torchcodec-cuda": ("torchcodec", {"backend": "torchcodec", "device": "cuda"}),
        "rawframes": ("rawframes", {"backend": "rawframes"}),
        "cache": ("cache", {"backend": "cache"}),
    }
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    have = set(available_backends())
    tmp = tempfile.TemporaryDirectory(prefix="vclip_bench_data_")
    if args.folder:
        exts = {".mp4", ".avi", ".mkv", ".webm", ".mov"}
        videos = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in exts)
        if args.limit:
            videos = videos[: args.limit]
        source = str(args.folder)
    else:
        t0 = time.perf_counter()
        videos = [make_clip(Path(tmp.name) / f"clip{i:02d}.mp4", seed=i) for i in range(args.num_videos)]
        source = f"{args.num_videos} generated clips, 10 s 340x256 30 fps H.264 GOP 30 (made in {time.perf_counter() - t0:.1f} s)"
    if not videos:
        print("no videos found", file=sys.stderr)
        return 1
    mb = sum(p.stat().st_size for p in videos) / 1e6

    results, unavailable = [], []
    for name in wanted:
        if name not in configs:
            print(f"unknown backend config {name!r}", file=sys.stderr)
            return 2
        base, kwargs = configs[name]
        if kwargs.get("device", "cpu") != "cpu":  # GPU decoding: fail soft, with the reason
            reason = gpu_reader_problem(videos[0], kwargs)
            if reason:
                print(f"{name}: unavailable ({reason})")
                unavailable.append({"backend": name, "reason": reason})
                continue
        elif base not in have:
            print(f"{name}: skipped ({base} not available)")
            continue
        paths = videos
        if base == "rawframes":
            if args.folder:
                print(f"{name}: skipped (only on generated clips)")
                continue
            paths = [extract_rawframes(v, Path(tmp.name) / "frames" / v.stem) for v in videos]
        extra = {}
        if base == "cache":
            paths, extra = build_cache(videos, Path(tmp.name) / "cache")
        r = bench_backend(paths, name, kwargs, repeats=args.repeats)
        r.update(extra)
        if "device" in kwargs:
            r.update(compare_with_pyav(videos[0], kwargs) if "pyav" in have else {})
        r["backend"] = name
        results.append(r)
        print(
            f"{name:14s} open {r['open_videos_per_s']:8.1f} videos/s | T=8 {r['clips_per_s_T8']:7.1f} clips/s "
            f"({r['ms_per_clip_T8']:6.1f} ms) | T=32 {r['clips_per_s_T32']:7.1f} clips/s ({r['ms_per_clip_T32']:6.1f} ms)"
        )
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": _cpu_name(),
    }
    try:
        import av

        machine["pyav"] = av.__version__
        machine["ffmpeg"] = ".".join(str(x) for x in av.library_versions.get("libavcodec", ()))
    except Exception:
        pass
    machine.update(torch_versions())
    out = {"kind": "decode", "source": source, "videos": len(videos), "megabytes": round(mb, 2), "machine": machine,
           "results": results}
    if unavailable:
        out["unavailable"] = unavailable
    print(json.dumps(machine))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    tmp.cleanup()
    return 0


def gpu_reader_problem(video: Path, kwargs: dict) -> str | None:
    """Why a GPU reader cannot decode ``video`` here (None: it can), as one line."""
    try:
        with open_video(video, **kwargs) as r:
            r.get_frames([0])
    except Exception as e:  # ConfigError (no CUDA, no torchcodec CUDA build), or anything else
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"
    return None


def compare_with_pyav(video: Path, kwargs: dict, t: int = 8) -> dict:
    """Largest per-pixel difference of a ``t``-frame clip against PyAV's, and whether torchcodec
    says it fell back to CPU decoding."""
    with open_video(video, backend="pyav") as p, open_video(video, **kwargs) as r:
        idx = tsn_test_indices(p.num_frames, t)
        a, b = r.get_frames(idx).astype(np.int16), p.get_frames(idx).astype(np.int16)
        diff = np.abs(a - b)
        return {"max_abs_diff_vs_pyav": int(diff.max()), "mean_abs_diff_vs_pyav": round(float(diff.mean()), 3),
                "cpu_fallback": getattr(r, "cpu_fallback", None)}


def torch_versions() -> dict:
    out = {}
    try:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda)
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    try:
        import torchcodec

        out["torchcodec"] = torchcodec.__version__
        from torchcodec._core import ops

        out["torchcodec_ffmpeg_major"] = ops.ffmpeg_major_version
    except Exception as e:
        out["torchcodec"] = f"not importable ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
