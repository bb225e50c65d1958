"""Temporal sampling: which frame indices of a video make up a clip.

Every function here is pure: ``num_frames`` (the length of the video) in, an ``int64`` numpy array of
frame indices out; randomness comes only from the ``numpy.random.Generator`` passed in, and test mode
never uses it. All results have shape ``[num_clips, clip_len]`` (one row per temporal view).

Modes
-----
``segment``  TSN sampling (X-CLIP, ViFi-CLIP, OST, TC-CLIP; mmaction ``SampleFrames(clip_len=1,
             num_clips=T)``): the video is cut into ``T`` equal segments; train picks a uniformly
             random frame inside each segment, test picks each segment's centre. With ``J > 1`` test
             clips, clip ``j`` takes the frame at relative position ``(j + 0.5) / J`` inside every
             segment, so the J clips interleave evenly (J = 1 is the centre).
``dense``    ``clip_len`` frames ``interval`` apart (a span of ``clip_len * interval`` frames, as in
             mmaction); train
             starts the span at a uniformly random frame, test centres it; multi-clip test places
             the J spans at evenly spaced starts (mmaction ``SampleFrames(test_mode=True)``).
``dense_sparse``  MoTED/DiST: ``alpha * T`` dense frames taken by ``segment`` sampling (DiST's
             ``segment_based`` mode) over the whole video; every ``alpha``-th of them (positions 0,
             alpha, 2*alpha, ...) is the sparse clip for the CLIP branch. :class:`FrameSampler`
             returns the dense clip; the sparse clip is ``dense[..., ::alpha]``
             (:func:`sparse_from_dense`).

Short videos
------------
Segment sampling never needs more frames than exist: with fewer frames than segments a frame
serves several consecutive segments (mmaction does the same). For dense sampling a span longer
than the video runs past the end; the ``short_policy`` decides what those positions read:
``"loop"`` wraps around (``i % num_frames``, mmaction's default ``out_of_bound_opt='loop'``) and
``"repeat_last"`` repeats the last frame.

Segments of untrimmed videos
----------------------------
A record with a ``segment`` (seconds; ActivityNet) is sampled inside it only:
:func:`segment_frame_range` turns the segment into the frames ``[first, stop)`` whose timestamps
``i / fps`` fall inside it (clamped to the video), and ``sampler(n, rng, window=(first, stop))``
samples ``stop - first`` frames as if they were the whole video, then offsets them by ``first``
(the short-video policies wrap inside the segment too).

Test mode is deterministic. The official X-CLIP family draws its multi-view "test" clips as
independent random *training* samples (xclip.md §5); ``compat_random_test_clips=True`` reproduces
that, and then needs an rng.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vclip.errors import ConfigError

SHORT_POLICIES = ("loop", "repeat_last")
MODES = ("segment", "dense", "dense_sparse")
TEST_POSITIONS = ("middle", "symmetric")


def _check(num_frames: int, clip_len: int, num_clips: int) -> None:
    if int(num_frames) < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if clip_len < 1 or num_clips < 1:
        raise ValueError(f"clip_len ({clip_len}) and num_clips ({num_clips}) must be >= 1")


def _need_rng(rng):
    if rng is None:
        raise ValueError("train-mode sampling needs a numpy Generator (rng)")
    return rng


def apply_short_policy(indices: np.ndarray, num_frames: int, policy: str = "loop") -> np.ndarray:
    """Map indices ``>= num_frames`` back into the video by ``policy`` ("loop" | "repeat_last")."""
    if policy == "loop":
        return np.mod(indices, num_frames)
    if policy == "repeat_last":
        return np.minimum(indices, num_frames - 1)
    raise ConfigError(f"short_policy must be one of {SHORT_POLICIES}, got {policy!r}")


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    test_mode: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    symmetric: bool = False,
) -> np.ndarray:
    """TSN segment sampling, ``[num_clips, num_segments]``.

    Segment ``k`` covers the real interval ``[k N/T, (k+1) N/T)``. Train: frame
    ``floor((k + u_k) N/T)`` with ``u_k ~ U[0, 1)`` independently per segment and clip. Test:
    ``floor((k + (j + 0.5)/J) N/T)`` for clip ``j`` of ``J``. Unlike mmaction's train mode (integer
    segment length ``N // T``, whose last ``N mod T`` frames are never drawn) every frame can be
    drawn; test mode equals mmaction's ``int(k * N/T + N/(2T))`` for J = 1.

    ``symmetric`` (test mode only): each view's frame is the one nearest the same real position,
    ``x = (k + (j + 0.5)/J) N/T - 0.5`` in frame-centre coordinates, rounded half away from the
    clip's middle, so that the indices of a clip played backwards are ``N - 1 -`` those of the
    clip: a frame-order-blind model then sees the same frames of a clip and of its reverse (all
    but a view centred exactly on the middle of an even-length clip, which has no middle frame:
    odd T with odd J on even N). The
    default rule does not (N = 16, T = 4: frames 2, 6, 10, 14, whose reverses are 13, 9, 5, 1;
    symmetric: 2, 6, 9, 13).
    """
    _check(num_frames, num_segments, num_clips)
    n, t = int(num_frames), int(num_segments)
    k = np.arange(t, dtype=np.float64)[None, :]
    if test_mode:
        pos = (np.arange(num_clips, dtype=np.float64)[:, None] + 0.5) / num_clips
    else:
        pos = _need_rng(rng).random((num_clips, t))
    if test_mode and symmetric:
        x = (k + pos) * n / t - 0.5
        idx = np.where(x < (n - 1) / 2, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int64)
        return np.clip(idx, 0, n - 1)
    idx = np.floor((k + pos) * n / t).astype(np.int64)
    return np.clip(idx, 0, n - 1)


def dense_indices(
    num_frames: int,
    clip_len: int,
    interval: int = 1,
    *,
    test_mode: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
    short_policy: str = "loop",
) -> np.ndarray:
    """Dense sampling, ``[num_clips, clip_len]``: frames ``start + i * interval``.

    Span ``L = clip_len * interval`` (mmaction's ``ori_clip_len``). Train: ``start ~ U{0..N-L}``
    (0 if ``N <= L``).
    Test: ``J`` starts evenly spaced, ``floor((N - L + 1) (j + 0.5) / J)`` (the centre for J = 1; 0
    when the span does not fit). Positions past the end follow ``short_policy``.
    """
    _check(num_frames, clip_len, num_clips)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    n = int(num_frames)
    span = clip_len * interval
    room = max(n - span + 1, 1)  # number of valid start positions
    if test_mode:
        starts = np.floor(room * (np.arange(num_clips) + 0.5) / num_clips).astype(np.int64)
    else:
        starts = _need_rng(rng).integers(0, room, size=num_clips).astype(np.int64)
    idx = starts[:, None] + interval * np.arange(clip_len, dtype=np.int64)[None, :]
    return apply_short_policy(idx, n, short_policy)


def dense_sparse_indices(
    num_frames: int,
    num_sparse: int,
    alpha: int = 2,
    *,
    test_mode: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DiST dense-around-sparse sampling: ``(dense [J, alpha*T], sparse [J, T])``.

    The dense clip is TSN segment sampling with ``alpha * T`` segments; the sparse clip is its
    every ``alpha``-th frame, starting at 0 (``sparse == dense[:, ::alpha]``).
    """
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    dense = segment_indices(
        num_frames, alpha * num_sparse, test_mode=test_mode, num_clips=num_clips, rng=rng
    )
    return dense, sparse_from_dense(dense, alpha)


def sparse_from_dense(dense: np.ndarray, alpha: int):
    """The sparse clip inside a dense-around-sparse clip: every ``alpha``-th frame along the last
    (frame) axis for numpy arrays, or along axis ``-4`` (``[..., T, C, H, W]``) for tensors."""
    if isinstance(dense, np.ndarray):
        return dense[..., ::alpha]
    return dense[..., ::alpha, :, :, :]


def segment_frame_range(start_s: float, end_s: float, fps: float, num_frames: int) -> tuple[int, int]:
    """Frames ``[first, stop)`` of a ``num_frames``-frame video at ``fps`` whose timestamps ``i / fps``
    lie in ``[start_s, end_s)``, clamped to the video. A segment holding no frame timestamp (shorter
    than a frame interval) gets the one frame shown at its middle. Raises ``ValueError`` when the
    segment is empty (``end_s <= start_s``) or lies outside ``[0, num_frames / fps)``."""
    n = int(num_frames)
    if n < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"frame rate must be positive, got {fps}")
    if not end_s > start_s:
        raise ValueError(f"segment [{start_s:g}, {end_s:g}] s is empty (end <= start)")
    eps = 1e-6  # float seconds × fps landing a hair above an integer frame
    if start_s >= n / fps - eps or end_s <= 0:
        raise ValueError(
            f"segment [{start_s:g}, {end_s:g}] s lies outside the video ({n} frames, {n / fps:.2f} s at {fps:g} fps)"
        )
    first = max(int(np.ceil(start_s * fps - eps)), 0)
    stop = min(int(np.ceil(end_s * fps - eps)), n)
    if stop <= first:  # no frame timestamp inside (shorter than a frame interval): the frame shown at its middle
        first = min(max(int(np.floor((start_s + end_s) / 2 * fps)), 0), n - 1)
        stop = first + 1
    return first, stop


