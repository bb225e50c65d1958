"""GPU decoding (``data.backend: torchcodec`` + ``data.decode_device: cuda``) built and checked on
the CPU: the option reaches torchcodec's ``VideoDecoder(device=...)`` through the engine's datasets
(the decoder class replaced by a recorder), ``decode_device: cpu`` through the same code path gives
PyAV's frames exactly, and a missing CUDA / torchcodec / torchcodec CUDA build is one ConfigError
naming the option and what to install (never a skipped "bad video")."""

from __future__ import annotations

import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vclip.config import load_config
from vclip.data import decode
from vclip.data.datasets import VideoDataset
from vclip.engine import data as run_data
from vclip.errors import ConfigError, VideoDecodeError

needs_torchcodec = pytest.mark.skipif("torchcodec" not in decode.available_backends(), reason="torchcodec not installed")


def _config(tmp_path, video, *overrides):
    (tmp_path / "train.txt").write_text(f"{video.name} 0\n{video.name} 1\n")
    return load_config([], [f"data.root={video.parent}", f"data.train_list={tmp_path / 'train.txt'}",
                            "data.num_frames=4", "data.image_size=32", "data.num_workers=0", "model.arch=tiny",
                            *overrides])


class RecordingDecoder:
    """Stands in for torchcodec's VideoDecoder: records its arguments; frame i is filled with i."""

    calls: list = []

    def __init__(self, source, **kwargs):
        RecordingDecoder.calls.append({"source": source, **kwargs})
        self.metadata = SimpleNamespace(width=40, height=24, num_frames=30, average_fps=30.0, duration_seconds=1.0)
        self.cpu_fallback = "No fallback"

    def get_frames_at(self, indices):
        data = torch.stack([torch.full((24, 40, 3), i, dtype=torch.uint8) for i in indices])
        return SimpleNamespace(data=data)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA torch with one GPU and torchcodec's CUDA build, as far as vclip can tell."""
    import torchcodec
    import torchcodec.decoders

    RecordingDecoder.calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torchcodec, "__version__", "0.16.0+cu130")
    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", RecordingDecoder)
    return RecordingDecoder


@needs_torchcodec
def test_decode_device_reaches_torchcodec_through_the_engine(tmp_path, small_video, fake_cuda):
    cfg = _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=cuda")
    ds = run_data.train_dataset(cfg, ["a", "b"])
    assert ds.decode_options == {"device": "cuda:0"}  # "cuda" pinned to this process's device
    sample = ds[1]
    assert sample["valid"] and sample["video"].shape == (4, 3, 32, 32)
    assert fake_cuda.calls[-1]["device"] == "cuda:0" and fake_cuda.calls[-1]["source"] == str(small_video)
    assert fake_cuda.calls[-1]["dimension_order"] == "NHWC"
    # the frames the decoder returned come back, in the asked order, as host uint8
    with decode.open_video(small_video, "torchcodec", device="cuda") as r:
        frames = r.get_frames([7, 2, 7])
        assert r.cpu_fallback == "No fallback"
    assert fake_cuda.calls[-1]["device"] == "cuda"
    assert frames.dtype == np.uint8 and frames.shape == (3, 24, 40, 3)
    assert frames[:, 0, 0, 0].tolist() == [7, 2, 7]
    # workers decoding on the GPU are spawned (a forked child cannot use CUDA), so the dataset pickles
    cfg2 = _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=cuda:0", "data.num_workers=2")
    ds2 = run_data.train_dataset(cfg2, ["a", "b"])
    loader = run_data.train_loader(cfg2, ds2, 0, 1)
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert pickle.loads(pickle.dumps(ds2)).decode_options == {"device": "cuda:0"}
    cpu_loader = run_data.train_loader(_config(tmp_path, small_video, "data.num_workers=2"), ds2, 0, 1)
    assert cpu_loader.multiprocessing_context is None


@needs_torchcodec
def test_decode_device_cpu_gives_pyav_frames_through_the_same_path(tmp_path, small_video):
    torch.set_num_threads(1)
    tc = _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=cpu")
    av = _config(tmp_path, small_video, "data.backend=pyav")
    a, b = run_data.train_dataset(tc, ["a", "b"]), run_data.train_dataset(av, ["a", "b"])
    assert a.decode_options == {"device": "cpu"} and b.decode_options == {}
    for i in range(2):
        x, y = a[(i, 3)]["video"], b[(i, 3)]["video"]
        assert x.shape == (4, 3, 32, 32) and torch.equal(x, y)
    idx = [0, 59, 17, 17, 3]
    with decode.open_video(small_video, "torchcodec", device="cpu") as t, decode.open_video(small_video, "pyav") as p:
        assert np.array_equal(t.get_frames(idx), p.get_frames(idx))


def test_no_cuda_is_a_config_error_naming_the_option(tmp_path, small_video, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=cuda")
    with pytest.raises(ConfigError, match=r"data\.decode_device: 'cuda' .*no CUDA GPU.*pip install torchcodec"):
        run_data.train_dataset(cfg, ["a", "b"])  # before any video is read
    # under on_bad_video: skip too: a missing GPU is no bad video to skip
    ds = VideoDataset([decode_record(small_video)], None, ["a"], num_frames=2, backend="torchcodec",
                      on_bad_video="skip", train=True, decode_options={"device": "cuda"})
    with pytest.raises(ConfigError, match="data.decode_device"):
        ds[0]
    assert ds.num_skipped == 0


def decode_record(path):
    from vclip.data.annotations import VideoRecord

    return VideoRecord(path=str(path), label=0)


@needs_torchcodec
def test_torchcodec_cpu_build_or_missing_is_a_config_error(small_video, fake_cuda, monkeypatch):
    import torchcodec

    monkeypatch.setattr(torchcodec, "__version__", "0.13.0+cpu")
    with pytest.raises(ConfigError, match=r"torchcodec 0\.13\.0\+cpu is a CPU-only build.*cu130"):
        decode.open_video(small_video, "torchcodec", device="cuda")
    monkeypatch.setattr(torchcodec, "__version__", "0.16.0+cu130")

    class NoNvdec(RecordingDecoder):
        def __init__(self, source, **kwargs):
            raise RuntimeError("Unsupported device: cuda:0 (no CUDA device interface registered)\nmore")

    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", NoNvdec)
    with pytest.raises(ConfigError, match="could not create a CUDA decoder .Unsupported device: cuda:0"):
        decode.open_video(small_video, "torchcodec", device="cuda:0")

    class BadFile(RecordingDecoder):
        def __init__(self, source, **kwargs):
            raise RuntimeError("Could not open input file: Invalid data found when processing input")

    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", BadFile)
    with pytest.raises(VideoDecodeError, match="cannot open as a video"):  # the file's fault: a decode error
        decode.open_video(small_video, "torchcodec", device="cuda")

    monkeypatch.setattr(decode, "_TORCHCODEC_OK", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ConfigError, match="torchcodec cannot be imported.*data.decode_device: cpu"):
        decode.open_video(small_video, "torchcodec", device="cuda")


def test_decode_device_config_checks(tmp_path, small_video):
    with pytest.raises(ConfigError, match="data.decode_device: 'cuda' needs data.backend: torchcodec"):
        _config(tmp_path, small_video, "data.decode_device=cuda")  # backend auto
    with pytest.raises(ConfigError, match="expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=gpu")
    with pytest.raises(ConfigError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        decode.check_decode_device("cuda:x")
    assert decode.check_decode_device("cpu") is False
    assert _config(tmp_path, small_video, "data.backend=torchcodec", "data.decode_device=cuda:1").data.decode_device == "cuda:1"
