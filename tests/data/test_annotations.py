"""Annotation readers: every format, and errors naming the file and line."""

import json
from pathlib import Path

import pytest

from vclip.data import annotations as A
from vclip.errors import AnnotationError

LABELS = Path("/work/shared/data/labels")
if not LABELS.is_dir():
    LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "labels"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_split_file_video_and_rawframes(tmp_path):
    p = write(tmp_path / "train.txt", "train/a_000001_000011.mp4 0\n\n# comment\nv_X_g01_c01.avi 17\n"
              "dir with space/clip.mp4 3\n")
    recs = A.read_split_file(p)
    assert [(r.path, r.label, r.num_frames) for r in recs] == [
        ("train/a_000001_000011.mp4", 0, None), ("v_X_g01_c01.avi", 17, None),
        ("dir with space/clip.mp4", 3, None)]
    assert recs[1].meta["source"] == f"{p}:4"
    raw = write(tmp_path / "raw.txt", "frames/v1 120 4\nframes/v2 90 0\n")
    recs = A.read_split_file(raw)  # auto-detected
    assert [(r.path, r.num_frames, r.label) for r in recs] == [("frames/v1", 120, 4), ("frames/v2", 90, 0)]
    assert recs[0].meta["rawframes"]
    assert A.load_annotations(raw, fmt="video")[0].path == "frames/v1 120"


def test_split_file_errors_name_file_and_line(tmp_path):
    p = write(tmp_path / "bad.txt", "a.mp4 0\nb.mp4 x\n")
    with pytest.raises(AnnotationError, match=r"bad\.txt:2: label 'x' is not an integer"):
        A.read_split_file(p)
    p = write(tmp_path / "one.txt", "a.mp4 0\njustapath\n")
    with pytest.raises(AnnotationError, match=r"one\.txt:2:"):
        A.read_split_file(p)
    p = write(tmp_path / "range.txt", "a.mp4 0\nb.mp4 5\n")
    with pytest.raises(AnnotationError, match=r"range\.txt:2: label 5 out of range \(the label list has 5"):
        A.read_split_file(p, num_classes=5)
    with pytest.raises(AnnotationError, match="not found"):
        A.read_split_file(tmp_path / "missing.txt")
    p = write(tmp_path / "rf.txt", "d 0 1\n")
    with pytest.raises(AnnotationError, match=r"rf\.txt:1: total_frames must be >= 1"):
        A.read_split_file(p, fmt="rawframes")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(AnnotationError, match="UTF-8"):
        A.read_split_file(tmp_path / "bin.txt")


def test_label_csv(tmp_path):
    p = write(tmp_path / "l.csv", 'id,name\n0,abseiling\n1,"Putting something, on something"\n2,x y\n')
    assert A.read_label_csv(p) == ["abseiling", "Putting something, on something", "x y"]
    with pytest.raises(AnnotationError, match=r"l2\.csv:3: class id 5 out of order"):
        A.read_label_csv(write(tmp_path / "l2.csv", "id,name\n0,a\n5,b\n"))
    with pytest.raises(AnnotationError, match=r"l3\.csv:1: expected the header"):
        A.read_label_csv(write(tmp_path / "l3.csv", "0,a\n"))
    with pytest.raises(AnnotationError, match="empty"):
        A.read_label_csv(write(tmp_path / "l4.csv", ""))
    out = tmp_path / "w.csv"
    A.write_label_csv(out, ["a", "b, c"])
    assert A.read_label_csv(out) == ["a", "b, c"]


@pytest.mark.skipif(not LABELS.is_dir(), reason="shared label lists not available")
def test_real_label_lists():
    counts = {"kinetics_400_labels.csv": 400, "kinetics_600_labels.csv": 600,
              "hmdb_51_labels.csv": 51, "ucf_101_labels.csv": 101}
    for name, n in counts.items():
        if (LABELS / name).exists():
            names = A.read_label_csv(LABELS / name)
            assert len(names) == n and len(set(names)) == n


