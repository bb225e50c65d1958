"""vclip's X-CLIP vs transformers' ``XCLIPModel``, side by side: same process, same device, same
shapes, same (random) weights.

For each architecture (default ViT-B/16 and ViT-B/32; batch 64, 8 frames, 224 px, 400 classes):

1. an ``XCLIPModel`` is built with random weights (``--hf-attn``, default SDPA) and the same tensors
   are loaded into vclip's ``XCLIP`` through ``vclip.methods.xclip_convert`` (``hf_to_vclip`` +
   ``arch_from_hf`` + ``build_xclip``);
2. the logits of both are compared in fp32 on the device (2 videos); the script stops if they differ
   by more than ``--tolerance`` (relative to the largest logit), and checks that the transformers
   "video path" timed below (its own ``forward`` with the text embeddings computed beforehand)
   gives exactly ``XCLIPModel.forward``'s logits;
3. both are timed (``vclip.bench.timing.measure``: CUDA events, warm-up, median/min/max of
   ``--repeats`` runs) under autocast in ``--dtype`` (default bf16 on CUDA, fp32 on the CPU):
   ``--mode video`` (default) — video tower + MIT + prompt generator + logits against K cached text
   embeddings (what evaluation and frozen-text training run per batch); ``--mode full`` — the text
   tower on the K prompts in every call too (``XCLIPModel.forward`` as it is).

Prints views/s for each and the ratio vclip / transformers; ``--json FILE`` writes everything with
the machine, the date and the command.

``--compile`` compiles both paths (``torch.compile``; ``--compile vclip``: vclip's alone, against
transformers as users run it), ``--compile-mode`` picks the mode, ``--freezing`` turns on
inductor's freezing (weights folded in as constants — on the CPU prepacked for oneDNN —; only
valid while the weights do not change, as here). ``--profile N`` records, after timing, the N
costliest operators of one call of each (``torch.profiler``, self CPU time). ``--interleave`` times the two in alternating
rounds (one run of each per round, the order swapped every round) instead of one after the other,
so that the load of a shared machine hits both alike.

    python benchmarks/bench_xclip_vs_hf.py                                   # GPU defaults
    python benchmarks/bench_xclip_vs_hf.py --archs ViT-B-32 --batch 2 --classes 16 --repeats 3   # CPU
    python benchmarks/bench_xclip_vs_hf.py --archs ViT-B-32 --batch 2 --classes 16 --repeats 9 \
        --interleave --compile vclip --freezing                                                  # CPU, compiled
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from vclip.bench.timing import MemoryMeter, Timing, command_line, measure, record, write_record
from vclip.methods import xclip_convert as xc
from vclip.methods.base import Vocabulary

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ARCHS = {  # vision width, layers, heads, patch; text width, heads; embed
    "ViT-B-32": dict(patch=32, width=768, layers=12, heads=12, t_width=512, t_heads=8, embed=512),
    "ViT-B-16": dict(patch=16, width=768, layers=12, heads=12, t_width=512, t_heads=8, embed=512),
    "ViT-L-14": dict(patch=14, width=1024, layers=24, heads=16, t_width=768, t_heads=12, embed=768),
    "tiny": dict(patch=8, width=128, layers=2, heads=2, t_width=64, t_heads=1, embed=64),
}


def hf_config(arch: str, frames: int, image_size: int):
    from transformers import XCLIPConfig

    a = ARCHS[arch]
    e = a["embed"]
    return XCLIPConfig(
        text_config=dict(hidden_size=a["t_width"], intermediate_size=4 * a["t_width"], num_hidden_layers=12 if arch != "tiny" else 2,
                         num_attention_heads=a["t_heads"]),
        vision_config=dict(hidden_size=a["width"], intermediate_size=4 * a["width"], num_hidden_layers=a["layers"],
                           num_attention_heads=a["heads"], image_size=image_size, patch_size=a["patch"],
                           num_frames=frames, mit_hidden_size=e, mit_intermediate_size=4 * e,
                           mit_num_attention_heads=max(1, e // 64)),
        projection_dim=e, prompt_num_attention_heads=max(1, e // 64),
    )


def random_hf(config, attn: str, seed: int = 0):
    """``XCLIPModel`` with random weights at scales that keep activations sane in bf16/fp16."""
    from transformers import XCLIPModel

    with torch.device("meta"):
        hf = XCLIPModel._from_config(config, attn_implementation=attn)
    hf.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in hf.named_buffers():  # position ids
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
        for name, p in hf.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.1)
            elif name == "logit_scale":
                p.fill_(4.6)
            elif p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5 if "embedding" not in name else 0.02, generator=g)
            elif ("norm" in name or "layernorm" in name or "ln" in name) and name.endswith("weight"):
                p.normal_(1.0, 0.05, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return hf.eval()


def hf_video_logits(hf, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``XCLIPModel.forward`` from the video side with the projected text embeddings [K, E] given
    (transformers' own code, the text tower taken out); checked against ``forward`` in ``main``."""
    b, t, c, h, w = pixel_values.shape
    vision = hf.vision_model(pixel_values=pixel_values.reshape(-1, c, h, w))
    video = hf.visual_projection(vision[1])
    video = hf.mit(video.view(b, t, -1))[1]
    img = hf.prompts_visual_layernorm(vision[0][:, 1:, :])
    img = img @ hf.prompts_visual_projection
    img = img.view(b, t, -1, video.shape[-1]).mean(dim=1)
    text = text_embeds.unsqueeze(0).expand(b, -1, -1)
    text = text + hf.prompts_generator(text, img)
    video = video / video.norm(p=2, dim=-1, keepdim=True)
    text = text / text.norm(p=2, dim=-1, keepdim=True)
    return torch.einsum("bd,bkd->bk", video, hf.logit_scale.exp() * text)


