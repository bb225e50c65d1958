"""Compiled vs eager inference, per method, in one run (issue 18, item 3).

For each method, the per-batch video path (``method(video, class_features).logits``, class features
encoded once beforehand, as evaluation does; random weights, ``no_grad``) is built once and run two
ways on the same weights and inputs: eager, and ``torch.compile`` (``--backend``, inductor by
default). The compiled function is first tried with ``fullgraph=True``; a method whose forward has
a graph break is recorded with the reason and then compiled without it (torch's default). Before
timing, the compiled logits are compared with the eager ones (relative max difference, must be
≤ ``--tolerance``). The timed runs interleave: in round i one eager and one compiled call (the
order swapped every round), so load drifts of a shared machine hit both alike; the speed-up of
round i is eager time ÷ compiled time, reported as min / median / max over the rounds, in wall
time and in the process's CPU time (``time.process_time``).

    nice -n 19 python benchmarks/bench_compile.py --arch ViT-B-32 --batch 2 --frames 8 --json out.json
    python benchmarks/bench_compile.py --smoke        # tiny model, backend aot_eager: structure only

The machine's load average is recorded at the start and end (and per method).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from vclip.bench.model import vocabulary
from vclip.bench.timing import command_line, record, write_record
from vclip.errors import ConfigError

ALL_METHODS = ("clip", "vificlip", "xclip", "ost", "vilt", "moted", "alt")
SMOKE_OST = {"max_iter": 3, "check_every": 1}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:400]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def build(name: str, arch: str, frames: int, classes: int, batch: int, options: dict, seed: int = 0):
    """(eager fn, video, class features) of one method: random weights, eval mode, text encoded."""
    from vclip.backbone import CLIP, get_config
    from vclip.methods import METHODS

    if name not in METHODS:
        raise ConfigError(f"--methods: unknown method {name!r} (known: {', '.join(METHODS)})")
    torch.manual_seed(seed)
    cls = METHODS[name]
    method = cls(CLIP(get_config(arch)), num_frames=frames, options=cls.parse_options(options)).eval()
    method.freeze(text=True, logit_scale=True)
    size = method.clip.config.vision.image_size
    g = torch.Generator().manual_seed(seed + 1)
    video = torch.randn(batch, method.input_frames(), 3, size, size, generator=g)
    vocab = vocabulary(classes)
    if name == "ost":  # OST scores classes against LLM descriptors: 4 spatial + 4 temporal per class
        from vclip.methods.base import Vocabulary

        vocab = Vocabulary(vocab.class_names, cls.default_templates,
                           tuple(tuple(f"{n}, descriptor {i}" for i in range(8)) for n in vocab.class_names))
    with torch.no_grad():
        feats = method.class_features(vocab)

    def fwd(v, f):
        return method(v, f).logits

    return fwd, video, feats


def _call(fn, video, feats):
    with torch.no_grad():
        return fn(video, feats)


def _timed(fn, video, feats) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    _call(fn, video, feats)
    return time.perf_counter() - w0, time.process_time() - c0


def _spread(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def compare_method(name: str, args, options: dict) -> dict:
    """One method: fullgraph attempt, agreement check, interleaved timed rounds."""
    out: dict = {"method": name, "options": options, "load_before": _loadavg()}
    fwd, video, feats = build(name, args.arch, args.frames, args.classes, args.batch, options, args.seed)
    out["input_shape"] = list(video.shape)
    eager = _call(fwd, video, feats)
    torch._dynamo.reset()
    compiled = torch.compile(fwd, backend=args.backend, fullgraph=True)
    t0 = time.perf_counter()
    try:
        got = _call(compiled, video, feats)
        out["fullgraph"] = True
    except Exception as e:  # a graph break (torch._dynamo.exc.Unsupported) or a backend failure
        out["fullgraph"] = False
        out["fullgraph_error"] = _first_line(e)
        try:
            explain = torch._dynamo.explain(fwd)(video, feats)
            out["graph_breaks"] = int(explain.graph_break_count)
            out["break_reasons"] = sorted({_first_line(Exception(str(getattr(r, "reason", r)))).split(": ", 1)[-1][:200]
                                           for r in explain.break_reasons})[:5]
        except Exception as e2:  # explain is informational only
            out["explain_error"] = _first_line(e2)
        torch._dynamo.reset()
        compiled = torch.compile(fwd, backend=args.backend)
        t0 = time.perf_counter()
        got = _call(compiled, video, feats)
    out["first_compiled_call_s"] = time.perf_counter() - t0  # includes the compilation
    scale = float(eager.abs().max())
    diff = float((got.float() - eager.float()).abs().max())
    out["max_abs_diff"], out["rel_diff"] = diff, diff / max(scale, 1e-12)
    out["agree"] = out["rel_diff"] <= args.tolerance
    if not out["agree"]:
        out["error"] = f"compiled logits differ from eager: rel max diff {out['rel_diff']:.2e} > {args.tolerance:g}"
        return out
    _call(fwd, video, feats)  # one more untimed call each (the compiled one must not recompile)
    _call(compiled, video, feats)
    order, runs = [], {"eager": [], "compiled": []}
    cpu = {"eager": [], "compiled": []}
    fns = {"eager": fwd, "compiled": compiled}
    for i in range(args.repeats):
        for which in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            wall, c = _timed(fns[which], video, feats)
            runs[which].append(wall)
            cpu[which].append(c)
            order.append(which)
    ratios = [e / c for e, c in zip(runs["eager"], runs["compiled"])]
    cpu_ratios = [e / c for e, c in zip(cpu["eager"], cpu["compiled"])]
    out.update(order=order, runs_s=runs, cpu_s=cpu, eager_s=_spread(runs["eager"]),
               compiled_s=_spread(runs["compiled"]), speedup=_spread(ratios), speedup_cpu_time=_spread(cpu_ratios),
               load_after=_loadavg())
    return out


def parse_options(items: list[str]) -> dict:
    """``METHOD.KEY=VALUE`` items -> {method: {key: value}} (values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, opt = key.partition(".")
        if not sep or not dot or not opt:
            raise ConfigError(f"--options: expected METHOD.KEY=VALUE (e.g. ost.check_every=0), got {item!r}")
        out.setdefault(method, {})[opt] = yaml.safe_load(value)
    return out


def table(rec: dict) -> str:
    lines = ["| method | fullgraph | first compiled call | eager s/call (median) | compiled s/call (median) "
             "| speed-up min / median / max | CPU-time speed-up (median) | rel. max diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rec["results"]:
        fg = ("yes" if r["fullgraph"] else f"no ({r.get('graph_breaks', '?')} breaks: {r.get('fullgraph_error', '')})"
              ) if "fullgraph" in r else "–"
        if "speedup" not in r:
            lines.append(f"| {r['method']} | {fg} | – | – | – | – | – | {r.get('error', '').replace('|', '/')} |")
            continue
        s = r["speedup"]
        lines.append(f"| {r['method']} | {fg.replace('|', '/')} | {r['first_compiled_call_s']:.1f} s "
                     f"| {r['eager_s']['median']:.3f} | {r['compiled_s']['median']:.3f} "
                     f"| {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} | {r['speedup_cpu_time']['median']:.2f} "
                     f"| {r['rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (one eager + one compiled call each)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor | aot_eager | eager)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest relative logit difference accepted")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--options", nargs="*", default=[], metavar="METHOD.KEY=VALUE", help="method options")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model (arch tiny, batch 2, 2 frames, 4 classes, 2 rounds, OST max_iter 3 with a host "
                         "check after each iteration), backend aot_eager: checks the structure without code generation")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.arch, args.batch, args.frames, args.classes, args.repeats = "tiny", 2, 2, 4, 2
        if args.backend == "inductor":
            args.backend = "aot_eager"
    if min(args.batch, args.frames, args.classes, args.repeats) < 1:
        raise ConfigError("--batch, --frames, --classes and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown)} (known: {', '.join(ALL_METHODS)})")
    options = parse_options(args.options)
    if args.smoke:  # OST: 3 Sinkhorn iterations, a host check after each (a graph break), unless given
        options["ost"] = {**SMOKE_OST, **options.get("ost", {})}
    load_start = _loadavg()
    results = []
    for name in methods:
        print(f"== {name} (load {_loadavg()})", flush=True)
        try:
            r = compare_method(name, args, options.get(name, {}))
        except Exception as e:  # fail soft: the other methods still run
            r = {"method": name, "error": _first_line(e)}
        results.append(r)
        if "speedup" in r:
            print(f"   fullgraph {r['fullgraph']}, first compiled call {r['first_compiled_call_s']:.1f} s, "
                  f"speed-up {r['speedup']['median']:.2f} ({r['speedup']['min']:.2f}-{r['speedup']['max']:.2f}), "
                  f"rel diff {r['rel_diff']:.1e}", flush=True)
        else:
            print(f"   {r.get('error')}", flush=True)
    rec = record("compile_vs_eager", command_line(argv), "cpu",
                 settings={"arch": args.arch, "batch": args.batch, "frames": args.frames, "classes": args.classes,
                           "repeats": args.repeats, "backend": args.backend, "tolerance": args.tolerance,
                           "torch_threads": torch.get_num_threads(), "options": options},
                 load_start=load_start, load_end=_loadavg(), results=results)
    print(table(rec))
    if args.json:
        write_record(args.json, rec)
    return 0 if all("speedup" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
