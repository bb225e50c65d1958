"""The run directory of a training run: what it holds, a new run's refusal of an occupied one,
``--overwrite``, resuming from a checkpoint whose config must match, and the write probe — every
check that can fail, made before any data or model work (``prepare_run_dir``)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch

from vclip.config import RunConfig, deep_merge, save_config
from vclip.engine.checkpoint import CheckpointManager, read_checkpoint_meta, trained_config
from vclip.engine.distributed import DistInfo, barrier
from vclip.errors import CheckpointError, ConfigError

__all__ = ["RESUME_FREE_KEYS", "RUN_FILES", "any_rank", "config_changes", "prepare_run_dir"]

#: config keys that may differ between a checkpoint's run and the run resuming from it: where the
#: run lives, and bookkeeping that changes nothing the run computes (the data order and every
#: augmentation draw do not depend on the number of workers)
RESUME_FREE_KEYS = ("name", "output_dir", "data.num_workers", "train.log_every", "train.save_every",
                    "train.check_every", "eval.compile",
                    "train.max_nonfinite_skips", "eval.confusion_png")

#: what a training run writes into its directory (globs): a new run refuses a directory holding
#: any of them, ``overwrite=True`` deletes them (and nothing else)
RUN_FILES = ("config.yaml", "metrics.jsonl", "log_rank*.txt", "checkpoints", "tensorboard", "results*.json",
             "confusion*.png")


def _resolve_resume(resume: str | None, ckpts: CheckpointManager) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return ckpts.latest()
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"--resume {resume}: no such checkpoint")
    return p


def _run_entries(run_dir: Path) -> list[Path]:
    """The entries of ``run_dir`` that a run wrote (:data:`RUN_FILES`)."""
    if not run_dir.is_dir():
        return []
    found: list[Path] = []
    for pattern in RUN_FILES:
        found += sorted(p for p in run_dir.glob(pattern) if p not in found)
    return found


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value; a mapping is its entries (an empty one has none)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = RESUME_FREE_KEYS) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every setting of the resolved config ``new`` that
    differs from the stored config ``old`` (both ``RunConfig.to_dict()``), except the keys of
    ``ignore``. A key ``old`` lacks (a checkpoint of an older vclip) counts as its default."""
    missing = "(unset)"
    a = _flatten(json.loads(json.dumps(deep_merge(RunConfig().to_dict(), old))))
    b = _flatten(json.loads(json.dumps(new)))
    keys = list(b) + [k for k in a if k not in b]
    return [(k, a.get(k, missing), b.get(k, missing)) for k in keys
            if k not in ignore and a.get(k, missing) != b.get(k, missing)]


def _format_changes(changes: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    def fmt(v: Any) -> str:
        return v if v == "(unset)" else json.dumps(v)

    text = ", ".join(f"{k} {fmt(a)} → {fmt(b)}" for k, a, b in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _check_resume_config(cfg: RunConfig, path: Path, meta: dict, allow: bool) -> str | None:
    """Refuse (ConfigError, the differing keys listed) to resume ``path`` with a config other than
    the one it was trained with, unless ``allow``: then the line to log (None: no difference)."""
    stored = trained_config(path, meta, verified=True)
    if stored is not None:
        changes = config_changes(stored, cfg.to_dict())
        if not changes:
            return None
        what = f"the config differs from the one the checkpoint was trained with: {_format_changes(changes)}"
    elif meta.get("config_hash") not in (None, cfg.digest()):
        what = (f"the config differs from the one the checkpoint was trained with (config hash "
                f"{meta['config_hash']} → {cfg.digest()}; the checkpoint stores no config to list the keys)")
    else:
        return None
    if allow:
        return f"resuming from {path} although {what} (--allow-config-change)"
    run_cfg = (path.parent if path.is_file() else path).parent.parent / "config.yaml"
    same = f" (vclip train -c {shlex.quote(str(run_cfg))} --resume auto)" if run_cfg.is_file() else ""
    raise ConfigError(f"--resume {path}: {what}; resume with the run's own config{same}, "
                      "or pass --allow-config-change to resume with the new one")


def _blocking_file(run_dir: Path) -> Path | None:
    """A file where the run directory, one of its parents or its ``checkpoints`` folder must be."""
    for p in [run_dir / "checkpoints", run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            return p
    return None


def any_rank(flag: bool, dist: DistInfo) -> bool:
    """Whether ``flag`` is true on any process (a collective when there are several)."""
    if dist.world_size == 1:
        return flag
    from vclip.engine.distributed import all_reduce_sum

    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64))[0] > 0)


def prepare_run_dir(cfg: RunConfig, resume: str | None, dist: DistInfo, overwrite: bool,
                     allow_config_change: bool) -> tuple[Path | None, list[tuple[int, str]]]:
    """Everything about the run directory that can fail, before any data or model work: the
    checkpoint to resume (and its config), a new run into a directory holding one, ``overwrite``,
    a file in the way, and a probe file written and removed (every process). Writes config.yaml.
    Returns the checkpoint to resume from (None: a fresh start) and the (level, line)s to log once
    the run's log files are open."""
    run_dir, notes = cfg.run_dir, []
    where = f"the run directory {run_dir} (output_dir={cfg.output_dir!r}, name={cfg.name!r})"
    # read-only checks: every process reaches the same verdict
    blocking = _blocking_file(run_dir)
    if blocking is not None:
        raise ConfigError(f"{where}: {blocking} is a file, not a directory; choose another output_dir or name")
    if overwrite and resume:
        raise ConfigError(f"--overwrite (delete {run_dir}'s run files and start afresh) and --resume "
                          f"{resume} (continue from a checkpoint) contradict each other: give one of them")
    ckpts = CheckpointManager(run_dir)
    path = _resolve_resume(resume, ckpts)
    if path is not None:
        allowed = _check_resume_config(cfg, path, read_checkpoint_meta(path), allow_config_change)
        if allowed:
            notes.append((logging.WARNING, allowed))
    else:
        entries = _run_entries(run_dir)
        fresh_auto = resume == "auto" and ckpts.find("best") is None  # auto with no checkpoint at all
        if entries and not overwrite and not fresh_auto:
            shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:4])
            raise ConfigError(
                f"{run_dir} already holds a run ({shown}{', ...' if len(entries) > 4 else ''}): continue it "
                "with --resume auto, or delete it and start afresh with --overwrite (or choose another name=)")
        if resume == "auto":
            notes.append((logging.INFO, f"--resume auto: {run_dir} holds no checkpoint; starting from scratch"))
    barrier()  # every process has checked before anything is written
    # writes: rank 0 clears and writes the config, every process probes; all agree before going on
    error: Exception | None = None
    try:
        if dist.is_main and overwrite:
            entries = _run_entries(run_dir)
            for p in entries:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            if entries:
                notes.append((logging.INFO, f"--overwrite: removed {', '.join(p.name for p in entries)} from {run_dir}"))
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".vclip-write-probe-{os.getpid()}-{dist.rank}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"vclip")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        if dist.is_main:
            save_config(cfg, run_dir / "config.yaml")
    except OSError as e:
        error = ConfigError(f"cannot write to {where}: {e.strerror or e}; choose a writable output_dir")
    if any_rank(error is not None, dist):
        raise error or ConfigError(f"another process cannot write to {where} (see its error)")
    return path, notes
