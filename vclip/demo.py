"""``vclip demo``: what temporal modelling buys, on a fresh machine, in minutes on a CPU.

1. Generates the synthetic motion set (``vclip data synth``, 32 px, flat backgrounds): 12 classes, of
   which 8 form 4 *order pairs* that only frame order separates (a clip of one member reversed is a
   clip of the other) and 4 are told apart by any single frame.
2. Builds one small CLIP (``tiny``) from random initialisation — no weights can be downloaded here —
   and saves it, so that every method starts from the same weights.
3. Trains each method from that CLIP with its text tower frozen (X-CLIP's default ``fix_text``; the
   baseline gets the same ``model.freeze_text``), with the regular engine
   (``vclip.engine.trainer.train``). A frozen random text tower still gives every class a fixed,
   distinct target. Trained from random initialisation instead (``--train-text``), it starts with
   the two names of a pair almost alike and training sits on a symmetric saddle: the video side
   has no reason to see order while the two texts are alike, and the texts have no reason to part
   while the video side is order-blind — X-CLIP then stays near chance within the pairs.
4. Evaluates on the held-out videos and prints: overall top-1, single-frame classes, order-pair
   classes, and *within-pair* accuracy — for each order-pair video, whether the model prefers its
   class over the pair's other member. A frame-order-blind model (CLIP-mean pools frames) is at
   chance (50 %) there by construction; a temporal model is not.
5. Writes ``demo_results.json`` and a bar chart ``demo.png`` into the output folder.

Training and evaluation read the videos' frames from a frame cache (``vclip data prepare --cache``
at the videos' own size, built once under ``OUT/cache`` and reused): the same uint8 frames PyAV
decodes, so the figures are those of decoding every clip (``--no-cache``), without the decoding
that bounded the demo's training on 2 CPU cores.

Arguments (``--steps``, ``--methods``, ``--seed``, ``--out``) and every method's run config are
checked before anything is generated. The LR warm-up is one epoch, shortened for short runs to a
tenth of ``--steps`` (rounded down: none below 10 steps) — see :func:`warmup_epochs`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from vclip.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

#: settings shared by every demo run (a CPU-sized version of the usual recipe)
DEMO_BASE = {
    "device": "cpu",
    "model": {"templates": ["{}"], "freeze_text": True},
    "data": {
        "num_frames": 4, "image_size": 32, "batch_size": 16, "num_workers": 2,
        # no flip (it would swap "moving left" and "moving right"), no colour jitter or grayscale
        # (colour is a class), no mixup: the synthetic set needs none of them
        "aug": {"crop": "center", "flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0,
                "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0},
    },
    "train": {"epochs": 1000, "lr": 1.0e-3, "lr_mult_new": 1.0, "weight_decay": 0.05, "warmup_epochs": 1,
              "precision": "fp32",
              "log_every": 50, "eval_every": 1000, "seed": 0},
    "eval": {"confusion_png": False},
}

#: the synthetic set the demo trains on
DEMO_SYNTH = {"size": (32, 32), "videos_per_class": 500, "texture_contrast": 0.0}
DEMO_ARCH = "tiny"
DEMO_STEPS = 4000

#: the methods the demo compares: (name in the table, method, extra config)
DEMO_METHODS = [
    ("CLIP-mean", "clip", {}),
    ("X-CLIP", "xclip", {}),
]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train CLIP-mean and X-CLIP on synthetic motion videos and compare",
                              description="Train CLIP-mean and X-CLIP from one random tiny CLIP on the synthetic "
                                          "motion set and compare them (README: 'What the demo shows').")
    p.add_argument("--out", default="runs/demo", help="output folder (data, runs, results)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS,
                   help="optimizer steps per method, >= 1 (warm-up: 1 epoch, at most a tenth of them)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method names (default: "
                        + ",".join(m for _, m, _ in DEMO_METHODS) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initial CLIP and training")
    p.add_argument("--no-cache", action="store_true",
                   help="decode the videos with PyAV at every step instead of reading the frame cache "
                        "(same frames, same figures; slower)")
    p.add_argument("--train-text", action="store_true",
                   help="train the text tower too (an ablation: the random text tower then stalls X-CLIP)")
    p.set_defaults(handler=_demo)


def _deep(base: dict, over: dict) -> dict:
    from vclip.config import deep_merge

    return deep_merge(base, over)


def ensure_synthetic(out: Path, seed: int = 0) -> Path:
    """The synthetic set under ``out`` (generated once; reused when its meta matches)."""
    from dataclasses import asdict

    from vclip.data.synthetic import SynthConfig, generate

    cfg = SynthConfig(seed=seed, **DEMO_SYNTH)
    want = json.loads(json.dumps(asdict(cfg)))
    meta = out / "meta.json"
    if meta.is_file() and (out / "val.txt").is_file():
        try:
            if json.loads(meta.read_text()).get("config") == want:
                return out
        except (json.JSONDecodeError, AttributeError):
            pass
    print(f"generating the synthetic motion set in {out} ...", flush=True)
    summary = generate(out, cfg, workers=min(2, os.cpu_count() or 1))
    print(f"  {summary.get('videos', '?')} videos in {summary.get('seconds', 0):.1f} s", flush=True)
    return out


def ensure_cache(data_dir: Path, cache_dir: Path) -> Path:
    """The frame cache of the synthetic set (native size; only missing or changed videos are
    (re)built, so a second demo run reuses it)."""
    from vclip.data.prepare import PrepareOptions, prepare
    from vclip.errors import VclipError

    t0 = time.time()
    results = prepare(data_dir, cache_dir, workers=min(2, os.cpu_count() or 1),
                      opts=PrepareOptions(short_side=0, cache=True), progress=False)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise VclipError(f"{cache_dir}: {len(failed)} videos could not be cached, e.g. {failed[0].reason}")
    done = sum(r.status == "done" for r in results)
    if done:
        print(f"  frame cache: {done} videos cached in {time.time() - t0:.1f} s -> {cache_dir}", flush=True)
    return cache_dir


def initial_clip(out: Path, seed: int = 0) -> Path:
    """The CLIP every demo method starts from: ``DEMO_ARCH`` at random init (seeded), saved as a
    vclip weight directory ``out``."""
    import torch

    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import save_clip

    torch.manual_seed(seed)
    arch = get_config(DEMO_ARCH)
    arch.vision.image_size = DEMO_SYNTH["size"][0]
    save_clip(CLIP(arch), out)
    return out


def train_text_override(method: str) -> dict:
    """Config override that makes ``method`` train its text tower (``--train-text``)."""
    over = {"model": {"freeze_text": False}}
    if method == "xclip":
        over["model"]["options"] = {"fix_text": False}
    return over


def pair_accuracy(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Share of order-pair videos whose own class outscores its pair partner."""
    from vclip.data.synthetic import pair_of

    hits = [scores[i, t] > scores[i, pair_of(int(t))] for i, t in enumerate(targets) if pair_of(int(t)) is not None]
    return float(np.mean(hits)) if hits else None