def test_mmaction_json(tmp_path):
    p = write(tmp_path / "a.json", json.dumps([
        {"filename": "a.mp4", "label": 3}, {"frame_dir": "f/b", "total_frames": 40, "label": [1]}]))
    recs = A.read_mmaction_json(p)
    assert [(r.path, r.label, r.num_frames) for r in recs] == [("a.mp4", 3, None), ("f/b", 1, 40)]
    assert A.load_annotations(p)[1].meta["rawframes"]
    with pytest.raises(AnnotationError, match=r"b\.json:1: invalid JSON"):
        A.read_mmaction_json(write(tmp_path / "b.json", "[{"))
    with pytest.raises(AnnotationError, match="entry 0"):
        A.read_mmaction_json(write(tmp_path / "c.json", '[{"filename": "a", "label": "x"}]'))


def test_kinetics_csv(tmp_path):
    p = write(tmp_path / "k.csv",
              "label,youtube_id,time_start,time_end,split,is_cc\n"
              "air drumming,-0ABC123,10,20,train,0\n"
              '"passing American football (in game)",zz_9,0,10,train,0\n'
              "abseiling,abc,1.0,11.0,val,0\n")
    recs, names = A.read_kinetics_csv(p)
    assert names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert [(r.path, r.label) for r in recs] == [
        ("-0ABC123_000010_000020.mp4", 1), ("zz_9_000000_000010.mp4", 2), ("abc_000001_000011.mp4", 0)]
    assert recs[0].meta["youtube_id"] == "-0ABC123" and recs[2].meta["split"] == "val"
    recs, _ = A.read_kinetics_csv(p, class_names=["air_drumming", "abseiling", "passing american football (in game)"],
                                  split="train", path_format="{split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4")
    assert [(r.path, r.label) for r in recs] == [
        ("train/air drumming/-0ABC123_000010_000020.mp4", 0),
        ("train/passing American football (in game)/zz_9_000000_000010.mp4", 2)]
    with pytest.raises(AnnotationError, match=r"k\.csv:4: label 'abseiling' is not in the class list"):
        A.read_kinetics_csv(p, class_names=["air drumming", "passing American football (in game)"])
    test = write(tmp_path / "t.csv", "youtube_id,time_start,time_end,split\nq1,5,15,test\n")
    recs, _ = A.read_kinetics_csv(test, class_names=["a"])
    assert recs[0].label == -1 and recs[0].path == "q1_000005_000015.mp4"
    with pytest.raises(AnnotationError, match=r"b\.csv:2: time_start 'x'"):
        A.read_kinetics_csv(write(tmp_path / "b.csv", "label,youtube_id,time_start,time_end,split\na,b,x,1,train\n"))
    with pytest.raises(AnnotationError, match="missing column"):
        A.read_kinetics_csv(write(tmp_path / "c.csv", "label,id\n"))


def test_ssv2_json(tmp_path):
    labels = write(tmp_path / "labels.json", json.dumps(
        {"Approaching something with your camera": "0", "Putting something on something": "1"}))
    train = write(tmp_path / "train.json", json.dumps([
        {"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
         "placeholders": ["a cup", "a table"]},
        {"id": "42", "label": "approaching a car with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a car"]}]))
    recs, names = A.read_ssv2_json(train, labels)
    assert names == ["Approaching something with your camera", "Putting something on something"]
    assert [(r.path, r.label) for r in recs] == [("78687.webm", 1), ("42.webm", 0)]
    assert recs[0].meta["placeholders"] == ["a cup", "a table"]
    test = write(tmp_path / "test.json", json.dumps([{"id": "7"}]))
    assert A.read_ssv2_json(test, names)[0][0].label == -1
    bad = write(tmp_path / "bad.json", json.dumps([{"id": "1", "template": "Spinning [something]"}]))
    with pytest.raises(AnnotationError, match=r"entry 0 \(id 1\): template class 'Spinning something'"):
        A.read_ssv2_json(bad, labels)
    assert A.ssv2_class_name("Pushing [something] from left to right") == "Pushing something from left to right"