def hf_text_embeds(hf, ids: torch.Tensor) -> torch.Tensor:
    return hf.text_projection(hf.text_model(input_ids=ids)[1])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def build_pair(arch: str, args, device: torch.device):
    cfg = hf_config(arch, args.frames, args.image_size)
    hf = random_hf(cfg, args.hf_attn, seed=args.seed)
    method = xc.build_xclip(xc.hf_to_vclip(hf.state_dict()), xc.arch_from_hf(hf.config.to_dict()))
    return hf.to(device).eval(), method.to(device).eval()


def verify(hf, method, ids, vocab, device, size: int, frames: int, tolerance: float) -> dict:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, frames, 3, size, size, generator=g).to(device)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=video).logits_per_video
        ours = method(video, vocab).logits
        path = hf_video_logits(hf, video, hf_text_embeds(hf, ids))
    err, err_path = rel_err(ours, ref), rel_err(path, ref)
    if not (err <= tolerance and err_path <= 1e-6):
        raise SystemExit(f"logits differ: vclip vs XCLIPModel {err:.2e} (tolerance {tolerance:.0e}), "
                         f"timed transformers path vs its forward {err_path:.2e}")
    return {"rel_err_vclip_vs_hf_fp32": err, "rel_err_hf_path_vs_forward": err_path, "videos": 2}


def time_one(fn, device, args) -> tuple[dict, dict]:
    meter = MemoryMeter(device).start()
    t = measure(fn, device, warmup=args.warmup, repeats=args.repeats, iters=args.iters)
    return t.to_dict() | {"views_per_s": t.rate(args.batch)}, meter.stop()


def time_interleaved(steps: dict, device, args) -> dict[str, dict]:
    """Each step warmed up, then ``args.repeats`` rounds of one timed run (``args.iters`` calls) of
    each step, the order reversed every round; per step the median/min/max over its runs."""
    first = {name: measure(fn, device, warmup=args.warmup, repeats=1, iters=1).first_call_s
             for name, fn in steps.items()}
    runs: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            runs[name].append(measure(steps[name], device, warmup=0, repeats=1, iters=args.iters).runs_s[0])
    out = {}
    for name, rs in runs.items():
        t = Timing(median_s=statistics.median(rs), min_s=min(rs), max_s=max(rs), runs_s=rs, warmup=args.warmup,
                   iters=args.iters, timer=("cuda_events" if device.type == "cuda" else "perf_counter"),
                   first_call_s=first[name])
        out[name] = t.to_dict() | {"views_per_s": t.rate(args.batch), "interleaved": True}
    return out


