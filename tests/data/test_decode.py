"""Decoding backends: exact sparse reads, metadata, and every bad-video case of issue 3 (7)."""

from __future__ import annotations

import struct
import threading
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from vclip.data import decode
from vclip.data.decode import PyAVReader, available_backends, open_video
from vclip.errors import VideoDecodeError
from videos import frame_index_of, make_audio_only, make_video, pattern_frame

av = pytest.importorskip("av")


def full_decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def run_with_timeout(fn, seconds: float = 20.0):
    """Run ``fn`` in a thread; fail (instead of hanging) when it takes longer than ``seconds``."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"call did not return within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def expect_error(path, *words, **kwargs) -> str:
    """open + read first and last frame must raise VideoDecodeError naming ``path`` and ``words``."""

    def attempt():
        with open_video(path, **kwargs) as r:
            r.get_frames([0, r.num_frames - 1])

    with pytest.raises(VideoDecodeError) as info:
        run_with_timeout(attempt)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def write_bframes(path, frames=90, fps=25, gop=25, **options):
    """H.264 with B-frames (preset medium) in any container; ``path``'s suffix picks it."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"preset": "medium", "x264-params": f"keyint={gop}:min-keyint={gop}:bframes=3:b-pyramid=normal", **options}
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(pattern_frame(i, 48, 64), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


# --------------------------------------------------------------------------------------------
# exact reads and metadata
# --------------------------------------------------------------------------------------------
def test_metadata(small_video):
    with open_video(small_video) as r:
        assert isinstance(r, PyAVReader)
        assert (r.num_frames, r.width, r.height) == (60, 64, 48)
        assert r.fps == pytest.approx(30.0)
        assert r.duration == pytest.approx(2.0, abs=0.05)
        assert len(r) == 60


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_sparse_reads_match_full_decode(tmp_path, suffix):
    path = write_bframes(tmp_path / f"b.{suffix}", frames=120)
    full = full_decode(path)
    rng = np.random.default_rng(0)
    with open_video(path) as r:
        assert r.num_frames == len(full) == 120  # mkv declares no count: counted by demuxing
        for _ in range(25):
            idx = rng.integers(0, r.num_frames, size=int(rng.integers(1, 16)))
            got = r.get_frames(idx)
            assert got.shape == (len(idx), 48, 64, 3) and got.dtype == np.uint8
            for j, i in enumerate(idx):
                np.testing.assert_array_equal(got[j], full[i])


def test_tsn_indices_and_repeats(small_video):
    full = full_decode(small_video)
    with open_video(small_video) as r:
        idx = [59, 3, 3, 30, 0, 59, 17]  # unordered, repeated
        got = r.get_frames(idx)
        for j, i in enumerate(idx):
            np.testing.assert_array_equal(got[j], full[i])
            assert frame_index_of(got[j]) == i % 32
        # numpy and torch indices, scalar, empty
        np.testing.assert_array_equal(r.get_frames(np.array([5, 6]))[1], full[6])
        torch = pytest.importorskip("torch")
        np.testing.assert_array_equal(r.get_frames(torch.tensor([7]))[0], full[7])
        assert r.get_frames(8).shape == (1, 48, 64, 3)
        assert r.get_frames([]).shape == (0, 48, 64, 3)
        assert r.get_frames_torch([1, 2]).shape == (2, 48, 64, 3)


def test_sparse_read_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
    path = make_video(tmp_path / "long.mp4", frames=300, gop=30)
    decoded = []
    original = PyAVReader._iter_frames

    def counting(self):
        for frame in original(self):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(PyAVReader, "_iter_frames", counting)
    with open_video(path) as r:
        idx = np.linspace(0, 299, 8).round().astype(int)
        r.get_frames(idx)
    # 8 frames each at most one GOP (30 frames) after a keyframe: far fewer than 300
    assert 8 <= len(decoded) <= 8 * 30 // 2 + 30, len(decoded)


def test_out_of_range_and_bad_indices(small_video):
    with open_video(small_video) as r:
        for bad in ([60], [-1], [0, 1000]):
            with pytest.raises(VideoDecodeError, match="out of range") as info:
                r.get_frames(bad)
            assert str(info.value).startswith(str(small_video))
        with pytest.raises(VideoDecodeError, match="integers"):
            r.get_frames([0.5])


def test_available_backends_and_unknown(small_video):
    names = available_backends()
    assert "pyav" in names and "rawframes" in names
    with pytest.raises(VideoDecodeError, match="unknown decoding backend"):
        open_video(small_video, backend="decord")


def test_threads_option_gives_same_frames(small_video):
    with open_video(small_video, threads=1) as a, open_video(small_video, threads=2, thread_type="FRAME") as b:
        idx = [0, 14, 15, 44, 59]
        np.testing.assert_array_equal(a.get_frames(idx), b.get_frames(idx))


# --------------------------------------------------------------------------------------------
# rawframes
# --------------------------------------------------------------------------------------------
def test_rawframes(tmp_path, small_video):
    frames = full_decode(small_video)[:12]
    d = tmp_path / "clip"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"img_{i + 1:05d}.png")  # lossless: compare exactly
    (d / "x_00001.jpg").write_bytes(b"flow frames are ignored")
    with open_video(d, template="img_{:05d}.png", fps=25) as r:  # auto -> rawframes
        assert r.backend == "rawframes"
        assert (r.num_frames, r.width, r.height) == (12, 64, 48)
        assert r.fps == 25 and r.duration == pytest.approx(12 / 25)
        got = r.get_frames([11, 0, 0, 5])
        for j, i in enumerate([11, 0, 0, 5]):
            np.testing.assert_array_equal(got[j], frames[i])
        with pytest.raises(VideoDecodeError, match="out of range"):
            r.get_frames([12])
    # zero-based layout with JPEGs
    d0 = tmp_path / "zero"
    d0.mkdir()
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(d0 / f"frame{i:04d}.jpg")
    with open_video(d0, backend="rawframes", template="frame{:04d}.jpg", start_index=0) as r:
        assert r.num_frames == 3 and r.get_frames([2]).shape == (1, 48, 64, 3)


