"""``vclip train``, ``vclip eval``, ``vclip predict`` and ``vclip export``."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import torch

from vclip.methods import load_run_config as load_config
from vclip.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def _add_config_args(p) -> None:
    p.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="YAML config (repeatable; later files override earlier ones)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-5")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a method (one process, or many under torchrun)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="auto|PATH",
                   help="resume: 'auto' = the run's last checkpoint (from scratch when there is none), or a path")
    p.add_argument("--overwrite", action="store_true",
                   help="delete what an earlier run wrote into the run directory (checkpoints, logs, metrics, "
                        "results, config.yaml) and start afresh; without it a run directory holding a run is refused")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config differs from the one the checkpoint was trained with "
                        "(the differing keys are logged)")
    p.set_defaults(handler=_train)

    e = _intermixed(subparsers.add_parser("eval", help="evaluate a method on data.val_list (or --annotation)"))
    _add_config_args(e)
    e.add_argument("--checkpoint", metavar="DIR",
                   help="a checkpoint folder (runs/NAME/checkpoints/best, or one written by vclip export); "
                        "without -c its run config is used")
    e.add_argument("--annotation", help="evaluate this split file instead of data.val_list")
    e.set_defaults(handler=_eval)

    r = _intermixed(subparsers.add_parser("predict", help="top-k classes of video files"))
    r.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files; an argument KEY=VALUE anywhere on the line is a config override "
                        "(e.g. data.num_frames=16; a video whose name looks like one: write it ./NAME)")
    lab = r.add_mutually_exclusive_group()
    lab.add_argument("--labels", help='comma-separated class names, e.g. "juggling,archery,surfing"')
    lab.add_argument("--labels-file", help="label CSV (id,name) or a text file with one class per line")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="DIR",
                     help="a vclip checkpoint folder (runs/NAME/checkpoints/best, or one written by vclip export); "
                          "its run config is used unless -c is given")
    src.add_argument("--pretrained", help="CLIP weights (name, file or directory) for zero-shot prediction")
    r.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="config for the method/frames/size (default: the checkpoint's run config)")
    r.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes shown per video, best first (>= 1; at most the number of classes)")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of --pretrained")
    r.set_defaults(handler=_predict)

    x = _intermixed(subparsers.add_parser(
        "export", help="write an inference-only checkpoint (weights, config, meta.json) to share",
        description="Write the folder OUT from the checkpoint CHECKPOINT: model.safetensors, the run's config.yaml "
                    "and meta.json (recording the architecture), without the train state. vclip eval and vclip "
                    "predict --checkpoint OUT load it without the training run or its pretrained weights."))
    x.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder (runs/NAME/checkpoints/best)")
    x.add_argument("out", metavar="OUT", help="the folder to write; must not exist or be empty")
    x.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="the config to record instead of the checkpoint's run config (repeatable)")
    x.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of that config, e.g. data.root=/data/k400")
    x.set_defaults(handler=_export)


class _IntermixedParsing:
    """Mixin of a command's parser: positionals (videos, KEY=VALUE overrides) may come before,
    between and after the options — argparse alone takes positionals in one run only, so
    ``vclip predict V.mp4 --labels a,b data.num_frames=8`` would be refused."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back here (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _intermixed(parser):
    """``parser`` with :class:`_IntermixedParsing` mixed into its own class (the sub-parser class
    ``vclip.cli`` hands down is kept)."""
    base = type(parser)
    parser.__class__ = type(f"Intermixed{base.__name__}", (_IntermixedParsing, base), {})
    return parser


def _train(args) -> int:
    from vclip.engine.trainer import train

    from vclip.engine.distributed import is_main
    from vclip.errors import TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    try:
        results = train(cfg, resume=args.resume, overwrite=args.overwrite,
                        allow_config_change=args.allow_config_change)
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: a checkpoint was saved; 130 / 143 as the shell's
        if is_main():
            print(f"vclip train: {e}", file=sys.stderr)
        return e.exit_code
    _print_summary(results, cfg.run_dir)
    return 0


def _eval(args) -> int:
    from vclip.engine.evaluate import evaluate
    from vclip.engine.inference import inference_config, open_checkpoint

    ck = open_checkpoint(args.checkpoint) if args.checkpoint else None  # a mistyped path: before anything else
    cfg = inference_config(ck, args.config, args.overrides)
    results = evaluate(cfg, checkpoint=ck, annotation=args.annotation)
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


