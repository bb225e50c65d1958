"""Synthetic motion dataset: decodable files, determinism, exact time-reversal symmetry, balance."""

import collections
import json

import av
import numpy as np
import pytest

from vclip.data import synthetic as S
from vclip.data.annotations import read_label_csv, read_split_file
from vclip.errors import ConfigError

SMALL = dict(size=(32, 48), frames=8, fps=8, videos_per_class=4, gop=4)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = S.generate(out, S.SynthConfig(seed=3, **SMALL), workers=1)
    return out, summary


def test_class_structure():
    assert len(S.CLASSES) == len(set(S.CLASSES)) == 12
    paired = [c for p in S.ORDER_PAIRS for c in p]
    assert len(set(paired)) == len(paired) == 8
    assert set(paired) | set(S.SINGLE_FRAME_CLASSES) == set(range(len(S.CLASSES)))
    for a, b in S.ORDER_PAIRS:
        assert S.pair_of(a) == b and S.pair_of(b) == a and S.is_order_class(a)
    assert all(S.pair_of(c) is None and not S.is_order_class(c) for c in S.SINGLE_FRAME_CLASSES)
    assert S.class_groups()["single_frame"] == S.SINGLE_FRAME_CLASSES
    assert S.CLASSES[0] == "circle moving right" and S.CLASSES[1] == "circle moving left"


@pytest.mark.parametrize("pair", S.ORDER_PAIRS)
def test_reversal_gives_the_pair_partner_exactly(pair):
    cfg = S.SynthConfig(**SMALL)
    a, b = pair
    for seed in range(3):
        frames_a, params = S.make_clip(a, seed, cfg)
        frames_b = S.render_clip(b, params, cfg)
        assert frames_a.shape == (8, 32, 48, 3) and frames_a.dtype == np.uint8
        assert np.array_equal(frames_a[::-1], frames_b)
        assert not np.array_equal(frames_a, frames_b)  # the order really differs
        # the latent distribution does not depend on which member is drawn
        assert S.sample_params(a, np.random.default_rng(seed), cfg) == \
            S.sample_params(b, np.random.default_rng(seed), cfg)


def test_single_frame_classes_closed_under_reversal():
    cfg = S.SynthConfig(**SMALL)
    for c in S.SINGLE_FRAME_CLASSES:
        frames, params = S.make_clip(c, 11, cfg)
        flipped = dict(params, reverse=not params["reverse"])
        assert np.array_equal(S.render_clip(c, flipped, cfg), frames[::-1])


def test_motion_semantics():
    """The forward classes move the way their names say (object pixels, background excluded)."""
    cfg = S.SynthConfig(size=(64, 64), frames=8)
    _, p = S.make_clip(0, 1, cfg)
    assert p["p1"][1] > p["p0"][1]  # circle moving right: x increases
    _, p = S.make_clip(4, 1, cfg)
    assert p["scale1"] > p["scale0"]  # triangle growing
    frames, p = S.make_clip(6, 1, cfg)  # diamond appearing: absent first, present last
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    cov0, _ = S._object(p, 0.0, yy, xx)
    cov1, _ = S._object(p, 1.0, yy, xx)
    assert cov0.sum() == 0 and cov1.sum() > 50
    # clockwise on screen: the marker vertex angle increases (y down)
    _, p = S.make_clip(2, 1, cfg)
    assert p["turn"] > 0


def test_deterministic_by_seed():
    cfg = S.SynthConfig(**SMALL)
    assert np.array_equal(S.make_clip(5, 42, cfg)[0], S.make_clip(5, 42, cfg)[0])
    assert not np.array_equal(S.make_clip(5, 42, cfg)[0], S.make_clip(5, 43, cfg)[0])
    assert S.clip_seed(0, 1, 2) == S.clip_seed(0, 1, 2) != S.clip_seed(1, 1, 2)


def test_files_decode_and_labels_parse(generated):
    out, summary = generated
    names = read_label_csv(out / "labels.csv")
    assert names == S.CLASSES
    train = read_split_file(out / "train.txt", num_classes=len(names))
    val = read_split_file(out / "val.txt", num_classes=len(names))
    assert summary["videos"] == len(train) + len(val) == 12 * 4
    # balance: 3 train + 1 val per class
    assert collections.Counter(r.label for r in train) == {c: 3 for c in range(12)}
    assert collections.Counter(r.label for r in val) == {c: 1 for c in range(12)}
    assert not {r.path for r in train} & {r.path for r in val}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["order_pairs"] == [list(p) for p in S.ORDER_PAIRS]
    for r in train + val:
        with av.open(str(out / r.path)) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (32, 48, 3)
    assert summary["bytes"] < 2_000_000


def test_decoded_video_matches_render(generated):
    out, _ = generated
    meta = json.loads((out / "meta.json").read_text())
    e = meta["videos"][0]
    cfg = S.SynthConfig(seed=3, **SMALL)
    frames, _ = S.make_clip(e["label"], e["seed"], cfg)
    from vclip.data.decode import open_video

    with open_video(out / e["path"]) as r:
        assert r.num_frames == 8
        got = r.get_frames([0, 3, 7]).astype(np.float32)
    assert np.abs(got - frames[[0, 3, 7]]).mean() < 12  # lossy H.264, same content


def test_generation_reproducible(generated, tmp_path):
    out, _ = generated
    S.generate(tmp_path, S.SynthConfig(seed=3, **SMALL), workers=2)
    for name in ("train.txt", "val.txt", "labels.csv"):
        assert (tmp_path / name).read_text() == (out / name).read_text()
    # rendered frames and encoded files are byte-identical (x264 single-threaded, asm=0), whatever
    # the number of workers
    files = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    assert files == sorted(p.name for p in (tmp_path / "videos").glob("*.mp4"))
    for name in files:
        assert (tmp_path / "videos" / name).read_bytes() == (out / "videos" / name).read_bytes(), name


def test_encoding_is_deterministic(tmp_path):
    """The same frames encode to the same bytes every time (x264's SIMD code made a few percent of
    tiny clips differ between identical encodes before asm=0)."""
    cfg = S.SynthConfig(seed=3, **SMALL)
    for c in range(24):
        frames, _ = S.make_clip(c % 12, 77 + c, cfg)
        blobs = set()
        for r in range(4):
            S.write_mp4(tmp_path / f"{r}.mp4", frames, cfg.fps, cfg.gop)
            blobs.add((tmp_path / f"{r}.mp4").read_bytes())
        assert len(blobs) == 1, f"clip {c}: {len(blobs)} different encodings"


def test_config_validation():
    with pytest.raises(ConfigError):
        S.SynthConfig(size=(33, 48))
    with pytest.raises(ConfigError):
        S.SynthConfig(frames=1)
    assert S.SynthConfig(size=64).size == (64, 64)
    assert S.SynthConfig(videos_per_class=24).val_per_class == 6


def test_cli(tmp_path, capsys):
    from vclip.cli import main

    rc = main(["data", "synth", "--out", str(tmp_path / "ms"), "--videos-per-class", "2", "--frames", "4",
               "--size", "32x16", "--fps", "4", "--workers", "1", "--quiet", "--seed", "1"])
    assert rc == 0
    assert "wrote 24 videos" in capsys.readouterr().out
    assert len(list((tmp_path / "ms" / "videos").glob("*.mp4"))) == 24
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "31", "--quiet"]) == 2
