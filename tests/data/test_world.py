"""The compositional video world (``vclip data world``): byte reproducibility, time reversal, the
vocabulary's roles and the protocol files the runners read."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vclip.data import world as W
from vclip.data.annotations import load_annotations, read_label_csv


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    W.generate_world(out, size="tiny", workers=1, seed=0)
    return out


def test_bytes_do_not_depend_on_workers_and_match_the_manifest(tiny_world, tmp_path):
    other = tmp_path / "w2"
    W.generate_world(other, size="tiny", workers=2, seed=0)
    a, b = (tiny_world / "manifest.json").read_bytes(), (other / "manifest.json").read_bytes()
    assert a == b
    m = json.loads(a)
    assert m["seed"] == 0 and m["version"] == W.GENERATOR_VERSION and m["size"] == "tiny"
    assert any(p.endswith(".mp4") for p in m["files"]) and "frames.npy" in m["files"] and "spec.yaml" in m["files"]
    for rel, sha in m["files"].items():
        assert hashlib.sha256((other / rel).read_bytes()).hexdigest() == sha, rel
    # another seed is another world
    third = tmp_path / "w3"
    W.generate_world(third, size="tiny", workers=1, seed=1)
    assert json.loads((third / "manifest.json").read_text())["files"]["frames.npy"] != m["files"]["frames.npy"]


def test_backward_member_is_the_forward_clip_reversed_frame_for_frame():
    for f, b in W.ORDER_PAIRS:
        name = "two circles {}" if f in W.TWO_OBJECT_ACTIONS else "red square {}"
        pf = W.sample_video(name.format(f), np.random.default_rng(3), 32, 32)
        pb = W.sample_video(name.format(b), np.random.default_rng(3), 32, 32)
        vf, vb = W.render_video(pf, 32, 32, 6), W.render_video(pb, 32, 32, 6)
        assert np.array_equal(vb, vf[::-1]), (f, b)
        assert not np.array_equal(vf, vf[::-1]), f  # the action does change the frames


def _centroid_x(frame: np.ndarray) -> float:
    red = (frame[..., 0] > 170) & (frame[..., 1] < 90) & (frame[..., 2] < 90)
    return float(np.nonzero(red)[1].mean())


def test_actions_move_the_way_their_words_say():
    p = W.sample_video("red circle moving left", np.random.default_rng(0), 64, 64)
    v = W.render_video(p, 64, 64, 8)
    xs = [_centroid_x(f) for f in v]
    assert xs[0] - xs[-1] > 20 and all(a > b for a, b in zip(xs, xs[1:]))
    p = W.sample_video("red circle growing", np.random.default_rng(0), 64, 64)
    v = W.render_video(p, 64, 64, 8)
    area = [int(((f[..., 0] > 170) & (f[..., 1] < 90)).sum()) for f in v]
    assert area[-1] > 2.5 * area[0]
    p = W.sample_video("red circle appearing", np.random.default_rng(0), 64, 64)
    v = W.render_video(p, 64, 64, 8)
    assert area_red(v[0]) == 0 and area_red(v[-1]) > 50


def area_red(f):
    return int(((f[..., 0] > 170) & (f[..., 1] < 90) & (f[..., 2] < 90)).sum())


def test_new_classes_are_unseen_combinations_of_seen_words(tiny_world):
    m = json.loads((tiny_world / "manifest.json").read_text())
    ds = m["datasets"]
    k400 = set(ds["k400"]["classes"])
    words = {w for c in k400 for w in c.split()}
    for name in ("ucf101", "hmdb51", "k600"):
        new = ds[name]["new_classes"]
        assert new and not set(new) & k400, name
        for c in ds[name]["classes"]:
            assert set(c.split()) <= words, (name, c)
    assert set(ds["k600"]["classes"][: len(k400)]) == k400
    # both members of every order pair sit in the same dataset
    for name, d in ds.items():
        paired = {c for p in d["order_pairs"] for c in p}
        for i, c in enumerate(d["classes"]):
            if W.parse_class(c)["action"] != "still":
                assert i in paired, (name, c)


def test_spec_files_are_the_official_ones_for_every_protocol(tiny_world, tmp_path):
    from vclip.protocols import runner as R

    spec = R.load_data_spec(tiny_world / "spec.yaml")
    assert set(spec) == {"k400", "ucf101", "hmdb51", "k600"}
    run = R.ProtocolRun(run_dir=tmp_path / "r", data=spec,
                        overrides=["model.arch=tiny", "model.method=clip", "device=cpu"])
    for name in ("k400", "ucf101", "hmdb51"):
        files, origin = R._base_novel_files(run, spec[name], (1, 2, 3), 2)
        assert origin == "official", name
        base, novel = read_label_csv(files["base_labels"]), read_label_csv(files["novel_labels"])
        assert base and novel and not set(base) & set(novel)
        # an order pair is never split between base and novel
        for c in base:
            a = W.parse_class(c)["action"]
            other = dict(W.ORDER_PAIRS).get(a) or {b: f for f, b in W.ORDER_PAIRS}.get(a)
            if other:
                assert c[: -len(a)] + other in base
        for s in (1, 2, 3):
            recs = load_annotations(files["train"][s], num_classes=len(base))
            assert sorted({r.label for r in recs}) == list(range(len(base)))
        assert {r.label for r in load_annotations(files["novel_val"], num_classes=len(novel))} == set(range(len(novel)))
    for name in ("ucf101", "hmdb51"):
        ds = spec[name]
        n = len(read_label_csv(ds.labels))
        tests = [{r.path for r in load_annotations(ds.test_list(s), num_classes=n)} for s in (1, 2, 3)]
        assert not (tests[0] & tests[1] or tests[1] & tests[2] or tests[0] & tests[2])  # disjoint folds
        for s in (1, 2, 3):
            train = {r.path for r in load_annotations(ds.path(ds.split(s)["train"]), num_classes=n)}
            assert not train & tests[s - 1] and (tiny_world / name / next(iter(train))).exists()
        path, origin = R._few_shot_file(run, ds, 2, 1)
        assert origin == "official" and len(load_annotations(path, num_classes=n)) == 2 * n
    files, report = R._k600_files(run, spec["k600"], "k400", (1, 2, 3), 160)
    assert report is None and set(files) == {1, 2, 3}
    k400 = set(read_label_csv(spec["k400"].labels))
    for split, labels, origin in files.values():
        names = read_label_csv(labels)
        assert origin == "official" and names and not set(names) & k400
        assert {r.label for r in load_annotations(split, num_classes=len(names))} == set(range(len(names)))


def test_zero_shot_runner_evaluates_every_target(tiny_world, tmp_path):
    from vclip.cli import main

    out = tmp_path / "zs"
    rc = main(["run", "zero-shot", "model.arch=tiny", "model.method=clip", "device=cpu", "data.num_frames=2",
               "data.image_size=32", "data.num_workers=0", "data.batch_size=8", "eval.confusion_png=false",
               "--data", str(tiny_world / "spec.yaml"), "--out", str(out), "--eval-only"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"hmdb51", "ucf101", "k600"}
    origins = {v.get("split_origin") for v in res["sub_runs"].values() if v.get("dataset") == "k600"}
    assert origins == {"official"}


_MOTION = re.compile(r"mov|grow|shrink|rotat|turn|spin|appear|vanish|fade|approach|apart|still|rise|fall")


def test_frame_captions_are_static_and_name_the_drawn_attributes(tiny_world):
    lines = [json.loads(x) for x in (tiny_world / "frames.jsonl").read_text().splitlines()]
    frames = np.load(tiny_world / "frames.npy")
    assert frames.shape == (len(lines), 32, 32, 3) and frames.dtype == np.uint8
    assert {x["split"] for x in lines} == {"train", "test"}
    for x in lines:
        assert not _MOTION.search(x["caption"]), x["caption"]
        for o in x["objects"]:
            assert f"{o['colour']} {o['shape']}" in x["caption"]
    videos = [json.loads(x) for x in (tiny_world / "videos.jsonl").read_text().splitlines()]
    assert all(v["caption"] and (tiny_world / v["path"]).exists() for v in videos)


def test_bad_arguments_and_another_world_in_the_folder_are_refused(tiny_world):
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match="holds a world of size 'tiny' seed 0"):
        W.generate_world(tiny_world, size="quick", seed=0)
    with pytest.raises(ConfigError, match="world size must be one of"):
        W.generate_world(tiny_world / "x", size="huge")
    with pytest.raises(ConfigError, match="--workers"):
        W.generate_world(tiny_world / "x", size="tiny", workers=0)


def test_an_unreadable_world_manifest_is_a_clear_error(tmp_path):
    from vclip.errors import ConfigError

    (tmp_path / "manifest.json").write_text("{cut short")
    with pytest.raises(ConfigError, match=r"manifest\.json: unreadable .*vclip data world"):
        W.world_mismatch(tmp_path, size="tiny")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        W.generate_world(tmp_path, size="tiny")
    assert W.world_mismatch(tmp_path / "empty", size="tiny") is None


def test_ost_descriptor_files_cover_every_dataset_by_name(tiny_world):
    from vclip.protocols.runner import load_data_spec
    from vclip.text.descriptors import read_descriptors

    spec = load_data_spec(tiny_world / "spec.yaml")
    for name, ds in spec.items():
        names = read_label_csv(ds.labels)
        for kind in ("spatial", "temporal"):
            d = read_descriptors(tiny_world / "descriptors" / f"ost_{kind}.json", names)
            assert d.class_names == names and all(len(x) == 2 for x in d.items)
    sp, tp = W.ost_descriptors("red circle moving left")
    assert "red circle" in sp[0] and "right" in tp[0] and tp[0].index("right") < tp[0].index("left")
    # the backward member's stages are the forward member's in reverse order
    assert W.ost_descriptors("red circle moving right")[1][0].startswith("it starts on the left")


def test_more_pretraining_frames(tiny_world, tmp_path):
    """`--pretrain-frames N`: N still training frames instead of the size's; frame i is the same
    frame as in the size's own world (so a bigger set extends the smaller one); the videos are
    unchanged; a folder holding another frame count is refused."""
    from vclip.cli import main

    out = tmp_path / "w"
    assert main(["data", "world", str(out), "--size", "tiny", "--workers", "1", "--quiet",
                 "--pretrain-frames", "650"]) == 0
    a, b = np.load(tiny_world / "frames.npy"), np.load(out / "frames.npy")
    ea = [json.loads(x) for x in (tiny_world / "frames.jsonl").read_text().splitlines()]
    eb = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    n_train = sum(e["split"] == "train" for e in ea)
    assert sum(e["split"] == "train" for e in eb) == 650 and len(eb) == 650 + len(ea) - n_train
    assert np.array_equal(a[:n_train], b[:n_train]) and ea[:n_train] == eb[:n_train]
    assert json.loads((out / "manifest.json").read_text())["counts"]["frames_train"] == 650
    assert (out / "k400" / "train.txt").read_text() == (tiny_world / "k400" / "train.txt").read_text()
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match="pretraining frames"):
        W.generate_world(out, size="tiny", seed=0)
    with pytest.raises(ConfigError, match="pretrain-frames"):
        W.generate_world(tmp_path / "x", size="tiny", pretrain_frames=0)


def test_more_source_training_videos_per_class(tiny_world, tmp_path):
    """`--train-per-class N`: N training videos per K400 class instead of the size's; every other
    set is the size's own; the test lists keep their length; another count in the folder is refused."""
    from vclip.cli import main

    out = tmp_path / "w"
    assert main(["data", "world", str(out), "--size", "tiny", "--workers", "1", "--quiet",
                 "--train-per-class", "5"]) == 0

    def per_class(path):
        counts: dict[str, int] = {}
        for line in path.read_text().splitlines():
            counts[line.split()[-1]] = counts.get(line.split()[-1], 0) + 1
        return counts

    small, big = per_class(tiny_world / "k400" / "train.txt"), per_class(out / "k400" / "train.txt")
    assert set(big) == set(small) and set(big.values()) == {5} and max(small.values()) < 5
    assert len((out / "k400" / "val.txt").read_text().splitlines()) == \
        len((tiny_world / "k400" / "val.txt").read_text().splitlines())
    for name in ("ucf101", "hmdb51"):
        assert (out / name / "train1.txt").read_text() == (tiny_world / name / "train1.txt").read_text()
    assert json.loads((out / "manifest.json").read_text())["config"]["train_per_class"] == 5
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match="source training videos and"):
        W.generate_world(out, size="tiny", seed=0)
    with pytest.raises(ConfigError, match="train-per-class"):
        W.generate_world(tmp_path / "x", size="tiny", train_per_class=0)


