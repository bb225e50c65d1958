"""End to end, file → logits: videos/s of decoding + transforms + the model, and which stage bounds it.

Four measurements on the same videos, each in the loader's steady state:

1. **decode**: a DataLoader with ``--workers`` workers reads one TSN test clip of T frames per video
   (``VideoDataset``, backend ``--backend``) without transforms;
2. **data**: the same plus the test transforms (short side + centre crop to the model's size,
   normalisation) — what the model is fed;
3. **model**: the method's video path (``vclip.bench.model``: class features cached) on a random
   batch already on the device, in ``--dtype`` autocast;
4. **end to end**: the loader of (2) → ``.to(device, non_blocking=True)`` → the model → logits.

A DataLoader worker builds a whole batch, so a pass of fewer batches than workers leaves workers
idle (256 videos at batch 64 keep 4 of 16 workers busy), and every pass starts with an empty
pipeline. So the loader stages read the ``--videos`` files repeated as often as needed: the first
``workers`` batches fill the pipeline (untimed; ``first_batch_s`` is the wait for the first one),
then ``--windows`` windows of ``workers`` batches each are timed (median, min, max of the windows'
rates reported). That is the rate of a long evaluation, which these stages stand for.

The bound is the slower of data and model; ``e2e / min(data, model)`` says how well they overlap
(on a CPU-only machine decoding and the model share the same cores, so it is below 1).

Videos (``--source``): ``synth`` — the synthetic motion set (``vclip data synth``, 96 px, 16
frames) written once under ``--workdir``; ``clips`` — issue-like 10 s 340×256 30 fps H.264 clips,
keyframe every 30 frames (``benchmarks/bench_data.py``'s generator); or a folder of videos.

``--backend cache`` reads the frame cache (``vclip data prepare --cache``) of these videos, built
first under ``--workdir`` at short side ``--cache-short-side`` with ``--workers`` processes (a
finished cache is reused; the build time is recorded as ``cache_build_s``).

    python benchmarks/bench_end_to_end.py --arch tiny --workers 2 --batch 8          # CPU, synthetic
    python benchmarks/bench_end_to_end.py --source clips --videos 512 --workers 16 \\
        --arch ViT-B-16 --batch 64 --dtype bf16 --json e2e.json                       # GPU box
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from vclip.bench.model import BenchConfig, autocast_ctx, build_method, maybe_compile, video_path, vocabulary
from vclip.bench.timing import command_line, measure, record, synchronize, write_record

HERE = Path(__file__).resolve().parent
EXTS = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


def _clip_job(a):
    sys.path.insert(0, str(HERE))
    from bench_data import make_clip

    path, seed = a
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        make_clip(tmp, seed=seed)
        tmp.rename(path)
    return path


def prepare_videos(source: str, workdir: Path, n: int, workers: int) -> tuple[list[Path], str]:
    if source == "synth":
        from vclip.data.synthetic import SynthConfig, generate

        out = workdir / "synth"
        per_class = max(2, -(-n // 12))
        if not (out / "meta.json").exists():
            generate(out, SynthConfig(videos_per_class=per_class), workers=workers)
        videos = sorted((out / "videos").glob("*.mp4"))[:n]
        return videos, f"synthetic motion set (vclip data synth: 96x96, 16 frames, 8 fps), {len(videos)} videos"
    if source == "clips":
        out = workdir / "clips"
        out.mkdir(parents=True, exist_ok=True)
        jobs = [(out / f"clip{i:04d}.mp4", i) for i in range(n)]
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                videos = list(pool.imap(_clip_job, jobs))
        else:
            videos = [_clip_job(j) for j in jobs]
        return videos, f"{n} generated clips, 10 s 340x256 30 fps H.264 GOP 30 (benchmarks/bench_data.py)"
    folder = Path(source)
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS)[:n]
    if not videos:
        raise SystemExit(f"{folder}: no videos")
    return videos, f"{len(videos)} videos of {folder}"


def build_dataset(videos: list[Path], frames: int, size: int | None, backend: str, norm: str):
    from vclip.data.annotations import VideoRecord
    from vclip.data.datasets import VideoDataset
    from vclip.data.sampling import build_sampler
    from vclip.data.transforms import build_test_transform

    records = [VideoRecord(str(p), 0) for p in videos]
    sampler = build_sampler(mode="segment", num_frames=frames, test_mode=True, num_clips=1)
    transform = build_test_transform(input_size=size, num_crops=1, norm=norm) if size else None
    return VideoDataset(records, None, None, sampler=sampler, transform=transform, backend=backend, train=False)


def loader_for(dataset, batch: int, workers: int, pin: bool):
    from vclip.data.loader import build_loader

    return build_loader(dataset, batch, train=False, num_workers=workers, pin_memory=pin,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def plan_stream(videos: int, batch: int, workers: int, windows: int) -> dict:
    """Batches of a steady-state loader stage: ``warm`` (one per worker: the pipeline filling, untimed),
    then ``windows`` windows of ``per_window`` batches (one per worker, at least 1); ``repeats``: how
    many times the ``videos`` files are listed so that the loader yields them all."""
    if videos < 1 or batch < 1 or windows < 1:
        raise ValueError(f"videos, batch and windows must be >= 1, got {videos}, {batch}, {windows}")
    per = max(1, workers)
    warm, per_window = per, per
    total = warm + windows * per_window
    return {"warm": warm, "per_window": per_window, "windows": windows, "batches": total,
            "repeats": -(-total * batch // videos)}


def stream_list(videos: list, plan: dict, batch: int) -> list:
    """The files a loader stage reads: ``videos`` repeated, cut to exactly ``plan['batches']`` batches
    (a loader left with unread batches would decode them when the next stage resets its workers)."""
    return (list(videos) * plan["repeats"])[: plan["batches"] * batch]


def time_stream(batches, plan: dict, count, sync=lambda: None, clock=time.perf_counter) -> dict:
    """Iterate ``batches`` (e.g. a DataLoader) for ``plan['batches']`` batches; ``count(batch)``: the
    videos of one batch (and whatever the stage does with it). The first ``plan['warm']`` are not timed;
    then each window of ``plan['per_window']`` batches is timed (``sync()`` before reading the clock at
    a window's end, e.g. a CUDA synchronize)."""
    it = iter(batches)
    t_start = clock()
    first = None
    for _ in range(plan["warm"]):
        count(next(it))
        if first is None:
            first = clock() - t_start
    sync()
    runs, videos = [], []
    for _ in range(plan["windows"]):
        t0, n = clock(), 0
        for _ in range(plan["per_window"]):
            n += count(next(it))
        sync()
        runs.append(clock() - t0)
        videos.append(n)
    for _ in it:  # nothing left when the loader lists exactly plan['batches'] batches
        pass
    rates = [n / r for n, r in zip(videos, runs)]
    return {"videos_per_window": videos, "runs_s": runs, "first_batch_s": first, "plan": dict(plan),
            "videos_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="synth", help="synth | clips | a folder of videos")
    ap.add_argument("--videos", type=int, default=64, help="videos per pass (default 64)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vclip_bench_e2e",
                    help="where generated videos are kept between runs")
    ap.add_argument("--backend", default="pyav", help="decoding backend (pyav, torchcodec, rawframes, cache)")
    ap.add_argument("--cache-short-side", type=int, default=256,
                    help="with --backend cache: short side of the cached frames (0: native; never upscales)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    ap.add_argument("--method", default="xclip")
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=400)
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--windows", type=int, default=3,
                    help="timed windows per loader stage, each one batch per worker (default 3)")
    ap.add_argument("--norm", default="imagenet")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    ap.add_argument("--stages", default="decode,data,model,e2e")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]

    t0 = time.perf_counter()
    videos, source = prepare_videos(args.source, args.workdir, args.videos, max(1, args.workers))
    print(f"{source} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    results: dict = {}
    if args.backend == "cache":
        from vclip.data.cache import build_many

        t0 = time.perf_counter()
        videos = build_many(videos, args.workdir / f"cache_{Path(args.source).name}_{args.cache_short_side}",
                            short_side=args.cache_short_side, workers=max(1, args.workers))
        results["cache_build_s"] = round(time.perf_counter() - t0, 2)
        source += f", from the frame cache (short side {args.cache_short_side})"
        print(f"frame cache ready in {results['cache_build_s']:.1f} s", flush=True)
    cfg = BenchConfig(method=args.method, arch=args.arch, batch=args.batch, frames=args.frames, dtype=args.dtype,
                      classes=args.classes, device=args.device, compile=args.compile)
    cfg.validate()
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    method = build_method(cfg, device).eval()
    size = method.clip.config.vision.image_size
    with torch.no_grad(), autocast_ctx(device, dtype, "autocast"):
        feats = method.class_features(vocabulary(cfg.classes))
    fwd = maybe_compile(video_path(method), cfg)
    pin = device.type == "cuda"

    def save():
        """The record as it stands (after each stage: a run stopped by a time box keeps what it timed)."""
        if args.json:
            cmd = command_line(argv, prog="python benchmarks/bench_end_to_end.py") if argv is not None \
                else command_line(prog="python benchmarks/bench_end_to_end.py")
            write_record(args.json, record("end_to_end", cmd, device, source=source, results=results, settings={
                **vars(args), "workdir": str(args.workdir), "json": str(args.json), "dtype": dtype, "image_size": size}))

    plan = plan_stream(len(videos), args.batch, args.workers, args.windows)
    listed = stream_list(videos, plan, args.batch)
    results["stream"] = {"distinct_videos": len(videos), **plan}
    results["partial"] = True  # until every stage asked for is timed

    def n_videos(batch):
        return batch["video"].shape[0]

    if "decode" in stages:
        ld = loader_for(build_dataset(listed, args.frames, None, args.backend, args.norm), args.batch, args.workers, False)
        results["decode"] = time_stream(ld, plan, n_videos)
        save()
        del ld
    data_loader = loader_for(build_dataset(listed, args.frames, size, args.backend, args.norm), args.batch,
                             args.workers, pin)
    if "data" in stages:
        results["data"] = time_stream(data_loader, plan, n_videos)
        save()
    if "model" in stages:
        video = torch.randn(args.batch, args.frames, 3, size, size).to(device)

        def step():
            with torch.no_grad(), autocast_ctx(device, dtype, "autocast"):
                return fwd(video, feats)

        t = measure(step, device, warmup=3 if args.compile else 1, repeats=max(3, args.windows),
                    iters=10 if device.type == "cuda" else 1)
        results["model"] = {**t.to_dict(), "videos_per_s": t.rate(args.batch)}
        save()
    if "e2e" in stages:
        def forward(batch):
            with torch.no_grad(), autocast_ctx(device, dtype, "autocast"):
                return fwd(batch["video"].to(device, non_blocking=True), feats).shape[0]

        results["e2e"] = time_stream(data_loader, plan, forward, sync=lambda: synchronize(device))
        save()

    stage_results = {k: v for k, v in results.items() if isinstance(v, dict) and "videos_per_s" in v}
    rate = {k: v["videos_per_s"]["median"] for k, v in stage_results.items()}
    for k, v in stage_results.items():
        r = v["videos_per_s"]
        print(f"{k:7s} {r['median']:9.2f} videos/s (min {r['min']:.2f}, max {r['max']:.2f})")
    if "data" in rate and "model" in rate:
        bound = "data (decode + transforms)" if rate["data"] < rate["model"] else "model"
        results["bound"] = bound
        line = f"bound by: {bound}"
        if "e2e" in rate:
            results["e2e_over_min_stage"] = rate["e2e"] / min(rate["data"], rate["model"])
            line += f"; end to end reaches {100 * results['e2e_over_min_stage']:.0f} % of the slower stage"
        print(line)
    results.pop("partial", None)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
