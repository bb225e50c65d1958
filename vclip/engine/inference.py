"""Checkpoints for inference: what ``vclip eval``, ``vclip predict`` and ``vclip export`` load.

Inference needs a checkpoint's weights (``model.safetensors``), its ``meta.json`` and a run config,
never ``train_state.pt`` (:func:`open_checkpoint`).

**The config** (:func:`inference_config`): the ``-c`` files when given; else the checkpoint's own —
``config.yaml`` inside it (an export), else the config its ``meta.json`` stores, else its run's
``config.yaml`` (``<run>/checkpoints/<tag>/../../config.yaml``); ``key=value`` overrides apply on
top of either.

**The model** (:func:`build_for_checkpoint`): the config's method holding every weight of the
checkpoint. ``model.init_checkpoint`` is never read, and ``model.pretrained`` is not read whenever
the architecture is known without it: recorded in ``meta.json`` (exports), ``model.arch`` (a run
without ``model.pretrained``), or a named pretrained model (``openai/ViT-B-16``). Only for a run
trained from a weights file or a hub id is the method built from ``model.pretrained`` as in
training, the checkpoint's weights then replacing every tensor. Before loading, the config is
compared with the one the checkpoint was trained with (:func:`config_differences`): another
method is refused, and when the weights do not fit, the error names the differing settings and
then the missing, unexpected and mis-shaped tensors.

**Export** (:func:`export_checkpoint`): an inference-only checkpoint folder — the weights, the run
config as ``config.yaml`` and ``meta.json`` recording the architecture — that loads anywhere
without the training run, its pretrained weights or its train state.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from vclip.engine.checkpoint import META_FILE, MODEL_FILE, load_model_checkpoint, load_model_state
from vclip.engine.checkpoint import trained_config as _trained_config
from vclip.errors import CheckpointError, ConfigError, VclipError

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "InferenceCheckpoint", "build_for_checkpoint", "checkpoint_config", "config_differences",
           "export_checkpoint", "inference_config", "open_checkpoint", "trained_config"]

#: the run config inside an exported checkpoint, and beside ``checkpoints/`` in a run directory
CONFIG_FILE = "config.yaml"
#: ``meta.json`` key of an export: the method, CLIP architecture, frames and resolved options
ARCHITECTURE_KEY = "architecture"
#: settings compared between a config and the checkpoint's (what shapes the model or its input)
COMPARED_KEYS = ("model.method", "model.arch", "model.pretrained", "model.options", "data.num_frames",
                 "data.image_size", "data.sampling", "data.frame_interval", "data.normalize")
#: where the weights came from: irrelevant once the checkpoint's weights fit (it holds every one)
_WEIGHT_SOURCE_KEYS = ("model.arch", "model.pretrained")


@dataclass
class InferenceCheckpoint:
    """A checkpoint folder read for inference: its weights and ``meta.json``."""

    path: Path
    state: dict
    meta: dict
    #: how commands name it in messages (``--checkpoint``, ``CHECKPOINT``)
    what: str = "--checkpoint"

    @property
    def label(self) -> str:
        return f"{self.what} {self.path}"


def open_checkpoint(path: str | os.PathLike, what: str = "--checkpoint") -> InferenceCheckpoint:
    """Read the weights and ``meta.json`` of the checkpoint folder ``path`` (or of the folder
    holding the file ``path``). A path that does not exist, a run directory given instead of one
    of its checkpoints, and a damaged checkpoint are :class:`CheckpointError`\\ s naming ``what``."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} {path}: no such file or directory")
    d = p.parent if p.is_file() else p
    if not (d / META_FILE).is_file() and (d / "checkpoints").is_dir():
        tags = sorted(x.name for x in (d / "checkpoints").iterdir() if x.is_dir() and not x.name.startswith("."))
        which = " or ".join(str(d / "checkpoints" / t) for t in tags) or "none is saved yet"
        raise CheckpointError(f"{what} {path}: a run directory, not a checkpoint; pass one of its checkpoints ({which})")
    try:
        state, meta = load_model_checkpoint(d)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    return InferenceCheckpoint(d, state, meta, what)


# ------------------------------------------------------------------------------------- configs

def _run_config_file(ck: InferenceCheckpoint) -> Path | None:
    """``config.yaml`` of the run the checkpoint belongs to (``<run>/checkpoints/<tag>/``)."""
    if ck.path.parent.name == "checkpoints":
        f = ck.path.parent.parent / CONFIG_FILE
        if f.is_file():
            return f
    return None


