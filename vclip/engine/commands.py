"""``vclip train``, ``vclip eval`` and ``vclip predict``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from vclip.methods import load_run_config as load_config
from vclip.errors import ConfigError

log = logging.getLogger(__name__)


def _add_config_args(p) -> None:
    p.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="YAML config (repeatable; later files override earlier ones)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-5")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a method (one process, or many under torchrun)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="auto|PATH", help="resume: 'auto' = the run's last checkpoint, or a path")
    p.set_defaults(handler=_train)

    e = subparsers.add_parser("eval", help="evaluate a method on data.val_list (or --annotation)")
    _add_config_args(e)
    e.add_argument("--checkpoint", help="a training checkpoint directory (runs/NAME/checkpoints/best)")
    e.add_argument("--annotation", help="evaluate this split file instead of data.val_list")
    e.set_defaults(handler=_eval)

    r = subparsers.add_parser("predict", help="top-k classes of video files")
    r.add_argument("videos", nargs="+", metavar="VIDEO")
    lab = r.add_mutually_exclusive_group()
    lab.add_argument("--labels", help='comma-separated class names, e.g. "juggling,archery,surfing"')
    lab.add_argument("--labels-file", help="label CSV (id,name) or a text file with one class per line")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a vclip training checkpoint directory (its run's config is used)")
    src.add_argument("--pretrained", help="CLIP weights (name, file or directory) for zero-shot prediction")
    r.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="config for the method/frames/size (default: the checkpoint's run config)")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of --pretrained")
    r.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE")
    r.set_defaults(handler=_predict)


def _train(args) -> int:
    from vclip.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    results = train(cfg, resume=args.resume)
    _print_summary(results, cfg.run_dir)
    return 0


def _eval(args) -> int:
    from vclip.engine.evaluate import evaluate

    cfg = load_config(args.config, args.overrides)
    results = evaluate(cfg, checkpoint=args.checkpoint, annotation=args.annotation)
    _print_summary(results, cfg.run_dir)
    return 0


def _print_summary(results: dict, run_dir: Path) -> None:
    from vclip.engine.distributed import is_main

    if not is_main() or "top1" not in results:
        return
    print(f"top-1 {100 * results['top1']:.2f}%  top-5 {100 * results.get('top5', float('nan')):.2f}%  "
          f"mean class {100 * results['mean_class_accuracy']:.2f}%  over {results['num_videos']} videos"
          f"{'' if not results['num_failed'] else ', ' + str(results['num_failed']) + ' failed to decode'}")
    print(f"results in {run_dir}")


def read_class_list(labels: str | None, labels_file: str | None) -> list[str] | None:
    if labels:
        names = [n.strip() for n in labels.split(",") if n.strip()]
        if not names:
            raise ConfigError("--labels: no class names given")
        return names
    if labels_file:
        from vclip.data.annotations import read_label_csv

        path = Path(labels_file)
        if not path.is_file():
            raise ConfigError(f"--labels-file: {path} does not exist")
        first = path.read_text().splitlines()[:1]
        if first and first[0].replace(" ", "").lower().startswith("id,name"):
            return read_label_csv(path)
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"--labels-file: {path} holds no class names")
        return names
    return None


def _predict(args) -> int:
    from vclip.data.annotations import VideoRecord
    from vclip.data.datasets import VideoDataset
    from vclip.data.sampling import build_sampler
    from vclip.data.transforms import build_test_transform
    from vclip.engine.checkpoint import load_checkpoint
    from vclip.methods import build_method, make_vocabulary

    files = list(args.config)
    run_cfg = None
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        run_cfg = ckpt.parent.parent / "config.yaml" if ckpt.is_dir() else ckpt.parent.parent.parent / "config.yaml"
        if not files:
            if not run_cfg.is_file():
                raise ConfigError(f"--checkpoint {ckpt}: no run config at {run_cfg}; pass --config")
            files = [str(run_cfg)]
    overrides = list(args.overrides)
    if args.pretrained:
        overrides += [f"model.pretrained={args.pretrained}", f"model.trust_checkpoint={args.trust_checkpoint}"]
    cfg = load_config(files, overrides)
    names = read_class_list(args.labels, args.labels_file)
    if names is None:
        if not cfg.data.labels:
            raise ConfigError("give the classes with --labels \"a,b,c\" or --labels-file FILE")
        from vclip.engine.data import class_names

        names = class_names(cfg)
    if args.checkpoint:
        cfg.model.pretrained = None  # the checkpoint holds every weight
    logging.getLogger("vclip.methods").setLevel(logging.ERROR if args.checkpoint else logging.WARNING)
    method = build_method(cfg)
    if args.checkpoint:
        model_state, _, _ = load_checkpoint(args.checkpoint)
        method.load_state_dict(model_state)
    method.eval()
    vocab = make_vocabulary(cfg, names)
    d = cfg.data
    records = [VideoRecord(path=str(Path(v)), label=-1) for v in args.videos]
    sampler = build_sampler(mode="segment" if d.sampling == "segments" else "dense", num_frames=d.num_frames,
                            interval=d.frame_interval, short_policy=d.short_video, test_mode=True)
    dataset = VideoDataset(records, None, None, sampler=sampler, transform=build_test_transform(
        input_size=d.image_size, num_crops=1, norm=d.normalize), backend=d.backend, on_bad_video="skip", train=False)
    k = min(args.top_k, len(names))
    out, status = [], 0
    with torch.no_grad():
        for i, rec in enumerate(records):
            sample = dataset[i]
            if not sample["valid"]:
                out.append({"video": rec.path, "error": sample["error"]})
                status = 1
                continue
            probs = method(sample["video"].unsqueeze(0), vocab).logits.float().softmax(-1)[0]
            top = probs.topk(k)
            out.append({"video": rec.path, "top": [{"class": names[int(c)], "probability": round(float(p), 4)}
                                                   for p, c in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for item in out:
            print(item["video"])
            if "error" in item:
                print(f"  error: {item['error']}")
                continue
            for rank, t in enumerate(item["top"], 1):
                print(f"  {rank}. {t['class']:<40s} {100 * t['probability']:6.2f}%")
    return status