def train_videos(seed: int = 0) -> int:
    """How many training videos the demo's synthetic set holds (known before it is generated)."""
    from vclip.data.synthetic import CLASSES, SynthConfig

    cfg = SynthConfig(seed=seed, **DEMO_SYNTH)
    return len(CLASSES) * (cfg.videos_per_class - cfg.val_per_class)


def warmup_epochs(steps: int, num_videos: int, batch_size: int) -> float:
    """``train.warmup_epochs`` for a demo run of ``steps`` optimizer steps: the recipe's one epoch,
    but at most ``steps // 10`` steps, so that any ``steps >= 1`` trains (the engine refuses a
    warm-up as long as the run) and a short run is not all warm-up; below 10 steps, none. The
    default run (4,000 steps of 281) keeps its full epoch."""
    per_epoch = max(1, num_videos // batch_size)  # the loader drops the last partial batch
    want = min(per_epoch, steps // 10)
    if want >= per_epoch:
        return float(DEMO_BASE["train"]["warmup_epochs"])
    # the engine takes int(epochs * per_epoch) steps: aim at the middle of the step so rounding
    # cannot lose one
    return (want + 0.5) / per_epoch if want else 0.0


def method_config(method: str, extra: dict, data_dir: Path, out: Path, steps: int, seed: int, init: Path,
                  cache: Path | None = None):
    """The validated run config the demo trains ``method`` with (``extra`` merged last). Needs no
    data: the demo checks every method's config before generating anything. ``cache``: read the
    frames from this frame cache of ``data_dir`` (backend ``cache``)."""
    from vclip.config import RunConfig, from_dict, validate
    from vclip.methods import check_config

    d = str(data_dir)
    bs = DEMO_BASE["data"]["batch_size"]
    raw = _deep(DEMO_BASE, {
        "name": f"demo-{method}", "output_dir": str(out / "runs"),
        "model": {"method": method, "pretrained": str(init)},
        "data": {"root": str(cache) if cache is not None else d, "train_list": f"{d}/train.txt", "val_list": None,
                 "labels": f"{d}/labels.csv", **({"backend": "cache"} if cache is not None else {})},
        "train": {"max_steps": steps, "seed": seed, "warmup_epochs": warmup_epochs(steps, train_videos(seed), bs)},
    })
    cfg = from_dict(RunConfig, _deep(raw, extra))
    validate(cfg)
    check_config(cfg)
    return cfg


def run_method(label: str, method: str, extra: dict, data_dir: Path, out: Path, steps: int, seed: int,
               init: Path, cache: Path | None = None) -> dict:
    from vclip.data.synthetic import class_groups
    from vclip.engine import data as run_data
    from vclip.engine.distributed import init_distributed
    from vclip.engine.evaluate import evaluate_method
    from vclip.engine.trainer import train
    from vclip.methods import build_method, make_vocabulary

    d = str(data_dir)
    cfg = method_config(method, extra, data_dir, out, steps, seed, init, cache)
    t0 = time.time()
    train(cfg, overwrite=True)  # the demo retrains from scratch every time
    seconds = time.time() - t0
    # evaluate the trained weights on the held-out videos, keeping the scores for the pair metric
    from vclip.engine.checkpoint import load_checkpoint

    dist = init_distributed("cpu")
    names = run_data.class_names(cfg)
    model = build_method(cfg)
    model.load_state_dict(load_checkpoint(cfg.run_dir / "checkpoints" / "last")[0])
    val = run_data.eval_dataset(cfg, names, f"{d}/val.txt")
    res = evaluate_method(model, val, make_vocabulary(cfg, names), cfg, dist, subsets=class_groups(),
                          return_scores=True)
    return {
        "method": label, "name": method, "train_seconds": round(seconds, 1), "steps": steps,
        "top1": res["top1"], "single_frame": res["subsets"]["single_frame"]["top1"],
        "order_classes": res["subsets"]["order_pairs"]["top1"],
        "within_pair": pair_accuracy(res["scores"], res["targets"]), "val_videos": res["num_videos"],
    }


def print_table(rows: list[dict]) -> str:
    head = f"{'method':<12} {'overall':>8} {'single-frame':>13} {'order classes':>14} {'within pair':>12} {'train s':>8}"
    lines = [head, "-" * len(head)]
    pct = lambda v: "   n/a" if v is None else f"{100 * v:6.1f}%"  # noqa: E731
    for r in rows:
        lines.append(f"{r['method']:<12} {pct(r['top1']):>8} {pct(r['single_frame']):>13} "
                     f"{pct(r['order_classes']):>14} {pct(r['within_pair']):>12} {r['train_seconds']:>8.0f}")
    lines.append("chance: overall / single-frame / order classes 8.3 % (12 classes), within pair 50 %")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [("overall", "top1"), ("single-frame", "single_frame"), ("order classes", "order_classes"),
              ("within pair", "within_pair")]
    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(groups))
    for i, r in enumerate(rows):
        vals = [100 * (r[k] or 0) for _, k in groups]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=r["method"])
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.axhline(100 / 12, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, [g for g, _ in groups])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("synthetic motion set: frame order only a temporal model can see")
    ax.legend()
    with atomic_write(path, suffix=path.suffix) as tmp:  # matplotlib picks the format from the suffix
        fig.savefig(tmp)