def _config_from_dict(data: dict, overrides: Sequence[str], where: str):
    from vclip.config import RunConfig, deep_merge, from_dict, parse_override, validate
    from vclip.methods import check_config

    try:  # the stored config alone first: its own errors name where it is
        validate(from_dict(RunConfig, data))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    for o in overrides:
        data = deep_merge(data, parse_override(o))
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    check_config(cfg)
    return cfg


def checkpoint_config(ck: InferenceCheckpoint, overrides: Sequence[str] = ()):
    """``(RunConfig, where it came from)``: the checkpoint's own run config with ``overrides``
    applied — ``config.yaml`` in the checkpoint (an export), else the config in its ``meta.json``,
    else its run's ``config.yaml``. ConfigError when it has none."""
    from vclip.methods import load_run_config

    own = ck.path / CONFIG_FILE
    if own.is_file():
        return load_run_config([str(own)], overrides), str(own)
    stored = ck.meta.get("config")
    if isinstance(stored, dict):
        where = f"{ck.path / META_FILE} (its stored config)"
        return _config_from_dict(copy.deepcopy(stored), overrides, where), where
    run = _run_config_file(ck)
    if run is not None:
        cfg = load_run_config([str(run)], overrides)
        expected = ck.meta.get("config_hash")
        if expected and load_run_config([str(run)]).digest() != expected:
            log.warning("%s has changed since %s was saved (its config hash differs from the one in %s); "
                        "the model is built from it as it is now", run, ck.path, META_FILE)
        return cfg, str(run)
    beside = ck.path.parent.parent / CONFIG_FILE if ck.path.parent.name == "checkpoints" else None
    looked = f"{own}{', ' + str(beside) if beside else ''} or its {META_FILE}"
    raise ConfigError(f"{ck.label}: no run config found ({looked}); pass the run's config with -c CONFIG")


def inference_config(ck: InferenceCheckpoint | None, files: Sequence[str] = (), overrides: Sequence[str] = ()):
    """The config of an inference: the ``files`` when given, else the checkpoint's own
    (:func:`checkpoint_config`); ``overrides`` on top."""
    from vclip.methods import load_run_config

    if files or ck is None:
        return load_run_config(list(files), list(overrides))
    return checkpoint_config(ck, overrides)[0]


def trained_config(ck: InferenceCheckpoint) -> dict | None:
    """The config the checkpoint was trained with (``vclip.engine.checkpoint.trained_config``,
    the run's ``config.yaml`` taken as it is now)."""
    return _trained_config(ck.path, ck.meta, verified=False)


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _options(method: str, options: Any) -> Any:
    """A method's options with every default filled in (so ``{}`` equals the defaults spelt out)."""
    from vclip.methods import method_class

    try:
        return dataclasses.asdict(method_class(method).parse_options(dict(options or {})))
    except (ConfigError, TypeError, ValueError):
        return options


