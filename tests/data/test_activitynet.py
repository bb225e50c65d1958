"""ActivityNet 1.3: the JSON reader (one record per labelled segment), segment → frame windows in
the samplers, and a VideoDataset that decodes frames only inside each segment."""

import copy
import json
import logging

import numpy as np
import pytest

from videos import frame_index_of, make_video

from vclip.data import annotations as A
from vclip.data.datasets import VideoDataset
from vclip.data.sampling import FrameSampler, segment_frame_range
from vclip.data.transforms import build_test_transform
from vclip.errors import AnnotationError, VideoDecodeError

FPS = 10  # 30 frames = 3 s; pattern frames encode their index (< 32)

DATABASE = {
    "vidA": {"subset": "training", "duration": 3.0, "resolution": "32x32",
             "url": "https://www.youtube.com/watch?v=vidA",
             "annotations": [{"label": "Running", "segment": [0.5, 1.2]},
                             {"label": "Cooking", "segment": [2.0, 3.6]}]},  # end past the video: clamped
    "vidB": {"subset": "training", "duration": 3.0, "resolution": "32x32", "url": "",
             "annotations": [{"label": "Cooking", "segment": [1.0, 2.0]},
                             {"label": "Cooking", "segment": [0, 0]}]},  # empty (v1.3 has such): skipped
    "vidC": {"subset": "validation", "duration": 3.0, "resolution": "32x32", "url": "",
             "annotations": [{"label": "Archery", "segment": [1.0, 2.5]}]},
    "vidD": {"subset": "testing", "duration": 3.0, "resolution": "32x32", "url": "", "annotations": []},
}
TAXONOMY = [{"nodeId": 1, "nodeName": "Root", "parentId": None, "parentName": None}]


def write_json(path, database=None, **top):
    doc = {"version": "VERSION 1.3", "taxonomy": TAXONOMY,
           "database": DATABASE if database is None else database, **top}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def anet(tmp_path_factory):
    d = tmp_path_factory.mktemp("anet")
    root = d / "videos"
    make_video(root / "v_vidA.mp4", frames=30, size=(32, 32), fps=FPS, gop=5)
    make_video(root / "vidB.mkv", frames=30, size=(32, 32), fps=FPS, gop=5)  # bare id, other container
    make_video(root / "v_vidC.mp4", frames=30, size=(32, 32), fps=FPS, gop=5)
    return write_json(d / "activity_net.v1-3.min.json"), root


# ------------------------------------------------------------------------------------- reader
def test_records_per_labelled_segment(anet, caplog):
    js, root = anet
    stats = {}
    with caplog.at_level(logging.WARNING, logger="vclip.data.annotations"):
        recs, names = A.read_activitynet_json(js, "training", root=root, stats=stats)
    assert names == ["Archery", "Cooking", "Running"]  # sorted labels of all subsets
    assert [(r.path, r.label, r.segment) for r in recs] == [
        ("v_vidA.mp4", 2, (0.5, 1.2)), ("v_vidA.mp4", 1, (2.0, 3.0)), ("vidB.mkv", 1, (1.0, 2.0))]
    assert recs[1].meta["annotated_segment"] == (2.0, 3.6) and recs[0].meta["video_id"] == "vidA"
    assert stats == {"segments": 3, "skipped_segments": 1, "clamped_segments": 1, "videos": 2,
                     "missing_videos": 0}
    assert "skipped 1 empty or out-of-video segment" in caplog.text and "'vidB': annotation 1" in caplog.text
    val, _ = A.read_activitynet_json(js, "val", root=root)  # alias
    assert [(r.path, r.label, r.segment) for r in val] == [("v_vidC.mp4", 0, (1.0, 2.5))]


