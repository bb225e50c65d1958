"""Training checkpoints: atomic directories with safetensors weights and a weights-only train state.

Layout of one checkpoint, ``run_dir/checkpoints/<tag>/``::

    model.safetensors   the model's state dict (no ``module.`` prefix)
    train_state.pt      optimizer / scheduler / GradScaler / RNG / sampler / step state: plain
                        containers of tensors and primitives, so ``torch.load(weights_only=True)``
                        reads it (no pickled objects, no code execution on load)
    meta.json           written last: step, epoch, metric, time, config hash, ... plus the size and
                        SHA-256 of the two files above

A checkpoint is written into ``checkpoints/.tmp-<tag>-<id>/`` (every file fsync'ed, ``meta.json``
last) and only then moved to its final name with :func:`os.replace`: the previous checkpoint is
renamed aside (``.old-<tag>-<id>``), the new one renamed into place, the old one deleted. A crash at
any point leaves either the previous complete checkpoint or the new complete one — never a partial
one under a final name. In the instant between the two renames only ``.old-<tag>-<id>`` exists;
:meth:`CheckpointManager.latest` falls back to it. Temporary directories are never loaded and are
removed by the next save. A save that fails (a full disk, a quota, an I/O error) raises
:class:`~vclip.errors.CheckpointError` saying which previous checkpoint is kept; weights holding
NaN or ±inf are never saved (CheckpointError naming the tensor, :func:`nonfinite_report`).

Inference (``vclip eval`` / ``predict``) reads only the weights and ``meta.json``
(:func:`load_model_checkpoint`); an inference-only checkpoint (``vclip export``,
:func:`write_inference_checkpoint`) has no ``train_state.pt`` (its ``meta.json`` lists none) and
cannot be resumed. :func:`load_model_state` loads weights strictly, a mismatch naming the missing,
unexpected and mis-shaped tensors.

Tags: ``last`` is replaced by every save; ``best`` is written as well when ``save(..., is_best=True)``
(:meth:`CheckpointManager.is_better` compares a metric with the one stored in ``best``). Only the
main process should save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from vclip.errors import CheckpointError, VclipError
from vclip.io import fsync_dir, fsync_file, set_default_mode, sha256_file

__all__ = [
    "CheckpointManager", "load_checkpoint", "save_checkpoint", "write_checkpoint_files",
    "capture_rng_state", "restore_rng_state", "nonfinite_report", "read_checkpoint_meta",
    "load_model_checkpoint", "load_model_state", "state_mismatch", "write_inference_checkpoint",
    "MODEL_FILE", "TRAIN_STATE_FILE", "META_FILE", "FORMAT",
]

log = logging.getLogger(__name__)

FORMAT = "vclip-checkpoint/1"
MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


# --------------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """The states of python ``random``, numpy's global generator, torch's CPU generator and (when
    CUDA is available) every CUDA generator, as weights-only-loadable containers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": (int(version), tuple(int(x) for x in internal), gauss),
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned. CUDA states are restored for the devices
    present in both the state and this machine."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        n = state["numpy"]
        np.random.set_state({
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(torch.as_tensor(n["key"]).numpy(), dtype=np.uint32), "pos": int(n["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        })
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"train state: the RNG state is malformed ({type(e).__name__}: {e})") from None
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for i in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(torch.as_tensor(cuda[i], dtype=torch.uint8).cpu(), i)


# --------------------------------------------------------------------------------------------------
# writing helpers

_PRIMITIVES = (str, int, float, bool, type(None), torch.dtype, torch.device)


def _check_plain(obj: Any, path: str) -> None:
    """Raise TypeError naming the first entry ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PRIMITIVES) and not isinstance(obj, np.generic):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) or isinstance(k, np.generic):
                raise TypeError(f"{path}: key {k!r} of type {type(k).__name__} cannot be stored in a checkpoint")
            _check_plain(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple, torch.Size):
        for i, v in enumerate(obj):
            _check_plain(v, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path}: {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a checkpoint "
        "(train_state holds only dicts, lists, tuples, tensors, str/int/float/bool/None; convert it)"
    )


def _digest(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _plain_model_state(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage (tied weights) are cloned, since
    safetensors refuses shared storage."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model_state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"model_state[{k!r}]: expected str → Tensor, got {type(k).__name__} → {type(v).__name__}")
        t = v.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[k] = t
    return out


def nonfinite_report(tensors: Mapping[str, torch.Tensor] | Any, limit: int = 3) -> str | None:
    """None when every floating-point tensor of ``tensors`` (a state dict, or ``(name, tensor)``
    pairs such as ``named_parameters()``) is finite; else a short description naming the tensors
    that hold NaN or ±inf, e.g. ``'visual.proj' (3 NaN, 0 inf of 1024 values)``. One device sync in
    the common (all finite) case."""
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    floats = [(k, v.detach()) for k, v in items
              if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel()]
    if not floats:
        return None
    ok = [torch.isfinite(v).all() for _, v in floats]
    if bool(torch.stack([o.to(ok[0].device) for o in ok]).all()):
        return None
    bad = [(k, v) for (k, v), o in zip(floats, ok) if not bool(o)]
    parts = []
    for k, v in bad[:limit]:
        nan = int(torch.isnan(v).sum())
        parts.append(f"{k!r} ({nan} NaN, {int((~torch.isfinite(v)).sum()) - nan} inf of {v.numel()} values)")
    more = f", and {len(bad) - limit} more tensor(s)" if len(bad) > limit else ""
    return ", ".join(parts) + more


def _checked_contents(model_state: Mapping[str, torch.Tensor], train_state: Mapping[str, Any],
                      meta: Mapping[str, Any], where: str = "checkpoint") -> tuple[dict, dict, dict]:
    """Validate and normalise what a checkpoint stores: plain CPU weights, a weights-only-loadable
    train state, JSON-serialisable meta (``time`` added when absent). Raises TypeError naming the
    offending entry, and :class:`CheckpointError` (naming the tensor) for weights holding NaN or
    ±inf: a checkpoint never stores a diverged model."""
    bad = nonfinite_report(model_state)
    if bad is not None:
        raise CheckpointError(f"refusing to save {where}: non-finite model weights in {bad} "
                              "(the training diverged; lower train.lr or set train.clip_grad)")
    train_state = dict(train_state)
    _check_plain(train_state, "train_state")
    meta = dict(meta)
    meta.setdefault("time", time.time())
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta is not JSON-serialisable: {e}") from None
    return _plain_model_state(model_state), train_state, meta


def write_checkpoint_files(directory: str | os.PathLike, *, tag: str, model_state: Mapping[str, torch.Tensor],
                           train_state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write the three files of a checkpoint into the existing, empty folder ``directory``: the
    weights, the train state, then ``meta.json`` (with the format, ``tag`` and the size and SHA-256
    of the other two) **last**, every file and the folder fsync'ed.

    The low-level step under :meth:`CheckpointManager.save` and :func:`save_checkpoint`: it makes no
    folder atomic itself (write into a temporary folder and rename it), and it does not validate —
    ``model_state`` must already be plain contiguous CPU tensors (see :func:`save_checkpoint`)."""
    from safetensors.torch import save_file

    d = Path(directory)
    save_file(dict(model_state), str(d / MODEL_FILE), metadata={"format": "pt"})
    set_default_mode(d / MODEL_FILE)  # safetensors creates it 0o600; a checkpoint is shared like any output
    fsync_file(d / MODEL_FILE)
    with open(d / TRAIN_STATE_FILE, "wb") as f:
        torch.save(dict(train_state), f)
        f.flush()
        os.fsync(f.fileno())
    files = {name: _digest(d / name) for name in (MODEL_FILE, TRAIN_STATE_FILE)}
    _write_json(d / META_FILE, {**meta, "format": FORMAT, "tag": tag, "files": files})  # LAST
    fsync_dir(d)


def save_checkpoint(directory: str | os.PathLike, model_state: Mapping[str, torch.Tensor], *,
                    train_state: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
                    tag: str | None = None) -> Path:
    """Write a standalone checkpoint folder ``directory`` that :func:`load_checkpoint` (and
    ``vclip eval --checkpoint``) reads, atomically: the files go into a hidden temporary sibling
    folder, which is renamed to ``directory`` once complete. ``tag`` (stored in ``meta.json``)
    defaults to the folder's name; ``train_state`` to ``{}``.

    Refuses (:class:`~vclip.errors.CheckpointError`) to replace a folder that exists and is not
    empty. Raises TypeError for contents a checkpoint cannot hold (as :meth:`CheckpointManager.save`).
    Returns ``directory`` as a Path."""
    out = Path(directory)
    model_state, train_state, meta = _checked_contents(model_state, train_state or {}, meta or {}, where=str(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty folder; choose a new output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{_TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        write_checkpoint_files(tmp, tag=tag or out.name, model_state=model_state, train_state=train_state,
                               meta=meta)
        if out.exists():
            out.rmdir()  # empty (checked above); Windows cannot rename onto a folder
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(out.parent)
    return out


def write_inference_checkpoint(directory: str | os.PathLike, *, model_file: str | os.PathLike,
                               texts: Mapping[str, str], meta: Mapping[str, Any]) -> Path:
    """Write the inference-only checkpoint folder ``directory`` (``vclip export``) atomically: a
    copy of the weights file ``model_file``, the text files ``texts`` (name → content, e.g. the
    run's ``config.yaml``) and ``meta.json`` **last** — listing the weights' size and SHA-256 and no
    ``train_state.pt`` — in a hidden temporary sibling folder renamed to ``directory`` once
    complete. Refuses (:class:`CheckpointError`) a ``directory`` that exists and is not an empty
    folder; a failed write (disk full, permissions) is a CheckpointError and leaves nothing behind."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not an empty folder; choose a new output path")
    tmp = out.with_name(f"{_TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:12]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        shutil.copyfile(model_file, tmp / MODEL_FILE)
        set_default_mode(tmp / MODEL_FILE)
        fsync_file(tmp / MODEL_FILE)
        for name, text in texts.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        meta = {**meta, "format": FORMAT, "tag": out.name, "files": {MODEL_FILE: _digest(tmp / MODEL_FILE)}}
        meta.setdefault("time", time.time())
        _write_json(tmp / META_FILE, meta)  # LAST
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above); Windows cannot rename onto a folder
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as e:
        why = "no space left on device (disk full)" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"{out}: cannot write the checkpoint: {why}"
                              f"{f' ({e.filename})' if e.filename else ''}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------
# the manager


class CheckpointManager:
    """Checkpoints of one run under ``run_dir/checkpoints/``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"

    def path(self, tag: str) -> Path:
        return self.dir / tag

    # ---- saving

    def save(
        self,
        tag: str = "last",
        *,
        model_state: Mapping[str, torch.Tensor],
        train_state: Mapping[str, Any],
        meta: Mapping[str, Any],
        is_best: bool = False,
    ) -> Path:
        """Write checkpoint ``tag`` (and ``best`` too when ``is_best``) atomically; return its path.
        ``meta`` must be JSON-serialisable (step, epoch, metric, config_hash, ...); ``time`` is added
        when absent."""
        if not _TAG_RE.match(tag):
            raise ValueError(f"checkpoint tag {tag!r}: use letters, digits, '_', '-', '.', not starting with '.'")
        model_state, train_state, meta = _checked_contents(model_state, train_state, meta,
                                                           where=f"checkpoint {tag!r} in {self.dir}")
        tmp_dirs: list[Path] = []
        swapped: list[str] = []
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            tmp = self._new_temp(tag)
            tmp_dirs.append(tmp)
            write_checkpoint_files(tmp, tag=tag, model_state=model_state, train_state=train_state, meta=meta)
            best_tmp = None
            if is_best and tag != "best":
                best_tmp = self._new_temp("best")
                tmp_dirs.append(best_tmp)
                self._link_copy(tmp, best_tmp, tag="best")
            self._swap_in(tmp, self.path(tag))
            swapped.append(tag)
            if best_tmp is not None:
                self._swap_in(best_tmp, self.path("best"))
        except OSError as e:  # disk full, quota, permissions, I/O error: the previous versions stay
            raise CheckpointError(self._save_failed(tag, e, swapped)) from e
        finally:
            for d in tmp_dirs:
                if d.exists():
                    shutil.rmtree(d, ignore_errors=True)
        return self.path(tag)

    def _save_failed(self, tag: str, e: OSError, swapped: list[str]) -> str:
        why = e.strerror or str(e) or type(e).__name__
        if e.errno == errno.ENOSPC:
            why = "no space left on device (disk full)"
        elif e.errno == errno.EDQUOT:
            why = "disk quota exceeded"
        if swapped:  # the new `tag` is in place; only `best` could not be updated
            kept = f"the new {tag!r} was saved, the previous 'best' is kept"
        elif self.find(tag) is not None:
            kept = f"the previous {tag!r} checkpoint is kept unchanged"
        else:
            kept = "no checkpoint was written"
        where = f" ({e.filename})" if e.filename else ""
        return f"saving checkpoint {tag!r} in {self.dir} failed: {why}{where}; {kept}"

    def _new_temp(self, tag: str) -> Path:
        d = self.dir / f"{_TMP_PREFIX}{tag}-{uuid.uuid4().hex[:12]}"
        d.mkdir()
        return d

    def _remove_stale_temps(self) -> None:
        for d in self.dir.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _link_copy(src: Path, dst: Path, *, tag: str) -> None:
        for name in (MODEL_FILE, TRAIN_STATE_FILE):
            try:
                os.link(src / name, dst / name)  # files are never modified in place: sharing is safe
            except OSError:
                shutil.copyfile(src / name, dst / name)
                fsync_file(dst / name)
        meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
        meta["tag"] = tag
        _write_json(dst / META_FILE, meta)
        fsync_dir(dst)

    def _swap_in(self, tmp: Path, final: Path) -> None:
        tag = final.name
        old = None
        if final.exists():
            old = self.dir / f"{_OLD_PREFIX}{tag}-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None and not final.exists():
                try:
                    os.replace(old, final)  # put the previous one back
                except OSError:
                    pass
            raise
        fsync_dir(self.dir)
        # the new one is complete under its final name: previous versions can go
        for d in self.dir.glob(f"{_OLD_PREFIX}{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)

    # ---- finding and loading

    @staticmethod
    def _complete(d: Path) -> bool:
        return d.is_dir() and (d / META_FILE).is_file()

    def find(self, tag: str) -> Path | None:
        """The complete checkpoint ``tag``, or — when a crash hit between the two renames of a save
        — the previous version kept aside; None when there is none."""
        final = self.path(tag)
        if self._complete(final):
            return final
        if final.exists():
            log.warning("%s has no %s (incomplete checkpoint); ignoring it", final, META_FILE)
        aside = sorted((d for d in self.dir.glob(f"{_OLD_PREFIX}{tag}-*") if self._complete(d)),
                       key=lambda d: (d / META_FILE).stat().st_mtime)
        if aside:
            log.warning("checkpoint %s is missing (a save was interrupted); using %s", final, aside[-1])
            return aside[-1]
        return None

    def latest(self) -> Path | None:
        """The checkpoint ``--resume auto`` resumes from: the complete ``last`` (temp directories of
        interrupted saves are ignored), or None."""
        return self.find("last")

    def read_meta(self, tag: str) -> dict[str, Any] | None:
        d = self.find(tag)
        return None if d is None else _read_meta(d)

    def best_metric(self) -> float | None:
        meta = self.read_meta("best")
        if meta is None or meta.get("metric") is None:
            return None
        return float(meta["metric"])

    def is_better(self, metric: float | None, mode: str = "max") -> bool:
        """Whether ``metric`` improves on the one stored in ``best`` (True when there is no best yet;
        False for None/NaN). ``mode``: ``max`` (accuracy) or ``min`` (loss)."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if metric is None or metric != metric:
            return False
        best = self.best_metric()
        if best is None or best != best:
            return True
        return metric > best if mode == "max" else metric < best

    def load(self, path: str | os.PathLike | None = None, *, map_location: Any = "cpu", verify: bool = True):
        """``(model_state, train_state, meta)`` of the checkpoint at ``path`` (default: :meth:`latest`)."""
        if path is None:
            path = self.latest()
            if path is None:
                raise CheckpointError(f"{self.dir}: no complete checkpoint to resume from")
        model_state, train_state, meta = load_checkpoint(path, map_location=map_location, verify=verify)
        if not train_state:
            raise CheckpointError(
                f"{path}: holds no training state (optimizer, schedule, RNG): an inference-only or merged "
                f"checkpoint cannot be resumed; start a new run from its weights with model.init_checkpoint={path}")
        return model_state, train_state, meta


def _read_meta(d: Path) -> dict[str, Any]:
    p = d / META_FILE
    if not p.is_file():
        raise CheckpointError(
            f"{d}: incomplete checkpoint, {META_FILE} is missing (a save was interrupted, or this is "
            "not a vclip checkpoint directory)"
        )
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a vclip checkpoint (expected \"format\": \"{FORMAT}\")")
    return meta


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of the checkpoint directory ``path`` (or of the one holding the file
    ``path``), without reading the weights. Raises :class:`CheckpointError`."""
    d = Path(path)
    if d.is_file():
        d = d.parent
    if not d.exists():
        raise CheckpointError(f"{d}: checkpoint not found")
    return _read_meta(d)


def trained_config(path: str | os.PathLike, meta: Mapping[str, Any], *, verified: bool = True) -> dict | None:
    """The resolved config (``RunConfig.to_dict()``) the checkpoint at ``path`` was trained with,
    or None when unknown: the one its ``meta.json`` stores; else (an export, or a checkpoint of an
    older vclip) the ``config.yaml`` inside it, then its run's ``config.yaml`` — that one only when
    its digest equals the stored ``config_hash`` if ``verified`` (resume demands the exact config;
    inference only compares the settings that shape the model)."""
    if isinstance(meta.get("config"), dict):
        return dict(meta["config"])
    d = Path(path)
    d = d.parent if d.is_file() else d
    candidates = [(d / "config.yaml", False)]
    if d.parent.name == "checkpoints":
        candidates.append((d.parent.parent / "config.yaml", verified))
    from vclip.config import load_config

    for f, check_hash in candidates:
        if not f.is_file():
            continue
        try:
            cfg = load_config([str(f)])
        except VclipError as e:
            log.warning("%s: cannot read %s to compare it with this config (%s)", d, f, e)
            return None
        if check_hash and cfg.digest() != meta.get("config_hash"):
            return None
        return cfg.to_dict()
    return None


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    d = Path(path)
    if d.is_file():
        d = d.parent
    if not d.exists():
        raise CheckpointError(f"{d}: checkpoint not found (the path does not exist)")
    return d


def _listed_files(d: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{d / META_FILE}: the \"files\" entry is missing or malformed")
    return files


def _check_file(d: Path, name: str, files: Mapping[str, Any], verify: bool) -> None:
    """``d / name`` exists and has the size (and, with ``verify``, the SHA-256) meta.json lists."""
    f = d / name
    if not f.is_file():
        raise CheckpointError(f"{f}: missing from the checkpoint")
    expect = files.get(name) or {}
    size = f.stat().st_size
    if "bytes" in expect and size != expect["bytes"]:
        what = "truncated" if size < expect["bytes"] else "has extra bytes"
        raise CheckpointError(f"{f}: {what} ({size} bytes, {META_FILE} says {expect['bytes']})")
    if verify and "sha256" in expect and _digest(f)["sha256"] != expect["sha256"]:
        raise CheckpointError(f"{f}: corrupted (SHA-256 differs from the one in {META_FILE})")


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(d / MODEL_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{d / MODEL_FILE}: cannot read the weights ({e})") from None


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", verify: bool = True):
    """Read a checkpoint directory (or any file inside it): ``(model_state, train_state, meta)``.
    With ``verify`` each file's size and SHA-256 are checked against ``meta.json`` first, so a
    truncated or corrupted file is reported by name. An inference-only checkpoint (``vclip
    export``: its ``meta.json`` lists no ``train_state.pt``) gives ``{}`` as train state. Raises
    :class:`CheckpointError`."""
    d = _checkpoint_dir(path)
    meta = _read_meta(d)
    files = _listed_files(d, meta)
    with_train_state = TRAIN_STATE_FILE in files
    for name in (MODEL_FILE, TRAIN_STATE_FILE) if with_train_state else (MODEL_FILE,):
        _check_file(d, name, files, verify)
    model_state = _read_weights(d)
    if not with_train_state:
        return model_state, {}, meta
    try:
        train_state = torch.load(d / TRAIN_STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{d / TRAIN_STATE_FILE}: cannot read the train state ({msg})") from None
    if not isinstance(train_state, dict):
        raise CheckpointError(f"{d / TRAIN_STATE_FILE}: expected a dict, found {type(train_state).__name__}")
    return model_state, train_state, meta


def load_model_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """``(model_state, meta)`` of a checkpoint directory (or a file inside it): what inference
    (``vclip eval`` / ``predict`` / ``export``) needs. ``train_state.pt`` is neither read nor
    required (a training checkpoint without it, or an inference-only export, loads); the weights
    are checked against ``meta.json`` as in :func:`load_checkpoint`. Raises :class:`CheckpointError`."""
    d = _checkpoint_dir(path)
    meta = _read_meta(d)
    _check_file(d, MODEL_FILE, _listed_files(d, meta), verify)
    return _read_weights(d), meta


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def state_mismatch(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into ``module``: one line per kind of problem
    (keys the module has and ``state`` lacks, keys ``state`` has and the module lacks, tensors of
    another shape), each with its count and at most five names; ``[]`` when it fits."""
    from vclip.backbone.weights import state_differences

    own = module.state_dict()
    missing, unexpected, shaped = state_differences(own, state)
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shaped]
    lines = []
    if missing:
        lines.append(f"{len(missing)} tensor(s) of the model missing from the checkpoint: {_few(missing)}")
    if unexpected:
        lines.append(f"{len(unexpected)} tensor(s) of the checkpoint not in the model: {_few(unexpected)}")
    if shaped:
        lines.append(f"{len(shaped)} tensor(s) of another shape (checkpoint vs model): {_few(shaped)}")
    return lines


def load_model_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
                     *, context: str = "") -> None:
    """``module.load_state_dict(state, strict=True)`` whose failure is a :class:`CheckpointError`
    of a few lines: ``source`` and ``context`` (e.g. how its config differs) on the first, then
    the missing, unexpected and mis-shaped tensors (:func:`state_mismatch`). Clears a method's
    cached class features."""
    problems = state_mismatch(module, state)
    if problems:
        head = f"{source}: the checkpoint's weights do not fit the model{context}"
        raise CheckpointError("\n  ".join([head, *problems]))
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:  # e.g. a tensor that cannot be copied into its parameter
        msg = " ".join(str(e).split())
        raise CheckpointError(f"{source}: cannot load the weights{context} ({msg[:300]})") from None
    clear = getattr(module, "clear_cache", None)
    if callable(clear):
        clear()
