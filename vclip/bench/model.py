"""Model throughput: inference views/s, training clips/s, peak memory, FLOPs and MFU.

* **Inference**: ``method.logits(method.encode_video(video), class_features)`` on a random
  ``[B, T, 3, H, W]`` batch, under ``no_grad``, with the class features encoded once beforehand
  (what evaluation does: the base class caches them). One *view* is one T-frame clip.
* **Training**: one full optimizer step per call, as the official X-CLIP trains: text tower and
  ``logit_scale`` frozen (cached class features), the video tower and the method's new modules
  trained; autocast forward, cross-entropy (label smoothing 0.1), backward (GradScaler for fp16),
  AdamW with vclip's parameter groups (fused on CUDA), ``zero_grad(set_to_none=True)``.
* **FLOPs** per view are counted by :mod:`vclip.methods.flops` on a meta-device copy: the executed
  video path (image tower with its hooks + the method's head against K cached classes), reported
  as 2 FLOPs per multiply-add; training counts 3× the forward. The papers' figure (fvcore, one
  view + one sentence, 1 FLOP per multiply-add) is reported beside it.
* **MFU** = achieved FLOP/s ÷ the FLOP/s of a large square matmul in the same dtype, timed here
  the same way (:func:`matmul_ceiling`).

Weights are random (CLIP's initialisation); throughput does not depend on their values.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import torch

from vclip.bench.timing import MemoryMeter, Timing, measure
from vclip.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchConfig:
    method: str = "xclip"
    arch: str = "ViT-B-16"
    batch: int = 64
    frames: int = 8
    image_size: int | None = None
    #: fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 on CPU)
    dtype: str = "auto"
    #: autocast (fp32 weights, as training) | cast (weights cast to dtype; inference only)
    precision: str = "autocast"
    classes: int = 400
    device: str = "auto"
    compile: bool = False
    compile_mode: str | None = None
    warmup: int | None = None
    repeats: int = 3
    iters: int = 1
    grad_checkpointing: bool = False
    #: AdamW kernel: auto (fused on CUDA) | fused | foreach
    optimizer: str = "auto"
    train_text: bool = False
    seed: int = 0
    #: ToMe tokens merged per image-tower block (``model.token_merging={r: R}``; 0 = off)
    token_merging: int = 0

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> str:
        if self.dtype == "auto":
            return "bf16" if self.resolved_device().type == "cuda" else "fp32"
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype: expected fp32, bf16, fp16 or auto, got {self.dtype!r}")
        return self.dtype

    def resolved_warmup(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return (3 if self.compile else 2) if self.resolved_device().type == "cuda" else 1

    def validate(self) -> None:
        if min(self.batch, self.frames, self.classes, self.repeats, self.iters) < 1:
            raise ConfigError("--batch, --frames, --classes, --repeats and --iters must be >= 1")
        if self.precision not in ("autocast", "cast"):
            raise ConfigError(f"--precision: expected autocast or cast, got {self.precision!r}")
        if self.token_merging < 0:
            raise ConfigError(f"--token-merging must be >= 0, got {self.token_merging}")
        if self.optimizer not in ("auto", "fused", "foreach"):
            raise ConfigError(f"--optimizer: expected auto, fused or foreach, got {self.optimizer!r}")
        self.resolved_dtype()


def build_method(cfg: BenchConfig, device: torch.device):
    """A method with random weights on ``device`` (text tower frozen unless ``train_text``)."""
    from vclip.backbone import CLIP, get_config
    from vclip.methods import METHODS

    if cfg.method not in METHODS:
        raise ConfigError(f"--method: unknown method {cfg.method!r} (known: {', '.join(METHODS)})")
    arch = get_config(cfg.arch)
    if cfg.image_size:
        arch.vision.image_size = cfg.image_size
        arch.validate()
    torch.manual_seed(cfg.seed)
    cls = METHODS[cfg.method]
    method = cls(CLIP(arch), num_frames=cfg.frames, options=cls.parse_options({}))
    method.set_token_merging({"r": cfg.token_merging} if cfg.token_merging else None)
    if not cfg.train_text:
        method.freeze(text=True, logit_scale=True)
    if cfg.grad_checkpointing:
        method.clip.set_grad_checkpointing(True)
    return method.to(device)


def vocabulary(k: int):
    from vclip.methods.base import Vocabulary

    return Vocabulary(tuple(f"class number {i}" for i in range(k)))


def autocast_ctx(device: torch.device, dtype: str, precision: str):
    if dtype == "fp32" or precision == "cast":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def video_path(method):
    """``(video, class_features) -> logits``: the part of the forward that runs per batch."""

    def fwd(video, feats):
        return method(video, feats).logits

    return fwd


def maybe_compile(fn, cfg: BenchConfig):
    if not cfg.compile:
        return fn
    kwargs = {"mode": cfg.compile_mode} if cfg.compile_mode else {}
    return torch.compile(fn, **kwargs)


# ------------------------------------------------------------------------------------------ FLOPs


def count_flops(cfg: BenchConfig) -> dict | None:
    """FLOPs of one view (2 per multiply-add): the executed video path against K cached classes,
    its parts, and the papers' fvcore figure (1 per multiply-add, one sentence). None when the
    method cannot be counted on the meta device."""
    from vclip.methods.flops import build_for_count, count_macs, method_flops

    try:
        merging = {"r": cfg.token_merging} if cfg.token_merging else None
        m = build_for_count(cfg.method, cfg.arch, cfg.frames, cfg.image_size, token_merging=merging)
        size = m.clip.config.vision.image_size
        video = torch.empty(1, m.input_frames(), 3, size, size, device="meta")
        feats = torch.empty(cfg.classes, m.clip.config.embed_dim, device="meta")
        macs, per_module = count_macs(lambda: m.logits(m.encode_video(video), feats))
        paper = method_flops(cfg.method, cfg.arch, cfg.frames, cfg.image_size, num_texts=1, token_merging=merging)
    except Exception as e:  # noqa: BLE001 - e.g. data-dependent control flow on meta tensors
        log.warning("FLOPs of %s could not be counted on the meta device (%s); MFU is not reported",
                    cfg.method, e)
        return None
    image = per_module.get("VisionTransformer", 0)
    return {
        "convention": "2 FLOPs per multiply-add (matmuls, convolutions, attention); element-wise ops not counted",
        "gflops_per_view": 2 * macs / 1e9,
        "parts_gflops": {"image tower": 2 * image / 1e9, "head (K classes)": 2 * (macs - image) / 1e9},
        "classes": cfg.classes,
        "paper_gflops_per_view_fvcore": paper.gflops,
        "paper_convention": "fvcore: 1 multiply-add = 1 FLOP, one view + one sentence (the papers' tables)",
    }


# --------------------------------------------------------------------------------- matmul ceiling


def matmul_ceiling(device: torch.device | str, dtype: str = "bf16", n: int | None = None, *, repeats: int = 3,
                   iters: int | None = None, warmup: int = 2) -> dict:
    """FLOP/s of an ``n × n @ n × n`` matmul in ``dtype``, timed as the models are (median of
    ``repeats``). Default n: 8192 on CUDA, 1024 on the CPU."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    iters = iters or (20 if device.type == "cuda" else 2)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, generator=g).to(device=device, dtype=DTYPES[dtype])
    out = torch.empty_like(a)
    t = measure(lambda: torch.mm(a, b, out=out), device, warmup=warmup, repeats=repeats, iters=iters)
    flops = 2 * n**3
    return {
        "dtype": dtype,
        "n": n,
        "tflops": flops / t.median_s / 1e12,
        "tflops_best": flops / t.min_s / 1e12,
        "timing": t.to_dict(),
    }


