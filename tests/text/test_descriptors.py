"""Descriptor files: official OST JSON and vclip's schema, checked on read."""

from __future__ import annotations

import json

import pytest

from vclip.errors import AnnotationError
from vclip.text.descriptors import DescriptorSet, read_descriptors, write_descriptors, write_official

NAMES = ["abseiling", "archery", "surfing"]
ITEMS = [["climber", "rope"], ["bow", "arrow"], ["board", "wave"]]


def test_roundtrip_both_formats(tmp_path):
    ds = DescriptorSet("ost-spatio", NAMES, ITEMS, generator={"model": "m", "prompts": {"user": "p"}},
                       extra={"archery": {"similar": ["x"]}})
    write_descriptors(tmp_path / "v.json", ds)
    back = read_descriptors(tmp_path / "v.json", NAMES, num_per_class=2, kind="ost-spatio")
    assert back.items == ITEMS and back.generator["model"] == "m" and back.extra == {"archery": {"similar": ["x"]}}
    # by name: another label order, or a subset, works
    assert read_descriptors(tmp_path / "v.json", ["surfing", "abseiling"]).items == [ITEMS[2], ITEMS[0]]
    write_official(tmp_path / "o.json", ds)
    assert json.loads((tmp_path / "o.json").read_text()) == {"0": ITEMS[0], "1": ITEMS[1], "2": ITEMS[2]}
    assert read_descriptors(tmp_path / "o.json", NAMES, num_per_class=2).items == ITEMS
    assert not list(tmp_path.glob(".*tmp"))


def test_entities(tmp_path):
    ds = DescriptorSet("alt-entities", NAMES[:1], [[{"unit": "rope", "description": "a cord"}]])
    write_descriptors(tmp_path / "e.json", ds)
    assert read_descriptors(tmp_path / "e.json").texts() == [("rope: a cord",)]


@pytest.mark.parametrize("content, match", [
    ({"0": ["a", "b"], "1": ["c", "d"]}, r"o\.json: no descriptors for class 2 \('surfing'\)"),
    ({"0": ["a", "b"], "1": ["c"], "2": ["e", "f"]}, r"class 'archery': 1 descriptors, expected 2"),
    ({"0": ["a", "b"], "1": ["c", " "], "2": ["e", "f"]}, r"class 'archery': empty descriptor string"),
    ({"0": ["a", "b"], "1": ["c", "d"], "2": ["e", "f"], "3": ["g", "h"]}, r"4 classes, the label file has 3"),
    ({"abseiling": ["a", "b"]}, r"key 'abseiling' is not a class index"),
    ({"0": "ab", "1": ["c", "d"], "2": ["e", "f"]}, r"class 'abseiling': expected a list"),
])
def test_official_errors(tmp_path, content, match):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=match):
        read_descriptors(p, NAMES, num_per_class=2)


def test_vclip_errors(tmp_path):
    ds = DescriptorSet("ost-temporal", NAMES[:2], ITEMS[:2])
    write_descriptors(tmp_path / "v.json", ds)
    with pytest.raises(AnnotationError, match=r"v\.json: no descriptors for class 'surfing'"):
        read_descriptors(tmp_path / "v.json", NAMES)
    with pytest.raises(AnnotationError, match="class 'abseiling': 2 descriptors, expected 4"):
        read_descriptors(tmp_path / "v.json", NAMES[:2], num_per_class=4)
    with pytest.raises(AnnotationError, match="holds 'ost-temporal' descriptors, expected 'ost-spatio'"):
        read_descriptors(tmp_path / "v.json", NAMES[:2], kind="ost-spatio")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not a readable JSON"):
        read_descriptors(tmp_path / "bad.json", NAMES)
    with pytest.raises(AnnotationError, match="not found"):
        read_descriptors(tmp_path / "missing.json", NAMES)