def _command(args) -> str:
    parts = ["vclip demo", f"--out {args.out}", f"--steps {args.steps}", f"--seed {args.seed}"]
    if args.methods:
        parts.append(f"--methods {args.methods}")
    if args.train_text:
        parts.append("--train-text")
    if getattr(args, "no_cache", False):
        parts.append("--no-cache")
    return " ".join(parts)


def _machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}


def plan(args) -> list[tuple[str, str, dict]]:
    """Check ``vclip demo``'s arguments and every method's run config — before any work — and
    return the runs to make: (label, method, extra config). Raises ConfigError naming the flag."""
    from vclip.data.synthetic import CLASSES
    from vclip.errors import ConfigError
    from vclip.methods import METHODS, make_vocabulary

    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if args.methods is not None:
        wanted = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
        if not wanted:
            raise ConfigError(f"--methods {args.methods!r}: no method named; available: {', '.join(METHODS)}")
    else:
        wanted = [m for _, m, _ in DEMO_METHODS if m in METHODS]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    runs = []
    known = {x[1] for x in DEMO_METHODS}
    for label, method, extra in DEMO_METHODS + [(m, m, {}) for m in wanted if m not in known]:
        if method not in wanted:
            continue
        if args.train_text:
            extra = _deep(extra, train_text_override(method))
        try:
            cfg = method_config(method, extra, out / "data", out, args.steps, args.seed, out / "init_clip")
            make_vocabulary(cfg, list(CLASSES))  # what a method needs beyond the config (OST: descriptor files)
        except ConfigError as e:
            raise ConfigError(f"--methods: {method!r} cannot run in the demo's settings: {e}") from None
        runs.append((label, method, extra))
    return runs


