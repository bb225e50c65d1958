"""Protocol split files: reading the ViFi-CLIP/OST files as they are, and generating equivalent
ones from a dataset's own annotations when they are absent.

Every generated file is written atomically (:mod:`vclip.io`) and described by a manifest JSON next
to it (``<name>.manifest.json``): generator, seed, the SHA-256 of every source annotation/label
file, counts and the classes — enough to reproduce and audit the draw. A generated
file is reused when its manifest matches the request (same sources, seed and parameters), and
regenerated otherwise.

Formats (docs/protocols.md): split files ``<relpath> <label>`` (``<frame dir> <total frames>
<label>`` when drawn from a rawframes list, so the frame counts survive); label CSVs ``id,name``
whose row is the label. Base/novel label files and their split files use ids re-indexed from 0.
A source whose records are segments of untrimmed videos (ActivityNet) is refused: a split line
names a whole video, and writing one would silently train on the whole video.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from vclip.data.annotations import VideoRecord, load_annotations, read_label_csv
from vclip.errors import AnnotationError
from vclip.io import atomic_write_text, sha256_file  # re-exported for older callers; use vclip.io directly

log = logging.getLogger(__name__)


def write_split(path, records: Sequence[VideoRecord]) -> Path:
    """``<relpath> <label>`` lines, or ``<frame dir> <total frames> <label>`` when every record is a
    rawframes folder with its frame count (what :func:`read_split` reads back as the same records).
    Records that are segments of untrimmed videos have no line format: an error."""
    _refuse_segments(records)
    if records and all(r.meta.get("rawframes") and r.num_frames is not None for r in records):
        return atomic_write_text(path, "".join(f"{r.path} {r.num_frames} {r.label}\n" for r in records))
    return atomic_write_text(path, "".join(f"{r.path} {r.label}\n" for r in records))


def write_labels(path, names: Sequence[str]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "name"])
    for i, n in enumerate(names):
        w.writerow([i, n])
    return atomic_write_text(path, buf.getvalue())


def manifest_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def _sources(paths: Sequence) -> list[dict]:
    return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]


def _manifest_ok(path: Path, request: dict) -> bool:
    mp = manifest_path(path)
    if not path.exists() or not mp.exists():
        return False
    try:
        m = json.loads(mp.read_text())
    except ValueError:
        return False
    return m.get("request") == request


def _write_manifest(path: Path, request: dict, **info) -> None:
    atomic_write_text(manifest_path(path), json.dumps({"file": path.name, "request": request, **info}, indent=1))


def _refuse_segments(records: Sequence[VideoRecord]) -> None:
    segments = [r for r in records if r.segment is not None]
    if segments:
        r = segments[0]
        raise AnnotationError(
            f"{r.meta.get('source', r.path)}: {len(segments)} record(s) are segments of untrimmed videos "
            f"(e.g. {r.path} [{r.segment[0]:g}, {r.segment[1]:g}] s); a protocol split file lists whole "
            "videos, so it cannot be generated from them: cut each segment into its own file "
            "(docs/datasets.md, ActivityNet 'Trimmed alternative') or give the protocol's split files")


def read_split(path, num_classes: int | None = None) -> list[VideoRecord]:
    """The records of a source list for the split builders (segments of untrimmed videos refused)."""
    records = load_annotations(path, num_classes=num_classes)
    _refuse_segments(records)
    return records


def by_class(records: Sequence[VideoRecord]) -> dict[int, list[VideoRecord]]:
    out: dict[int, list[VideoRecord]] = {}
    for r in records:
        out.setdefault(r.label, []).append(r)
    return out


# --------------------------------------------------------------------------------- few-shot
def draw_shots(records: Sequence[VideoRecord], shots: int, seed: int, classes: Sequence[int] | None = None,
               stream: str = "few_shot") -> list[VideoRecord]:
    """``shots`` videos per class (all classes of ``records`` or ``classes``), drawn without
    replacement by a generator seeded from (``seed``, ``shots``, ``stream``); a class with fewer
    videos is an error. Output in class order, then the file's order."""
    groups = by_class(records)
    classes = sorted(groups) if classes is None else list(classes)
    tag = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")
    rng = np.random.default_rng([seed, shots, tag])
    out = []
    for c in classes:
        vids = groups.get(c, [])
        if len(vids) < shots:
            raise ValueError(f"class {c} has {len(vids)} videos, fewer than the {shots} shots asked for")
        pick = sorted(rng.choice(len(vids), size=shots, replace=False).tolist())
        out.extend(vids[i] for i in pick)
    return out


def few_shot_split(out: Path, source: Path, labels: Path, shots: int, seed: int) -> Path:
    """Generate ``out`` = ``shots`` videos of every class of the ``source`` training list."""
    names = read_label_csv(labels)
    request = {"kind": "few_shot", "shots": shots, "seed": seed, "sources": _sources([source, labels])}
    if _manifest_ok(out, request):
        return out
    records = read_split(source, len(names))
    present = sorted(by_class(records))
    if len(present) != len(names):
        log.warning("%s: %d of the %d classes have training videos; drawing from those", source,
                    len(present), len(names))
    picked = draw_shots(records, shots, seed)
    write_split(out, picked)
    _write_manifest(out, request, generator="vclip.protocols.splits.few_shot_split", seed=seed,
                    counts={"videos": len(picked), "classes": len(present), "shots": shots},
                    classes=[names[c] for c in present])
    log.info("generated %s (%d-shot, seed %d, %d videos)", out, shots, seed, len(picked))
    return out