def test_more_test_videos_per_class(tiny_world, tmp_path):
    """`--test-per-class N`: N test videos per class of k400, ucf101 and hmdb51 (each target split
    tests a fold of N per class, the rest of the class's videos are its training list); k600 keeps
    its own; another count in the folder is refused."""
    from vclip.cli import main
    from vclip.errors import ConfigError

    out = tmp_path / "w"
    assert main(["data", "world", str(out), "--size", "tiny", "--workers", "1", "--quiet",
                 "--test-per-class", "3"]) == 0
    info = json.loads((out / "manifest.json").read_text())
    assert info["config"]["test_per_class"] == 3

    def per_class(path):
        counts: dict[str, int] = {}
        for line in path.read_text().splitlines():
            counts[line.split()[-1]] = counts.get(line.split()[-1], 0) + 1
        return counts

    assert set(per_class(out / "k400" / "val.txt").values()) == {3}
    assert per_class(out / "k400" / "train.txt") == per_class(tiny_world / "k400" / "train.txt")
    for name in ("ucf101", "hmdb51"):
        for s in (1, 2, 3):
            test, train = ((out / name / f"{k}{s}.txt").read_text().splitlines() for k in ("test", "train"))
            assert set(per_class(out / name / f"test{s}.txt").values()) == {3}
            assert not set(test) & set(train) and len(test) + len(train) == len(set(test) | set(train))
            assert per_class(out / name / f"train{s}.txt") == per_class(tiny_world / name / f"train{s}.txt")
    assert (out / "k600" / "val.txt").read_text() == (tiny_world / "k600" / "val.txt").read_text()
    with pytest.raises(ConfigError, match="test videos per class"):
        W.generate_world(out, size="tiny", seed=0)
    with pytest.raises(ConfigError, match="test-per-class"):
        W.generate_world(tmp_path / "x", size="tiny", test_per_class=0)
