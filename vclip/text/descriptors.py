"""Per-class descriptor files: the official OST JSON and vclip's own schema.

**Official OST** (``descriptors/<ds>/{spatio,temporal}_descriptors/<N>_descriptors.json``), one file
per kind, keyed by class index as a string, in label-file order::

    {"0": ["climber", "rope", "harness", "mountain"], "1": [...], ...}

The index is the row of the label file the descriptors were written for. The official K600
zero-shot files are per split, ``descriptors/k600/split{1,2,3}/{spatio,temporal}_{2,4,8}_descriptors.json``,
160 classes each, indexed by the rows of that split's ``labels/ZS_split{k}_K600.csv``; the
600-class ``descriptors/k600/{spatio,temporal}_descriptors/4_descriptors.json`` follows
``kinetics_600_labels.csv``. With another label list, pass the file's own label list as
``index_names``: classes are then matched by name.

**vclip** (written by ``vclip describe``), keyed by class name, with the provenance of the text::

    {"format": "vclip-descriptors/1", "kind": "ost-spatio", "num_per_class": 4,
     "generator": {"model": "...", "base_url": "...", "params": {...}, "prompts": {...}},
     "class_names": ["abseiling", ...],            # the label order
     "classes": {"abseiling": ["climber", ...], ...},
     "extra": {"abseiling": {...}}}                 # optional per-class data (e.g. similar classes)

Items are non-empty strings; for ``alt-entities`` they are ``{"unit": str, "description": str}``
objects. :func:`read_descriptors` reads either format (detected from the content) and checks it
against the class names (missing/extra classes, wrong counts, empty strings), raising
:class:`~vclip.errors.AnnotationError` naming the file and the class.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vclip.errors import AnnotationError
from vclip.io import atomic_write_text

FORMAT = "vclip-descriptors/1"

__all__ = ["FORMAT", "DescriptorSet", "read_descriptors", "write_descriptors", "write_official"]


@dataclass
class DescriptorSet:
    """Descriptors of one kind for a list of classes, in class order."""

    kind: str
    class_names: list[str]
    items: list[list[Any]]
    generator: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def by_name(self) -> dict[str, list[Any]]:
        return dict(zip(self.class_names, self.items))

    def texts(self) -> list[tuple[str, ...]]:
        """Per class, the descriptor strings (entities as ``"unit: description"``)."""
        return [tuple(_as_text(i) for i in per) for per in self.items]


def _as_text(item) -> str:
    if isinstance(item, dict):
        return f"{item['unit']}: {item['description']}"
    return item


def _check_item(item, path, cname) -> None:
    if isinstance(item, str):
        if not item.strip():
            raise AnnotationError(f"{path}: class {cname!r}: empty descriptor string")
        return
    if isinstance(item, dict) and set(item) >= {"unit", "description"}:
        for k in ("unit", "description"):
            if not isinstance(item[k], str) or not item[k].strip():
                raise AnnotationError(f"{path}: class {cname!r}: entity with an empty or non-string {k!r}")
        return
    raise AnnotationError(f"{path}: class {cname!r}: descriptor {item!r} is neither a non-empty string nor "
                          "a {unit, description} object")


def _check_lists(path, names: Sequence[str], lists: Sequence, num_per_class: int | None) -> None:
    counts = set()
    for cname, per in zip(names, lists):
        if not isinstance(per, list):
            raise AnnotationError(f"{path}: class {cname!r}: expected a list of descriptors, got {type(per).__name__}")
        if not per:
            raise AnnotationError(f"{path}: class {cname!r}: no descriptors")
        if num_per_class is not None and len(per) != num_per_class:
            raise AnnotationError(f"{path}: class {cname!r}: {len(per)} descriptors, expected {num_per_class}")
        for item in per:
            _check_item(item, path, cname)
        counts.add(len(per))


def read_descriptors(path: str | os.PathLike, class_names: Sequence[str] | None = None, *,
                     num_per_class: int | None = None, kind: str | None = None,
                     index_names: Sequence[str] | None = None) -> DescriptorSet:
    """Read an official OST JSON or a vclip descriptor file and check it.

    ``class_names``: the label order the descriptors must cover (official files are matched by
    index, vclip files by name — extra classes in a vclip file are ignored, missing ones are an
    error). ``num_per_class``: the exact count every class must have (None: any count ≥ 1).
    ``index_names``: for an official file, the label list its indices refer to when that is not
    ``class_names`` (the file must cover exactly these; ``class_names`` are then looked up by
    name); ignored for vclip files, which carry their names."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: descriptor file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a JSON object of per-class descriptor lists")
    if data.get("format") == FORMAT:
        table = data.get("classes")
        if not isinstance(table, dict):
            raise AnnotationError(f"{path}: the \"classes\" entry is missing or not an object")
        order = data.get("class_names") or list(table)
        names = list(class_names) if class_names is not None else list(order)
        missing = [c for c in names if c not in table]
        if missing:
            raise AnnotationError(f"{path}: no descriptors for class {missing[0]!r}"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        n = num_per_class if num_per_class is not None else data.get("num_per_class")
        lists = [table[c] for c in names]
        _check_lists(path, names, lists, n)
        file_kind = data.get("kind")
        if kind is not None and file_kind is not None and file_kind != kind:
            raise AnnotationError(f"{path}: holds {file_kind!r} descriptors, expected {kind!r}")
        extra = data.get("extra") or {}
        return DescriptorSet(kind=file_kind or kind or "", class_names=names, items=lists,
                             generator=data.get("generator") or {},
                             extra={c: extra[c] for c in names if c in extra})
    # official: {"0": [...], "1": [...]}
    if not all(isinstance(k, str) and k.isdigit() for k in data):
        bad = next(k for k in data if not (isinstance(k, str) and k.isdigit()))
        raise AnnotationError(f"{path}: key {bad!r} is not a class index: expected the official OST format "
                              f"{{\"0\": [...], ...}} or a vclip file with \"format\": \"{FORMAT}\"")
    num = len(data)
    file_names = list(index_names) if index_names is not None else class_names
    expected = len(file_names) if file_names is not None else num
    names = list(file_names) if file_names is not None else [str(i) for i in range(num)]
    what = "its label list (index_names)" if index_names is not None else "the label file"
    hint = ("an index-keyed file follows the label list it was written for: OST's "
            "model.options.descriptor_labels names that list to match classes by name")
    for i in range(expected):
        if str(i) not in data:
            raise AnnotationError(f"{path}: no descriptors for class {i} ({names[i]!r})"
                                  + (f" ({num} classes, {what} has {expected}; {hint})" if num != expected else ""))
    if num != expected:
        extra_keys = sorted((k for k in data if int(k) >= expected), key=int)
        raise AnnotationError(f"{path}: {num} classes, {what} has {expected} "
                              f"(unexpected class index {extra_keys[0] if extra_keys else '?'}; {hint})")
    lists = [data[str(i)] for i in range(expected)]
    _check_lists(path, names, lists, num_per_class)
    if index_names is not None and class_names is not None:
        table = dict(zip(names, lists))
        missing = [c for c in class_names if c not in table]
        if missing:
            raise AnnotationError(f"{path}: class {missing[0]!r} is not in the label list the file is indexed "
                                  "by (index_names; OST: model.options.descriptor_labels)"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        names = list(class_names)
        lists = [table[c] for c in names]
    return DescriptorSet(kind=kind or "", class_names=names, items=lists)


def write_descriptors(path: str | os.PathLike, ds: DescriptorSet) -> Path:
    """vclip's schema, written atomically."""
    counts = {len(per) for per in ds.items}
    doc = {
        "format": FORMAT,
        "kind": ds.kind,
        "num_per_class": counts.pop() if len(counts) == 1 else None,
        "generator": ds.generator,
        "class_names": list(ds.class_names),
        "classes": {c: list(per) for c, per in zip(ds.class_names, ds.items)},
    }
    if ds.extra:
        doc["extra"] = ds.extra
    return atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def write_official(path: str | os.PathLike, ds: DescriptorSet) -> Path:
    """The official OST JSON (class index → list of strings), written atomically."""
    doc = {str(i): [_as_text(x) for x in per] for i, per in enumerate(ds.items)}
    return atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
