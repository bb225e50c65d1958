"""Synthetic datasets shaped like the protocols' real ones, built once per session from one small
set of `vclip.data.synthetic` videos (12 classes × 6 videos of 4 frames at 32 px) whose annotation
files reuse the videos under different class vocabularies:

* "k400": synthetic classes 0–7 (train/val), two of them spelled as K600 spells them differently
  ("Triangle-Shrinking", and "diamond appearing" vs K600's "diamond appearing (not fading)");
* "k600": all 12 classes — 8 shared with "k400" (2 renamed), 4 new; its pool is every video;
* "hmdb51": classes 6–11, three splits (4 train / 2 test videos per class each);
* "ucf101": classes 0–5 with CamelCase names, three splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vclip.data.synthetic import CLASSES, SynthConfig, generate

K400 = {i: CLASSES[i] for i in range(8)}
K400[5] = "Triangle-Shrinking"
K600 = {i: CLASSES[i] for i in range(12)}
K600[6] = "diamond appearing (not fading)"
HMDB = {6 + i: n for i, n in enumerate(["diamond appear", "diamond disappear", "red star", "blue star",
                                         "hexagon", "cross"])}
UCF = {i: n for i, n in enumerate(["CircleMovingRight", "CircleMovingLeft", "SquareRotatingCW",
                                    "SquareRotatingCCW", "TriangleGrowing", "TriangleShrinking"])}


def _labels(path: Path, names: list[str]) -> None:
    path.write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))


def _split(path: Path, entries, remap: dict[int, int]) -> None:
    path.write_text("".join(f"{e['path']} {remap[e['label']]}\n" for e in entries if e["label"] in remap))


@pytest.fixture(scope="session")
def synth_protocol_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocol_data")
    videos = root / "synth"
    generate(videos, SynthConfig(size=(32, 32), frames=4, videos_per_class=6, val_fraction=0.34, seed=0), workers=1)
    entries = json.loads((videos / "meta.json").read_text())["videos"]
    ann = root / "ann"
    ann.mkdir()
    # per class, the order of its videos (k = 0..5) decides the splits
    rank: dict[str, int] = {}
    seen: dict[int, int] = {}
    for e in sorted(entries, key=lambda e: e["seed"]):
        rank[e["path"]] = seen.get(e["label"], 0)
        seen[e["label"]] = rank[e["path"]] + 1

    spec: dict = {"datasets": {}}
    for name, vocab in (("k400", K400), ("k600", K600)):
        remap = {c: i for i, c in enumerate(sorted(vocab))}
        _labels(ann / f"{name}_labels.csv", [vocab[c] for c in sorted(vocab)])
        _split(ann / f"{name}_train.txt", [e for e in entries if e["split"] == "train"], remap)
        _split(ann / f"{name}_val.txt", [e for e in entries if e["split"] == "val"], remap)
        spec["datasets"][name] = {"root": str(videos), "labels": f"ann/{name}_labels.csv",
                                  "train": f"ann/{name}_train.txt", "val": f"ann/{name}_val.txt"}
    _split(ann / "k600_all.txt", entries, {c: c for c in K600})
    spec["datasets"]["k600"]["pools"] = [{"list": "ann/k600_all.txt", "prefix": ""}]
    for name, vocab in (("hmdb51", HMDB), ("ucf101", UCF)):
        remap = {c: i for i, c in enumerate(sorted(vocab))}
        _labels(ann / f"{name}_labels.csv", [vocab[c] for c in sorted(vocab)])
        splits = {}
        for s in (1, 2, 3):
            test = [e for e in entries if rank[e["path"]] % 3 == s - 1]
            train = [e for e in entries if rank[e["path"]] % 3 != s - 1]
            _split(ann / f"{name}_train{s}.txt", train, remap)
            _split(ann / f"{name}_test{s}.txt", test, remap)
            splits[s] = {"train": f"ann/{name}_train{s}.txt", "test": f"ann/{name}_test{s}.txt"}
        spec["datasets"][name] = {"root": str(videos), "labels": f"ann/{name}_labels.csv", "splits": splits}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="session")
def tiny_config(synth_protocol_data) -> Path:
    """A CPU run of the `clip` method on the tiny architecture: 2 frames of 32 px, 2 steps."""
    cfg = {
        "device": "cpu",
        "model": {"method": "clip", "arch": "tiny", "templates": ["{}"]},
        "data": {"num_frames": 2, "image_size": 32, "batch_size": 4, "num_workers": 0,
                 "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0,
                         "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 2, "lr": 1e-3, "warmup_epochs": 0, "precision": "fp32",
                  "log_every": 1, "seed": 0},
        "eval": {"confusion_png": False},
    }
    path = synth_protocol_data / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every protocol test on one torch thread (tests/conftest.py)."""
