"""Video decoding: one small ``VideoReader`` interface over three backends.

``open_video(path, backend="auto")`` returns a reader with metadata (``num_frames``, ``fps``,
``duration``, ``height``, ``width``) and ``get_frames(indices) -> uint8 [T, H, W, 3]`` RGB.

Backends
    ``pyav``        FFmpeg through PyAV (its wheels bundle FFmpeg). The default for files.
    ``torchcodec``  torchcodec's ``VideoDecoder`` when it is importable (CPU, or ``device="cuda"``).
    ``rawframes``   a directory of pre-extracted JPEG/PNG frames (mmaction2 layout,
                    ``img_00001.jpg`` ...), read with Pillow.
    ``cache``       the frame cache of ``vclip data prepare --cache`` (uint8 frames in memory-mapped
                    ``.npy`` shards, :mod:`vclip.data.cache`): ``path`` is the video's path under the
                    cache folder (``CACHE/a/b.mp4`` reads ``CACHE/a/b.npy``).
    ``auto``        ``rawframes`` for a directory, ``pyav`` for a file.

Frame indices are positions in presentation order, counted from the first frame the decoder
outputs (for a variable-frame-rate file this is "the i-th frame", not "the frame at time i/fps").

Every failure is a :class:`vclip.errors.VideoDecodeError` whose message starts with the path and
says what is wrong; no exception from FFmpeg, PyAV, torchcodec, Pillow or the OS escapes raw.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
from fractions import Fraction

import numpy as np

from vclip.errors import VideoDecodeError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "torchcodec", "rawframes", "cache")

#: Frames larger than this many pixels are refused before anything is allocated (8K UHD).
DEFAULT_MAX_PIXELS = 7680 * 4320

#: The PyAV reader seeks when the keyframe at or before the next wanted frame lies more than this
#: many frames ahead of the decoder's position (0: whenever a keyframe lies ahead; measured best
#: on 2 CPU cores, see docs/performance.md), otherwise it decodes forward.
DEFAULT_SEEK_THRESHOLD = 0


def available_backends() -> list[str]:
    """Concrete backends usable in this environment (``"auto"`` is always accepted too)."""
    out = ["pyav"]
    if _torchcodec_importable():
        out.append("torchcodec")
    out.append("rawframes")
    out.append("cache")
    return out


def open_video(path, backend: str = "auto", **options) -> "VideoReader":
    """Open ``path`` (a video file, or a frame directory for ``rawframes``) with ``backend``.

    ``options`` go to the backend: ``max_pixels`` (all), ``threads``/``seek_threshold``/
    ``short_side`` (pyav), ``device``/``threads`` (torchcodec), ``template``/``start_index``/``fps``
    (rawframes), ``check_source``/``verify`` (cache).
    """
    path = os.fspath(path)
    if backend not in BACKENDS:
        raise VideoDecodeError(f"{path}: unknown decoding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "rawframes" if os.path.isdir(path) else "pyav"
    if backend == "pyav":
        return PyAVReader(path, **options)
    if backend == "torchcodec":
        return TorchCodecReader(path, **options)
    if backend == "cache":
        from vclip.data.cache import CacheReader

        return CacheReader(path, **options)
    return RawFramesReader(path, **options)


class VideoReader:
    """Abstract reader. Subclasses set the metadata attributes in ``__init__`` and implement
    ``_read(sorted_unique_indices) -> dict[index, ndarray]``."""

    path: str
    num_frames: int
    fps: float
    duration: float
    height: int
    width: int
    backend: str = "?"

    # -- public API -------------------------------------------------------------------------
    def get_frames(self, indices) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` RGB frames at ``indices`` (any order, repeats allowed)."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        unique = sorted(set(idx.tolist()))
        frames = self._read(unique)
        out = np.empty((idx.size, self.height, self.width, 3), np.uint8)
        for j, i in enumerate(idx.tolist()):
            out[j] = frames[i]
        return out

    def get_frames_torch(self, indices):
        """Like :meth:`get_frames` but a ``torch.uint8`` tensor (on the decoding device for
        torchcodec with ``device="cuda"``)."""
        import torch

        return torch.from_numpy(self.get_frames(indices))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, num_frames={self.num_frames}, fps={self.fps:.3f}, "
            f"size={self.width}x{self.height})"
        )

    # -- helpers ----------------------------------------------------------------------------
    def _error(self, what: str) -> VideoDecodeError:
        return VideoDecodeError(f"{self.path}: {what}")

    def _check_indices(self, indices) -> np.ndarray:
        try:
            if hasattr(indices, "detach"):  # torch tensor
                indices = indices.detach().cpu().numpy()
            idx = np.asarray(indices)
            if idx.ndim == 0:
                idx = idx.reshape(1)
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                if not np.all(np.equal(np.mod(idx, 1), 0)):
                    raise TypeError("non-integer")
                idx = idx.astype(np.int64)
            idx = idx.reshape(-1).astype(np.int64)
        except (TypeError, ValueError) as e:
            raise self._error(f"frame indices must be integers, got {indices!r} ({e})") from None
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.num_frames:
                bad = lo if lo < 0 else hi
                raise self._error(f"frame index {bad} out of range: the video has {self.num_frames} frames")
        return idx

    def _check_size(self, width: int, height: int, max_pixels: int) -> None:
        if width <= 0 or height <= 0:
            raise self._error(f"invalid frame size {width}x{height}")
        if max_pixels and width * height > max_pixels:
            raise self._error(
                f"frame size {width}x{height} exceeds the limit of {max_pixels} pixels "
                "(corrupt header or unexpectedly huge video; raise max_pixels to allow it)"
            )


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(f"{path}: no such file") from None
    except OSError as e:
        raise VideoDecodeError(f"{path}: cannot access file ({e.strerror or e})") from None
    import stat

    if stat.S_ISDIR(st.st_mode):
        raise VideoDecodeError(f"{path}: is a directory, not a video file (use backend 'rawframes' for frame folders)")
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise VideoDecodeError(f"{path}: zero bytes (empty file)")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(f"{path}: not readable (permission denied)")


def _av_message(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg)


# =============================================================================================
# PyAV
# =============================================================================================
class PyAVReader(VideoReader):
    """FFmpeg via PyAV with keyframe-aware sparse reads.

    On the first ``get_frames`` (or at open when the container's frame count is missing or
    implausible) the packets of the video stream are demuxed once, without decoding, to build an
    index: every frame's timestamp in presentation order and which frames are keyframes. A read then
    sorts the wanted indices, seeks to the nearest keyframe at or before the next wanted frame when
    that keyframe lies more than ``seek_threshold`` frames ahead of the decoder's position, decodes
    forward and converts only the wanted frames to RGB. Decoded frames are matched to indices by
    their timestamp, so the result is exact (tests compare against a full decode).

    ``threads``: FFmpeg decoding threads (0 = FFmpeg's choice). The default 1 suits data loaders,
    which parallelise over worker processes; see docs/performance.md.

    ``short_side``: resize while converting to RGB (one swscale pass, ``AREA`` interpolation) so
    that the short side is this many pixels, never upscaling, both sides even (the size rule of
    ``vclip data prepare``); ``width``/``height`` are then the resized size. 0: native size. The
    frame cache (``vclip data prepare --cache``) stores exactly these frames.
    """

    backend = "pyav"

    def __init__(
        self,
        path: str,
        *,
        threads: int = 1,
        seek_threshold: int = DEFAULT_SEEK_THRESHOLD,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        thread_type: str = "SLICE",
        short_side: int = 0,
    ):
        self.path = os.fspath(path)
        self.short_side = int(short_side or 0)
        self._resize_interp = None
        self.seek_threshold = int(seek_threshold)
        self.max_pixels = max_pixels
        self._container = None
        self._index: list[int] | None = None  # frame index -> pts, presentation order
        self._pts_to_index: dict[int, int] | None = None
        self._keyframes: list[int] = []  # sorted frame indices of keyframes
        self._pos = -1  # index of the next frame the decoder will output, -1: unknown / not started
        self._frames_iter = None
        _check_file(self.path)
        try:
            import av
        except ImportError as e:  # pragma: no cover - av is a dependency
            raise VideoDecodeError(f"{self.path}: PyAV is not installed ({e})") from None
        self._av = av
        try:
            self._container = av.open(self.path, mode="r", metadata_errors="ignore")
        except Exception as e:  # av.error.*, OSError, UnicodeDecodeError ...
            msg = _av_message(e)
            hint = ""
            if "moov atom not found" in msg or "Invalid data" in msg:
                hint = " (not a video file, or truncated: e.g. an mp4 whose index was never written)"
            raise VideoDecodeError(f"{self.path}: cannot open as a video container: {msg}{hint}") from None
        try:
            self._init_stream(threads, thread_type)
        except VideoDecodeError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise VideoDecodeError(f"{self.path}: cannot read stream information: {_av_message(e)}") from None

    # -- opening -----------------------------------------------------------------------------
    def _init_stream(self, threads: int, thread_type: str) -> None:
        container = self._container
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise self._error(f"no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        self._stream = stream
        cc = stream.codec_context
        if cc is None or stream.codec_context.name is None:
            raise self._error("video stream has no decodable codec")
        self.width, self.height = int(cc.width or 0), int(cc.height or 0)
        self._check_size(self.width, self.height, self.max_pixels)
        self.source_width, self.source_height = self.width, self.height
        if self.short_side > 0:
            from vclip.data.prepare import target_size

            self.width, self.height = target_size(self.width, self.height, self.short_side)
            self._resize_interp = "AREA"
        if threads != 1:
            cc.thread_count = int(threads)
            cc.thread_type = thread_type
        else:
            cc.thread_count = 1
        self._time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = 0.0
        if stream.duration:
            duration = float(stream.duration * self._time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        header = int(stream.frames or 0)
        self._header_frames = header
        if not (fps > 0 and math.isfinite(fps)):
            fps = 0.0
        self.fps, self.duration = fps, duration
        if header > 0 and self._plausible(header, duration, fps):
            self.num_frames = header
        else:
            log.debug("%s: container frame count %d implausible (duration %.3f s, fps %.3f): demuxing", self.path, header, duration, fps)
            self._build_index()
        if self.num_frames <= 0:
            raise self._error("the video stream contains no frames")
        if self.fps <= 0:
            self.fps = self.num_frames / self.duration if self.duration > 0 else 30.0
        if self.duration <= 0:
            self.duration = self.num_frames / self.fps

    @staticmethod
    def _plausible(frames: int, duration: float, fps: float) -> bool:
        if duration <= 0 or fps <= 0:
            return False
        expected = duration * fps
        return abs(frames - expected) <= max(2.0, 0.05 * expected)

    def _build_index(self) -> None:
        """Demux the video stream once (no decoding) and record presentation timestamps and
        keyframes. Sets ``num_frames`` to the number of frames found."""
        container, stream = self._container, self._stream
        entries = []  # (pts, dts, is_key)
        error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None and packet.dts is None:
                    continue  # flush packet
                if getattr(packet, "is_discard", False):
                    continue  # dropped by the demuxer (e.g. outside an mp4 edit list)
                ts = packet.pts if packet.pts is not None else packet.dts
                entries.append((ts, packet.dts, bool(packet.is_keyframe)))
        except Exception as e:  # demuxing stopped on damaged data
            error = _av_message(e)
        # the demuxer is at EOF now: the next read must seek
        self._reset_decoder()
        if error is not None and not entries:
            raise self._error(f"corrupt or truncated: no frame could be demuxed ({error})")
        if self._header_frames > 0 and len(entries) < self._header_frames and (
            error is not None or self._plausible(self._header_frames, self.duration, self.fps)
        ):
            raise self._error(
                f"truncated or corrupt: the container declares {self._header_frames} frames but only "
                f"{len(entries)} could be read" + (f" ({error})" if error else "")
            )
        if error is not None:
            raise self._error(f"corrupt or truncated after {len(entries)} frames: {error}")
        have_ts = all(e[0] is not None for e in entries)
        if have_ts:
            order = sorted(range(len(entries)), key=lambda k: entries[k][0])
            pts_sorted = [entries[k][0] for k in order]
            if len(set(pts_sorted)) != len(pts_sorted):
                have_ts = False  # duplicate timestamps: cannot map frames to indices by pts
        if have_ts:
            self._index = pts_sorted
            self._pts_to_index = {p: i for i, p in enumerate(pts_sorted)}
            rank = {k: i for i, k in enumerate(order)}
            self._keyframes = sorted(rank[k] for k, e in enumerate(entries) if e[2])
            # seek by presentation timestamp: FFmpeg's mp4 and mkv demuxers index keyframes by pts
            self._seek_ts = {rank[k]: e[0] for k, e in enumerate(entries) if e[2]}
        else:
            self._index = []
            self._pts_to_index = None  # sequential decoding only
            self._keyframes = []
            self._seek_ts = {}
        self.num_frames = len(entries)

    def _reset_decoder(self) -> None:
        self._frames_iter = None
        self._pos = -1

    # -- reading -----------------------------------------------------------------------------
    def _seek_to_keyframe(self, k: int) -> None:
        """Position the decoder on keyframe index ``k`` (0: the start of the stream)."""
        ts = self._seek_ts.get(k) if k > 0 else None
        if ts is None:
            self._restart()
            return
        self._container.seek(int(ts), stream=self._stream, backward=True, any_frame=False)
        self._frames_iter = self._iter_frames()
        self._pos = k  # provisional; decoded frames' timestamps say where we really are

    def _restart(self) -> None:
        """Back to the first frame (seek to the earliest keyframe; reopen if seeking fails)."""
        self._frames_iter = None
        try:
            ts = min(self._seek_ts.values()) if self._seek_ts else None
            if ts is None:
                raise ValueError("no keyframe timestamp")
            self._container.seek(int(ts), stream=self._stream, backward=True, any_frame=False)
        except Exception:
            threads = self._stream.codec_context.thread_count
            thread_type = self._stream.codec_context.thread_type
            self._container.close()
            self._container = self._av.open(self.path, mode="r", metadata_errors="ignore")
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = threads
            self._stream.codec_context.thread_type = thread_type
        self._frames_iter = self._iter_frames()
        self._pos = 0

    def _iter_frames(self):
        for packet in self._container.demux(self._stream):
            for frame in packet.decode():
                yield frame

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        try:
            if self._index is None:
                self._build_index()
                if wanted and wanted[-1] >= self.num_frames:
                    raise self._error(
                        f"frame index {wanted[-1]} out of range: the video has {self.num_frames} frames"
                    )
            return self._read_indexed(wanted)
        except VideoDecodeError:
            self._reset_decoder()
            raise
        except MemoryError:
            self._reset_decoder()
            raise
        except Exception as e:  # av.error.* and friends while demuxing/decoding
            self._reset_decoder()
            raise self._error(f"decoding failed (corrupt data?): {_av_message(e)}") from None

    def _keyframe_at_or_before(self, i: int) -> int:
        j = bisect.bisect_right(self._keyframes, i) - 1
        return self._keyframes[j] if j >= 0 else 0

    def _read_indexed(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """``wanted``: sorted unique indices. Returns {index: RGB array}."""
        out: dict[int, np.ndarray] = {}
        by_pts = self._pts_to_index is not None
        w = 0
        attempt = 0  # escalation for the current target: 0 normal, 1 earlier keyframe, 2 start
        while w < len(wanted):
            target = wanted[w]
            positioned = self._frames_iter is not None and 0 <= self._pos <= target
            fresh = False
            if attempt == 0:
                if by_pts:
                    k = self._keyframe_at_or_before(target)
                    if not positioned or k - self._pos > self.seek_threshold:
                        self._seek_to_keyframe(k)
                        fresh = True
                elif not positioned:
                    self._restart()
                    fresh = True
            elif attempt == 1 and by_pts:
                k = self._keyframe_at_or_before(target)
                self._seek_to_keyframe(self._keyframe_at_or_before(k - 1) if k > 0 else 0)
                fresh = True
            elif attempt <= 2:
                self._restart()
                fresh = True
            else:
                raise self._error(f"frame {target} cannot be decoded (corrupt data or inconsistent timestamps)")

            reached = False
            for frame in self._frames_iter:
                idx = self._pos
                if by_pts and frame.pts is not None:
                    idx = self._pts_to_index.get(frame.pts, self._pos)
                if fresh and idx > target:
                    break  # the seek landed after the target
                fresh = False
                self._pos = idx + 1
                if idx == target:
                    out[idx] = self._to_rgb(frame)
                if idx >= target:
                    reached = True
                    break
            else:
                self._frames_iter, self._pos = None, -1  # end of stream
                if target not in out and attempt >= 2:
                    raise self._error(
                        f"truncated or corrupt: decoding ended before frame {target} "
                        f"(the video should have {self.num_frames} frames)"
                    )
            if target in out:
                w += 1
                attempt = 0
            else:
                if reached:  # passed the target without seeing it: reposition
                    self._frames_iter, self._pos = None, -1
                attempt += 1
        return out

    def _to_rgb(self, frame) -> np.ndarray:
        if frame.width != self.width or frame.height != self.height:
            self._check_size(frame.width, frame.height, self.max_pixels)
            if self._resize_interp is not None:
                frame = frame.reformat(width=self.width, height=self.height, format="rgb24", interpolation=self._resize_interp)
            else:
                frame = frame.reformat(width=self.width, height=self.height, format="rgb24")
            return frame.to_ndarray()
        return frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        c, self._container = getattr(self, "_container", None), None
        self._frames_iter = None
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def __del__(self):
        self.close()


# =============================================================================================
# torchcodec
# =============================================================================================
_TORCHCODEC_OK: bool | None = None


def _torchcodec_importable() -> bool:
    global _TORCHCODEC_OK
    if _TORCHCODEC_OK is None:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401

            _TORCHCODEC_OK = True
        except Exception:  # ImportError, or a RuntimeError when its FFmpeg libraries are missing
            _TORCHCODEC_OK = False
    return _TORCHCODEC_OK


#: words of a torchcodec error that is about the GPU (not about the file) when decoding on CUDA
_GPU_WORDS = ("cuda", "nvdec", "cuvid", "nvcuvid", "device", "npp", "nvrtc", "driver")

_GPU_INSTALL_HINT = (
    "install a CUDA build of torch and torchcodec's CUDA build for it (on Linux x86-64, "
    "torchcodec 0.16/0.17 from PyPI are the cu130 builds, for torch >= 2.11; other CUDA versions: "
    "`pip install torchcodec --index-url https://download.pytorch.org/whl/cuXYZ`) plus FFmpeg 4-8 shared "
    "libraries (see docs/data.md, 'Decoding on the GPU'), or set data.decode_device: cpu"
)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torchcodec_version() -> str:
    try:
        import torchcodec

        return str(getattr(torchcodec, "__version__", "?"))
    except Exception:  # pragma: no cover - the caller imported it already
        return "?"


def _gpu_decode_error(device: str, what: str):
    from vclip.errors import ConfigError

    # a ConfigError, not a VideoDecodeError: a missing GPU decoder is no bad video, so
    # ``on_bad_video: skip`` must not skip every video because of it
    return ConfigError(f"data.decode_device: {device!r} (torchcodec on the GPU) cannot be used: {what}; {_GPU_INSTALL_HINT}")


def check_decode_device(device: str) -> bool:
    """Validate a torchcodec decoding device (``"cpu"``, ``"cuda"``, ``"cuda:N"``); True for a
    GPU. A GPU without a CUDA torch is a :class:`~vclip.errors.ConfigError` naming
    ``data.decode_device`` and what to install."""
    from vclip.errors import ConfigError

    device = str(device)
    if device == "cpu":
        return False
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"data.decode_device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise _gpu_decode_error(
            device, f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False, "
            f"built for CUDA {torch.version.cuda})")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"data.decode_device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return True


class TorchCodecReader(VideoReader):
    """torchcodec's ``VideoDecoder`` (exact seek mode: it scans the file once at open).

    ``device="cuda"`` (config: ``data.backend: torchcodec`` with ``data.decode_device: cuda``)
    decodes on the GPU (NVDEC); :meth:`get_frames_torch` then keeps the frames on the GPU,
    :meth:`get_frames` (what :class:`~vclip.data.datasets.VideoDataset` calls) copies them to host
    memory. A missing CUDA torch, torchcodec or torchcodec CUDA build is a
    :class:`~vclip.errors.ConfigError` naming ``data.decode_device`` and what to install.
    """

    backend = "torchcodec"

    def __init__(
        self,
        path: str,
        *,
        device: str = "cpu",
        threads: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seek_mode: str = "exact",
    ):
        self.path = os.fspath(path)
        self.device = str(device)
        self.max_pixels = max_pixels
        self._decoder = None
        on_gpu = check_decode_device(self.device)
        _check_file(self.path)
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as e:
            if on_gpu:
                raise _gpu_decode_error(self.device, f"torchcodec cannot be imported ({type(e).__name__}: {_first_line(e)})") from None
            raise VideoDecodeError(
                f"{self.path}: the torchcodec backend is not available ({type(e).__name__}: {e}); "
                "install torchcodec (and FFmpeg) or use backend 'pyav'"
            ) from None
        if on_gpu:
            version = _torchcodec_version()
            if version.endswith("+cpu"):
                raise _gpu_decode_error(self.device, f"torchcodec {version} is a CPU-only build")
        try:
            self._decoder = VideoDecoder(
                self.path, dimension_order="NHWC", num_ffmpeg_threads=int(threads), device=self.device, seek_mode=seek_mode
            )
            md = self._decoder.metadata
        except Exception as e:  # RuntimeError / ValueError from torchcodec
            msg = _first_line(e)
            if on_gpu and any(w in msg.lower() for w in _GPU_WORDS):
                raise _gpu_decode_error(self.device, f"torchcodec could not create a CUDA decoder ({msg})") from None
            if "video stream" in msg.lower() or "no valid stream" in msg.lower():
                raise VideoDecodeError(f"{self.path}: no video stream ({msg})") from None
            raise VideoDecodeError(f"{self.path}: cannot open as a video ({msg})") from None
        self.width, self.height = int(md.width or 0), int(md.height or 0)
        self._check_size(self.width, self.height, self.max_pixels)
        self.num_frames = int(md.num_frames or 0)
        if self.num_frames <= 0:
            raise self._error("the video stream contains no frames")
        fps = float(md.average_fps or 0.0)
        duration = float(md.duration_seconds or 0.0)
        self.fps = fps if fps > 0 else (self.num_frames / duration if duration > 0 else 30.0)
        self.duration = duration if duration > 0 else self.num_frames / self.fps

    def _batch(self, indices):
        idx = self._check_indices(indices)
        try:
            return self._decoder.get_frames_at(indices=idx.tolist()).data
        except Exception as e:
            if isinstance(e, MemoryError):
                raise
            raise self._error(f"decoding failed (corrupt data?): {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None

    def get_frames(self, indices) -> np.ndarray:
        idx = self._check_indices(indices)
        if idx.size == 0:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        data = self._batch(idx)
        return np.ascontiguousarray(data.cpu().numpy())

    def get_frames_torch(self, indices):
        import torch

        idx = self._check_indices(indices)
        if idx.size == 0:
            return torch.zeros((0, self.height, self.width, 3), dtype=torch.uint8, device=self.device)
        return self._batch(idx)

    def _read(self, wanted):  # pragma: no cover - get_frames is overridden
        frames = self.get_frames(wanted)
        return dict(zip(wanted, frames))

    @property
    def cpu_fallback(self) -> str | None:
        """torchcodec's report of whether a CUDA decoder fell back to the CPU (e.g. a codec NVDEC
        cannot decode); known after the first decoded frame. ``None`` when torchcodec has none."""
        status = getattr(self._decoder, "cpu_fallback", None)
        return None if status is None else str(status)

    def close(self) -> None:
        self._decoder = None


# =============================================================================================
# rawframes
# =============================================================================================
class RawFramesReader(VideoReader):
    """A directory of frames, mmaction2 "rawframes" layout: ``img_00001.jpg``, ``img_00002.jpg`` ...

    ``template`` is a ``str.format`` pattern with one integer field (default ``"img_{:05d}.jpg"``),
    ``start_index`` the number of the first frame (1, as mmaction2). ``num_frames`` is the number
    of consecutive files from ``start_index`` found in the listing; ``fps`` is given (default 30),
    since a frame folder has no timing.
    """

    backend = "rawframes"

    def __init__(
        self,
        path: str,
        *,
        template: str = "img_{:05d}.jpg",
        start_index: int = 1,
        fps: float = 30.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.path = os.fspath(path)
        self.template = template
        self.start_index = int(start_index)
        self.max_pixels = max_pixels
        if not os.path.isdir(self.path):
            if os.path.exists(self.path):
                raise VideoDecodeError(f"{self.path}: not a directory (the rawframes backend reads frame folders)")
            raise VideoDecodeError(f"{self.path}: no such directory")
        pattern = _template_regex(template)
        try:
            names = os.listdir(self.path)
        except OSError as e:
            raise VideoDecodeError(f"{self.path}: cannot list directory ({e.strerror or e})") from None
        numbers = set()
        for name in names:
            m = pattern.fullmatch(name)
            if m:
                numbers.add(int(m.group(1)))
        n = 0
        while self.start_index + n in numbers:
            n += 1
        if n == 0:
            example = template.format(self.start_index)
            raise VideoDecodeError(f"{self.path}: no frames named like {example!r} (template {template!r})")
        if len(numbers) > n:
            log.warning("%s: frames after %s are missing; using the first %d", self.path, template.format(self.start_index + n), n)
        self.num_frames = n
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.duration = n / self.fps
        first = self._frame_path(0)
        try:
            from PIL import Image

            with Image.open(first) as im:
                self.width, self.height = im.size
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot read frame {first!r}: {e}") from None
        self._check_size(self.width, self.height, self.max_pixels)

    def _frame_path(self, i: int) -> str:
        return os.path.join(self.path, self.template.format(self.start_index + i))

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        from PIL import Image

        out = {}
        for i in wanted:
            p = self._frame_path(i)
            try:
                with Image.open(p) as im:
                    if im.size[0] * im.size[1] > (self.max_pixels or float("inf")):
                        raise self._error(f"frame {os.path.basename(p)} is {im.size[0]}x{im.size[1]}, above max_pixels")
                    im = im.convert("RGB")
                    if im.size != (self.width, self.height):
                        im = im.resize((self.width, self.height), Image.BILINEAR)
                    out[i] = np.asarray(im)
            except VideoDecodeError:
                raise
            except Exception as e:  # FileNotFoundError, PIL.UnidentifiedImageError, truncated images
                raise self._error(f"cannot read frame {os.path.basename(p)}: {e}") from None
        return out


def _template_regex(template: str) -> "re.Pattern[str]":
    m = re.search(r"\{[^{}]*\}", template)
    if not m:
        raise VideoDecodeError(f"rawframes template {template!r} has no {{}} field for the frame number")
    spec = m.group(0)
    width = re.search(r":0?(\d+)d", spec)
    num = r"(\d{%s,})" % width.group(1) if width else r"(\d+)"
    return re.compile(re.escape(template[: m.start()]) + num + re.escape(template[m.end() :]))