# ---------------------------------------------------------------------------- base-to-novel
def base_novel_classes(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """Base = ⌈K/2⌉ classes drawn by a seeded permutation, novel = the rest, each kept in label
    order (ViFi-CLIP's counts: HMDB 26/25, UCF 51/50, K400 200/200, SSv2 87/87)."""
    perm = np.random.default_rng([seed, 2]).permutation(num_classes)
    nb = (num_classes + 1) // 2
    return sorted(perm[:nb].tolist()), sorted(perm[nb:].tolist())


def _reindex(records: Sequence[VideoRecord], classes: Sequence[int]) -> list[VideoRecord]:
    idx = {c: i for i, c in enumerate(classes)}
    return [dataclasses.replace(r, label=idx[r.label]) for r in records if r.label in idx]


def base_novel_split(out_dir: Path, train: Path, test: Path, labels: Path, seeds: Sequence[int], shots: int = 16,
                     class_seed: int = 0) -> dict:
    """Generate ViFi-CLIP-style base-to-novel files in ``out_dir``: ``base_labels.csv``,
    ``novel_labels.csv`` (re-indexed from 0), ``fs_base_s{seed}_train.txt`` (``shots`` per base
    class from ``train``), ``base_val.txt`` and ``novel_val.txt`` (all ``test`` videos of the base /
    novel classes). Returns the paths."""
    out_dir = Path(out_dir)
    names = read_label_csv(labels)
    base, novel = base_novel_classes(len(names), class_seed)
    files = {"base_labels": out_dir / "base_labels.csv", "novel_labels": out_dir / "novel_labels.csv",
             "base_val": out_dir / "base_val.txt", "novel_val": out_dir / "novel_val.txt",
             "train": {s: out_dir / f"fs_base_s{s}_train.txt" for s in seeds}}
    srcs = _sources([train, test, labels])
    request = {"kind": "base_novel", "class_seed": class_seed, "sources": srcs}
    if not _manifest_ok(files["base_labels"], request):
        test_records = read_split(test, len(names))
        write_labels(files["base_labels"], [names[c] for c in base])
        write_labels(files["novel_labels"], [names[c] for c in novel])
        bv, nv = _reindex(test_records, base), _reindex(test_records, novel)
        write_split(files["base_val"], bv)
        write_split(files["novel_val"], nv)
        _write_manifest(files["base_labels"], request, generator="vclip.protocols.splits.base_novel_split",
                        seed=class_seed, counts={"base": len(base), "novel": len(novel), "base_val": len(bv),
                                                 "novel_val": len(nv)},
                        classes={"base": [names[c] for c in base], "novel": [names[c] for c in novel]},
                        files=[files[k].name for k in ("novel_labels", "base_val", "novel_val")])
    train_records = None
    for s, path in files["train"].items():
        req = {"kind": "base_train", "shots": shots, "seed": s, "class_seed": class_seed, "sources": srcs}
        if _manifest_ok(path, req):
            continue
        if train_records is None:
            train_records = read_split(train, len(names))
        picked = draw_shots(train_records, shots, s, classes=base, stream="base_novel")
        write_split(path, _reindex(picked, base))
        _write_manifest(path, req, generator="vclip.protocols.splits.base_novel_split", seed=s,
                        counts={"videos": len(picked), "classes": len(base), "shots": shots},
                        classes=[names[c] for c in base])
    return files


# ------------------------------------------------------------------------------ K600 zero-shot
def k600_zero_shot_split(out: Path, out_labels: Path, pools: Sequence[tuple[Path, str]], k600_labels: Path,
                         new_classes: Sequence[str], num_classes: int, seed: int, match_report: dict) -> Path:
    """``num_classes`` of K600's ``new_classes`` drawn with ``seed``; ``out`` lists every video of
    those classes in the ``pools`` (``(split file, path prefix)``, labels in the full K600 list),
    ``out_labels`` the drawn classes (ids re-indexed from 0, in K600 order)."""
    names = read_label_csv(k600_labels)
    request = {"kind": "k600_zero_shot", "seed": seed, "num_classes": num_classes,
               "sources": _sources([k600_labels] + [p for p, _ in pools]), "prefixes": [x for _, x in pools],
               "new_classes": list(new_classes)}
    if _manifest_ok(out, request) and out_labels.exists():
        return out
    if num_classes > len(new_classes):
        raise ValueError(f"asked for {num_classes} K600 classes, only {len(new_classes)} are new")
    pos = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng([seed, 600])
    drawn = sorted(rng.choice(len(new_classes), size=num_classes, replace=False).tolist())
    chosen = sorted((pos[new_classes[i]] for i in drawn))
    records: list[VideoRecord] = []
    for path, prefix in pools:
        for r in read_split(path, len(names)):
            records.append(dataclasses.replace(r, path=prefix + r.path))
    sub = _reindex(records, chosen)
    write_labels(out_labels, [names[c] for c in chosen])
    write_split(out, sub)
    counts = {"classes": len(chosen), "videos": len(sub), "new_classes": len(new_classes)}
    _write_manifest(out, request, generator="vclip.protocols.splits.k600_zero_shot_split", seed=seed, counts=counts,
                    classes=[names[c] for c in chosen], labels_file=out_labels.name, matching=match_report)
    log.info("generated %s (seed %d): %d of %d new K600 classes, %d videos", out, seed, len(chosen),
             len(new_classes), len(sub))
    return out
