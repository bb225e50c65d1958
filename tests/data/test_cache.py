"""The frame cache (``vclip data prepare --cache`` + backend ``cache``): exact frames, invalidation,
resume after an interruption, clear errors, and a tiny ``vclip train`` reading through it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videos import make_video
from vclip.data import cache as fcache
from vclip.data import prepare as prep
from vclip.data.decode import open_video
from vclip.errors import VideoDecodeError


def _build(src, dst, short_side=0, **kw):
    return prep.prepare(src, dst, opts=prep.PrepareOptions(short_side=short_side, cache=True, **kw), progress=False)


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    make_video(d / "a" / "one.mp4", frames=50, size=(80, 60), fps=25, gop=12)
    make_video(d / "two.mp4", frames=30, size=(64, 48), fps=30, gop=30)
    return d


def test_cached_frames_equal_pyav_after_the_same_resize(src, tmp_path):
    dst = tmp_path / "cache"
    res = _build(src, dst, short_side=40)
    assert [r.status for r in res] == ["done", "done"]
    rng = np.random.default_rng(0)
    for rel in ("a/one.mp4", "two.mp4"):
        with open_video(src / rel, "pyav", short_side=40) as ref, open_video(dst / rel, "cache") as c:
            assert (c.num_frames, c.height, c.width) == (ref.num_frames, ref.height, ref.width)
            assert min(c.height, c.width) == 40 and c.fps == pytest.approx(ref.fps)
            idx = rng.integers(0, ref.num_frames, 12)  # random order, repeats allowed
            a, b = ref.get_frames(idx), c.get_frames(idx)
            assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # the resize really happened: differs from the native decode, same frame count
    with open_video(src / "a/one.mp4", "pyav") as native, open_video(dst / "a/one.mp4", "cache") as c:
        assert (native.width, native.height) == (80, 60) and (c.width, c.height) == (54, 40)
    manifest = json.loads((dst / fcache.MANIFEST).read_text())
    meta = manifest["videos"]["a/one.mp4"]
    assert meta["num_frames"] == 50 and meta["settings"]["short_side"] == 40 and meta["fps"] == pytest.approx(25)
    assert meta["source"] == str((src / "a/one.mp4").resolve())
    assert meta["sha256"] == fcache.sha256_file(dst / "a/one.npy")


def test_rebuilt_only_when_source_or_settings_change(src, tmp_path):
    dst = tmp_path / "cache"
    _build(src, dst)
    assert [r.status for r in _build(src, dst)] == ["skipped", "skipped"]
    # the source changes: only that video is rebuilt, and before that the reader refuses the stale shard
    make_video(src / "two.mp4", frames=20, size=(64, 48), fps=30, gop=30)
    with pytest.raises(VideoDecodeError, match=r"two\.npy: stale frame cache.*vclip data prepare --cache"):
        open_video(dst / "two.mp4", "cache")
    res = {r.rel: r.status for r in _build(src, dst)}
    assert res == {"a/one.mp4": "skipped", "two.mp4": "done"}
    with open_video(dst / "two.mp4", "cache") as c:
        assert c.num_frames == 20
    # the decode settings change: everything is rebuilt
    assert [r.status for r in _build(src, dst, short_side=32)] == ["done", "done"]
    with open_video(dst / "two.mp4", "cache") as c:
        assert (c.width, c.height) == (42, 32)


def test_interrupted_build_resumes(src, tmp_path, monkeypatch):
    dst = tmp_path / "cache"
    from vclip.data import decode

    calls = {"n": 0}
    orig = decode.PyAVReader.get_frames

    def dying(self, idx):
        if "two.mp4" in self.path:
            calls["n"] += 1
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the second video
        return orig(self, idx)

    monkeypatch.setattr(decode.PyAVReader, "get_frames", dying)
    with pytest.raises(KeyboardInterrupt):
        _build(src, dst)
    assert calls["n"] == 1
    assert (dst / "a/one.npy.json").is_file()
    assert not (dst / "two.npy").exists() and not (dst / "two.npy.json").exists()
    assert [p.name for p in dst.iterdir() if "tmp" in p.name] == []  # no half-written shard left
    first = (dst / "a/one.npy").stat().st_mtime_ns
    monkeypatch.setattr(decode.PyAVReader, "get_frames", orig)
    res = {r.rel: r.status for r in _build(src, dst)}
    assert res == {"a/one.mp4": "skipped", "two.mp4": "done"}
    assert (dst / "a/one.npy").stat().st_mtime_ns == first  # not rewritten
    with open_video(dst / "two.mp4", "cache") as c, open_video(src / "two.mp4", "pyav") as ref:
        np.testing.assert_array_equal(c.get_frames(range(30)), ref.get_frames(range(30)))


def test_shard_without_metadata_is_rebuilt(src, tmp_path):
    dst = tmp_path / "cache"
    _build(src, dst)
    (dst / "two.npy.json").unlink()  # e.g. killed between the shard's rename and the metadata's
    assert {r.rel: r.status for r in _build(src, dst)}["two.mp4"] == "done"


def test_missing_and_corrupt_shards_name_the_file_and_the_fix(src, tmp_path):
    dst = tmp_path / "cache"
    _build(src, dst)
    with pytest.raises(VideoDecodeError, match=r"nothere\.npy\.json: frame cache metadata missing.*prepare --cache"):
        open_video(dst / "nothere.mp4", "cache")
    shard = dst / "two.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(VideoDecodeError, match=r"^.*two\.npy: corrupt frame cache shard.*truncated.*prepare --cache"):
        open_video(dst / "two.mp4", "cache")
    shard.unlink()
    with pytest.raises(VideoDecodeError, match=r"two\.npy: frame cache shard missing.*prepare --cache"):
        open_video(dst / "two.mp4", "cache")
    # same size, damaged header: caught at open; damaged pixels: caught by verify
    one = dst / "a" / "one.npy"
    good = one.read_bytes()
    one.write_bytes(b"garbage!" + good[8:])
    with pytest.raises(VideoDecodeError, match=r"one\.npy: corrupt frame cache shard"):
        open_video(dst / "a/one.mp4", "cache")
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    one.write_bytes(bytes(flipped))
    open_video(dst / "a/one.mp4", "cache").close()  # size and header fine: opens
    with pytest.raises(VideoDecodeError, match=r"one\.npy: corrupt frame cache shard \(SHA-256"):
        open_video(dst / "a/one.mp4", "cache", verify=True)
    # a plain run rebuilds the missing shard but does not re-hash; --verify rebuilds the damaged one
    assert {r.rel: r.status for r in _build(src, dst)} == {"a/one.mp4": "skipped", "two.mp4": "done"}
    res = {r.rel: r.status for r in _build(src, dst, verify=True)}
    assert res == {"a/one.mp4": "done", "two.mp4": "skipped"}
    assert one.read_bytes() == good


def test_cli_cache_flags(src, tmp_path, capsys):
    from vclip.cli import main

    dst = tmp_path / "cache"
    assert main(["data", "prepare", str(src), str(dst), "--cache", "--short-side", "40", "--workers", "1",
                 "--no-progress"]) == 0
    assert "prepared 2, skipped 0" in capsys.readouterr().out
    assert json.loads((dst / "two.npy.json").read_text())["settings"]["short_side"] == 40
    # --short-side defaults to 256 with --cache (never upscaling these small videos)
    assert main(["data", "prepare", str(src), str(tmp_path / "d256"), "--cache", "--workers", "1", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "d256" / "a" / "one.npy.json").read_text())
    assert meta["settings"]["short_side"] == 256 and (meta["width"], meta["height"]) == (80, 60)
    capsys.readouterr()
    assert main(["data", "prepare", str(src), str(tmp_path / "x"), "--cache", "--frames"]) != 0
    assert "--frames and --cache" in capsys.readouterr().err


def test_tiny_train_through_the_cache_matches_pyav(tmp_path):
    """``vclip train`` on a tiny synthetic set with ``data.backend: cache`` (root = the cache folder)
    gives the same losses as decoding the videos: the same frames reach the model."""
    import torch
    import yaml

    from vclip.cli import main
    from vclip.data.synthetic import SynthConfig, generate

    torch.set_num_threads(1)
    synth = tmp_path / "synth"
    generate(synth, SynthConfig(size=(32, 32), frames=4, videos_per_class=2, val_fraction=0.5, seed=0), workers=1)
    cache = tmp_path / "cache"
    _build(synth, cache)
    losses = {}
    for backend, root in (("pyav", synth), ("cache", cache)):
        cfg = {
            "name": backend, "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "model": {"method": "clip", "arch": "tiny", "templates": ["{}"]},
            "data": {"root": str(root), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                     "labels": str(synth / "labels.csv"), "num_frames": 2, "image_size": 32, "batch_size": 4,
                     "num_workers": 0, "backend": backend,
                     "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0}},
            "train": {"epochs": 1, "max_steps": 2, "lr": 1e-3, "warmup_epochs": 0, "precision": "fp32",
                      "log_every": 1, "seed": 0, "eval_every": 1000},
            "eval": {"confusion_png": False},
        }
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["train", "-c", str(path)]) == 0
        lines = (tmp_path / "runs" / backend / "metrics.jsonl").read_text().splitlines()
        losses[backend] = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
    assert len(losses["cache"]) == 2 and all(np.isfinite(losses["cache"]))
    assert losses["cache"] == losses["pyav"]


# --------------------------------------------------------------------------------------------------
# the pieces one by one (from mutation testing: benchmarks/mutation.sh vclip/data/cache.py)


def test_long_videos_are_written_chunk_by_chunk(src, tmp_path, monkeypatch):
    """A video longer than one decoding chunk: every chunk lands at its place (a 50-frame video in
    chunks of 7 frames, the last one partial)."""
    monkeypatch.setattr(fcache, "CHUNK", 7)
    dst = tmp_path / "cache"
    _build(src, dst)
    with open_video(dst / "a/one.mp4", "cache") as c, open_video(src / "a/one.mp4", "pyav") as ref:
        np.testing.assert_array_equal(c.get_frames(range(50)), ref.get_frames(range(50)))


def test_metadata_records_what_the_docstring_promises(src, tmp_path):
    import time

    import av

    t0 = time.time()
    dst = tmp_path / "cache"
    _build(src, dst, short_side=40)
    meta = json.loads((dst / "a" / "one.npy.json").read_text(encoding="utf-8"))
    stat = (src / "a" / "one.mp4").stat()
    assert meta["source_size"] == stat.st_size and meta["source_mtime_ns"] == stat.st_mtime_ns
    assert (meta["num_frames"], meta["height"], meta["width"]) == (50, 40, 54)
    assert (meta["source_height"], meta["source_width"]) == (60, 80)
    assert meta["fps"] == pytest.approx(25) and meta["duration"] == pytest.approx(2.0, abs=0.05)
    assert meta["settings"] == {"cache_version": fcache.CACHE_VERSION, "short_side": 40, "interpolation": "AREA"}
    libavcodec = ".".join(str(x) for x in av.library_versions["libavcodec"])
    assert meta["decoder"] == {"pyav": av.__version__, "libavcodec": libavcodec}
    assert meta["bytes"] == (dst / "a" / "one.npy").stat().st_size == 128 + 50 * 40 * 54 * 3
    assert t0 - 1 <= meta["created"] <= time.time() + 1
    manifest = json.loads((dst / fcache.MANIFEST).read_text())
    assert manifest["cache_version"] == fcache.CACHE_VERSION and manifest["settings"] == meta["settings"]
    assert manifest["videos"]["a/one.mp4"] == meta and set(manifest["videos"]) == {"a/one.mp4", "two.mp4"}
    with open_video(dst / "a/one.mp4", "cache") as c:
        assert c.meta == meta and c.duration == pytest.approx(meta["duration"])
        assert isinstance(c._frames, np.memmap)  # memory-mapped, not read into memory


def test_a_truncated_shard_is_rebuilt_by_a_plain_run_without_rehashing(src, tmp_path, monkeypatch):
    dst = tmp_path / "cache"
    _build(src, dst)
    good = (dst / "two.npy").read_bytes()
    (dst / "two.npy").write_bytes(good[:-10])
    hashed = []
    real = fcache.sha256_file
    monkeypatch.setattr(fcache, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert {r.rel: r.status for r in _build(src, dst)} == {"a/one.mp4": "skipped", "two.mp4": "done"}
    assert [p.name for p in hashed] == ["two.npy"]  # the rebuilt shard's new hash only: no re-hash of the others
    assert (dst / "two.npy").read_bytes() == good


def test_metadata_errors_name_the_file(src, tmp_path):
    dst = tmp_path / "cache"
    _build(src, dst)
    meta_file = dst / "two.npy.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text("{not json")
    with pytest.raises(VideoDecodeError, match=r"two\.npy\.json: frame cache metadata unreadable \(video not cached, "
                                               r"or its build was interrupted\); rebuild it with `vclip data prepare"):
        open_video(dst / "two.mp4", "cache")
    meta_file.write_text("[1, 2]")  # valid JSON, not an object
    with pytest.raises(VideoDecodeError, match=r"two\.npy\.json: frame cache metadata unreadable"):
        open_video(dst / "two.mp4", "cache")
    assert not fcache.is_current(src / "two.mp4", dst / "two.npy", 0)
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "num_frames"}))
    with pytest.raises(VideoDecodeError, match=r"two\.npy\.json: corrupt frame cache metadata; rebuild it with"):
        open_video(dst / "two.mp4", "cache")


def test_a_shard_whose_array_disagrees_with_its_metadata_is_refused(src, tmp_path):
    dst = tmp_path / "cache"
    _build(src, dst)
    shard = dst / "two.npy"
    frames = np.load(shard)
    np.save(shard, np.ascontiguousarray(frames.transpose(0, 2, 1, 3)))  # H and W swapped: same size
    with pytest.raises(VideoDecodeError, match=r"two\.npy: corrupt frame cache shard \(array uint8 \[30, 64, 48, 3\], "
                                               r"metadata says uint8 \[30, 48, 64, 3\]\); delete it and rebuild"):
        open_video(dst / "two.mp4", "cache")
    shard.write_bytes(b"garbage!" + shard.read_bytes()[8:])
    with pytest.raises(VideoDecodeError, match=r"two\.npy: corrupt frame cache shard \(ValueError: "):
        open_video(dst / "two.mp4", "cache")


def test_frame_counts_one_and_zero(tmp_path):
    d = tmp_path / "src"
    make_video(d / "single.mp4", frames=1, size=(32, 32), fps=25, gop=1)
    dst = tmp_path / "cache"
    _build(d, dst)
    with open_video(dst / "single.mp4", "cache") as c:
        assert c.num_frames == 1 and c.get_frames([0]).shape == (1, 32, 32, 3)
    meta = json.loads((dst / "single.npy.json").read_text())
    np.save(dst / "single.npy", np.zeros((0, 32, 32, 3), np.uint8))
    meta.update(num_frames=0, bytes=(dst / "single.npy").stat().st_size)
    (dst / "single.npy.json").write_text(json.dumps(meta))
    with pytest.raises(VideoDecodeError, match=r"single\.npy: frame cache shard holds no frames"):
        open_video(dst / "single.mp4", "cache", check_source=False)


def test_the_reader_trusts_a_shard_whose_sources_are_elsewhere(src, tmp_path):
    """Only the cache copied to another machine: the recorded source is missing (or not recorded):
    the shard is served; and fps / duration fall back to 30 and n / fps when not recorded."""
    dst = tmp_path / "cache"
    _build(src, dst)
    (src / "two.mp4").unlink()
    with open_video(dst / "two.mp4", "cache") as c:
        assert c.num_frames == 30
    meta_file = dst / "two.npy.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("source", "fps", "duration")}))
    with open_video(dst / "two.mp4", "cache") as c:
        assert c.fps == 30.0 and c.duration == pytest.approx(1.0)
    with open_video(dst / "two.mp4", "cache", verify=True) as c:  # verify passes on an intact shard
        assert c.get_frames([0, 29]).shape == (2, 48, 64, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_build_many_keeps_relative_paths_and_order(src, tmp_path, workers):
    """The benchmarks' building block: shards under their paths relative to the videos' common
    folder, returned in the input order, the same frames with one process or a pool."""
    videos = [src / "two.mp4", src / "a" / "one.mp4"]
    dst = tmp_path / "deep" / "cache"  # parents created
    paths = fcache.build_many(videos, dst, short_side=40, workers=workers)
    assert paths == [dst / "two.mp4", dst / "a" / "one.mp4"]
    for video, path in zip(videos, paths):
        assert json.loads(fcache.meta_path(fcache.shard_path(path)).read_text())["settings"]["short_side"] == 40
        with open_video(path, "cache") as c, open_video(video, "pyav", short_side=40) as ref:
            np.testing.assert_array_equal(c.get_frames([0, 5, 9]), ref.get_frames([0, 5, 9]))
    assert fcache.build_many([], tmp_path / "empty") == []


def test_an_inaccessible_shard_names_the_file_and_the_reason(src, tmp_path, monkeypatch):
    dst = tmp_path / "cache"
    _build(src, dst)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fcache.os.path, "getsize", denied)
    with pytest.raises(VideoDecodeError, match=r"two\.npy: cannot access frame cache shard \(Permission denied\); "
                                               r"rebuild it with `vclip data prepare --cache"):
        open_video(dst / "two.mp4", "cache")


def test_defaults_keep_the_native_size_and_skip_without_rehashing(src, tmp_path, monkeypatch):
    video = src / "two.mp4"
    shard = tmp_path / "c" / "two.npy"
    assert fcache.build_one(video, shard) == ("done", 30)  # short_side 0: native 64x48
    (path,) = fcache.build_many([video], tmp_path / "m")
    for p in (shard, path):
        with open_video(p, "cache") as c:
            assert (c.width, c.height) == (64, 48)
    flipped = bytearray(shard.read_bytes())
    flipped[-1] ^= 0xFF
    shard.write_bytes(bytes(flipped))  # same size: only a re-hash can tell
    monkeypatch.setattr(fcache, "sha256_file", lambda p: pytest.fail(f"re-hashed {p}"))
    assert fcache.is_current(video, shard, 0)
    assert fcache.build_one(video, shard) == ("skipped", 30)
