"""Helpers of the engine integration tests (configs, subprocess runs of the ``vclip`` CLI)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")

def base_config(synth: Path, out_dir: Path, name: str = "run") -> dict:
    """A CPU run of the ``clip`` method on the tiny architecture, 4 frames of 32 px, no Mixup and
    no augmentation that could change a class (flip, colour)."""
    return {
        "name": name,
        "output_dir": str(out_dir),
        "device": "cpu",
        "model": {"method": "clip", "arch": "tiny", "templates": ["{}"]},
        "data": {
            "root": str(synth),
            "train_list": str(synth / "train.txt"),
            "val_list": str(synth / "val.txt"),
            "labels": str(synth / "labels.csv"),
            "num_frames": 4,
            "image_size": 32,
            "batch_size": 8,
            "num_workers": 0,
            "aug": {"crop": "multiscale", "flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0,
                    "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0},
        },
        "train": {"epochs": 1, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0, "precision": "fp32",
                  "log_every": 1, "seed": 0},
        "eval": {"confusion_png": True},
    }


def deep_update(d: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            deep_update(d[k], v)
        else:
            d[k] = v
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """This process's environment without torchrun's variables, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def vclip_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vclip.cli", *map(str, args)]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "vclip.cli", *map(str, args)]


def run(cmd: list[str], timeout: float = 180, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=kwargs.pop("env", clean_env()),
                       **kwargs)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
