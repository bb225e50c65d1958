"""``VideoDataset``: records + root + class names + sampler + transform → clip tensors.

A sample is a dict::

    video   float32 [T, 3, H, W]           (one view), or
            float32 [V, T, 3, H, W]         V = num_clips × spatial crops, clip-major
                                            (view v = clip v // crops, crop v % crops)
    label   int   (-1 for unlabeled videos)
    index   int   (position in ``dataset.records``)
    valid   bool  (False only for a failed video in evaluation mode)
    error   str   ("" unless valid is False)

Randomness: each sample draws from its own ``numpy.random.Generator`` seeded by
``(seed, epoch, index)``, so a run is reproducible whatever the number of workers or the order in
which they pick samples. The epoch comes with the key: ``dataset[(index, epoch)]`` (what
:func:`vclip.data.loader.build_loader`'s samplers yield), or ``dataset.epoch`` for a plain int key.

Bad videos (a :class:`~vclip.errors.VideoDecodeError` or ``OSError`` while reading) follow
``on_bad_video``:

* ``"raise"`` (default): the error propagates (its message names the file).
* ``"skip"`` in **training**: the sample is replaced by another video chosen deterministically
  from ``(seed, epoch, index, attempt)``; :attr:`VideoDataset.num_skipped` counts replacements
  across all worker processes (a shared-memory counter) and each one is logged with the path.
* ``"skip"`` in **evaluation**: nothing is dropped or replaced — the sample comes back with
  ``valid=False``, the error message and a zero video of the usual shape, so the evaluator can
  report exactly which videos failed and how many were evaluated.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
import torch

from vclip.data.annotations import VideoRecord, read_annotations, read_label_csv
from vclip.data.sampling import FrameSampler, segment_frame_range
from vclip.data.transforms import to_clip_tensor
from vclip.errors import ConfigError, VideoDecodeError

log = logging.getLogger(__name__)

BAD_VIDEO_POLICIES = ("raise", "skip")


class VideoDataset(torch.utils.data.Dataset):
    """Map-style dataset of video clips.

    Args:
        records: :class:`VideoRecord` list (see :mod:`vclip.data.annotations`); a record with a
            ``segment`` (seconds, ActivityNet) is sampled and decoded only inside it.
        root: folder the record paths are relative to (``None``: paths used as they are).
        class_names: names indexed by label (``None``: unnamed).
        num_frames: frames per clip when ``sampler`` is ``None`` (TSN segments).
        sampler: a :class:`FrameSampler`; its ``test_mode`` is the default for ``train``.
        transform: ``transform(clip uint8 [N, 3, H, W], rng) -> [N, 3, h, w]`` or
            ``[S, N, 3, h, w]`` (S spatial crops); ``None`` returns float 0-255 frames.
        backend: decoding backend for :func:`vclip.data.decode.open_video`.
        on_bad_video: ``"raise"`` | ``"skip"`` (see the module docstring).
        train: training (True) or evaluation (False) mode; defaults to ``not sampler.test_mode``.
        seed: base seed of the per-sample generators.
        max_skip_attempts: replacements tried for one sample before giving up (training skip).
        decode_options: extra keyword arguments for ``open_video``.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root=None,
        class_names: Sequence[str] | None = None,
        num_frames: int = 8,
        sampler: FrameSampler | None = None,
        transform: Callable | None = None,
        backend: str = "auto",
        on_bad_video: str = "raise",
        train: bool | None = None,
        seed: int = 0,
        max_skip_attempts: int = 20,
        decode_options: dict | None = None,
    ):
        if on_bad_video not in BAD_VIDEO_POLICIES:
            raise ConfigError(f"on_bad_video must be one of {BAD_VIDEO_POLICIES}, got {on_bad_video!r}")
        self.records = list(records)
        self.root = None if root is None else os.fspath(root)
        self.class_names = list(class_names) if class_names is not None else None
        self.sampler = sampler if sampler is not None else FrameSampler("segment", num_frames)
        self.transform = transform
        self.backend = backend
        self.on_bad_video = on_bad_video
        self.train = (not self.sampler.test_mode) if train is None else bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.max_skip_attempts = int(max_skip_attempts)
        self.decode_options = dict(decode_options or {})
        # shared across DataLoader worker processes (fork or spawn) so the main process sees it
        self._skip_counter = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._placeholder_shape: tuple[int, ...] | None = None
        if self.class_names is not None:
            k = len(self.class_names)
            for r in self.records:
                if r.label >= k:
                    raise ConfigError(
                        f"{r.meta.get('source', r.path)}: label {r.label} out of range for {k} classes"
                    )

    @classmethod
    def from_files(
        cls, annotation, root=None, labels=None, fmt: str = "auto", *, subset: str | None = None, **kwargs
    ) -> "VideoDataset":
        """A dataset from an annotation file (split file ``relpath label``, rawframe lists, mmaction
        JSON, ActivityNet JSON) and an optional ``id,name`` label CSV. ``subset`` picks the
        ActivityNet subset (``"training"``/``"validation"``); ActivityNet's class names come from
        its labels when ``labels`` is ``None``, and its video files are looked up in ``root``."""
        class_names = read_label_csv(labels) if labels is not None else None
        records, class_names = read_annotations(annotation, fmt, class_names=class_names, subset=subset, root=root)
        return cls(records, root, class_names, **kwargs)

    # ------------------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    @property
    def num_skipped(self) -> int:
        """Samples replaced under ``on_bad_video="skip"`` (all workers together)."""
        return int(self._skip_counter.item())

    def reset_skip_count(self) -> None:
        self._skip_counter.zero_()

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain int keys (the loader passes ``(index, epoch)`` keys instead, which
        also works with persistent workers)."""
        self.epoch = int(epoch)

    def full_path(self, record: VideoRecord) -> str:
        if self.root is None or os.path.isabs(record.path):
            return record.path
        return os.path.join(self.root, record.path)

    # ------------------------------------------------------------------------------ loading
    def _rng(self, index: int, epoch: int, attempt: int = 0) -> np.random.Generator:
        if self.train:
            return np.random.default_rng([self.seed, epoch, index, attempt])
        # evaluation: only compat random test clips use it; independent of the epoch
        return np.random.default_rng([self.seed, index])

    def load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """Decode, sample and transform one video (raises on a bad video)."""
        from vclip.data.decode import open_video

        record = self.records[index]
        path = self.full_path(record)
        with open_video(path, self.backend, **self.decode_options) as reader:
            n = reader.num_frames
            if n < 1:
                raise VideoDecodeError(f"{path}: no frames")
            window = None
            if record.segment is not None:  # a labelled part of an untrimmed video: sample inside it
                try:
                    window = segment_frame_range(*record.segment, reader.fps, n)
                except ValueError as e:
                    raise VideoDecodeError(f"{path}: {e}") from None
            idx = self.sampler(n, rng, window=window)  # [J, L]; only the window's frames are decoded
            frames = reader.get_frames(idx.reshape(-1))
        clip = to_clip_tensor(frames)  # uint8 [J*L, 3, H, W]
        out = self.transform(clip, rng) if self.transform is not None else clip.float()
        return self._to_views(out, *idx.shape)

    @staticmethod
    def _to_views(out: torch.Tensor, J: int, L: int) -> torch.Tensor:
        if out.ndim == 4:  # [J*L, C, H, W]
            v = out.reshape(J, L, *out.shape[1:])
        elif out.ndim == 5:  # [S, J*L, C, H, W] (spatial crops)
            S = out.shape[0]
            v = out.reshape(S, J, L, *out.shape[2:]).transpose(0, 1).reshape(J * S, L, *out.shape[2:])
        else:
            raise ValueError(f"transform returned shape {tuple(out.shape)}; expected 4 or 5 dims")
        return v[0] if v.shape[0] == 1 else v

    def _placeholder(self) -> torch.Tensor:
        if self._placeholder_shape is None:
            n = self.sampler.num_clips * self.sampler.clip_len
            dummy = torch.zeros((n, 3, 256, 340), dtype=torch.uint8)
            out = self.transform(dummy, np.random.default_rng(0)) if self.transform else dummy.float()
            self._placeholder_shape = tuple(self._to_views(out, self.sampler.num_clips, self.sampler.clip_len).shape)
        return torch.zeros(self._placeholder_shape, dtype=torch.float32)

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, epoch = int(key[0]), int(key[1])
        else:
            index, epoch = int(key), self.epoch
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} videos")
        target, attempt = index, 0
        while True:
            record = self.records[target]
            try:
                video = self.load(target, self._rng(target, epoch, attempt))
                if self._placeholder_shape is None:
                    self._placeholder_shape = tuple(video.shape)
                return {"video": video, "label": int(record.label), "index": target,
                        "valid": True, "error": ""}
            except (VideoDecodeError, OSError) as e:
                err = str(e) if isinstance(e, VideoDecodeError) else f"{self.full_path(record)}: {e}"
                if self.on_bad_video == "raise":
                    if isinstance(e, VideoDecodeError):
                        raise
                    raise VideoDecodeError(err) from e
                if not self.train:
                    log.warning("evaluation: failed video %s (index %d): %s", record.path, target, err)
                    return {"video": self._placeholder(), "label": int(record.label), "index": target,
                            "valid": False, "error": err}
                attempt += 1
                self._skip_counter += 1
                if attempt > self.max_skip_attempts:
                    raise VideoDecodeError(
                        f"{err} (and {self.max_skip_attempts} replacement videos failed too; "
                        "is the dataset root right?)"
                    ) from e
                target = int(np.random.default_rng([self.seed, epoch, index, attempt, 1]).integers(len(self)))
                log.warning(
                    "skipping bad video %s: %s; replaced by index %d (%d skipped so far)",
                    record.path, err, target, self.num_skipped,
                )

    def __repr__(self) -> str:
        return (
            f"VideoDataset({len(self)} videos, root={self.root!r}, classes={self.num_classes}, "
            f"train={self.train}, sampler={self.sampler}, on_bad_video={self.on_bad_video!r})"
        )