def test_file_names_class_list_and_detection(anet, tmp_path, caplog):
    js, root = anet
    recs, _ = A.read_activitynet_json(js, "training")  # no root: the crawler's name
    assert [r.path for r in recs] == ["v_vidA.mp4", "v_vidA.mp4", "v_vidB.mp4"]
    recs, _ = A.read_activitynet_json(js, "training", path_format="{subset}/{id}.webm")
    assert recs[2].path == "training/vidB.webm"
    stats = {}
    with caplog.at_level(logging.WARNING, logger="vclip.data.annotations"):
        A.read_activitynet_json(js, "training", root=tmp_path, stats=stats)
    assert stats["missing_videos"] == 2 and "2 of 2 training videos not found" in caplog.text
    # a label list maps names to its own ids (case and _/space-insensitive)
    recs, names = A.read_activitynet_json(js, "training", ["running", "cooking", "archery", "x"])
    assert [r.label for r in recs] == [0, 1, 1] and names == ["running", "cooking", "archery", "x"]
    # detected from the content by the generic loader (what the engine calls)
    auto = A.load_annotations(js, subset="training", root=root)
    assert [(r.path, r.label, r.segment) for r in auto] == [
        (r.path, r.label, r.segment) for r in A.read_activitynet_json(js, "training", root=root)[0]]
    # ... and an mmaction JSON list still reads as before
    mm = tmp_path / "mm.json"
    mm.write_text(json.dumps([{"filename": "a.mp4", "label": 1}]))
    assert [(r.path, r.label, r.segment) for r in A.load_annotations(mm)] == [("a.mp4", 1, None)]
    assert A.activitynet_class_names(js) == ["Archery", "Cooking", "Running"]


def _mutated(change):
    db = copy.deepcopy(DATABASE)
    change(db)
    return db


@pytest.mark.parametrize("change, message", [
    (lambda db: db["vidB"].pop("subset"), r"video 'vidB': 'subset' must be a string"),
    (lambda db: db["vidA"].update(duration=-3), r"video 'vidA': 'duration' must be a positive number"),
    (lambda db: db["vidC"].update(annotations={"label": "x"}), r"video 'vidC': 'annotations' must be a list"),
    (lambda db: db["vidA"]["annotations"][1].update(segment=[2.0]),
     r"video 'vidA': annotation 1 \('Cooking'\): 'segment' must be \[start, end\] in seconds, got \[2\.0\]"),
    (lambda db: db["vidA"]["annotations"][0].update(segment=["0.5", 1.2]), r"video 'vidA': annotation 0 .*'segment'"),
    (lambda db: db["vidB"]["annotations"][0].update(label=7), r"video 'vidB': annotation 0: 'label' must be"),
    (lambda db: db.update(vidE="nope"), r"video 'vidE': expected an object"),
], ids=["no-subset", "negative-duration", "annotations-not-list", "segment-one-value", "segment-string",
        "label-not-string", "entry-not-object"])
def test_bad_fields_name_the_video(tmp_path, change, message):
    js = write_json(tmp_path / "bad.json", _mutated(change))
    with pytest.raises(AnnotationError, match=r"bad\.json: " + message):
        A.read_activitynet_json(js, "training")