# --------------------------------------------------------------------------------------- runners


def _mfu(flops_per_item: float | None, items_per_s: float, ceiling: dict | None) -> float | None:
    if not flops_per_item or not ceiling:
        return None
    return flops_per_item * items_per_s / (ceiling["tflops"] * 1e12)


def _inputs(cfg: BenchConfig, method, device: torch.device, dtype):
    size = method.clip.config.vision.image_size
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    video = torch.randn(cfg.batch, method.input_frames(), 3, size, size, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(cfg.classes, (cfg.batch,), generator=g).to(device)
    return video, labels


def _inference_step(cfg: BenchConfig):
    """(method, step closure, first logits) of the inference measurement."""
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    method = build_method(cfg, device).eval()
    in_dtype = torch.float32
    if cfg.precision == "cast":
        method = method.to(DTYPES[dtype])
        in_dtype = DTYPES[dtype]
    video, _ = _inputs(cfg, method, device, in_dtype)
    with torch.no_grad(), autocast_ctx(device, dtype, cfg.precision):
        feats = method.class_features(vocabulary(cfg.classes))
    fwd = maybe_compile(video_path(method), cfg)

    def step():
        with torch.no_grad(), autocast_ctx(device, dtype, cfg.precision):
            return fwd(video, feats)

    logits = step()
    if not torch.isfinite(logits.float()).all():
        raise RuntimeError("inference produced non-finite logits")
    return method, step, logits


def bench_token_merging(cfg: BenchConfig, rs: list[int]) -> dict:
    """Inference views/s of the same model (same seed, same weights and inputs) with each ToMe r of
    ``rs`` side by side in one process: after every variant's warm-up, the timed runs alternate
    between the variants (round r: one run of each), so machine load drifts affect all alike. The
    speed-up of each variant is the median time of the first (r = ``rs[0]``) over its own, in
    wall-clock time and in the process's CPU time (``time.process_time``: on a shared, loaded CPU
    machine the wall-clock time mostly measures the other jobs; with ``--threads 1`` the CPU time
    is the work done)."""
    import dataclasses
    import statistics
    import time

    cfg.validate()
    device = cfg.resolved_device()
    variants = []
    for r in rs:
        c = dataclasses.replace(cfg, token_merging=r)
        c.validate()
        method, step, logits = _inference_step(c)
        measure(step, device, warmup=c.resolved_warmup(), repeats=1, iters=1)  # warm-up
        variants.append({"r": r, "step": step, "runs": [], "logits": logits,
                         "parameters_m": sum(p.numel() for p in method.parameters()) / 1e6})
    for _ in range(cfg.repeats):
        for v in variants:
            cpu0 = time.process_time()
            v["runs"] += measure(v["step"], device, warmup=0, repeats=1, iters=cfg.iters).runs_s
            v.setdefault("cpu", []).append((time.process_time() - cpu0) / cfg.iters)
    base = statistics.median(variants[0]["runs"])
    base_cpu = statistics.median(variants[0]["cpu"])
    out = []
    for v in variants:
        med, cpu = statistics.median(v["runs"]), statistics.median(v["cpu"])
        out.append({"r": v["r"], "runs_s": v["runs"], "median_s": med, "views_per_s": cfg.batch / med,
                    "speedup": base / med, "cpu_runs_s": v["cpu"], "median_cpu_s": cpu,
                    "speedup_cpu_time": base_cpu / cpu,
                    "max_abs_logit_change": float((v["logits"].float() - variants[0]["logits"].float()).abs().max())})
    return {"config": {**asdict(cfg), "dtype": cfg.resolved_dtype(), "device": str(device)},
            "token_merging": {"order": "alternating runs, one of each variant per round", "variants": out}}


def bench_inference(cfg: BenchConfig, ceiling: dict | None = None, flops: dict | None = None) -> dict:
    """Views/s of the video path (see the module docstring) and the peak memory of the timed runs."""
    cfg.validate()
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    method, step, _ = _inference_step(cfg)  # its first call checks the logits are finite
    meter = MemoryMeter(device).start()
    timing = measure(step, device, warmup=cfg.resolved_warmup(), repeats=cfg.repeats, iters=cfg.iters)
    memory = meter.stop()
    rate = timing.rate(cfg.batch)
    per_view = flops["gflops_per_view"] * 1e9 if flops else None
    return {
        "config": {**asdict(cfg), "dtype": dtype, "device": str(device), "warmup": timing.warmup},
        "timing": timing.to_dict(),
        "views_per_s": rate,
        "memory": memory,
        "flops": flops,
        "achieved_tflops": per_view * rate["median"] / 1e12 if per_view else None,
        "ceiling": ceiling,
        "mfu": _mfu(per_view, rate["median"], ceiling),
        "parameters_m": sum(p.numel() for p in method.parameters()) / 1e6,
    }


def build_train_step(cfg: BenchConfig, method, device: torch.device, dtype: str):
    """A closure running one full optimizer step (see the module docstring)."""
    from vclip.config import TrainConfig
    from vclip.engine.optim import build_method_optimizer
    from vclip.engine.trainer import weighted_loss

    fused = {"auto": None, "fused": True, "foreach": False}[cfg.optimizer]
    # X-CLIP's recipe: lr 8e-6, weight decay 0.001, betas (0.9, 0.98), eps 1e-8, new modules × 10
    opt = build_method_optimizer(method, TrainConfig(lr=8e-6, weight_decay=0.001), fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    vocab = vocabulary(cfg.classes)
    video, labels = _inputs(cfg, method, device, torch.float32)
    fwd = maybe_compile(method, cfg)

    def step():
        feats = method.class_features(vocab)  # cached while the text tower is frozen
        with autocast_ctx(device, dtype, "autocast"):
            out = fwd(video, feats, labels, label_smoothing=0.1)
        loss = weighted_loss(out.losses, method.loss_weights)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, opt


def bench_training(cfg: BenchConfig, ceiling: dict | None = None, flops: dict | None = None) -> dict:
    """Clips/s of full optimizer steps and their peak memory (weights, gradients, AdamW state and
    activations: the peak since the model was built, before the first step)."""
    cfg.validate()
    if cfg.precision != "autocast":
        raise ConfigError("training runs with --precision autocast (fp32 master weights)")
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    method = build_method(cfg, device).train()
    meter = MemoryMeter(device).start()
    step, opt = build_train_step(cfg, method, device, dtype)
    timing = measure(step, device, warmup=cfg.resolved_warmup(), repeats=cfg.repeats, iters=cfg.iters)
    memory = meter.stop()
    loss = step()
    if not torch.isfinite(loss.detach().float()):
        raise RuntimeError("the training step produced a non-finite loss")
    rate = timing.rate(cfg.batch)
    per_clip = 3 * flops["gflops_per_view"] * 1e9 if flops else None
    trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    return {
        "config": {**asdict(cfg), "dtype": dtype, "device": str(device), "warmup": timing.warmup},
        "timing": timing.to_dict(),
        "clips_per_s": rate,
        "memory": memory,
        "flops": flops and {**flops, "train_gflops_per_clip": 3 * flops["gflops_per_view"],
                            "train_convention": "3 × forward (forward + backward ≈ 2 × forward)"},
        "achieved_tflops": per_clip * rate["median"] / 1e12 if per_clip else None,
        "ceiling": ceiling,
        "mfu": _mfu(per_clip, rate["median"], ceiling),
        "trainable_parameters_m": trainable / 1e6,
        "optimizer": {"fused": bool(opt.defaults.get("fused")), "foreach": opt.defaults.get("foreach")},
        "final_loss": float(loss.detach().float()),
    }


__all__ = ["BenchConfig", "Timing", "bench_inference", "bench_token_merging", "bench_training", "build_method", "build_train_step",
           "count_flops", "matmul_ceiling", "video_path"]
