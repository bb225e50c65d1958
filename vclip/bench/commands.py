"""``vclip bench``: model throughput (inference views/s, training clips/s), peak memory, FLOPs, MFU.

    vclip bench infer --arch ViT-B-16 --batch 64 --frames 8 --dtype bf16 --json infer.json
    vclip bench train --arch ViT-B-16 --batch 16 --dtype fp16 --json train.json
    vclip bench matmul --dtype bf16
    vclip bench infer --arch tiny --batch 2 --repeats 1 --ceiling-size 256     # CPU smoke

See :mod:`vclip.bench.model` for what each measurement runs and ``docs/performance.md`` for figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vclip.errors import ConfigError


def _common(p, batch: int) -> None:
    p.add_argument("--method", default="xclip", help="method (default xclip)")
    p.add_argument("--arch", default="ViT-B-16", help="CLIP architecture (ViT-B-32, ViT-B-16, ViT-L-14, tiny, small ...)")
    p.add_argument("--batch", type=int, default=batch, help=f"videos per call (default {batch})")
    p.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default: the architecture's)")
    p.add_argument("--classes", type=int, default=400, help="classes scored, text features cached (default 400)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype (auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-batch path")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default | reduce-overhead (CUDA graphs) | max-autotune)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 2 CUDA, 3 compiled, 1 CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; median/min/max reported (default 3)")
    p.add_argument("--iters", type=int, default=None, help="calls per timed run (default: 10 CUDA, 1 CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--ceiling-size", type=int, default=None, help="matmul size of the MFU ceiling (default 8192 CUDA, 1024 CPU)")
    p.add_argument("--ceiling-tflops", type=float, default=None, help="use this ceiling instead of measuring it")
    p.add_argument("--no-mfu", action="store_true", help="neither measure the ceiling nor count FLOPs")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the record here")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="model throughput: views/s, training clips/s, memory, FLOPs, MFU",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="bench_command", metavar="KIND")
    pi = sub.add_parser("infer", help="inference views/s (video path, class features cached)")
    _common(pi, 64)
    pi.add_argument("--precision", default="autocast", choices=["autocast", "cast"],
                    help="autocast with fp32 weights (default) or weights cast to --dtype")
    pi.add_argument("--token-merging", default="0", metavar="R[,R...]",
                    help="ToMe tokens merged per image-tower block (model.token_merging={r: R}); several values "
                         "(e.g. 0,8) time the same model with each side by side in one run, runs alternating, "
                         "and report the speed-up over the first")
    pi.set_defaults(handler=_run, bench_kind="infer")
    pt = sub.add_parser("train", help="training clips/s: full optimizer steps on the video tower")
    _common(pt, 16)
    pt.add_argument("--grad-checkpointing", action="store_true")
    pt.add_argument("--optimizer", default="auto", choices=["auto", "fused", "foreach"],
                    help="AdamW kernel (auto: fused on CUDA)")
    pt.add_argument("--train-text", action="store_true", help="also train the text tower (default frozen, as X-CLIP)")
    pt.set_defaults(handler=_run, bench_kind="train")
    pm = sub.add_parser("matmul", help="the matmul ceiling alone (TFLOP/s of a square matmul)")
    pm.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    pm.add_argument("--device", default="auto")
    pm.add_argument("--size", type=int, default=None, help="n of the n×n matmul (default 8192 CUDA, 1024 CPU)")
    pm.add_argument("--repeats", type=int, default=3)
    pm.add_argument("--threads", type=int, default=None)
    pm.add_argument("--json", type=Path, default=None, metavar="FILE")
    pm.set_defaults(handler=_run, bench_kind="matmul")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _config(args):
    from vclip.bench.model import BenchConfig

    cfg = BenchConfig(
        method=args.method, arch=args.arch, batch=args.batch, frames=args.frames, image_size=args.image_size,
        dtype=args.dtype, precision=getattr(args, "precision", "autocast"), classes=args.classes, device=args.device,
        compile=args.compile, compile_mode=args.compile_mode, warmup=args.warmup, repeats=args.repeats,
        grad_checkpointing=getattr(args, "grad_checkpointing", False), optimizer=getattr(args, "optimizer", "auto"),
        train_text=getattr(args, "train_text", False), seed=args.seed,
        token_merging=_merging_values(args)[0],
    )
    cfg.iters = args.iters or (10 if cfg.resolved_device().type == "cuda" else 1)
    cfg.validate()
    return cfg


def _merging_values(args) -> list[int]:
    raw = str(getattr(args, "token_merging", "0"))
    try:
        values = [int(v) for v in raw.split(",")]
    except ValueError:
        raise ConfigError(f"--token-merging: expected integers separated by commas (e.g. 0,8), got {raw!r}") from None
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--token-merging: values must be distinct and >= 0, got {raw!r}")
    return values


def run(args, argv: list[str] | None = None) -> dict:
    """Run the measurement ``args`` describe; returns the JSON record."""
    import torch

    from vclip.bench import model as bm
    from vclip.bench.timing import command_line, record

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    resolved = canonical_command(args)
    command = command_line(argv, prog="vclip") if argv is not None else _as_typed(resolved)
    if args.bench_kind == "matmul":
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        if args.repeats < 1:
            raise ConfigError("--repeats must be >= 1")
        return record("matmul", command, device, command_resolved=resolved,
                      ceiling=bm.matmul_ceiling(device, dtype, args.size, repeats=args.repeats))
    cfg = _config(args)
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here")
    merging = _merging_values(args)
    if len(merging) > 1:
        return record("infer", command, device, command_resolved=resolved, **bm.bench_token_merging(cfg, merging))
    flops = ceiling = None
    if not args.no_mfu:
        flops = bm.count_flops(cfg)
        if args.ceiling_tflops:
            ceiling = {"dtype": dtype, "tflops": args.ceiling_tflops, "source": "--ceiling-tflops"}
        else:
            ceiling = bm.matmul_ceiling(device, dtype, args.ceiling_size, repeats=max(3, cfg.repeats))
    fn = bm.bench_inference if args.bench_kind == "infer" else bm.bench_training
    return record(args.bench_kind, command, device, command_resolved=resolved,
                  **fn(cfg, ceiling=ceiling, flops=flops))


_SKIP = {"handler", "bench_kind", "bench_command", "command", "verbose"}


def canonical_command(args) -> str:
    """``vclip bench KIND`` with every option spelled out (defaults included): reruns the same
    measurement whatever the defaults become."""
    import shlex

    parts = ["vclip", "bench", args.bench_kind]
    for key, value in sorted(vars(args).items()):
        if key in _SKIP or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def _as_typed(resolved: str) -> str:
    """The command line as typed when this process is ``vclip bench ...`` (console script or
    ``python -m vclip.cli``), else (called in-process, e.g. from a test) the resolved one."""
    from vclip.bench.timing import command_line

    argv = sys.argv[1:]
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["bench"]:
        return command_line(argv, prog="vclip")
    return resolved


def summary(rec: dict) -> str:
    """One human-readable paragraph of a record."""
    m = rec["machine"]
    where = m["gpu"]["name"] if m.get("gpu") and rec["device"].startswith("cuda") else f"{m['cpu']} ({m['cpus_usable']} CPUs)"
    if rec["kind"] == "matmul":
        c = rec["ceiling"]
        return f"matmul {c['n']}³ {c['dtype']} on {where}: {c['tflops']:.2f} TFLOP/s (median), {c['tflops_best']:.2f} best"
    c = rec["config"]
    if rec.get("token_merging"):
        lines = [f"infer {c['method']} {c['arch']} batch {c['batch']} × {c['frames']} frames, {c['dtype']} on {where}, "
                 "token merging side by side (runs alternating):"]
        for v in rec["token_merging"]["variants"]:
            lines.append(f"  r = {v['r']:>2}: {v['views_per_s']:.3f} views/s, {1000 * v['median_s']:.1f} ms per call "
                         f"(median of {len(v['runs_s'])}); speed-up × {v['speedup']:.2f} wall-clock, "
                         f"× {v['speedup_cpu_time']:.2f} in CPU time ({1000 * v['median_cpu_s']:.1f} ms)")
        return "\n".join(lines)
    t = rec["timing"]
    unit, rate = ("views/s", rec["views_per_s"]) if rec["kind"] == "infer" else ("clips/s", rec["clips_per_s"])
    lines = [
        f"{rec['kind']} {c['method']} {c['arch']} batch {c['batch']} × {c['frames']} frames, {c['dtype']}"
        f"{' ' + c['precision'] if rec['kind'] == 'infer' else ''}{' compiled' if c['compile'] else ''} on {where}:",
        f"  {rate['median']:.2f} {unit} (median of {len(t['runs_s'])} runs × {t['iters']} calls; "
        f"min {rate['min']:.2f}, max {rate['max']:.2f}); {1000 * t['median_s']:.1f} ms per call",
    ]
    mem = rec["memory"]
    if "peak_allocated_gib" in mem:
        lines.append(f"  peak memory {mem['peak_allocated_gib']:.2f} GiB allocated ({mem['peak_reserved_gib']:.2f} reserved)")
    else:
        lines.append(f"  peak RSS growth {mem['peak_rss_growth_gib']:.3f} GiB (process peak {mem['peak_rss_gib']:.2f} GiB)")
    if rec.get("flops"):
        f = rec["flops"]
        lines.append(f"  {f['gflops_per_view']:.2f} GFLOPs per view (2/multiply-add; papers' fvcore figure "
                     f"{f['paper_gflops_per_view_fvcore']:.1f}); achieved {rec['achieved_tflops']:.3f} TFLOP/s")
    if rec.get("ceiling") and rec.get("mfu") is not None:
        lines.append(f"  ceiling {rec['ceiling']['tflops']:.2f} TFLOP/s ({rec['ceiling']['dtype']} matmul) → MFU {100 * rec['mfu']:.1f} %")
    return "\n".join(lines)


def _run(args) -> int:
    from vclip.bench.timing import write_record

    rec = run(args)
    print(summary(rec))
    if args.json:
        write_record(args.json, rec)
    return 0


__all__ = ["register", "run", "summary"]
