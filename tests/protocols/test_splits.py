"""Split-file generation: draws, re-indexing, manifests, reuse, and official files used as they are."""

from __future__ import annotations

import json

import pytest

from vclip.data.annotations import load_annotations, read_label_csv, read_split_file
from vclip.errors import AnnotationError
from vclip.protocols.runner import ProtocolRun, load_data_spec, parse_views
from vclip.protocols.splits import base_novel_classes, base_novel_split, few_shot_split, manifest_path, write_split


@pytest.fixture
def toy(tmp_path):
    names = [f"class {i}" for i in range(7)]
    (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    (tmp_path / "train.txt").write_text("".join(f"v{c}_{k}.mp4 {c}\n" for c in range(7) for k in range(5)))
    (tmp_path / "test.txt").write_text("".join(f"t{c}_{k}.mp4 {c}\n" for c in range(7) for k in range(2)))
    return tmp_path


def test_few_shot_draw_is_seeded_and_reused(toy):
    out = toy / "gen" / "fs2.txt"
    few_shot_split(out, toy / "train.txt", toy / "labels.csv", 2, seed=1)
    recs = read_split_file(out)
    assert len(recs) == 14 and all(sum(r.label == c for r in recs) == 2 for c in range(7))
    first = out.read_text()
    m = json.loads(manifest_path(out).read_text())
    assert m["seed"] == 1 and m["counts"]["classes"] == 7 and len(m["classes"]) == 7
    mtime = out.stat().st_mtime_ns
    few_shot_split(out, toy / "train.txt", toy / "labels.csv", 2, seed=1)
    assert out.stat().st_mtime_ns == mtime  # same request: reused
    few_shot_split(out, toy / "train.txt", toy / "labels.csv", 2, seed=2)
    assert out.read_text() != first  # another seed: redrawn
    assert not list((toy / "gen").glob("*.tmp"))
    with pytest.raises(ValueError, match="fewer than the 6 shots"):
        few_shot_split(toy / "gen" / "fs6.txt", toy / "train.txt", toy / "labels.csv", 6, seed=1)


def test_base_novel_halves_reindexed_from_zero(toy):
    base, novel = base_novel_classes(7, 0)
    assert len(base) == 4 and len(novel) == 3 and sorted(base + novel) == list(range(7))
    assert base_novel_classes(51, 0)[0].__len__() == 26 and len(base_novel_classes(101, 0)[1]) == 50
    files = base_novel_split(toy / "b2n", toy / "train.txt", toy / "test.txt", toy / "labels.csv", [1, 2, 3], shots=3)
    bl, nl = read_label_csv(files["base_labels"]), read_label_csv(files["novel_labels"])
    assert bl == [f"class {c}" for c in base] and nl == [f"class {c}" for c in novel]
    for s in (1, 2, 3):
        tr = read_split_file(files["train"][s])
        assert len(tr) == 12 and {r.label for r in tr} == {0, 1, 2, 3}
        # the path still names the original class: the local id maps back through the base list
        assert all(bl[r.label] == f"class {r.path[1]}" for r in tr)
    assert read_split_file(files["train"][1]) != read_split_file(files["train"][2])
    nv = read_split_file(files["novel_val"])
    assert len(nv) == 6 and all(nl[r.label] == f"class {r.path[1]}" for r in nv)
    assert json.loads(manifest_path(files["base_labels"]).read_text())["counts"] == {
        "base": 4, "novel": 3, "base_val": 8, "novel_val": 6}


def test_rawframe_counts_survive_and_untrimmed_segments_are_refused(toy):
    """A split drawn from a rawframes list keeps each folder's frame count (``<dir> <n> <label>``),
    re-indexed or not; segments of untrimmed videos (ActivityNet) have no split line: a clear error
    naming the source, not whole videos written silently."""
    (toy / "raw_train.txt").write_text("".join(f"f{c}_{k} {30 + 7 * c + k} {c}\n" for c in range(7) for k in range(5)))
    (toy / "raw_test.txt").write_text("".join(f"g{c}_{k} {40 + c + k} {c}\n" for c in range(7) for k in range(2)))
    src = {r.path: r.num_frames for f in ("raw_train.txt", "raw_test.txt") for r in read_split_file(toy / f)}
    out = few_shot_split(toy / "gen" / "raw_fs2.txt", toy / "raw_train.txt", toy / "labels.csv", 2, seed=1)
    files = base_novel_split(toy / "raw_b2n", toy / "raw_train.txt", toy / "raw_test.txt", toy / "labels.csv", [1], shots=2)
    for f in (out, files["train"][1], files["base_val"], files["novel_val"]):
        recs = read_split_file(f)
        assert recs and all(r.meta.get("rawframes") for r in recs), f
        assert all(r.num_frames == src[r.path] for r in recs), f
    # ActivityNet, one subset per file: every record is a segment
    db = {f"vid{c}{k}": {"subset": "training", "duration": 20.0,
                         "annotations": [{"label": f"class {c}", "segment": [2.0, 9.5]}]}
          for c in range(7) for k in range(3)}
    (toy / "anet_train.json").write_text(json.dumps({"database": db}))
    with pytest.raises(AnnotationError, match=r"anet_train\.json.*21 record\(s\) are segments.*\[2, 9.5\] s"):
        few_shot_split(toy / "gen" / "anet_fs2.txt", toy / "anet_train.json", toy / "labels.csv", 2, seed=1)
    assert not (toy / "gen" / "anet_fs2.txt").exists()
    seg = load_annotations(toy / "anet_train.json", num_classes=7)[:1]
    with pytest.raises(AnnotationError, match="1 record"):
        write_split(toy / "gen" / "direct.txt", seg)  # the writer refuses them too
    assert not (toy / "gen" / "direct.txt").exists()


def test_official_base_novel_files_are_used_as_they_are(toy, tiny_config, synth_protocol_data):
    """ViFi-CLIP's base/novel files (ids re-indexed from 0) are read unchanged, not regenerated."""
    import yaml

    spec = yaml.safe_load((synth_protocol_data / "spec.yaml").read_text())
    hm = spec["datasets"]["hmdb51"]
    root = synth_protocol_data
    files = base_novel_split(toy / "official", root / hm["splits"][1]["train"], root / hm["splits"][1]["test"],
                             root / hm["labels"], [1], shots=2, class_seed=5)
    hm["base_novel"] = {"base_labels": str(files["base_labels"]), "novel_labels": str(files["novel_labels"]),
                        "train": str(toy / "official" / "fs_base_s{seed}_train.txt"),
                        "base_val": str(files["base_val"]), "novel_val": str(files["novel_val"])}
    hm["labels"] = str(root / hm["labels"])
    hm["splits"] = {k: {kk: str(root / vv) for kk, vv in v.items()} for k, v in hm["splits"].items()}
    (toy / "spec.yaml").write_text(yaml.safe_dump({"datasets": {"hmdb51": hm}}))
    from vclip.protocols.runner import _base_novel_files

    run = ProtocolRun(run_dir=toy / "run", data=load_data_spec(toy / "spec.yaml"), config_files=[str(tiny_config)])
    got, origin = _base_novel_files(run, run.dataset("hmdb51"), [1], 2)
    assert origin == "official" and got["train"][1] == toy / "official" / "fs_base_s1_train.txt"
    assert not (toy / "run" / "splits").exists()


def test_parse_views():
    assert parse_views("1x1,4x3") == [(1, 1), (4, 3)]
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_views("4x2")
