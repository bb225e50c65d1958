"""DataLoader construction: reproducible workers, epoch-keyed samples, exact distributed evaluation.

* Training: :class:`torch.utils.data.DistributedSampler` (shuffled by ``seed + epoch``; with one
  process too, ``num_replicas=1``), wrapped in :class:`EpochKeySampler`, which yields
  ``(index, epoch)`` keys so each sample's augmentation depends only on ``(seed, epoch, index)``
  (:class:`~vclip.data.datasets.VideoDataset`) — also with persistent workers, whose dataset copies
  never see a ``set_epoch`` made in the main process. Call ``loader.sampler.set_epoch(e)`` before
  each epoch; without it the epoch advances by one per pass.
* Evaluation: :class:`ExactDistributedSampler` gives rank ``r`` the contiguous block
  ``[r N / W, (r + 1) N / W)``: every video exactly once over all processes, no padding
  duplicates (shards may differ by one video), and ``drop_last`` is always off.
* Workers: pinned memory (when CUDA is available), persistent workers, and a ``worker_init_fn``
  seeding ``random``, ``numpy`` and ``torch`` in each worker from the loader's seeded generator.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler


def get_dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochKeySampler(Sampler):
    """Wraps an index sampler and yields ``(index, epoch)`` keys. ``set_epoch`` is forwarded to
    the wrapped sampler; each pass uses the current epoch, then advances it by one."""

    def __init__(self, sampler: Sampler, epoch: int = 0):
        self.sampler = sampler
        self.epoch = int(epoch)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_first(self, n: int) -> None:
        """Skip the first ``n`` keys of the next pass only (resuming mid-epoch)."""
        self._skip = int(n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self._skip
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch, self._skip = epoch + 1, 0
        for pos, i in enumerate(self.sampler):
            if pos >= skip:
                yield (int(i), epoch)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self._skip)


class ExactDistributedSampler(Sampler):
    """Evaluation sampler: rank ``r`` of ``W`` gets indices ``[floor(r N / W), floor((r+1) N / W))``
    in order. Over all ranks every index appears exactly once (no padding, uneven shards allowed);
    with ``N < W`` some ranks get nothing. ``num_replicas``/``rank`` default to the process group."""

    def __init__(self, dataset_or_len, num_replicas: int | None = None, rank: int | None = None):
        n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        r, w = get_dist_info()
        self.num_replicas = w if num_replicas is None else int(num_replicas)
        self.rank = r if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} out of range for {self.num_replicas} replicas")
        self.total = int(n)
        self.start = self.total * self.rank // self.num_replicas
        self.stop = self.total * (self.rank + 1) // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def set_epoch(self, epoch: int) -> None:  # evaluation order never changes
        pass


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed (which the
    DataLoader derives from its generator), so any code using global RNGs is reproducible too."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_loader(
    dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 4,
    seed: int = 0,
    distributed: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    prefetch_factor: int | None = 2,
    collate_fn=None,
    timeout: float = 0,
    multiprocessing_context=None,
) -> DataLoader:
    """A DataLoader for training (shuffled, epoch-keyed, ``drop_last`` by default) or evaluation
    (exact-once shards, in order, never ``drop_last``).

    ``distributed`` defaults to "a process group is initialised"; ``rank``/``world_size`` override
    the group's (useful without one). ``pin_memory`` defaults to CUDA availability. ``seed`` seeds
    the shuffle order and the workers' global RNGs; the augmentation of a sample comes from
    ``(dataset.seed, epoch, index)`` (see :class:`EpochKeySampler`), so build the dataset with the
    same seed.
    """
    r, w = get_dist_info()
    if distributed is None:
        distributed = w > 1 or rank is not None or world_size is not None
    if distributed:
        rank = r if rank is None else int(rank)
        world_size = w if world_size is None else int(world_size)
    else:
        rank, world_size = 0, 1
    if train:
        inner = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed), drop_last=False
        )
        sampler = EpochKeySampler(inner)
        drop_last = True if drop_last is None else drop_last
    else:
        if drop_last:
            raise ValueError("evaluation loaders never drop videos (drop_last must be False)")
        sampler = ExactDistributedSampler(dataset, num_replicas=world_size, rank=rank)
        drop_last = False
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator()
    generator.manual_seed(int(seed) + 1000003 * rank)
    kwargs = {}
    if num_workers > 0:
        kwargs.update(
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            timeout=timeout,
            multiprocessing_context=multiprocessing_context,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        **kwargs,
    )
