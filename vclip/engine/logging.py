"""Run logging: the stdlib logger's per-rank files, console metric lines, ``metrics.jsonl``,
TensorBoard scalars (when installed) and tqdm progress bars — console, metrics and bars on rank 0.

Files in the run directory::

    log_rank{r}.txt    everything the ``vclip`` loggers log on rank r (appended across resumes)
    metrics.jsonl      one JSON object per :meth:`RunLogger.log` call: {"step", "time", metrics...}
    tensorboard/       event files, when tensorboard is installed
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from vclip.errors import ConfigError

__all__ = ["setup_logging", "teardown_logging", "RunLogger", "format_metrics"]

log = logging.getLogger(__name__)

_ROOT = "vclip"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _TqdmHandler(logging.StreamHandler):
    """A console handler that prints through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


# one-time notices already given in this process
_said: dict[str, bool] = {"tensorboard_missing": False}

# what setup_logging changed, so teardown_logging can undo exactly that
_state: dict[str, Any] = {"handlers": [], "propagate": None, "level": None}


def setup_logging(run_dir: str | os.PathLike, rank: int = 0) -> logging.Logger:
    """Log the ``vclip`` loggers of this process to ``run_dir/log_rank{rank}.txt`` (INFO and up, or
    the configured level if lower). Rank 0 also logs to the console: through the root logger's
    handlers when there are any (``vclip`` CLI), else through a tqdm-aware stderr handler; other
    ranks log to their file only. Idempotent for the same file; returns the ``vclip`` logger."""
    logger = logging.getLogger(_ROOT)
    path = (Path(run_dir) / f"log_rank{rank}.txt").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in logger.handlers):
        return logger
    if _state["propagate"] is None:
        _state["propagate"], _state["level"] = logger.propagate, logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    fh = logging.FileHandler(path, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
    logger.addHandler(fh)
    _state["handlers"].append(fh)
    if rank != 0:
        logger.propagate = False  # the console belongs to rank 0
    elif not logging.getLogger().handlers and not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        ch = _TqdmHandler(sys.stderr)
        ch.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(ch)
        _state["handlers"].append(ch)
        logger.propagate = False
    return logger


def teardown_logging() -> None:
    """Remove the handlers :func:`setup_logging` added and restore the logger's settings."""
    logger = logging.getLogger(_ROOT)
    for h in _state["handlers"]:
        logger.removeHandler(h)
        h.close()
    _state["handlers"] = []
    if _state["propagate"] is not None:
        logger.propagate = _state["propagate"]
        logger.setLevel(_state["level"])
    _state["propagate"] = _state["level"] = None


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars → Python numbers (lists for multi-element tensors)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar / 0-d array
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value.tolist()
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if v == 0 or not math.isfinite(v):
        return str(v)
    return f"{v:.3e}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4f}"


def format_metrics(step: int, metrics: dict[str, Any]) -> str:
    return " | ".join([f"step {step}"] + [f"{k} {_fmt(v)}" for k, v in metrics.items()])


class RunLogger:
    """Metrics of one run. ``log(step, loss=..., lr=...)`` writes a console line, a JSON line to
    ``run_dir/metrics.jsonl`` (flushed at once) and TensorBoard scalars — all on rank 0 only; other
    ranks do nothing. ``use_tensorboard``: ``"auto"`` (when importable; one info line otherwise),
    True (required) or False. The "not installed" line is INFO once per process, DEBUG after."""

    def __init__(self, run_dir: str | os.PathLike, *, rank: int = 0, use_tensorboard: bool | str = "auto"):
        if use_tensorboard not in (True, False, "auto"):
            raise ConfigError(f"use_tensorboard must be true, false or 'auto', got {use_tensorboard!r}")
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.main = rank == 0
        self._owns_logging = not any(
            isinstance(h, logging.FileHandler) for h in logging.getLogger(_ROOT).handlers)
        setup_logging(self.run_dir, rank)
        self._log = logging.getLogger("vclip.engine")
        self._jsonl = None
        self._tb = None
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if use_tensorboard is True:
                    raise ConfigError(
                        "TensorBoard logging was requested but tensorboard is not installed "
                        "(pip install tensorboard, or set it to auto/false)") from None
                # said once per process (a protocol run trains and evaluates many times), then DEBUG
                level = logging.DEBUG if _said["tensorboard_missing"] else logging.INFO
                _said["tensorboard_missing"] = True
                log.log(level, "TensorBoard not installed; metrics go to %s only (pip install tensorboard to "
                        "add it)", self.run_dir / "metrics.jsonl")
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def log(self, step: int, **metrics: Any) -> None:
        if not self.main:
            return
        values = {k: _plain(v) for k, v in metrics.items()}
        self._log.info(format_metrics(step, values))
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **values}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def progress(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        """A tqdm bar (rate, ETA) on rank 0; the iterable unchanged elsewhere."""
        if not self.main:
            return iterable
        from tqdm import tqdm

        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False,
                    mininterval=0.2 if tty else 30.0, file=sys.stderr)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._owns_logging:
            teardown_logging()
            self._owns_logging = False

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
