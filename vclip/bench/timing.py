"""Timing, memory and machine records shared by ``vclip bench`` and the scripts in ``benchmarks/``.

Timing: ``warmup`` untimed calls, then ``repeats`` timed runs of ``iters`` calls each. On CUDA a
run is timed with CUDA events recorded around the ``iters`` calls (one synchronisation per run,
none between calls); on the CPU with ``time.perf_counter``. A run's time is divided by ``iters``;
the median, min and max over the runs are reported.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
on the CPU the growth of the process's peak resident set size (``resource.getrusage``'s
``ru_maxrss``), which is a lower bound of the memory the measured code used beyond what the
process had already touched, plus the current RSS from ``/proc/self/statm``.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass
class Timing:
    """Seconds per call: median / min / max over the timed runs, and every run."""

    median_s: float
    min_s: float
    max_s: float
    runs_s: list[float] = field(default_factory=list)
    warmup: int = 0
    iters: int = 1
    timer: str = "perf_counter"
    #: wall time of the first warm-up call (includes torch.compile's compilation), seconds
    first_call_s: float | None = None

    def rate(self, items_per_call: float) -> dict:
        """Items per second at the median, best (min time) and worst (max time) run."""
        return {
            "median": items_per_call / self.median_s,
            "max": items_per_call / self.min_s,
            "min": items_per_call / self.max_s,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2, repeats: int = 3,
            iters: int = 1) -> Timing:
    """Time ``fn()`` (see the module docstring). ``repeats`` >= 1, ``iters`` >= 1."""
    device = torch.device(device)
    if repeats < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"repeats and iters must be >= 1 and warmup >= 0, got {repeats}, {iters}, {warmup}")
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            synchronize(device)
            first = time.perf_counter() - t0
    synchronize(device)
    runs = []
    if device.type == "cuda":
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 1e3 / iters)
        timer = "cuda_events"
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            runs.append((time.perf_counter() - t0) / iters)
        timer = "perf_counter"
    return Timing(median_s=statistics.median(runs), min_s=min(runs), max_s=max(runs), runs_s=runs,
                  warmup=warmup, iters=iters, timer=timer, first_call_s=first)


# ------------------------------------------------------------------------------------------ memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


class MemoryMeter:
    """``start()`` before the measured code, ``stop()`` after it; ``result()`` is a dict."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._start: dict = {}
        self._result: dict = {}

    def start(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = {"allocated": torch.cuda.memory_allocated(self.device)}
        else:
            self._start = {"maxrss": _maxrss_bytes(), "rss": _rss_bytes()}
        return self

    def stop(self) -> dict:
        gib = 1024**3
        if self.device.type == "cuda":
            synchronize(self.device)
            self._result = {
                "kind": "cuda max_memory_allocated",
                "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / gib,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / gib,
                "allocated_before_gib": self._start["allocated"] / gib,
            }
        else:
            rss = _rss_bytes()
            self._result = {
                "kind": "cpu ru_maxrss growth (lower bound)",
                "peak_rss_growth_gib": max(0, _maxrss_bytes() - self._start["maxrss"]) / gib,
                "peak_rss_gib": _maxrss_bytes() / gib,
                "rss_before_gib": (self._start["rss"] or 0) / gib,
                "rss_after_gib": (rss or 0) / gib,
            }
        return self._result


# ----------------------------------------------------------------------------------------- machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict:
    """CPU model and cores, GPU name, torch / CUDA / Python versions, matmul precision settings."""
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "gpu": None,
    }
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        idx = dev.index if dev is not None and dev.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        info["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 1024**3, 1),
            "multiprocessors": p.multi_processor_count,
            "count": torch.cuda.device_count(),
        }
        try:
            info["gpu"]["driver"] = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
        except Exception:  # noqa: BLE001 - informational only
            pass
    return info


def command_line(argv: list[str] | None = None, prog: str | None = None) -> str:
    """The command as typed: ``prog`` (default: the script's name) and the arguments, shell-quoted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0] or "python")
    return " ".join([prog, shlex.join(argv)]) if argv else prog


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record(kind: str, command: str, device: torch.device | str, **results) -> dict:
    """The common head of every JSON record: what was run, where, when."""
    return {"kind": kind, "command": command, "date": now(), "device": str(device),
            "machine": machine_info(device), **results}


__all__ = ["MemoryMeter", "Timing", "command_line", "cpu_name", "machine_info", "measure", "now", "record",
           "synchronize"]


def write_record(path, rec: dict) -> None:
    """Write a benchmark record as JSON (atomically) and say where."""
    import json

    from vclip.io import atomic_write_text

    path = atomic_write_text(path, json.dumps(rec, indent=2, default=str))
    print(f"wrote {path}")