def test_hmdb_splits(tmp_path):
    d = tmp_path / "splits"
    write(d / "brush_hair_test_split1.txt", "a_brush_hair_1.avi 1 \nb_brush_hair_2.avi 2 \nc.avi 0\n")
    write(d / "cartwheel_test_split1.txt", "x_cartwheel.avi 2\n")
    write(d / "cartwheel_test_split2.txt", "y_cartwheel.avi 2\n")
    recs, names = A.read_hmdb_splits(d, split=1, subset="test")
    assert names == ["brush_hair", "cartwheel"]
    assert [(r.path, r.label) for r in recs] == [("brush_hair/b_brush_hair_2.avi", 0), ("cartwheel/x_cartwheel.avi", 1)]
    recs, _ = A.read_hmdb_splits(d, split=1, subset="train", class_names=["cartwheel", "brush hair"],
                                 path_format="{video}")
    assert [(r.path, r.label) for r in recs] == [("a_brush_hair_1.avi", 1)]
    write(d / "catch_test_split3.txt", "z.avi 7\n")
    with pytest.raises(AnnotationError, match=r"catch_test_split3\.txt:1: expected"):
        A.read_hmdb_splits(d, split=3)
    with pytest.raises(AnnotationError, match="no '<class>_test_split4"):
        A.read_hmdb_splits(d, split=4)


@pytest.mark.skipif(not (LABELS / "hmdb_51_labels.csv").exists(), reason="shared label lists not available")
def test_hmdb_names_match_label_csv(tmp_path):
    names = A.read_label_csv(LABELS / "hmdb_51_labels.csv")
    d = tmp_path / "s"
    write(d / "brush_hair_test_split1.txt", "v.avi 2\n")
    write(d / "fall_floor_test_split1.txt", "w.avi 2\n")
    recs, _ = A.read_hmdb_splits(d, class_names=names)
    assert [names[r.label] for r in recs] == ["brush hair", "fall floor"]


def test_ucf_splits(tmp_path):
    d = tmp_path / "ucfTrainTestlist"
    write(d / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n3 YoYo\n")
    write(d / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g09_c02.avi 3\n")
    write(d / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\n")
    recs, names = A.read_ucf_splits(d, 1, "train")
    assert names == ["ApplyEyeMakeup", "Archery", "YoYo"]
    assert [(r.path, r.label) for r in recs] == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
                                                 ("YoYo/v_YoYo_g09_c02.avi", 2)]
    recs, _ = A.read_ucf_splits(d, 1, "test")
    assert [r.label for r in recs] == [1, 2]
    recs, _ = A.read_ucf_splits(d, 1, "test", class_names=["YoYo", "Archery", "ApplyEyeMakeup"])
    assert [r.label for r in recs] == [1, 0]
    write(d / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 3\n")
    with pytest.raises(AnnotationError, match=r"trainlist02\.txt:1: label 3 does not match folder 'Archery'"):
        A.read_ucf_splits(d, 2, "train")
    write(d / "testlist03.txt", "Nope/v_Nope_g01_c01.avi\n")
    with pytest.raises(AnnotationError, match=r"testlist03\.txt:1: cannot tell the class"):
        A.read_ucf_splits(d, 3, "test")


@pytest.mark.skipif(not (LABELS / "ucf_101_labels.csv").exists(), reason="shared label lists not available")
def test_ucf_names_match_label_csv(tmp_path):
    names = A.read_label_csv(LABELS / "ucf_101_labels.csv")
    d = tmp_path / "u"
    write(d / "classInd.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    write(d / "testlist01.txt", "YoYo/v_YoYo_g01_c01.avi\n")
    recs, _ = A.read_ucf_splits(d, 1, "test", class_names=names)
    assert names[recs[0].label] == "YoYo"