@dataclass(frozen=True)
class FrameSampler:
    """A configured sampler: ``sampler(num_frames, rng) -> int64 [num_clips, clip_len]``.

    ``num_frames`` is T, the frames per clip (sparse frames for ``dense_sparse``, whose clips hold
    ``alpha * T`` dense frames: :attr:`clip_len`). ``num_clips`` is the number of temporal views
    (1 in training, e.g. 4 for X-CLIP's 4 × 3 test). ``test_mode`` makes it deterministic unless
    ``compat_random_test_clips`` asks for the official repos' random test views (then each of the
    ``num_clips`` views is an independent train-mode draw). ``test_positions``: ``"middle"``
    (the segments' middle frames, the official rule) or ``"symmetric"`` (segment mode: positions
    that map onto themselves when the clip is reversed; :func:`segment_indices`).
    """

    mode: str = "segment"
    num_frames: int = 8
    interval: int = 1
    alpha: int = 2
    num_clips: int = 1
    test_mode: bool = False
    short_policy: str = "loop"
    compat_random_test_clips: bool = False
    test_positions: str = "middle"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"sampling mode must be one of {MODES}, got {self.mode!r}")
        if self.short_policy not in SHORT_POLICIES:
            raise ConfigError(
                f"short_policy must be one of {SHORT_POLICIES}, got {self.short_policy!r}"
            )
        if self.test_positions not in TEST_POSITIONS:
            raise ConfigError(f"test_positions must be one of {TEST_POSITIONS}, got {self.test_positions!r}")
        if self.test_positions == "symmetric" and self.mode != "segment":
            raise ConfigError(f"test_positions 'symmetric' applies to segment sampling, not {self.mode!r}")
        for name in ("num_frames", "interval", "alpha", "num_clips"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"sampling {name} must be >= 1, got {getattr(self, name)}")

    @property
    def clip_len(self) -> int:
        """Frames per temporal view as returned (dense frames for ``dense_sparse``)."""
        return self.alpha * self.num_frames if self.mode == "dense_sparse" else self.num_frames

    @property
    def sparse_stride(self) -> int:
        """Stride of the sparse clip inside a returned clip (``alpha`` for dense_sparse, else 1)."""
        return self.alpha if self.mode == "dense_sparse" else 1

    def __call__(
        self, num_frames: int, rng: np.random.Generator | None = None, *, window: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Indices into a ``num_frames``-frame video; with ``window=(first, stop)`` (e.g. from
        :func:`segment_frame_range`) only frames ``first <= i < stop`` are drawn: the window is
        sampled as a video of ``stop - first`` frames and offset by ``first``."""
        if window is not None:
            first, stop = int(window[0]), int(window[1])
            if not 0 <= first < stop <= int(num_frames):
                raise ValueError(f"frame window [{first}, {stop}) is not inside a video of {num_frames} frames")
            return first + self(stop - first, rng)
        test = self.test_mode and not self.compat_random_test_clips
        kw = dict(test_mode=test, num_clips=self.num_clips, rng=None if test else rng)
        if self.mode == "segment":
            return segment_indices(num_frames, self.num_frames, symmetric=self.test_positions == "symmetric", **kw)
        if self.mode == "dense":
            return dense_indices(
                num_frames, self.num_frames, self.interval, short_policy=self.short_policy, **kw
            )
        return dense_sparse_indices(num_frames, self.num_frames, self.alpha, **kw)[0]


def build_sampler(cfg=None, *, test_mode: bool = False, **overrides) -> FrameSampler:
    """A :class:`FrameSampler` from a mapping/object with the dataclass's field names (missing
    fields keep their defaults) plus keyword overrides."""
    fields = FrameSampler.__dataclass_fields__
    values = {}
    if cfg is not None:
        for name in fields:
            v = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
            if v is not None:
                values[name] = v
    values["test_mode"] = test_mode
    values.update(overrides)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown sampling option(s): {sorted(unknown)}")
    return FrameSampler(**values)