def test_bad_segments_and_subsets(anet, tmp_path):
    js, _ = anet
    with pytest.raises(AnnotationError, match=r"video 'vidB': annotation 1 \('Cooking'\): segment \[0, 0\] "
                                              r"has end <= start"):
        A.read_activitynet_json(js, "training", on_bad_segment="error")
    late = write_json(tmp_path / "late.json", _mutated(
        lambda db: db["vidC"]["annotations"].append({"label": "Archery", "segment": [3.5, 4.0]})))
    with pytest.raises(AnnotationError, match=r"video 'vidC': annotation 1 .*\[3\.5, 4\] starts at or after "
                                              r"the end of the video \(3 s\)"):
        A.read_activitynet_json(late, "validation", on_bad_segment="error")
    assert len(A.read_activitynet_json(late, "validation")[0]) == 1  # skipped by default
    with pytest.raises(AnnotationError, match=r"subsets \['training', 'validation', 'testing'\]: choose one"):
        A.load_annotations(js)
    with pytest.raises(AnnotationError, match="subset 'testing' has no labelled segments"):
        A.read_activitynet_json(js, "testing")
    with pytest.raises(AnnotationError, match=r"no video of subset 'trainval'"):
        A.read_activitynet_json(js, "trainval")
    with pytest.raises(AnnotationError, match=r"video 'vidC': annotation 0: label 'Archery' is not in the class"):
        A.read_activitynet_json(js, "validation", ["Cooking", "Running"])
    with pytest.raises(AnnotationError, match="the file has 3 classes but the label list has 4"):
        A.load_annotations(js, subset="training", num_classes=4)
    with pytest.raises(AnnotationError, match="on_bad_segment must be one of"):
        A.load_annotations(js, subset="training", on_bad_segment="drop")
    only_train = write_json(tmp_path / "train_only.json", {k: DATABASE[k] for k in ("vidA", "vidB")})
    assert len(A.load_annotations(only_train)) == 3  # a single subset needs no choice
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"videos": []}))
    with pytest.raises(AnnotationError, match=r"other\.json: expected a JSON list \(mmaction2\) or an object "
                                              r"with a 'database'"):
        A.load_annotations(other)


# ------------------------------------------------------------------------------------ sampler
def test_segment_frame_range():
    assert segment_frame_range(1.0, 2.0, 10, 30) == (10, 20)  # timestamps 1.0 .. 1.9
    assert segment_frame_range(0.5, 1.2, 10, 30) == (5, 12)
    assert segment_frame_range(-4, 100, 10, 30) == (0, 30)  # clamped to the video
    assert segment_frame_range(0.01, 0.02, 30, 30) == (0, 1)  # shorter than a frame: the frame shown
    assert segment_frame_range(2.95, 3.5, 10, 30) == (29, 30)
    for bad in [(3.0, 4.0), (-2.0, 0.0), (1.0, 1.0)]:
        with pytest.raises(ValueError, match=r"outside the video|empty"):
            segment_frame_range(*bad, 10, 30)


@pytest.mark.parametrize("sampler", [
    FrameSampler("segment", 4), FrameSampler("segment", 8, num_clips=3, test_mode=True),
    FrameSampler("dense", 4, interval=3), FrameSampler("dense", 4, interval=3, num_clips=2, test_mode=True,
                                                        short_policy="repeat_last"),
    FrameSampler("dense_sparse", 3, alpha=2)])
def test_windowed_sampling_stays_inside(sampler):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        idx = sampler(300, rng, window=(120, 127))
        assert idx.shape == (sampler.num_clips, sampler.clip_len)
        seen |= set(idx.ravel().tolist())
    assert seen <= set(range(120, 127))
    if not sampler.test_mode:
        assert min(seen) == 120 and max(seen) == 126  # the whole window is reachable
    with pytest.raises(ValueError, match="window"):
        sampler(30, rng, window=(25, 31))


# ------------------------------------------------------------------------------------ dataset
def decoded_indices(video):
    return [frame_index_of(f.permute(1, 2, 0).numpy()) for f in video.reshape(-1, *video.shape[-3:])]


def test_dataset_decodes_only_inside_segments(anet):
    js, root = anet
    recs, names = A.read_activitynet_json(js, "training", root=root)
    test = VideoDataset(recs, root, names, sampler=FrameSampler("segment", 4, test_mode=True))
    assert decoded_indices(test[0]["video"]) == [5, 7, 9, 11]  # segment [0.5, 1.2) s = frames 5..11
    assert decoded_indices(test[1]["video"]) == [21, 23, 26, 28]  # [2.0, 3.0) after clamping: 20..29
    train = VideoDataset(recs, root, names, sampler=FrameSampler("segment", 4), train=True)
    for epoch in range(3):
        for i, (lo, hi) in enumerate([(5, 11), (20, 29), (10, 19)]):
            got = decoded_indices(train[(i, epoch)]["video"])
            assert all(lo <= g <= hi for g in got), (i, got)


