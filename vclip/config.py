"""Run configuration: typed dataclasses, YAML files with inheritance, command-line overrides.

A config file is YAML with the sections of ``RunConfig`` (``model``, ``data``, ``train``, ``eval``
and a few top-level keys). ``base: other.yaml`` (or a list) inherits from other files, resolved
relative to the file that names them; later files and then ``key.sub=value`` overrides win.
Validation names the dotted key: unknown keys (with a suggestion), wrong types, and impossible
combinations. The resolved config is written into every run directory as ``config.yaml``.

    cfg = load_config(["configs/demo/clip_mean.yaml"], ["train.epochs=3", "data.num_frames=16"])
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from vclip.errors import ConfigError


@dataclass
class ModelConfig:
    #: method name, a key of ``vclip.methods.METHODS``
    method: str = "clip"
    #: architecture used for random initialisation when ``pretrained`` is empty
    arch: str = "ViT-B-16"
    #: pretrained CLIP: a name (openai/ViT-B-16), hub id, file or directory
    pretrained: Optional[str] = None
    trust_checkpoint: bool = False
    #: prompt templates for class names ("{}" = the bare name; "@actionclip16" = a preset);
    #: several = ensemble; None = the method's default
    templates: Optional[list[str]] = None
    freeze_text: bool = False
    freeze_vision: bool = False
    #: freeze τ (logit_scale); None: the method's rule (frozen with the text tower where the paper
    #: fixes τ: X-CLIP, ViLT-CLIP), else trainable
    freeze_logit_scale: Optional[bool] = None
    #: a vclip training checkpoint whose weights initialise the whole method (CLIP and the method's
    #: own modules), after ``pretrained``/``arch`` built it — e.g. few-shot from a K400-trained run
    init_checkpoint: Optional[str] = None
    grad_checkpointing: bool = False
    #: ToMe token merging in the image tower of any method, e.g. ``{r: 8}`` (keys ``r``: an int or a
    #: per-layer list, ``inflect``: the (r, inflect) schedule, ``proportional_attention``: default
    #: true); empty = off. ALT merges by its own ``model.options.r``
    token_merging: dict = field(default_factory=dict)
    #: method-specific options, validated against the method's ``Options`` dataclass
    options: dict = field(default_factory=dict)


@dataclass
class AugConfig:
    #: training crop: X-CLIP's MultiScaleCrop, RandomResizedCrop, or a centre crop (no scale jitter)
    crop: Literal["multiscale", "random_resized", "center"] = "multiscale"
    flip: float = 0.5
    color_jitter: float = 0.8
    #: draw new jitter factors (and op order) for every frame, as torchvision's ColorJitter applied
    #: frame by frame in the official X-CLIP/ViFi-CLIP/OST pipelines; False: one draw per clip
    color_jitter_per_frame: bool = False
    grayscale: float = 0.2
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_switch_prob: float = 0.5
    #: the sample each one is mixed with: a random permutation of the micro-batch (the official
    #: X-CLIP code) or the batch reversed (``x.flip(0)``, vclip's earlier rule)
    mix_partner: Literal["permutation", "reversed"] = "permutation"
    label_smoothing: float = 0.1


@dataclass
class DataConfig:
    #: folder the annotation paths are relative to
    root: Optional[str] = None
    #: annotation files (format detected from the content, see docs/datasets.md)
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    #: class names: a label CSV (id,name) or a text file with one name per line
    labels: Optional[str] = None
    num_frames: int = 8
    sampling: Literal["segments", "dense"] = "segments"
    frame_interval: int = 2
    image_size: int = 224
    normalize: Literal["imagenet", "clip"] = "imagenet"
    #: decoding backend; "cache": the frame cache of `vclip data prepare --cache` (root = the cache folder)
    backend: Literal["auto", "pyav", "torchcodec", "rawframes", "cache"] = "auto"
    #: where backend torchcodec decodes: "cpu", or "cuda" / "cuda:N" (NVDEC; frames come back to host
    #: memory for the CPU transforms, see docs/data.md "Decoding on the GPU")
    decode_device: str = "cpu"
    batch_size: int = 8
    eval_batch_size: Optional[int] = None
    num_workers: int = 4
    #: ActivityNet JSON: the subset each list reads (other annotation formats ignore these)
    train_subset: str = "training"
    val_subset: str = "validation"
    on_bad_video: Literal["raise", "skip"] = "raise"
    short_video: Literal["loop", "repeat_last"] = "loop"
    aug: AugConfig = field(default_factory=AugConfig)


@dataclass
class TrainConfig:
    epochs: int = 30
    #: stop after this many optimizer steps (None: run all epochs)
    max_steps: Optional[int] = None
    lr: float = 8e-6
    #: LR multiplier of the modules a method adds to CLIP
    lr_mult_new: float = 10.0
    #: LR multiplier per parameter group of the method (``clip`` and the method's
    #: ``parameter_groups``), overriding lr_mult_new and the method's defaults
    lr_mults: dict = field(default_factory=dict)
    #: weight of each loss term the method returns (default: the method's ``loss_weights``)
    loss_weights: dict = field(default_factory=dict)
    weight_decay: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_epochs: float = 5.0
    #: LR schedule: "cosine_after_warmup" (the cosine starts when the warm-up ends) or
    #: "timm_cosine" (official X-CLIP/OST: timm's cosine over the whole run from step 0, the
    #: warm-up replacing its first steps); see docs/training.md
    schedule: Literal["cosine_after_warmup", "timm_cosine"] = "cosine_after_warmup"
    #: absolute final LR of the cosine schedule (None: lr / 100)
    min_lr: Optional[float] = None
    accum_steps: int = 1
    clip_grad: Optional[float] = 1.0
    #: optimizer steps with a non-finite loss or gradient norm that may be skipped (gradients
    #: dropped, weights and optimizer state unchanged, the schedule moving on) before the run
    #: stops with an error; 0: stop at the first one
    max_nonfinite_skips: int = 0
    #: "auto": bf16 on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 1024
    eval_every: int = 1
    #: also checkpoint every N optimizer steps inside an epoch (None: at epoch ends only)
    save_every: Optional[int] = None
    log_every: int = 10
    #: host checks (loss terms and gradient norm exchanged and checked for non-finite values, stop
    #: signals agreed on) every N optimizer steps, and at every logging, saving and epoch-end step;
    #: the steps between make no host sync. A non-finite value between checks stops the run at the
    #: next check (nothing saved after it). null: 1 on the CPU, ``log_every`` on CUDA; always 1
    #: when ``max_nonfinite_skips`` > 0 (skipping a step needs its check)
    check_every: Optional[int] = None
    compile: bool = False


@dataclass
class EvalConfig:
    #: temporal clips × spatial crops per video
    num_clips: int = 1
    num_crops: Literal[1, 3] = 1
    #: views of the evaluations during training, "CLIPSxCROPS" (crops 1 or 3); the evaluation
    #: after the last epoch always uses num_clips × num_crops. "1x1" as the official code;
    #: null: num_clips × num_crops every time
    epoch_views: Optional[str] = "1x1"
    aggregation: Literal["softmax_sum", "mean_logits"] = "softmax_sum"
    #: sample the temporal views randomly as the official repos do (not deterministic)
    compat_random_test_clips: bool = False
    #: frames of a deterministic view: "middle" of each segment (the official rule) or "symmetric"
    #: (the same frames for a clip and its reverse, up to order: vclip.data.sampling.segment_indices)
    test_positions: Literal["middle", "symmetric"] = "middle"
    confusion_png: bool = True
    #: torch.compile the per-batch scoring (video tower + head; class features encoded once):
    #: null (off), "default", "reduce-overhead" (CUDA graphs replayed for the fixed batch shape;
    #: the last, smaller batch records its own) or "max-autotune"
    compile: Optional[Literal["default", "reduce-overhead", "max-autotune"]] = None

    def epoch_view_counts(self) -> tuple[int, int]:
        """(clips, crops) of the evaluations during training: ``epoch_views`` parsed, or
        ``(num_clips, num_crops)`` when it is null."""
        if self.epoch_views is None:
            return self.num_clips, self.num_crops
        return parse_views(self.epoch_views, "eval.epoch_views")


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- parsing

def parse_views(text: str, key: str) -> tuple[int, int]:
    """``"4x3"`` → ``(4, 3)``: temporal clips (>= 1) × spatial crops (1 or 3); errors name ``key``."""
    try:
        clips, crops = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"{key}: expected CLIPSxCROPS such as 1x1 or 4x3, got {text!r}") from None
    if clips < 1 or crops not in (1, 3):
        raise ConfigError(f"{key}: {text!r} needs clips >= 1 and crops 1 or 3")
    return clips, crops


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert_value(value: Any, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp``; errors name ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert_value(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__} {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [convert_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint} (valid here: {', '.join(names)})")
        kwargs[key] = convert_value(value, hints[key], dotted)
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A config file with its ``base`` chain resolved (later files override earlier ones)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'base' chain: {' -> '.join(map(str, _seen + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, read_yaml(path.parent / b, _seen + (path,)))
    return deep_merge(merged, data)


def parse_override(text: str) -> dict:
    """``a.b.c=value`` → nested dict; the value is parsed as YAML (numbers, lists, null, true)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. train.lr=1e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    data: dict = {}
    for f in files:
        data = deep_merge(data, read_yaml(f))
    for o in overrides:
        data = deep_merge(data, parse_override(o))
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks of the schema (types were checked while parsing). What depends on the
    method (its name, options, loss terms, parameter groups) is checked by
    ``vclip.methods.check_config``: the config schema does not depend on the model zoo."""
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    for tmpl in m.templates or []:
        if tmpl.startswith("@"):
            continue
        if tmpl.count("{}") != 1:
            raise ConfigError(f"model.templates: {tmpl!r} must contain exactly one '{{}}' for the class name")
    positive = {"data.num_frames": d.num_frames, "data.image_size": d.image_size, "data.batch_size": d.batch_size,
                "data.frame_interval": d.frame_interval, "train.accum_steps": t.accum_steps,
                "eval.num_clips": e.num_clips, "train.eval_every": t.eval_every, "train.log_every": t.log_every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    optional_positive = {"train.max_steps": t.max_steps, "train.save_every": t.save_every,
                         "train.check_every": t.check_every,
                         "data.eval_batch_size": d.eval_batch_size}
    for key, value in optional_positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1 (or null), got {value}")
    if t.max_nonfinite_skips < 0:
        raise ConfigError(f"train.max_nonfinite_skips: must be >= 0, got {t.max_nonfinite_skips}")
    if t.epochs < 0 or d.num_workers < 0:
        raise ConfigError("train.epochs and data.num_workers must be >= 0")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {t.lr}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas: expected two values in [0, 1), got {t.betas}")
    if t.precision == "fp16" and cfg.device == "cpu":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if d.decode_device != "cpu":
        if d.backend != "torchcodec":
            raise ConfigError(f"data.decode_device: {d.decode_device!r} needs data.backend: torchcodec "
                              f"(only torchcodec decodes on the GPU), got data.backend: {d.backend}")
        if not re.fullmatch(r"cuda(:\d+)?", d.decode_device):
            raise ConfigError(f"data.decode_device: expected 'cpu', 'cuda' or 'cuda:N', got {d.decode_device!r}")
    aug = d.aug
    for key in ("flip", "color_jitter", "grayscale", "mix_switch_prob"):
        if not 0 <= getattr(aug, key) <= 1:
            raise ConfigError(f"data.aug.{key}: a probability must be in [0, 1], got {getattr(aug, key)}")
    if not 0 <= aug.label_smoothing < 1:
        raise ConfigError(f"data.aug.label_smoothing: must be in [0, 1), got {aug.label_smoothing}")
    e.epoch_view_counts()  # a malformed eval.epoch_views fails here, naming the key


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from vclip.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
