"""The demo's training time by data path: PyAV decoding, the frame cache, frames held in memory.

Trains one demo method (``vclip demo``'s settings: tiny CLIP, 32 px, 4 frames, batch 16, 2 loader
workers) for ``--steps`` steps three times, each reading the same synthetic set a different way:

``pyav``    every clip decoded from its mp4 at each step (``vclip demo --no-cache``);
``cache``   the frame cache (``vclip data prepare --cache``, memory-mapped shards; the demo's default);
``memory``  every video's frames loaded into RAM before training (uint8 arrays, inherited by the
            forked loader workers): the same dataset, sampler, transforms and loader with no file
            access at all — the floor a data path can reach.

The three runs see the same frames, so their losses must be equal (checked and reported).

    python benchmarks/bench_demo_data.py --steps 500 --json demo_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


class MemoryReader:
    """A video's frames from RAM, with the reader interface the dataset uses."""

    def __init__(self, frames: np.ndarray, fps: float):
        self.frames, self.fps = frames, fps
        self.num_frames = len(frames)

    def get_frames(self, idx):
        return self.frames[np.asarray(idx).reshape(-1)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_demo_data"))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--method", default="xclip")
    ap.add_argument("--modes", default="pyav,cache,memory")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from vclip import demo
    from vclip.data import cache as fcache
    from vclip.data import decode
    from vclip.engine.trainer import train

    data_dir = demo.ensure_synthetic(args.out / "data")
    t0 = time.time()
    cache = demo.ensure_cache(data_dir, args.out / "cache")
    build_s = time.time() - t0
    init = demo.initial_clip(args.out / "init_clip")
    results = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        cfg = demo.method_config(args.method, {}, data_dir, args.out / mode, args.steps, 0, init,
                                 None if mode == "pyav" else cache)
        original = decode.open_video
        if mode == "memory":
            frames = {}
            for shard in sorted(cache.rglob("*.npy")):
                meta = fcache.read_meta(shard)
                frames[str(shard)] = (np.load(shard), float(meta["fps"]))
            decode.open_video = lambda path, backend="auto", **kw: MemoryReader(*frames[str(fcache.shard_path(path))])
        try:
            torch.manual_seed(0)
            t0 = time.time()
            train(cfg, overwrite=True)
            seconds = time.time() - t0
        finally:
            decode.open_video = original
        lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
        results[mode] = {"train_seconds": round(seconds, 1), "losses": losses}
        print(f"{mode:7s} {seconds:7.1f} s for {args.steps} steps", flush=True)
    modes = list(results)
    same = all(results[m]["losses"] == results[modes[0]]["losses"] for m in modes)
    print(f"losses equal across modes: {same}")
    if "memory" in results:
        for m in modes:
            print(f"{m:7s} {results[m]['train_seconds'] / results['memory']['train_seconds']:.2f}x the in-memory time")
    load = os.getloadavg()
    rec = {"kind": "demo_data", "method": args.method, "steps": args.steps, "cache_build_seconds": round(build_s, 1),
           "results": results, "losses_equal": same, "loadavg_after": load,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}}
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rec, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
