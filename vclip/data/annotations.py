"""Annotation readers: every format becomes a list of :class:`VideoRecord`.

=====================  ===========================================================================
reader                 format
=====================  ===========================================================================
read_split_file        X-CLIP / ViFi-CLIP / OST / TC-CLIP split files and mmaction2 video lists:
                       ``<relpath> <label>`` per line; also mmaction2 rawframe lists
                       ``<frame_dir> <total_frames> <label>`` (``fmt="rawframes"``, or detected)
read_label_csv         label lists ``id,name`` (header required, ids 0..K-1 in row order)
read_mmaction_json     mmaction2 JSON lists ``[{"filename"|"frame_dir", "label", "total_frames"?}]``
read_kinetics_csv      Kinetics ``label,youtube_id,time_start,time_end,split`` → files
                       ``<youtube_id>_<start:06d>_<end:06d>.mp4`` (``path_format`` changes that)
read_ssv2_json         Something-Something v2 ``{"id", "template", ...}`` lists + the labels JSON
                       (name → id); files ``<id>.webm``
read_hmdb_splits       HMDB-51 official ``<class>_test_split<k>.txt`` (``<video>.avi <0|1|2>``)
read_ucf_splits        UCF-101 ``classInd.txt`` + ``trainlist0k.txt`` / ``testlist0k.txt``
read_activitynet_json  ActivityNet 1.3 ``{"database": {id: {"subset", "duration", "annotations":
                       [{"label", "segment": [start_s, end_s]}]}}}`` → one record per labelled
                       segment of untrimmed ``v_<id>.mp4``, carrying ``segment`` (seconds)
=====================  ===========================================================================

:func:`load_annotations` (what :class:`~vclip.data.datasets.VideoDataset` and the engine call) picks
the reader from the content of a ``.json`` file: a list is an mmaction2 list, an object with a
``database`` is ActivityNet. Labels are 0-based integers (the row of the label list). Every error is an
:class:`~vclip.errors.AnnotationError` whose message starts with ``<file>:<line>:`` where a line is
involved. Blank lines and lines starting with ``#`` are skipped in the text formats.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from vclip.errors import AnnotationError
from vclip.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class VideoRecord:
    """One video: ``path`` (relative to the dataset root, or absolute), 0-based ``label`` (-1 when
    unknown, e.g. unlabeled test lists), ``num_frames`` when the annotation states it (rawframes),
    format-specific extras in ``meta``, and ``segment``: ``(start_s, end_s)`` in seconds when the
    record is a labelled part of an untrimmed video (ActivityNet); the samplers then draw frames
    only inside it. ``None``: the whole video."""

    path: str
    label: int
    num_frames: int | None = None
    meta: dict = field(default_factory=dict)
    segment: tuple[float, float] | None = None


def _err(path, lineno: int | None, msg: str) -> AnnotationError:
    where = f"{path}:{lineno}" if lineno is not None else f"{path}"
    return AnnotationError(f"{where}: {msg}")


def _read_text(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None


def _lines(path) -> Iterable[tuple[int, str]]:
    for i, line in enumerate(_read_text(path), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            yield i, s


def _int(tok: str, path, lineno, what: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise _err(path, lineno, f"{what} {tok!r} is not an integer") from None


def _check_label(label: int, num_classes: int | None, path, lineno) -> None:
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f" (the label list has {num_classes} classes)" if num_classes is not None else ""
        raise _err(path, lineno, f"label {label} out of range{bound}")


def name_key(name: str) -> str:
    """Normalised class name for matching names across files: lower case, ``_``/``-`` as spaces,
    single spaces (``brush_hair`` ↔ ``brush hair``)."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def _name_index(class_names: Sequence[str], source) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, n in enumerate(class_names):
        k = name_key(n)
        if k in index:
            raise AnnotationError(f"{source}: class names {class_names[index[k]]!r} and {n!r} collide")
        index[k] = i
    return index


