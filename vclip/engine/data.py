"""Datasets and loaders of a run config (the bridge between ``RunConfig.data`` and ``vclip.data``)."""

from __future__ import annotations

from pathlib import Path

from vclip.config import RunConfig
from vclip.data.annotations import load_annotations, read_label_csv
from vclip.data.datasets import VideoDataset
from vclip.data.loader import build_loader
from vclip.data.sampling import build_sampler
from vclip.data.transforms import build_mixup, build_test_transform, build_train_transform
from vclip.errors import ConfigError


def _path(value: str | None, key: str) -> Path:
    if not value:
        raise ConfigError(f"{key}: not set")
    p = Path(value).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}: {p} does not exist")
    return p


def class_names(cfg: RunConfig) -> list[str]:
    return read_label_csv(_path(cfg.data.labels, "data.labels"))


def _sampler_mode(cfg: RunConfig) -> str:
    return "segment" if cfg.data.sampling == "segments" else "dense"


def sampled_frames(cfg: RunConfig) -> int:
    """Frames decoded per view: the method's ``sampled_frames`` for ``data.num_frames`` (T; MoTED:
    α·T dense frames in one clip, of which every α-th feeds CLIP), so one sampler call and one
    decode serve every sampling a method needs."""
    from vclip.methods import method_class

    cls = method_class(cfg.model.method)
    return cls.sampled_frames(cls.parse_options(cfg.model.options), cfg.data.num_frames)


def decode_options(cfg: RunConfig) -> dict:
    """``open_video`` options of ``cfg.data``: ``device`` for backend torchcodec. ``cuda`` becomes
    this process's current CUDA device (``cuda:LOCAL_RANK`` under DDP), so spawned loader workers
    decode on their rank's GPU; a GPU that cannot be used fails here, before any video is read."""
    d = cfg.data
    if d.backend != "torchcodec":
        return {}
    from vclip.data.decode import check_decode_device

    device = d.decode_device
    if check_decode_device(device) and device == "cuda":
        import torch

        device = f"cuda:{torch.cuda.current_device()}"
    return {"device": device}


def gpu_decoding(cfg: RunConfig) -> bool:
    return cfg.data.backend == "torchcodec" and cfg.data.decode_device != "cpu"


def train_dataset(cfg: RunConfig, names: list[str]) -> VideoDataset:
    d = cfg.data
    records = load_annotations(_path(d.train_list, "data.train_list"), class_names=names, subset=d.train_subset,
                               root=d.root)
    sampler = build_sampler(mode=_sampler_mode(cfg), num_frames=sampled_frames(cfg), interval=d.frame_interval,
                            short_policy=d.short_video, test_mode=False)
    a = d.aug
    transform = build_train_transform(
        input_size=d.image_size, crop=a.crop,
        flip=a.flip, color_jitter=a.color_jitter, jitter_per_frame=a.color_jitter_per_frame,
        grayscale=a.grayscale, norm=d.normalize)
    return VideoDataset(records, d.root, names, sampler=sampler, transform=transform, backend=d.backend,
                        on_bad_video=d.on_bad_video, train=True, seed=cfg.train.seed,
                        decode_options=decode_options(cfg))


def eval_dataset(cfg: RunConfig, names: list[str], annotation: str | None = None) -> VideoDataset:
    """Evaluation set: deterministic views; a video that fails to decode is reported, never dropped."""
    d, e = cfg.data, cfg.eval
    path = annotation or d.val_list
    records = load_annotations(_path(path, "data.val_list"), class_names=names, subset=d.val_subset, root=d.root)
    sampler = build_sampler(mode=_sampler_mode(cfg), num_frames=sampled_frames(cfg), interval=d.frame_interval,
                            short_policy=d.short_video, num_clips=e.num_clips, test_mode=True,
                            compat_random_test_clips=e.compat_random_test_clips, test_positions=e.test_positions)
    transform = build_test_transform(input_size=d.image_size, num_crops=e.num_crops, norm=d.normalize)
    return VideoDataset(records, d.root, names, sampler=sampler, transform=transform, backend=d.backend,
                        on_bad_video="skip", train=False, seed=cfg.train.seed, decode_options=decode_options(cfg))


def train_loader(cfg: RunConfig, dataset: VideoDataset, rank: int, world_size: int):
    return build_loader(dataset, cfg.data.batch_size, train=True, num_workers=cfg.data.num_workers,
                        seed=cfg.train.seed, rank=rank, world_size=world_size,
                        multiprocessing_context=_worker_context(cfg))


def _worker_context(cfg: RunConfig) -> str | None:
    """Loader workers decoding on the GPU are spawned: a forked child cannot use CUDA."""
    return "spawn" if gpu_decoding(cfg) and cfg.data.num_workers > 0 else None


def eval_loader(cfg: RunConfig, dataset: VideoDataset, rank: int, world_size: int):
    bs = cfg.data.eval_batch_size or cfg.data.batch_size
    return build_loader(dataset, bs, train=False, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                        rank=rank, world_size=world_size, persistent_workers=False,
                        multiprocessing_context=_worker_context(cfg))


def mixup(cfg: RunConfig, num_classes: int):
    a = cfg.data.aug
    return build_mixup({"mixup": a.mixup, "cutmix": a.cutmix, "switch_prob": a.mix_switch_prob,
                        "label_smoothing": a.label_smoothing, "partner": a.mix_partner}, num_classes)
