"""OD-solver overhead: OST's descriptor scoring vs the same features scored with class names.

Two measurements, both in inference mode (no grad), class/descriptor embeddings already encoded
(the base class caches them per evaluation):

1. **scoring head alone**, ViT-B/16-shaped random features (E = 512): per video, T frame features
   against K classes; "class names" = CLIP-mean's cosine against one embedding per class; "OD" =
   OST's logits (Sinkhorn + pooled term for the spatial and the temporal kinds, N descriptors each,
   ε = 0.1, official stopping rule). Random unit features behave like the worst case for the
   stopping rule (CLIP features are more structured); the iteration count is printed.
2. **end to end**, a real CLIP forward (default the ``small`` architecture, random weights, its
   64 px input; ``--e2e-arch ViT-B-16`` for the real shape) through ``CLIPMean`` and ``OST`` sharing
   the same weights; overhead = (OST − CLIP-mean) / CLIP-mean. The solver's share grows with K and
   shrinks with the image tower's cost, so (1) with the B/16 forward time gives the B/16 overhead.

    python benchmarks/bench_od_solver.py                         # CPU, defaults
    python benchmarks/bench_od_solver.py --device cuda --e2e-arch ViT-B-16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def timeit(fn, device, repeat: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_head(b, t, k, n, e, device, repeat, stopping="global"):
    from vclip.methods.od_solver import od_scores, pooled_scores, sinkhorn

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(b, t, e, generator=g).to(device)
    names = F.normalize(torch.randn(k, e, generator=g), dim=-1).to(device)
    desc = {kind: F.normalize(torch.randn(k, n, e, generator=g), dim=-1).to(device) for kind in ("s", "t")}
    scale = 100.0

    def by_names():
        v = F.normalize(frames.mean(1), dim=-1)
        return scale * v @ names.t()

    def by_od():
        out = 0
        for d in desc.values():
            out = out + od_scores(frames, d, stopping=stopping) + pooled_scores(frames, d)
        return scale * 0.5 * out

    with torch.no_grad():
        t_names = timeit(by_names, device, repeat)
        t_od = timeit(by_od, device, repeat)
        sim = torch.einsum("bte,kne->bktn", F.normalize(frames, dim=-1), desc["s"])
        _, iters = sinkhorn(1 - sim, stopping=stopping, return_iters=True)
    return {"B": b, "T": t, "K": k, "N": n, "E": e, "names_ms_per_video": 1e3 * t_names / b,
            "od_ms_per_video": 1e3 * t_od / b, "sinkhorn_iterations": int(iters.max())}


def bench_e2e(arch, b, t, k, n, device, repeat):
    from vclip.backbone import CLIP, get_config
    from vclip.methods.base import Vocabulary
    from vclip.methods.clip import CLIPMean
    from vclip.methods.ost import OST

    torch.manual_seed(0)
    cfg = get_config(arch)
    clip = CLIP(cfg).to(device).eval()
    size = cfg.vision.image_size
    names = tuple(f"class {i}" for i in range(k))
    descriptors = [tuple(f"thing {j} of class {i}" for j in range(n)) + tuple(f"step {j} of class {i}" for j in range(n))
                   for i in range(k)]
    vocab = Vocabulary(names, ("a video of a person {}.",), descriptors)
    mean = CLIPMean(clip, num_frames=t).eval()
    ost = OST(clip, num_frames=t, options=OST.parse_options({"num_descriptors": n})).eval()
    video = torch.randn(b, t, 3, size, size, device=device)
    with torch.no_grad():
        mean.class_features(vocab)
        ost.class_features(vocab)       # encoded once, cached (as in an evaluation)
        t_mean = timeit(lambda: mean(video, vocab), device, repeat)
        t_ost = timeit(lambda: ost(video, vocab), device, repeat)
    return {"arch": arch, "image_size": size, "B": b, "T": t, "K": k, "N": n,
            "clip_mean_ms_per_video": 1e3 * t_mean / b, "ost_ms_per_video": 1e3 * t_ost / b,
            "overhead_pct": 100 * (t_ost - t_mean) / t_mean}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--classes", type=int, nargs="+", default=[101, 400])
    ap.add_argument("--descriptors", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--e2e-arch", default="small")
    ap.add_argument("--e2e-batch", type=int, default=4)
    ap.add_argument("--e2e-frames", type=int, default=8)
    ap.add_argument("--e2e-classes", type=int, default=101)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(info))
    head = []
    for t in args.frames:
        for k in args.classes:
            r = bench_head(args.batch, t, k, args.descriptors, 512, device, args.repeat)
            head.append(r)
            print(f"head  T={t:3d} K={k:4d} N={args.descriptors}: class names {r['names_ms_per_video']:.3f} ms/video, "
                  f"OD {r['od_ms_per_video']:.2f} ms/video ({r['sinkhorn_iterations']} Sinkhorn iterations)")
    e2e = None
    if not args.skip_e2e:
        e2e = bench_e2e(args.e2e_arch, args.e2e_batch, args.e2e_frames, args.e2e_classes, args.descriptors, device,
                        args.repeat)
        print(f"e2e   {e2e['arch']} {e2e['image_size']}px T={e2e['T']} K={e2e['K']}: CLIP-mean "
              f"{e2e['clip_mean_ms_per_video']:.1f} ms/video, OST {e2e['ost_ms_per_video']:.1f} ms/video, "
              f"overhead {e2e['overhead_pct']:+.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "head": head, "e2e": e2e}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
