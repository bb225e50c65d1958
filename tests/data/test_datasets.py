"""VideoDataset: shapes, views, determinism, and the bad-video policy."""

import logging

import pytest
import torch

from videos import make_video

from vclip.data.annotations import VideoRecord, write_label_csv
from vclip.data.datasets import VideoDataset
from vclip.data.sampling import FrameSampler
from vclip.data.transforms import build_test_transform, build_train_transform
from vclip.errors import ConfigError, VideoDecodeError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    for i in range(4):
        make_video(d / f"v{i}.mp4", frames=24 + 4 * i, size=(64, 48), fps=12, gop=8)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 10)
    return d


def good_records():
    return [VideoRecord(f"v{i}.mp4", i % 2) for i in range(4)]


def test_train_sample(root):
    ds = VideoDataset(good_records(), root, ["a", "b"], sampler=FrameSampler("segment", 4),
                      transform=build_train_transform(input_size=32), seed=3)
    s = ds[1]
    assert s["video"].shape == (4, 3, 32, 32) and s["video"].dtype == torch.float32
    assert s["label"] == 1 and s["index"] == 1 and s["valid"] and s["error"] == ""
    # reproducible per (seed, epoch, index); the epoch changes the draw
    assert torch.equal(ds[(1, 0)]["video"], ds[(1, 0)]["video"])
    assert not torch.equal(ds[(1, 0)]["video"], ds[(1, 1)]["video"])
    assert ds.num_classes == 2 and len(ds) == 4


def test_eval_multiview_deterministic(root):
    sampler = FrameSampler("segment", 4, num_clips=2, test_mode=True)
    ds = VideoDataset(good_records(), root, sampler=sampler,
                      transform=build_test_transform(input_size=32, num_crops=3))
    assert not ds.train
    a, b = ds[2], ds[2]
    assert a["video"].shape == (6, 4, 3, 32, 32)  # 2 clips x 3 crops, clip-major
    assert torch.equal(a["video"], b["video"])
    one = VideoDataset(good_records(), root, sampler=FrameSampler("segment", 4, num_clips=2, test_mode=True),
                       transform=build_test_transform(input_size=32))
    assert one[2]["video"].shape == (2, 4, 3, 32, 32)
    # view 1 of the 3-crop set is the centre crop of clip 0 (same short side S there)
    centre = VideoDataset(good_records(), root, sampler=sampler,
                          transform=build_test_transform(input_size=32, short_side=32))
    assert torch.allclose(centre[2]["video"][0], a["video"][1], atol=1e-4)


def test_dense_sparse_clip_and_raw_frames(root):
    ds = VideoDataset(good_records(), root, sampler=FrameSampler("dense_sparse", 4, alpha=2, test_mode=True))
    v = ds[0]["video"]
    assert v.shape == (8, 3, 48, 64) and v.max() > 1  # no transform: float 0-255 frames


def test_from_files(root, tmp_path):
    (tmp_path / "split.txt").write_text("v0.mp4 1\nv3.mp4 0\n")
    write_label_csv(tmp_path / "labels.csv", ["x", "y"])
    ds = VideoDataset.from_files(tmp_path / "split.txt", root, tmp_path / "labels.csv", num_frames=3,
                                 transform=build_test_transform(input_size=16), train=False)
    assert ds.class_names == ["x", "y"] and [r.label for r in ds.records] == [1, 0]
    assert ds[1]["video"].shape == (3, 3, 16, 16)
    with pytest.raises(ConfigError):
        VideoDataset([VideoRecord("v0.mp4", 5)], root, ["x", "y"])
    with pytest.raises(ConfigError):
        VideoDataset(good_records(), root, on_bad_video="ignore")


@pytest.mark.parametrize("bad", ["empty.mp4", "text.mp4", "missing.mp4"])
def test_raise_policy_names_file(root, bad):
    ds = VideoDataset([VideoRecord(bad, 0)], root, sampler=FrameSampler("segment", 4))
    with pytest.raises(VideoDecodeError, match=bad):
        ds[0]


def test_skip_policy_in_training_replaces_and_counts(root, caplog):
    recs = good_records() + [VideoRecord("empty.mp4", 0), VideoRecord("text.mp4", 1)]
    ds = VideoDataset(recs, root, sampler=FrameSampler("segment", 4), on_bad_video="skip",
                      transform=build_train_transform(input_size=16), seed=1)
    with caplog.at_level(logging.WARNING, logger="vclip.data.datasets"):
        s = ds[4]
    assert s["valid"] and s["index"] in range(4)  # a good video stands in
    assert ds.num_skipped >= 1
    assert "empty.mp4" in caplog.text
    again = ds[4]  # deterministic replacement
    assert again["index"] == s["index"] and torch.equal(again["video"], s["video"])
    ds.reset_skip_count()
    assert ds.num_skipped == 0
    # only bad videos: gives up with a clear error instead of looping
    only_bad = VideoDataset([VideoRecord("empty.mp4", 0)], root, on_bad_video="skip", max_skip_attempts=3)
    with pytest.raises(VideoDecodeError, match="replacement"):
        only_bad[0]


def test_eval_never_drops_a_video(root):
    recs = [VideoRecord("v0.mp4", 0), VideoRecord("text.mp4", 1), VideoRecord("v1.mp4", 1)]
    ds = VideoDataset(recs, root, sampler=FrameSampler("segment", 4, num_clips=2, test_mode=True),
                      transform=build_test_transform(input_size=16, num_crops=3), on_bad_video="skip")
    out = [ds[i] for i in range(3)]
    assert [o["index"] for o in out] == [0, 1, 2]
    assert [o["valid"] for o in out] == [True, False, True]
    assert "text.mp4" in out[1]["error"] and out[1]["label"] == 1
    assert out[1]["video"].shape == out[0]["video"].shape == (6, 4, 3, 16, 16)
    assert ds.num_skipped == 0
    # a failure before any success still gets the right placeholder shape
    fresh = VideoDataset(recs[1:2], root, sampler=FrameSampler("segment", 4, test_mode=True),
                         transform=build_test_transform(input_size=16), on_bad_video="skip")
    assert fresh[0]["video"].shape == (4, 3, 16, 16) and not fresh[0]["valid"]
    batch = torch.utils.data.default_collate(out)
    assert batch["valid"].tolist() == [True, False, True]