def test_rawframes_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(empty, "no frames named like", backend="rawframes")
    expect_error(tmp_path / "missing", "no such directory", backend="rawframes")
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 6)).save(bad / "img_00001.jpg")
    (bad / "img_00002.jpg").write_bytes(b"not a jpeg")
    with open_video(bad) as r:
        assert r.num_frames == 2
        with pytest.raises(VideoDecodeError, match="img_00002.jpg") as info:
            r.get_frames([1])
        assert str(info.value).startswith(str(bad))


# --------------------------------------------------------------------------------------------
# torchcodec (only where it is installed)
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif("torchcodec" not in available_backends(), reason="torchcodec not installed")
def test_torchcodec_matches_pyav(small_video, tmp_path):
    idx = [0, 29, 3, 3, 59]
    with open_video(small_video, backend="torchcodec") as t, open_video(small_video, backend="pyav") as p:
        assert (t.num_frames, t.width, t.height) == (p.num_frames, p.width, p.height)
        a, b = t.get_frames(idx), p.get_frames(idx)
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 3
    z = tmp_path / "zero.mp4"
    z.write_bytes(b"")
    expect_error(z, "zero bytes", backend="torchcodec")
    txt = tmp_path / "text.mp4"
    txt.write_text("hello")
    expect_error(txt, backend="torchcodec")


def test_torchcodec_missing_is_a_clear_error(small_video, monkeypatch):
    if "torchcodec" in available_backends():
        pytest.skip("torchcodec installed")
    with pytest.raises(VideoDecodeError, match="torchcodec backend is not available"):
        open_video(small_video, backend="torchcodec")


# --------------------------------------------------------------------------------------------
# robustness (issue 3, item 7)
# --------------------------------------------------------------------------------------------
def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    expect_error(p, "zero bytes")


def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nope.mp4", "no such file")
    expect_error(tmp_path, "directory", backend="pyav")


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    expect_error(p, "cannot open as a video")


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.mkv"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    expect_error(p)


def test_truncated_mp4_index_at_end(tmp_path):
    good = make_video(tmp_path / "good.mp4", frames=60)
    data = good.read_bytes()
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])  # the moov atom (written last) is lost
    expect_error(p, "truncated")


