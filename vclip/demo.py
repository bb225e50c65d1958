"""``vclip demo``: what temporal modelling buys, on a fresh machine, in minutes on a CPU.

1. Generates the synthetic motion set (``vclip data synth``): 12 classes, of which 8 form 4 *order
   pairs* that only frame order separates (a clip of one member reversed is a clip of the other)
   and 4 are told apart by any single frame.
2. Trains each method with a small CLIP backbone from random initialisation (no weights can be
   downloaded here), with the regular engine (``vclip.engine.trainer.train``).
3. Evaluates on the held-out videos and prints: overall top-1, single-frame classes, order-pair
   classes, and *within-pair* accuracy — for each order-pair video, whether the model prefers its
   class over the pair's other member. A frame-order-blind model (CLIP-mean pools frames) is at
   chance (50 %) there by construction; a temporal model is not.
4. Writes ``demo_results.json`` and a bar chart ``demo.png`` into the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: settings shared by every demo run (a CPU-sized version of the usual recipe)
DEMO_BASE = {
    "device": "cpu",
    "model": {"arch": "tiny", "templates": ["{}"]},
    "data": {
        "num_frames": 8, "image_size": 32, "batch_size": 16, "num_workers": 2,
        # no flip (it would swap "moving left" and "moving right"), no colour jitter or grayscale
        # (colour is a class), no mixup: the synthetic set needs none of them
        "aug": {"crop": "center", "flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0,
                "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0},
    },
    "train": {"epochs": 1000, "lr": 1.0e-3, "weight_decay": 0.05, "warmup_epochs": 1, "precision": "fp32",
              "log_every": 50, "eval_every": 1000, "seed": 0},
    "eval": {"confusion_png": False},
}

#: the methods the demo compares: (name in the table, method, extra config)
DEMO_METHODS = [
    ("CLIP-mean", "clip", {}),
    # the text tower is trained here like the baseline's (there are no pretrained text weights to keep)
    ("X-CLIP", "xclip", {"model": {"options": {"fix_text": False}}}),
]


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train CLIP-mean and X-CLIP on synthetic motion videos and compare")
    p.add_argument("--out", default="runs/demo", help="output folder (data, runs, results)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per method")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all available)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_demo)


def _deep(base: dict, over: dict) -> dict:
    from vclip.config import deep_merge

    return deep_merge(base, over)


def ensure_synthetic(out: Path, seed: int = 0) -> Path:
    """The synthetic set under ``out`` (generated once; reused when its meta matches)."""
    from vclip.data.synthetic import SynthConfig, generate

    cfg = SynthConfig(seed=seed, size=(64, 64), videos_per_class=100)
    meta = out / "meta.json"
    if meta.is_file():
        try:
            if json.loads(meta.read_text()).get("config", {}).get("seed") == seed and (out / "val.txt").is_file() \
                    and json.loads(meta.read_text())["config"].get("videos_per_class") == cfg.videos_per_class:
                return out
        except json.JSONDecodeError:
            pass
    print(f"generating the synthetic motion set in {out} ...", flush=True)
    summary = generate(out, cfg, workers=min(2, os.cpu_count() or 1))
    print(f"  {summary.get('videos', '?')} videos in {summary.get('seconds', 0):.1f} s", flush=True)
    return out


def pair_accuracy(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Share of order-pair videos whose own class outscores its pair partner."""
    from vclip.data.synthetic import pair_of

    hits = [scores[i, t] > scores[i, pair_of(int(t))] for i, t in enumerate(targets) if pair_of(int(t)) is not None]
    return float(np.mean(hits)) if hits else None


def run_method(label: str, method: str, extra: dict, data_dir: Path, out: Path, steps: int, seed: int) -> dict:
    from vclip.config import RunConfig, from_dict, validate
    from vclip.data.synthetic import class_groups
    from vclip.engine import data as run_data
    from vclip.engine.distributed import init_distributed
    from vclip.engine.evaluate import evaluate_method
    from vclip.engine.trainer import train
    from vclip.methods import build_method, make_vocabulary

    d = str(data_dir)
    raw = _deep(DEMO_BASE, {
        "name": f"demo-{method}", "output_dir": str(out / "runs"),
        "model": {"method": method},
        "data": {"root": d, "train_list": f"{d}/train.txt", "val_list": None, "labels": f"{d}/labels.csv"},
        "train": {"max_steps": steps, "seed": seed},
    })
    cfg = from_dict(RunConfig, _deep(raw, extra))
    validate(cfg)
    t0 = time.time()
    train(cfg)
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
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def _demo(args) -> int:
    from vclip.methods import METHODS

    logging.getLogger("vclip.methods").setLevel(logging.ERROR)  # random init is the point here
    out = Path(args.out)
    data_dir = ensure_synthetic(out / "data", seed=args.seed)
    wanted = args.methods.split(",") if args.methods else [m for _, m, _ in DEMO_METHODS if m in METHODS]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        from vclip.errors import ConfigError

        raise ConfigError(f"--methods: unknown method(s) {unknown}; available: {', '.join(METHODS)}")
    rows = []
    for label, method, extra in DEMO_METHODS + [(m, m, {}) for m in wanted if m not in {x[1] for x in DEMO_METHODS}]:
        if method not in wanted:
            continue
        print(f"training {label} ({args.steps} steps, tiny CLIP from random init, 32 px, 8 frames) ...", flush=True)
        rows.append(run_method(label, method, extra, data_dir, out, args.steps, args.seed))
    table = print_table(rows)
    print()
    print(table)
    (out / "demo_results.json").write_text(json.dumps({"rows": rows, "table": table}, indent=2))
    plot(rows, out / "demo.png")
    print(f"\nwrote {out / 'demo_results.json'} and {out / 'demo.png'}")
    return 0