def profile_ops(step, top: int) -> list[dict]:
    """One call of ``step`` under ``torch.profiler`` (CPU activity): the ``top`` operators by self
    CPU time, each with its share of the call's total self time and its number of calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]


def compile_options(args) -> dict:
    """``torch.compile`` keyword arguments of ``--compile-mode`` / ``--compile-backend`` / ``--freezing``."""
    kw: dict = {"backend": args.compile_backend}
    if args.compile_mode:
        kw["mode"] = args.compile_mode
    if args.freezing:
        if not args.compile:
            raise SystemExit("--freezing needs --compile (it is an option of the compiler)")
        if args.compile_backend != "inductor":
            raise SystemExit(f"--freezing is an inductor option; --compile-backend is {args.compile_backend}")
        if args.compile_mode:
            raise SystemExit("--freezing and --compile-mode cannot be combined (torch.compile takes a mode or options)")
        kw["options"] = {"freezing": True}
    return kw


def bench_arch(arch: str, args, device: torch.device) -> dict:
    from vclip.backbone.tokenizer import get_tokenizer

    hf, method = build_pair(arch, args, device)
    names = tuple(f"class number {i}" for i in range(args.classes))
    vocab = Vocabulary(names)
    ids = get_tokenizer()(list(names)).to(device)
    check = verify(hf, method, ids, vocab, device, args.image_size, args.frames, args.tolerance)
    amp = (torch.autocast(device.type, dtype=DTYPES[args.dtype]) if args.dtype != "fp32"
           else contextlib.nullcontext())
    g = torch.Generator().manual_seed(2)
    video = torch.randn(args.batch, args.frames, 3, args.image_size, args.image_size, generator=g).to(device)
    with torch.no_grad(), amp:
        feats = method.encode_vocabulary(vocab)           # vclip: raw text embeddings [K, E]
        text = hf_text_embeds(hf, ids)                     # transformers: the same
    if args.mode == "video":
        def f_vclip(v):
            return method.logits(method.encode_video(v), feats)

        def f_hf(v):
            return hf_video_logits(hf, v, text)
    else:
        def f_vclip(v):
            return method.logits(method.encode_video(v), method.clip.text(ids).embeds)

        def f_hf(v):
            return hf(input_ids=ids, pixel_values=v).logits_per_video
    compiled = {"vclip": args.compile in ("both", "vclip"), "transformers": args.compile == "both"}
    if compiled["vclip"]:
        f_vclip = torch.compile(f_vclip, **compile_options(args))
    if compiled["transformers"]:
        f_hf = torch.compile(f_hf, **compile_options(args))
    first_call_s, logits = {}, {}
    with torch.no_grad(), amp:
        # on the timed batch itself: a compiled path compiles here, for the shape it is timed on
        for name, fn in (("vclip", f_vclip), ("transformers", f_hf)):
            t0 = time.perf_counter()
            logits[name] = fn(video).float()
            first_call_s[name] = time.perf_counter() - t0  # includes the compilation
        agree = rel_err(logits["vclip"], logits["transformers"])
    out = {"arch": arch, "check": check, f"rel_err_{args.dtype}_timed_paths": agree, "compiled": compiled,
           "first_call_s": first_call_s}
    order = [("vclip", f_vclip), ("transformers", f_hf)]
    if args.hf_first:
        order.reverse()
    steps = {}
    for name, fn in order:
        def step(fn=fn):
            with torch.no_grad(), amp:
                return fn(video)

        steps[name] = step
    timed = time_interleaved(steps, device, args) if args.interleave else None
    for name in steps:
        if timed is not None:
            out[name], out[name + "_memory"] = timed[name], None  # memory is not measured interleaved
        else:
            out[name], out[name + "_memory"] = time_one(steps[name], device, args)
        v = out[name]["views_per_s"]
        print(f"{arch:9s} {name:12s} {v['median']:9.2f} views/s (min {v['min']:.2f}, max {v['max']:.2f}; "
              f"{1000 * out[name]['median_s']:.1f} ms per batch of {args.batch})", flush=True)
    if args.profile:
        out["profile"] = {name: profile_ops(step, args.profile) for name, step in steps.items()}
        for name, ops in out["profile"].items():
            print(f"{arch:9s} {name:12s} " + ", ".join(f"{o['op']} {100 * o['self_cpu_share']:.0f}% ({o['calls']} calls)"
                                                      for o in ops), flush=True)
    out["ratio_vclip_over_hf"] = out["vclip"]["views_per_s"]["median"] / out["transformers"]["views_per_s"]["median"]
    print(f"{arch:9s} ratio vclip / transformers: {out['ratio_vclip_over_hf']:.3f} "
          f"(logits agree: fp32 rel. err. {check['rel_err_vclip_vs_hf_fp32']:.1e}, {args.dtype} {agree:.1e})")
    return out  # the models go with this frame; the caller empties the CUDA cache


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["ViT-B-16", "ViT-B-32"], choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=400, help="K text prompts (default 400, Kinetics-400)")
    ap.add_argument("--mode", choices=["video", "full"], default="video",
                    help="video: text embeddings computed once (default); full: text tower in every call")
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--hf-attn", default="sdpa", help="transformers attn_implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", nargs="?", const="both", default=None, choices=["both", "vclip"],
                    help="torch.compile both paths (--compile / --compile both) or vclip's alone (--compile vclip)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; aot_eager for smoke tests)")
    ap.add_argument("--freezing", action="store_true",
                    help="inductor freezing: weights folded in as constants (CPU: prepacked for oneDNN)")
    ap.add_argument("--interleave", action="store_true",
                    help="time the two in alternating rounds (one run of each per round) instead of one after the other")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, profile one call of each and record its N costliest operators (self CPU time)")
    ap.add_argument("--warmup", type=int, default=None, help="default 3 on CUDA, 1 on the CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=None, help="calls per timed run (default 10 CUDA, 1 CPU)")
    ap.add_argument("--hf-first", action="store_true", help="time transformers first")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max fp32 relative logit difference")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    compile_options(args)  # refuses bad combinations before anything is built
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.dtype == "auto":
        args.dtype = "bf16" if device.type == "cuda" else "fp32"
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 1
    if args.iters is None:
        args.iters = 10 if device.type == "cuda" else 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks are fp32
    import transformers

    results = []
    for a in args.archs:
        results.append(bench_arch(a, args, device))
        if args.compile:
            torch._dynamo.reset()  # compiled graphs hold the last models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rec = record("xclip_vs_transformers", command_line(argv, prog="python benchmarks/bench_xclip_vs_hf.py")
                 if argv is not None else command_line(prog="python benchmarks/bench_xclip_vs_hf.py"), device,
                 transformers=transformers.__version__, settings=vars(args) | {"json": str(args.json)}, results=results)
    if args.json:
        write_record(args.json, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