# ------------------------------------------------------------------------------- label lists
def read_label_csv(path) -> list[str]:
    """``id,name`` CSV (header required; quoted names allowed) → class names in id order. Ids must
    be ``0..K-1`` in row order (the peers use the row as the label)."""
    rows = _read_text(path)
    reader = csv.reader(rows)
    names: list[str] = []
    header_seen = False
    for lineno, row in enumerate(reader, 1):
        if not row or not "".join(row).strip():
            continue
        if not header_seen:
            if [c.strip().lower() for c in row[:2]] != ["id", "name"]:
                raise _err(path, lineno, f"expected the header 'id,name', got {','.join(row)!r}")
            header_seen = True
            continue
        if len(row) < 2:
            raise _err(path, lineno, f"expected 'id,name', got {','.join(row)!r}")
        cid = _int(row[0].strip(), path, lineno, "class id")
        name = ",".join(row[1:]).strip()  # an unquoted comma in a name stays part of it
        if cid != len(names):
            raise _err(path, lineno, f"class id {cid} out of order (expected {len(names)})")
        if not name:
            raise _err(path, lineno, "empty class name")
        names.append(name)
    if not header_seen:
        raise _err(path, None, "empty label file (expected the header 'id,name')")
    if not names:
        raise _err(path, None, "no classes")
    return names