def _demo(args) -> int:
    methods_log = logging.getLogger("vclip.methods")
    level = methods_log.level
    methods_log.setLevel(logging.ERROR)  # random init is the point here
    try:
        return _run_demo(args)
    finally:
        methods_log.setLevel(level)  # a library caller's logging is left as it was


def _run_demo(args) -> int:
    runs = plan(args)  # every argument error comes before any work
    out = Path(args.out)
    started = time.time()
    data_dir = ensure_synthetic(out / "data", seed=args.seed)
    cache = None if getattr(args, "no_cache", False) else ensure_cache(data_dir, out / "cache")
    init = initial_clip(out / "init_clip", seed=args.seed)
    rows = []
    for label, method, extra in runs:
        steps = f"{args.steps} step{'' if args.steps == 1 else 's'}"
        print(f"training {label} ({steps}, {DEMO_ARCH} CLIP, {DEMO_BASE['data']['image_size']} px, "
              f"{DEMO_BASE['data']['num_frames']} frames) ...", flush=True)
        rows.append(run_method(label, method, extra, data_dir, out, args.steps, args.seed, init, cache))
    table = print_table(rows)
    print()
    print(table)
    record = {"rows": rows, "table": table, "total_seconds": round(time.time() - started, 1),
              "command": _command(args), "frames_from": "pyav" if cache is None else "frame cache",
              "machine": _machine()}
    atomic_write_text(out / "demo_results.json", json.dumps(record, indent=2))
    plot(rows, out / "demo.png")
    print(f"\nwrote {out / 'demo_results.json'} and {out / 'demo.png'}")
    return 0
