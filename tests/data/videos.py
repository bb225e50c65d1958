"""Small helpers that write test videos with PyAV (shared by the data tests).

``make_video(path, frames=30, size=(64, 48), fps=30, gop=30)`` writes an H.264 mp4 whose frame ``i``
is ``pattern_frame(i, height, width)``: a moving bar plus a brightness level that encodes ``i``, so a
decoded frame can be matched back to its index (``frame_index_of``) even after lossy coding.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def pattern_frame(i: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB frame ``i``: background level ``(i * 8) % 256`` (green channel), a
    vertical white bar at column ``(i * 3) % width`` and a fixed colour gradient (red channel)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (np.arange(width, dtype=np.int32) * 255 // max(width - 1, 1))[None, :]
    img[..., 1] = (i * 8) % 256
    img[..., 2] = 64
    x = (i * 3) % width
    img[:, x : x + 2, :] = 255
    return img


def frame_index_of(frame: np.ndarray, period: int = 32) -> int:
    """Recover ``i % period`` from a decoded ``pattern_frame`` (green level, robust to coding noise)."""
    g = float(np.median(frame[..., 1]))
    return int(round(g / 8)) % period


def make_video(
    path,
    frames: int = 30,
    size: tuple[int, int] = (64, 48),
    fps: int = 30,
    gop: int | None = 30,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    container_format: str | None = None,
    crf: int = 18,
) -> Path:
    """Write a test video and return its path.

    ``size`` is ``(width, height)``. ``gop`` is the keyframe interval (``None``: the encoder default).
    ``codec`` ``"libx264"`` needs even sizes with yuv420p; use ``pix_fmt="yuv444p"`` or ``codec="mpeg4"``
    for odd sizes. ``pts`` gives each frame's timestamp in ``time_base`` units (default ``1/fps``
    per frame): irregular values make a variable-frame-rate file.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if pix_fmt is None:
        pix_fmt = "yuv420p"
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.gop_size = gop
        options = {}
        if codec == "libx264":
            options = {"crf": str(crf), "preset": "ultrafast"}
            if gop is not None:
                options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        stream.options = options
        if pts is not None:
            stream.codec_context.time_base = time_base or Fraction(1, fps * 100)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_audio_only(path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """Write an audio-only file (AAC in mp4, or PCM WAV when ``path`` ends in ``.wav``)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        t = np.arange(n) / rate
        samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32 if codec == "aac" else np.int16)
        if codec == "pcm_s16le":
            samples = (samples * 32767).astype(np.int16) if samples.dtype != np.int16 else samples
        fmt = "fltp" if codec == "aac" else "s16"
        chunk = 1024
        pts = 0
        for start in range(0, n, chunk):
            data = samples[start : start + chunk]
            frame = av.AudioFrame.from_ndarray(data[None, :], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = pts
            pts += data.shape[0]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