def write_label_csv(path, class_names: Sequence[str]) -> None:
    """Write an ``id,name`` label CSV (atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "name"])
    for i, n in enumerate(class_names):
        w.writerow([i, n])
    atomic_write_text(path, buf.getvalue())


def write_split_file(path, records: Iterable[VideoRecord]) -> None:
    """Write ``relpath label`` lines (the X-CLIP format), atomically."""
    atomic_write_text(path, "".join(f"{r.path} {r.label}\n" for r in records))


# ------------------------------------------------------------------------ split / list files
def read_split_file(path, fmt: str = "auto", num_classes: int | None = None) -> list[VideoRecord]:
    """Split files (``relpath label``) and mmaction2 lists.

    ``fmt``: ``"video"`` — ``<path> <label>`` (the path may contain spaces: the label is the last
    field); ``"rawframes"`` — ``<dir> <total_frames> <label>``; ``"auto"`` — rawframes when every line
    has exactly three fields ending in two integers, else video. ``num_classes`` checks the range.
    """
    if fmt not in ("auto", "video", "rawframes"):
        raise AnnotationError(f"{path}: unknown list format {fmt!r} (auto|video|rawframes)")
    lines = list(_lines(path))
    if fmt == "auto":
        def looks_raw(s: str) -> bool:
            parts = s.split()
            return len(parts) == 3 and all(re.fullmatch(r"-?\d+", p) for p in parts[1:])

        fmt = "rawframes" if lines and all(looks_raw(s) for _, s in lines) else "video"
    records = []
    for lineno, s in lines:
        if fmt == "video":
            parts = s.rsplit(None, 1)
            if len(parts) != 2:
                raise _err(path, lineno, f"expected '<path> <label>', got {s!r}")
            rel, label_tok = parts
            num = None
        else:
            parts = s.rsplit(None, 2)
            if len(parts) != 3:
                raise _err(path, lineno, f"expected '<frame_dir> <total_frames> <label>', got {s!r}")
            rel, num_tok, label_tok = parts
            num = _int(num_tok, path, lineno, "total_frames")
            if num < 1:
                raise _err(path, lineno, f"total_frames must be >= 1, got {num}")
        label = _int(label_tok, path, lineno, "label")
        _check_label(label, num_classes, path, lineno)
        meta = {"source": f"{path}:{lineno}"}
        if fmt == "rawframes":
            meta["rawframes"] = True
        records.append(VideoRecord(rel, label, num, meta))
    return records


def read_mmaction_json(path, num_classes: int | None = None) -> list[VideoRecord]:
    """mmaction2 JSON list: ``[{"filename": ..., "label": int}, ...]`` (videos) or
    ``[{"frame_dir": ..., "total_frames": int, "label": int}, ...]`` (rawframes)."""
    return _mmaction_records(_load_json(path), path, num_classes)


def _mmaction_records(data, path, num_classes: int | None) -> list[VideoRecord]:
    if not isinstance(data, list):
        raise _err(path, None, "expected a JSON list of objects")
    records = []
    for i, item in enumerate(data):
        where = f"entry {i}"
        if not isinstance(item, dict):
            raise _err(path, None, f"{where}: expected an object")
        rel = item.get("filename", item.get("frame_dir"))
        if not isinstance(rel, str):
            raise _err(path, None, f"{where}: missing 'filename' or 'frame_dir'")
        label = item.get("label")
        if isinstance(label, list):
            if len(label) != 1:
                raise _err(path, None, f"{where}: multi-label entries are not supported")
            label = label[0]
        if not isinstance(label, int):
            raise _err(path, None, f"{where}: 'label' must be an integer, got {label!r}")
        _check_label(label, num_classes, f"{path} ({where})", None)
        num = item.get("total_frames")
        meta = {"source": f"{path}[{i}]"}
        if "frame_dir" in item:
            meta["rawframes"] = True
        records.append(VideoRecord(rel, label, int(num) if num is not None else None, meta))
    return records


def _load_json(path):
    text = "\n".join(_read_text(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(path, e.lineno, f"invalid JSON: {e.msg}") from None


# ------------------------------------------------------------------------------------ Kinetics
KINETICS_NAME = "{youtube_id}_{start:06d}_{end:06d}.mp4"


def kinetics_filename(youtube_id: str, start, end, fmt: str = KINETICS_NAME, **extra) -> str:
    """``-0ABC123_000010_000020.mp4`` for (``-0ABC123``, 10, 20): times as integer seconds,
    zero-padded to 6 digits (the ActivityNet/CVDF downloader convention)."""
    return fmt.format(youtube_id=youtube_id, start=int(float(start)), end=int(float(end)), **extra)


def read_kinetics_csv(
    path,
    class_names: Sequence[str] | None = None,
    path_format: str = KINETICS_NAME,
    split: str | None = None,
) -> tuple[list[VideoRecord], list[str]]:
    """Kinetics CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``; test CSVs may lack
    ``label``) → ``(records, class_names)``.

    Names map to ids through ``class_names`` (matched by :func:`name_key`, e.g. a label CSV) or, if
    ``None``, through the sorted set of labels in the file (mmaction's convention). ``path_format``
    may use ``{youtube_id} {start} {end} {label} {split}`` (e.g.
    ``"{split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4"`` for per-class folders). ``split``
    keeps only rows of that split. Rows without a label get -1.
    """
    rows = _read_text(path)
    reader = csv.reader(rows)
    header = None
    parsed = []
    for lineno, row in enumerate(reader, 1):
        if not row or not "".join(row).strip():
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            missing = {"youtube_id", "time_start", "time_end"} - set(header)
            if missing:
                raise _err(path, lineno, f"missing column(s) {sorted(missing)} in header {row}")
            continue
        if len(row) < len(header):
            raise _err(path, lineno, f"expected {len(header)} fields, got {len(row)}")
        d = dict(zip(header, (c.strip() for c in row)))
        for key in ("time_start", "time_end"):
            try:
                float(d[key])
            except ValueError:
                raise _err(path, lineno, f"{key} {d[key]!r} is not a number") from None
        if split is not None and d.get("split") != split:
            continue
        parsed.append((lineno, d))
    if header is None:
        raise _err(path, None, "empty file (expected a header with youtube_id,time_start,time_end)")
    if class_names is None:
        class_names = sorted({d["label"] for _, d in parsed if d.get("label")})
    index = _name_index(class_names, path)
    records = []
    for lineno, d in parsed:
        name = d.get("label", "")
        if name:
            label = index.get(name_key(name))
            if label is None:
                raise _err(path, lineno, f"label {name!r} is not in the class list")
        else:
            label = -1
        rel = kinetics_filename(
            d["youtube_id"], d["time_start"], d["time_end"], path_format,
            label=name, split=d.get("split", ""),
        )
        meta = {"youtube_id": d["youtube_id"], "time_start": float(d["time_start"]),
                "time_end": float(d["time_end"]), "split": d.get("split"), "source": f"{path}:{lineno}"}
        records.append(VideoRecord(rel, label, None, meta))
    return records, list(class_names)


# --------------------------------------------------------------------------------------- SSv2
def ssv2_class_name(template: str) -> str:
    """``"Putting [something] on [something]"`` → ``"Putting something on something"``."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_labels(path) -> list[str]:
    """``something-something-v2-labels.json`` (``{name: "id"}``) → names in id order."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise _err(path, None, "expected a JSON object {class name: id}")
    names: dict[int, str] = {}
    for name, cid in data.items():
        try:
            i = int(cid)
        except (TypeError, ValueError):
            raise _err(path, None, f"class {name!r}: id {cid!r} is not an integer") from None
        if i in names:
            raise _err(path, None, f"id {i} used by {names[i]!r} and {name!r}")
        names[i] = name
    if sorted(names) != list(range(len(names))):
        raise _err(path, None, f"ids are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def read_ssv2_json(
    path, labels, path_format: str = "{id}.webm"
) -> tuple[list[VideoRecord], list[str]]:
    """SSv2 train/validation JSON list (``[{"id", "label", "template", "placeholders"}]``; the test
    list has only ``id`` → label -1) with ``labels`` (the labels JSON path or a list of names) →
    ``(records, class_names)``. The class is the template without brackets."""
    class_names = read_ssv2_labels(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
    index = {n: i for i, n in enumerate(class_names)}
    data = _load_json(path)
    if not isinstance(data, list):
        raise _err(path, None, "expected a JSON list of objects")
    records = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item:
            raise _err(path, None, f"entry {i}: expected an object with an 'id'")
        if "template" in item:
            name = ssv2_class_name(str(item["template"]))
            label = index.get(name)
            if label is None:
                raise _err(path, None, f"entry {i} (id {item['id']}): template class {name!r} not in the labels")
        else:
            label = -1
        meta = {"source": f"{path}[{i}]"}
        if "label" in item:
            meta["caption"] = item["label"]
        if "placeholders" in item:
            meta["placeholders"] = item["placeholders"]
        records.append(VideoRecord(path_format.format(id=item["id"]), label, None, meta))
    return records, class_names


# --------------------------------------------------------------------------------------- HMDB
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d)\.txt$")


def read_hmdb_splits(
    split_dir,
    split: int = 1,
    subset: str = "test",
    class_names: Sequence[str] | None = None,
    path_format: str = "{class_dir}/{video}",
) -> tuple[list[VideoRecord], list[str]]:
    """HMDB-51 official split lists (``testTrainMulti_7030_splits``): one file per class,
    ``<class>_test_split<k>.txt``, lines ``<video>.avi <0|1|2>`` (1 = train, 2 = test, 0 = unused).

    ``subset`` "train" | "test". Class ids follow ``class_names`` (matched by :func:`name_key`, so
    ``brush_hair`` ↔ ``brush hair``) or, when ``None``, the sorted class folder names. Paths follow
    ``path_format`` with ``{class_dir}`` (the name in the file name) and ``{video}``.
    """
    want = {"train": "1", "test": "2"}.get(subset)
    if want is None:
        raise AnnotationError(f"HMDB subset must be 'train' or 'test', got {subset!r}")
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise AnnotationError(f"{split_dir}: HMDB split folder not found")
    files = {}
    for p in sorted(split_dir.iterdir()):
        m = _HMDB_FILE.match(p.name)
        if m and int(m["k"]) == split:
            files[m["cls"]] = p
    if not files:
        raise AnnotationError(f"{split_dir}: no '<class>_test_split{split}.txt' files")
    if class_names is None:
        class_names = sorted(files)
    index = _name_index(class_names, split_dir)
    records = []
    for cls, p in sorted(files.items()):
        label = index.get(name_key(cls))
        if label is None:
            raise AnnotationError(f"{p}: class {cls!r} is not in the class list")
        for lineno, s in _lines(p):
            parts = s.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _err(p, lineno, f"expected '<video> <0|1|2>', got {s!r}")
            if parts[1] == want:
                rel = path_format.format(class_dir=cls, video=parts[0])
                records.append(VideoRecord(rel, label, None, {"source": f"{p}:{lineno}"}))
    return records, list(class_names)


# ---------------------------------------------------------------------------------------- UCF
def read_ucf_classind(path) -> list[str]:
    """``classInd.txt`` (``<1-based id> <ClassName>``) → names in id order."""
    names: dict[int, str] = {}
    for lineno, s in _lines(path):
        parts = s.split()
        if len(parts) != 2:
            raise _err(path, lineno, f"expected '<id> <ClassName>', got {s!r}")
        i = _int(parts[0], path, lineno, "class id")
        if i != len(names) + 1:
            raise _err(path, lineno, f"class id {i} out of order (expected {len(names) + 1})")
        names[i] = parts[1]
    if not names:
        raise _err(path, None, "no classes")
    return [names[i] for i in sorted(names)]


def read_ucf_splits(
    split_dir, split: int = 1, subset: str = "test", class_names: Sequence[str] | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """UCF-101 ``ucfTrainTestlist``: ``classInd.txt``, ``trainlist0<k>.txt`` (``<Class>/<video>.avi
    <1-based label>``), ``testlist0<k>.txt`` (``<Class>/<video>.avi``; the label comes from the
    folder). Labels are 0-based; ``class_names`` (e.g. a label CSV) reorders them by name."""
    if subset not in ("train", "test"):
        raise AnnotationError(f"UCF subset must be 'train' or 'test', got {subset!r}")
    split_dir = Path(split_dir)
    ind = read_ucf_classind(split_dir / "classInd.txt")
    names = list(class_names) if class_names is not None else ind
    index = _name_index(names, split_dir)
    remap = {}
    for i, n in enumerate(ind):
        j = index.get(name_key(n))
        if j is None:
            raise AnnotationError(f"{split_dir / 'classInd.txt'}: class {n!r} is not in the class list")
        remap[i] = j
    by_folder = {n: i for i, n in enumerate(ind)}
    p = split_dir / f"{subset}list{split:02d}.txt"
    records = []
    for lineno, s in _lines(p):
        parts = s.split()
        rel = parts[0].replace("\\", "/")
        folder = rel.split("/")[0] if "/" in rel else None
        if len(parts) == 2:
            one = _int(parts[1], p, lineno, "label")
            if not 1 <= one <= len(ind):
                raise _err(p, lineno, f"label {one} out of range 1..{len(ind)}")
            label = one - 1
            if folder is not None and by_folder.get(folder, label) != label:
                raise _err(p, lineno, f"label {one} does not match folder {folder!r}")
        elif len(parts) == 1:
            if folder is None:
                m = re.match(r"v_(.+?)_g\d+_c\d+", Path(rel).stem)
                folder = m.group(1) if m else None
            if folder not in by_folder:
                raise _err(p, lineno, f"cannot tell the class of {rel!r}")
            label = by_folder[folder]
        else:
            raise _err(p, lineno, f"expected '<Class>/<video>.avi [label]', got {s!r}")
        records.append(VideoRecord(rel, remap[label], None, {"source": f"{p}:{lineno}"}))
    return records, names


# --------------------------------------------------------------------------------- ActivityNet
ACTIVITYNET_SUBSETS = ("training", "validation", "testing")
#: File extensions tried for an ActivityNet video, in this order (after the ``v_`` prefix, then without).
ACTIVITYNET_EXTENSIONS = (".mp4", ".mkv", ".webm")
BAD_SEGMENT_POLICIES = ("skip", "error")
_SUBSET_ALIASES = {"train": "training", "val": "validation", "test": "testing"}


def activitynet_filenames(video_id: str) -> list[str]:
    """Candidate file names of an ActivityNet video, in the order they are tried:
    ``v_<id>.mp4 v_<id>.mkv v_<id>.webm <id>.mp4 <id>.mkv <id>.webm`` (the crawler writes
    ``v_<id>.mp4``; youtube-dl downloads may keep the bare id and another container)."""
    return [f"{prefix}{video_id}{ext}" for prefix in ("v_", "") for ext in ACTIVITYNET_EXTENSIONS]


def _activitynet_database(data, path) -> dict:
    if not isinstance(data, dict) or "database" not in data:
        raise _err(path, None, "not an ActivityNet file: expected a JSON object with a 'database' key")
    db = data["database"]
    if not isinstance(db, dict):
        raise _err(path, None, f"'database' must be an object {{video id: {{...}}}}, got {type(db).__name__}")
    if not db:
        raise _err(path, None, "'database' holds no videos")
    return db


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _activitynet_videos(db: dict, path):
    """Validated ``(video_id, subset, duration | None, [(k, label, start, end)], entry)`` per video."""
    for vid, entry in db.items():
        where = f"video {vid!r}"
        if not isinstance(entry, dict):
            raise _err(path, None, f"{where}: expected an object, got {type(entry).__name__}")
        subset = entry.get("subset")
        if not isinstance(subset, str) or not subset:
            raise _err(path, None, f"{where}: 'subset' must be a string (training|validation|testing), got {subset!r}")
        duration = entry.get("duration")
        if duration is not None and not (_is_number(duration) and duration > 0):
            raise _err(path, None, f"{where}: 'duration' must be a positive number of seconds, got {duration!r}")
        anns = entry.get("annotations", [])
        if not isinstance(anns, list):
            raise _err(path, None, f"{where}: 'annotations' must be a list, got {type(anns).__name__}")
        parsed = []
        for k, a in enumerate(anns):
            aw = f"{where}: annotation {k}"
            if not isinstance(a, dict):
                raise _err(path, None, f"{aw}: expected an object with 'label' and 'segment'")
            label = a.get("label")
            if not isinstance(label, str) or not label.strip():
                raise _err(path, None, f"{aw}: 'label' must be a non-empty string, got {label!r}")
            seg = a.get("segment")
            if not (isinstance(seg, (list, tuple)) and len(seg) == 2 and all(_is_number(t) for t in seg)):
                raise _err(path, None, f"{aw} ({label!r}): 'segment' must be [start, end] in seconds, got {seg!r}")
            parsed.append((k, label, float(seg[0]), float(seg[1])))
        yield vid, subset, (float(duration) if duration is not None else None), parsed, entry


def activitynet_class_names(path) -> list[str]:
    """The sorted set of annotation labels of an ActivityNet JSON, all subsets together (200 for
    v1.3): the class order :func:`read_activitynet_json` uses without ``class_names``. Write it
    as a label CSV with :func:`write_label_csv` for configs that need ``data.labels``."""
    return _activitynet_names(_activitynet_database(_load_json(path), path), path)


def _activitynet_names(db: dict, path) -> list[str]:
    names = sorted({label for _, _, _, anns, _ in _activitynet_videos(db, path) for _, label, _, _ in anns})
    if not names:
        raise _err(path, None, "no labelled segments in any subset")
    return names


def read_activitynet_json(
    path,
    subset: str | None = None,
    class_names: Sequence[str] | None = None,
    *,
    root=None,
    path_format: str | None = None,
    on_bad_segment: str = "skip",
    num_classes: int | None = None,
    stats: dict | None = None,
) -> tuple[list[VideoRecord], list[str]]:
    """ActivityNet 1.3 JSON (``activity_net.v1-3.min.json``) → ``(records, class_names)``: one
    record per labelled segment of the videos of ``subset``, with ``segment=(start_s, end_s)``.

    Layout: ``{"version", "taxonomy", "database": {<youtube id>: {"subset": "training" |
    "validation" | "testing", "duration": seconds, "resolution", "url", "annotations": [{"label":
    name, "segment": [start_s, end_s]}]}}}``.

    * ``subset``: ``"training"``, ``"validation"`` or ``"testing"`` (``train``/``val``/``test``
      accepted). ``None`` is allowed only when the file holds a single subset.
    * Class ids: the position of the label in ``class_names`` (matched by :func:`name_key`), or,
      when ``None``, in the sorted set of labels of the whole file (all subsets, so training and
      validation agree). ``num_classes`` (a label list's length) is checked against that set.
    * Segments are clamped to ``[0, duration]``. A segment that is empty after clamping (end <=
      start, or lying outside the video: v1.3 has a few ``[0, 0]`` ones) is skipped, counted and
      logged once (``on_bad_segment="skip"``, default) or is an error naming the video and segment
      (``"error"``). Malformed fields are always errors naming the video id.
    * Files: ``path_format`` (``str.format`` with ``{id}`` and ``{subset}``, e.g.
      ``"{subset}/v_{id}.mp4"``), else the first of :func:`activitynet_filenames` present in
      ``root``, else ``v_<id>.mp4`` (a missing video then fails when loaded; the count of missing
      videos is logged).
    * ``stats``, if given, receives ``segments``, ``skipped_segments``, ``clamped_segments``,
      ``videos`` and ``missing_videos``.
    """
    if on_bad_segment not in BAD_SEGMENT_POLICIES:
        raise AnnotationError(f"on_bad_segment must be one of {BAD_SEGMENT_POLICIES}, got {on_bad_segment!r}")
    return _activitynet_records(_load_json(path), path, subset, class_names, root, path_format,
                                on_bad_segment, num_classes, stats)


def _activitynet_records(data, path, subset, class_names, root, path_format, on_bad_segment,
                         num_classes, stats) -> tuple[list[VideoRecord], list[str]]:
    db = _activitynet_database(data, path)
    videos = list(_activitynet_videos(db, path))  # validates every entry, whatever the subset
    found = list(dict.fromkeys(v[1] for v in videos))
    if subset is None:
        if len(found) != 1:
            raise _err(path, None, f"the file holds the subsets {found}: choose one "
                                   "(subset='training' to train, 'validation' to evaluate)")
        subset = found[0]
    subset = _SUBSET_ALIASES.get(subset, subset)
    if subset not in found:
        raise _err(path, None, f"no video of subset {subset!r} (subsets in the file: {found})")
    if class_names is None:
        class_names = _activitynet_names(db, path)
        if num_classes is not None and len(class_names) != num_classes:
            raise _err(path, None, f"the file has {len(class_names)} classes but the label list has "
                                   f"{num_classes}: without class names the ids are the file's sorted "
                                   "labels, so pass the label list's names (class_names) to map them")
    elif num_classes is not None and len(class_names) != num_classes:
        raise AnnotationError(f"{path}: {len(class_names)} class names given but num_classes={num_classes}")
    index = _name_index(class_names, path)
    available = None
    if path_format is None and root is not None:
        try:
            available = set(os.listdir(root))
        except OSError:
            available = set()
    records: list[VideoRecord] = []
    skipped: list[str] = []
    clamped = missing = nvideos = 0
    for vid, vsubset, duration, anns, _entry in videos:
        if vsubset != subset or not anns:
            continue
        if path_format is not None:
            try:
                rel = path_format.format(id=vid, subset=vsubset)
            except (KeyError, IndexError, ValueError) as e:
                raise AnnotationError(f"path_format {path_format!r}: {e!r} (fields: {{id}}, {{subset}})") from None
        else:
            names = activitynet_filenames(vid)
            rel = next((n for n in names if available is not None and n in available), None)
            if rel is None:
                rel = names[0]
                missing += available is not None
        video_records = 0
        for k, label_name, start, end in anns:
            label = index.get(name_key(label_name))
            if label is None:
                raise _err(path, None, f"video {vid!r}: annotation {k}: label {label_name!r} is not in the class list")
            lo = max(start, 0.0)
            hi = min(end, duration) if duration is not None else end
            if hi <= lo:
                if end <= start:
                    why = "has end <= start"
                elif duration is not None and start >= duration:
                    why = f"starts at or after the end of the video ({duration:g} s)"
                else:
                    why = "ends before 0 s"
                msg = f"video {vid!r}: annotation {k} ({label_name!r}): segment [{start:g}, {end:g}] {why}"
                if on_bad_segment == "error":
                    raise _err(path, None, msg)
                skipped.append(msg)
                continue
            clamped += (lo, hi) != (start, end)
            meta = {"video_id": vid, "subset": vsubset, "duration": duration,
                    "annotation": k, "source": f"{path} (video {vid}, annotation {k})"}
            if (lo, hi) != (start, end):
                meta["annotated_segment"] = (start, end)
            records.append(VideoRecord(rel, label, None, meta, segment=(lo, hi)))
            video_records += 1
        nvideos += video_records > 0
    if skipped:
        log.warning("%s: skipped %d empty or out-of-video segment(s) of subset %r, e.g. %s "
                    "(on_bad_segment='error' makes this an error)", path, len(skipped), subset, skipped[0])
    if missing:
        log.warning("%s: %d of %d %s videos not found in %s (tried %s); they fail when loaded",
                    path, missing, nvideos, subset, root, " ".join(activitynet_filenames("<id>")))
    if stats is not None:
        stats.update(segments=len(records), skipped_segments=len(skipped), clamped_segments=clamped,
                     videos=nvideos, missing_videos=missing)
    if not records:
        hint = " (the official testing subset has no public labels)" if subset == "testing" else ""
        raise _err(path, None, f"subset {subset!r} has no labelled segments{hint}")
    return records, list(class_names)


# ------------------------------------------------------------------------------------ dispatch
ANNOTATION_FORMATS = ("auto", "video", "rawframes", "mmaction_json", "activitynet")


def read_annotations(
    path,
    fmt: str = "auto",
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    subset: str | None = None,
    root=None,
    **kwargs,
) -> tuple[list[VideoRecord], list[str] | None]:
    """Read an annotation file by format name → ``(records, class_names)``.

    ``fmt``: ``auto`` (a ``.json`` file by its content: a list → mmaction JSON, an object with
    ``database`` → ActivityNet; anything else a split file, rawframe lists detected), ``video``,
    ``rawframes``, ``mmaction_json``, ``activitynet``. ``class_names`` (or just ``num_classes``)
    checks label ranges, and maps ActivityNet's label names to ids. ``subset`` and ``root`` are
    used by ActivityNet only (one file, several subsets; video file names looked up in ``root``);
    the single-list formats ignore them. Extra keywords go to the reader
    (:func:`read_activitynet_json`'s ``path_format``, ``on_bad_segment``, ``stats``).
    The class names returned are the file's own (ActivityNet) or ``class_names`` as given.
    """
    if fmt not in ANNOTATION_FORMATS:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r} ({'|'.join(ANNOTATION_FORMATS)})")
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if fmt in ("mmaction_json", "activitynet") or (fmt == "auto" and str(path).lower().endswith(".json")):
        data = _load_json(path)
        if fmt == "activitynet" or (fmt == "auto" and isinstance(data, dict) and "database" in data):
            options = {"path_format": None, "on_bad_segment": "skip", "stats": None}
            if set(kwargs) - set(options):
                _unknown(path, {k: v for k, v in kwargs.items() if k not in options})
            options.update(kwargs)
            if options["on_bad_segment"] not in BAD_SEGMENT_POLICIES:
                raise AnnotationError(f"on_bad_segment must be one of {BAD_SEGMENT_POLICIES}, "
                                      f"got {options['on_bad_segment']!r}")
            return _activitynet_records(data, path, subset, class_names, root, options["path_format"],
                                        options["on_bad_segment"], num_classes, options["stats"])
        if fmt == "auto" and not isinstance(data, list):
            raise _err(path, None, "expected a JSON list (mmaction2) or an object with a 'database' "
                                   "key (ActivityNet)")
        if kwargs:
            _unknown(path, kwargs)
        return _mmaction_records(data, path, num_classes), (list(class_names) if class_names else None)
    if kwargs:
        _unknown(path, kwargs)
    records = read_split_file(path, fmt=fmt, num_classes=num_classes)
    return records, (list(class_names) if class_names is not None else None)


def _unknown(path, kwargs):
    raise AnnotationError(f"{path}: option(s) {sorted(kwargs)} do not apply to this annotation format")


def load_annotations(path, fmt: str = "auto", **kwargs) -> list[VideoRecord]:
    """The records of :func:`read_annotations` (same arguments): what the engine calls for
    ``data.train_list``/``data.val_list``. Kinetics CSV, SSv2, HMDB and UCF lists return class
    names too: call their readers directly."""
    return read_annotations(path, fmt, **kwargs)[0]