def _unique(names: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{what}: the class {n!r} is given twice (class names must be distinct)")
        seen.add(n)
    return names


def read_class_list(labels: str | None, labels_file: str | None) -> list[str] | None:
    """The classes of ``--labels`` (comma-separated) or ``--labels-file`` (a label CSV or one name
    per line); None when neither is given. Empty lists and duplicate names are ConfigErrors."""
    if labels:
        names = [n.strip() for n in labels.split(",") if n.strip()]
        if not names:
            raise ConfigError("--labels: no class names given")
        return _unique(names, "--labels")
    if labels_file:
        from vclip.data.annotations import read_label_csv

        path = Path(labels_file)
        if not path.is_file():
            raise ConfigError(f"--labels-file: {path} does not exist")
        first = path.read_text().splitlines()[:1]
        if first and first[0].replace(" ", "").lower().startswith("id,name"):
            return _unique(list(read_label_csv(path)), f"--labels-file {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"--labels-file: {path} holds no class names")
        return _unique(names, f"--labels-file {path}")
    return None


#: ``key.sub=value``: a config override among predict's positional arguments
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def split_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """``(videos, overrides)`` of predict's positional arguments: ``KEY=VALUE`` (a dotted key, and
    no file of that name) is an override, anything else a video. A video that does not exist (or
    none at all) is a ConfigError, before any work."""
    videos, overrides = [], []
    for a in inputs:
        (overrides if _OVERRIDE.match(a) and not Path(a).exists() else videos).append(a)
    if not videos:
        raise ConfigError(f"no VIDEO given (only config overrides: {' '.join(overrides)})")
    missing = [v for v in videos if "://" not in v and not Path(v).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ConfigError(f"VIDEO {missing[0]}: no such file or directory{more}")
    return videos, overrides


def _predict(args) -> int:
    from vclip.data.annotations import VideoRecord
    from vclip.data.datasets import VideoDataset
    from vclip.data.sampling import build_sampler
    from vclip.data.transforms import build_test_transform
    from vclip.engine.data import decode_options
    from vclip.engine.inference import build_for_checkpoint, inference_config, open_checkpoint
    from vclip.methods import build_method, make_vocabulary

    # the arguments first, before any loading
    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {args.top_k}")
    names = read_class_list(args.labels, args.labels_file)
    videos, overrides = split_inputs(args.inputs)
    ck = open_checkpoint(args.checkpoint) if args.checkpoint else None
    if args.pretrained:
        overrides += [f"model.pretrained={args.pretrained}", f"model.trust_checkpoint={args.trust_checkpoint}"]
    cfg = inference_config(ck, args.config, overrides)
    if names is None:
        if not cfg.data.labels:
            raise ConfigError("give the classes with --labels \"a,b,c\" or --labels-file FILE")
        from vclip.engine.data import class_names

        names = class_names(cfg)
    logging.getLogger("vclip.methods").setLevel(logging.WARNING)
    method = build_for_checkpoint(cfg, ck) if ck is not None else build_method(cfg)
    method.eval()
    from vclip.engine.checkpoint import nonfinite_report

    bad = nonfinite_report(method.state_dict())  # NaN scores would name a class all the same
    if bad is not None:
        where = ck.label if ck is not None else f"model.pretrained={cfg.model.pretrained}"
        raise CheckpointError(f"{where}: refusing to predict with non-finite weights in {bad}")
    vocab = make_vocabulary(cfg, names)
    d = cfg.data
    records = [VideoRecord(path=str(Path(v)), label=-1) for v in videos]
    sampler = build_sampler(mode="segment" if d.sampling == "segments" else "dense", num_frames=method.input_frames(),
                            interval=d.frame_interval, short_policy=d.short_video, test_mode=True)
    dataset = VideoDataset(records, None, None, sampler=sampler, transform=build_test_transform(
        input_size=d.image_size, num_crops=1, norm=d.normalize), backend=d.backend, on_bad_video="skip", train=False,
        decode_options=decode_options(cfg))
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


def _export(args) -> int:
    from vclip.engine.inference import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.config, args.overrides)
    size = (out / "model.safetensors").stat().st_size
    print(f"exported {args.checkpoint} to {out}: model.safetensors ({size / 2**20:.1f} MiB), config.yaml, meta.json")
    print(f"use it with: vclip predict VIDEO --checkpoint {out} --labels \"a,b,c\"  or  vclip eval --checkpoint {out}")
    return 0