def test_truncated_mp4_faststart(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "fast.mp4"
    with av.open(str(p), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for _ in range(60):  # noise: frames of real size, so the cut lands mid-stream
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for pk in s.encode(f):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)
    data = p.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # header says 60 frames, half of them are gone
    msg = expect_error(cut, "truncated")
    assert "60" in msg


def test_audio_only(tmp_path):
    expect_error(make_audio_only(tmp_path / "sound.m4a"), "no video stream", "audio")
    expect_error(make_audio_only(tmp_path / "sound.wav"), "no video stream")


def test_one_frame_video(tmp_path):
    p = make_video(tmp_path / "one.mp4", frames=1)
    with open_video(p) as r:
        assert r.num_frames == 1 and r.duration > 0
        np.testing.assert_array_equal(r.get_frames([0, 0, 0])[2], full_decode(p)[0])
        with pytest.raises(VideoDecodeError, match="out of range"):
            r.get_frames([1])


@pytest.mark.parametrize("codec,pix_fmt,suffix", [("libx264", "yuv444p", "mp4"), ("mpeg4", "yuv420p", "avi")])
def test_odd_sizes(tmp_path, codec, pix_fmt, suffix):
    p = make_video(tmp_path / f"odd.{suffix}", frames=20, size=(97, 61), codec=codec, pix_fmt=pix_fmt, gop=10)
    full = full_decode(p)
    with open_video(p) as r:
        assert (r.width, r.height, r.num_frames) == (97, 61, 20)
        got = r.get_frames([19, 0, 10])
        assert got.shape == (3, 61, 97, 3)
        np.testing.assert_array_equal(got[0], full[19])


def test_max_pixels_guard(small_video):
    msg = expect_error(small_video, "exceeds the limit", max_pixels=1000)
    assert "64x48" in msg


def test_huge_declared_dimensions(tmp_path):
    """An MJPEG AVI whose headers claim 8000x6000: refused at open, before any frame buffer."""
    p = make_video(tmp_path / "mj.avi", frames=5, codec="mjpeg", pix_fmt="yuvj420p", gop=None)
    d = bytearray(p.read_bytes())
    w, h = 8000, 6000
    i = 0
    while (i := d.find(b"\xff\xc0", i)) >= 0:  # JPEG SOF0: length, precision, height, width
        if struct.unpack(">HH", d[i + 5 : i + 9]) == (48, 64):
            d[i + 5 : i + 9] = struct.pack(">HH", h, w)
        i += 2
    j = d.index(b"strf")  # BITMAPINFOHEADER: size, width, height
    d[j + 12 : j + 20] = struct.pack("<ii", w, h)
    huge = tmp_path / "huge.avi"
    huge.write_bytes(bytes(d))
    expect_error(huge, "8000x6000", "exceeds the limit")


def test_variable_frame_rate(tmp_path):
    pts = [0, 100, 150, 400, 410, 420, 700, 800, 1000, 1010, 1020, 1300, 1500, 1600, 1601, 1700, 1800, 2000, 2100, 2300]
    p = make_video(tmp_path / "vfr.mp4", frames=20, pts=pts, time_base=Fraction(1, 3000))
    full = full_decode(p)
    assert len(full) == 20
    with open_video(p) as r:
        assert r.num_frames == 20  # indexed by decode order, not by time
        got = r.get_frames(list(range(19, -1, -3)))
        for j, i in enumerate(range(19, -1, -3)):
            np.testing.assert_array_equal(got[j], full[i])
            assert frame_index_of(got[j]) == i


def test_header_count_not_trusted_when_implausible(small_video, monkeypatch):
    """A container count that disagrees with duration x fps is replaced by a packet count."""
    monkeypatch.setattr(PyAVReader, "_plausible", staticmethod(lambda *a: False))
    with open_video(small_video) as r:
        assert r.num_frames == 60
        assert r._index is not None  # counted by demuxing at open


def test_no_raw_library_exception_on_garbage_inside_stream(tmp_path):
    """Corrupt bytes in the middle of the data: either frames decode or a VideoDecodeError."""
    p = make_video(tmp_path / "v.mp4", frames=60, gop=10)
    d = bytearray(p.read_bytes())
    rng = np.random.default_rng(1)
    start = len(d) // 4
    d[start : start + len(d) // 3] = rng.integers(0, 256, len(d) // 3, dtype=np.uint8).tobytes()
    bad = tmp_path / "garbled.mp4"
    bad.write_bytes(bytes(d))

    def attempt():
        try:
            with open_video(bad) as r:
                r.get_frames(np.arange(r.num_frames))
        except VideoDecodeError as e:
            assert str(e).startswith(str(bad))

    run_with_timeout(attempt)


def test_decode_module_public_names():
    assert set(decode.BACKENDS) == {"auto", "pyav", "torchcodec", "rawframes", "cache"}
    assert issubclass(decode.PyAVReader, decode.VideoReader)