def test_from_files_end_to_end(anet):
    js, root = anet
    ds = VideoDataset.from_files(js, root, subset="validation", num_frames=2,
                                 transform=build_test_transform(input_size=32), train=False)
    assert ds.class_names == ["Archery", "Cooking", "Running"] and len(ds) == 1
    s = ds[0]
    assert s["label"] == 0 and s["valid"] and s["video"].shape == (2, 3, 32, 32)
    raw = VideoDataset.from_files(js, root, subset="validation",
                                  sampler=FrameSampler("segment", 2, test_mode=True))
    assert decoded_indices(raw[0]["video"]) == [13, 21]  # [1.0, 2.5) s = frames 10..24


def test_segment_outside_the_decoded_video(anet):
    _, root = anet
    rec = A.VideoRecord("v_vidC.mp4", 0, segment=(5.0, 6.0))  # the file is 3 s long
    ds = VideoDataset([rec], root, ["a"], sampler=FrameSampler("segment", 2, test_mode=True))
    with pytest.raises(VideoDecodeError, match=r"v_vidC\.mp4: segment \[5, 6\] s lies outside the video"):
        ds[0]
    skip = VideoDataset([rec], root, ["a"], sampler=FrameSampler("segment", 2, test_mode=True),
                        on_bad_video="skip", train=False)
    out = skip[0]
    assert not out["valid"] and "outside the video" in out["error"]


def test_the_engine_reads_both_subsets_of_one_file(anet, tmp_path):
    """``data.train_list`` = ``data.val_list`` = the official JSON: the engine's datasets read the
    training and validation subsets (``data.train_subset`` / ``data.val_subset``), label ids from
    ``data.labels``, files from ``data.root``, segments kept."""
    from vclip.config import RunConfig, from_dict
    from vclip.data.annotations import activitynet_class_names, write_label_csv
    from vclip.engine import data as run_data

    ann, root = anet
    labels = tmp_path / "labels.csv"
    write_label_csv(labels, activitynet_class_names(ann))
    cfg = from_dict(RunConfig, {"data": {"root": str(root), "train_list": str(ann), "val_list": str(ann),
                                         "labels": str(labels), "num_frames": 2, "image_size": 32}})
    names = run_data.class_names(cfg)
    train, val = run_data.train_dataset(cfg, names), run_data.eval_dataset(cfg, names)
    direct = {s: A.read_activitynet_json(ann, s, names, root=root)[0] for s in ("training", "validation")}
    assert [(r.path, r.label, r.segment) for r in train.records] == \
        [(r.path, r.label, r.segment) for r in direct["training"]]
    assert [(r.path, r.label, r.segment) for r in val.records] == \
        [(r.path, r.label, r.segment) for r in direct["validation"]]
    assert train.records and val.records and all(r.segment is not None for r in train.records)


def test_segment_frame_range_edges_and_messages():
    """Found by mutation testing: the bounds of segment_frame_range's checks and their messages."""
    assert segment_frame_range(0.0, 1.0, 30, 1) == (0, 1)  # a one-frame video is valid
    assert segment_frame_range(0.0, 1.0, 0.5, 2) == (0, 1)  # so is a frame rate below 1
    with pytest.raises(ValueError, match=r"^cannot sample from a video with 0 frames$"):
        segment_frame_range(0.0, 1.0, 30, 0)
    for fps in (0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=rf"^frame rate must be positive, got {fps}$"):
            segment_frame_range(0.0, 1.0, fps, 30)
    with pytest.raises(ValueError, match=r"^segment \[3, 4\] s lies outside the video \(30 frames, 3\.00 s at 10 fps\)$"):
        segment_frame_range(3.0, 4.0, 10, 30)  # starts exactly where the video ends