def config_differences(cfg, ck: InferenceCheckpoint) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint's value, config's value)`` for the :data:`COMPARED_KEYS` where ``cfg``
    differs from the config the checkpoint was trained with (the method from ``meta.json`` even
    when no config is known). ``model.arch`` counts only where neither side names
    ``model.pretrained`` (the architecture then comes from the weights)."""
    trained = trained_config(ck) or {}
    now = cfg.to_dict()
    method = ck.meta.get("method") or _get(trained, "model.method")
    out: list[tuple[str, Any, Any]] = []
    if method and method != cfg.model.method:
        out.append(("model.method", method, cfg.model.method))
    if not trained:
        return out
    for key in COMPARED_KEYS[1:]:
        a, b = _get(trained, key), _get(now, key)
        if key == "model.arch" and (_get(trained, "model.pretrained") or cfg.model.pretrained):
            continue
        if key == "model.options" and method == cfg.model.method:
            a, b = _options(method, a), _options(method, b)
        if a != b:
            out.append((key, a, b))
    return out


def _describe(diffs: list[tuple[str, Any, Any]]) -> str:
    return (f"it was trained with {', '.join(f'{k}={a!r}' for k, a, _ in diffs)}; "
            f"this config has {', '.join(f'{k}={b!r}' for k, _, b in diffs)}")


# --------------------------------------------------------------------------------------- model

def _architecture(cfg, ck: InferenceCheckpoint):
    """The CLIPConfig to build, sized to ``data.image_size``; None when only ``model.pretrained``
    can tell it (a weights file or a hub id)."""
    from vclip.backbone import CLIPConfig, get_config
    from vclip.backbone.hub import PRETRAINED

    record = ck.meta.get(ARCHITECTURE_KEY)
    m = cfg.model
    if isinstance(record, dict) and isinstance(record.get("clip"), dict):
        try:
            arch = CLIPConfig.from_dict(copy.deepcopy(record["clip"]))
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{ck.path / META_FILE}: invalid \"{ARCHITECTURE_KEY}\" entry ({e})") from None
    elif not m.pretrained:
        arch = get_config(m.arch)
    elif m.pretrained in PRETRAINED:
        arch = get_config(PRETRAINED[m.pretrained].arch)
    else:
        return None
    arch.vision.image_size = cfg.data.image_size
    try:
        arch.validate()
    except ConfigError as e:
        raise ConfigError(f"data.image_size={cfg.data.image_size} does not suit the checkpoint's architecture: {e}") \
            from None
    return arch


def _build(cfg, ck: InferenceCheckpoint):
    from vclip.backbone import CLIP
    from vclip.methods import build_method, check_config

    cfg = copy.deepcopy(cfg)
    cfg.model.init_checkpoint = None  # the checkpoint holds every weight
    cls = check_config(cfg)
    arch = _architecture(cfg, ck)
    if arch is None:
        log.info("%s: building %s from model.pretrained=%s for its architecture; the checkpoint's weights then "
                 "replace every tensor", ck.label, cfg.model.method, cfg.model.pretrained)
        try:
            return build_method(cfg)
        except VclipError as e:
            raise CheckpointError(f"{ck.label}: its architecture is that of model.pretrained={cfg.model.pretrained}, which "
                          f"cannot be read here ({e}); export the checkpoint where it can (vclip export "
                          f"{ck.path} OUT) and use OUT") from None
    record = ck.meta.get(ARCHITECTURE_KEY)
    options = {}
    if isinstance(record, dict) and record.get("method") == cfg.model.method:
        known = {f.name for f in dataclasses.fields(cls.Options)}
        options = {k: v for k, v in (record.get("options") or {}).items() if k in known}
    options.update(cfg.model.options or {})
    method = cls(CLIP(arch), num_frames=cfg.data.num_frames, options=cls.parse_options(options))
    method.set_token_merging(cfg.model.token_merging)
    return method


def build_for_checkpoint(cfg, ck: InferenceCheckpoint):
    """The method of ``cfg`` holding the checkpoint's weights, in eval mode (see the module
    docstring). Another method than the checkpoint's is a CheckpointError; so are weights that do
    not fit — naming the settings that differ from the checkpoint's run, then the tensors. Other
    differences (frames, sampling, normalisation) with weights that fit are logged as a warning."""
    diffs = config_differences(cfg, ck)
    for key, trained, now in diffs:
        if key == "model.method":
            raise CheckpointError(
                f"{ck.label} holds a {trained!r} model, but the config's model.method is {now!r}: evaluate it with "
                f"its own run config (leave out -c) or a config of method {trained!r}")
    method = _build(cfg, ck)
    load_model_state(method, ck.state, ck.label, context=f" ({_describe(diffs)})" if diffs else "")
    rest = [d for d in diffs if d[0] not in _WEIGHT_SOURCE_KEYS]
    if rest:
        log.warning("%s: %s", ck.label, _describe(rest))
    return method.eval()


# -------------------------------------------------------------------------------------- export

def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike, files: Sequence[str] = (),
                      overrides: Sequence[str] = ()) -> Path:
    """Write the inference-only checkpoint folder ``out`` from the checkpoint ``src`` (atomically:
    a temporary sibling renamed into place; an existing non-empty ``out`` is refused): its
    ``model.safetensors`` (the same bytes), ``config.yaml`` (the run config, or ``files`` +
    ``overrides``) and ``meta.json`` (the source's, plus the architecture the model was built with
    and the source's path). The model is built and loaded first, so what is written loads."""
    from vclip.engine.checkpoint import nonfinite_report, write_inference_checkpoint

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"OUT {out}: exists and is not an empty folder; choose a new output path")
    ck = open_checkpoint(src, what="CHECKPOINT")
    bad = nonfinite_report(ck.state)
    if bad is not None:
        raise CheckpointError(f"{ck.label}: refusing to export non-finite weights in {bad}")
    cfg = inference_config(ck, files, overrides)
    method = build_for_checkpoint(cfg, ck)
    meta = {k: v for k, v in ck.meta.items() if k not in ("files", "format", "tag")}
    if "config" not in meta:
        trained = trained_config(ck)
        if trained is not None:
            meta["config"] = trained
    meta.update({
        "method": cfg.model.method,
        ARCHITECTURE_KEY: {"method": cfg.model.method, "clip": method.clip.config.to_dict(),
                           "num_frames": method.num_frames, "options": dataclasses.asdict(method.options)},
        "exported_from": str(ck.path), "exported_time": time.time(),
    })
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return write_inference_checkpoint(out, model_file=ck.path / MODEL_FILE, texts={CONFIG_FILE: config_text},
                                      meta=meta)
