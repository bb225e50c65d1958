"""The training loop: one process or many (torchrun + DDP), resumable from any checkpoint.

    cfg = load_config(["configs/demo/clip_mean.yaml"])
    results = train(cfg, resume="auto")

Per optimizer step: ``accum_steps`` micro-batches (DDP gradient all-reduce only on the last, via
``no_sync``), autocast in the configured precision (GradScaler for fp16), gradient clipping, AdamW
with parameter groups, and the per-step warm-up + cosine schedule. The data order and every
augmentation draw are functions of (seed, epoch, index), so a run resumed from a checkpoint —
saved at the end of an epoch or every ``train.save_every`` steps — continues exactly where the
interrupted one was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from vclip.config import RunConfig, save_config
from vclip.engine import data as run_data
from vclip.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from vclip.engine.distributed import DistInfo, barrier, init_distributed
from vclip.engine.evaluate import evaluate_method, write_results
from vclip.engine.logging import RunLogger, setup_logging, teardown_logging
from vclip.engine.optim import WarmupCosine, build_optimizer
from vclip.errors import CheckpointError, ConfigError
from vclip.methods import build_method, make_vocabulary

log = logging.getLogger(__name__)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_resume(resume: str | None, ckpts: CheckpointManager) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return ckpts.latest()
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"--resume {resume}: no such checkpoint")
    return p


def train(cfg: RunConfig, resume: str | None = None, dist: DistInfo | None = None) -> dict:
    """Train ``cfg``; evaluate every ``train.eval_every`` epochs when ``data.val_list`` is set.
    Returns the last evaluation's results (or the training summary)."""
    dist = dist or init_distributed(cfg.device)
    run_dir = cfg.run_dir
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()
    # the run's log file handlers are removed again at the end (a library caller may train again)
    owns_logging = not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("vclip").handlers)
    setup_logging(run_dir, dist.rank)
    logger = RunLogger(run_dir, rank=dist.rank)
    try:
        return _train(cfg, resume, dist, logger)
    finally:
        logger.close()
        if owns_logging:
            teardown_logging()


def _train(cfg: RunConfig, resume: str | None, dist: DistInfo, logger: RunLogger) -> dict:
    device = dist.device
    run_dir = cfg.run_dir
    seed_everything(cfg.train.seed + dist.rank)

    names = run_data.class_names(cfg)
    vocab = make_vocabulary(cfg, names)
    train_set = run_data.train_dataset(cfg, names)
    loader = run_data.train_loader(cfg, train_set, dist.rank, dist.world_size)
    val_set = run_data.eval_dataset(cfg, names) if cfg.data.val_list else None
    mix = run_data.mixup(cfg, len(names))

    method = build_method(cfg).to(device)
    t = cfg.train
    micro_per_epoch = len(loader)
    if micro_per_epoch < t.accum_steps:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} × world {dist.world_size} × train.accum_steps={t.accum_steps} "
            f"is more than the {len(train_set)} training videos: no full optimizer step per epoch")
    steps_per_epoch = micro_per_epoch // t.accum_steps
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    if total_steps < 1:
        raise ConfigError(f"train.epochs={t.epochs}, train.max_steps={t.max_steps}: no optimizer step to run")
    epochs = min(t.epochs, math.ceil(total_steps / steps_per_epoch))
    warmup_steps = int(t.warmup_epochs * steps_per_epoch)
    if warmup_steps and warmup_steps >= total_steps:
        raise ConfigError(
            f"train.warmup_epochs={t.warmup_epochs} is {warmup_steps} optimizer steps ({steps_per_epoch} per epoch), "
            f"not fewer than the run's {total_steps} steps (train.epochs={t.epochs}, train.max_steps={t.max_steps}): "
            "lower train.warmup_epochs (0 turns the warm-up off) or train longer")
    optimizer = build_optimizer(method, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), eps=t.eps,
                                lr_mult_new=t.lr_mult_new, is_new=method.is_new_parameter)
    scheduler = WarmupCosine(optimizer, total_steps=total_steps, warmup_steps=warmup_steps,
                             min_lr=t.min_lr if t.min_lr is not None else t.lr / 100)
    amp_dtype = autocast_dtype(t.precision, device)
    if amp_dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model = method
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if t.compile else model

    ckpts = CheckpointManager(run_dir)
    step, start_epoch, skip_micro = 0, 0, 0
    ckpt_path = _resolve_resume(resume, ckpts)
    if ckpt_path is not None:
        model_state, state, meta = ckpts.load(ckpt_path)
        method.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        step, start_epoch, skip_micro = meta["step"], meta["epoch"], meta["micro_in_epoch"]
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, start_epoch, step)

    def save(epoch: int, micro_in_epoch: int, metric: float | None = None) -> None:
        rng = _gather_rng()
        if dist.is_main:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng}
            meta = {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "metric": metric,
                    "config_hash": cfg.digest(), "method": cfg.model.method}
            ckpts.save("last", model_state=method.state_dict(), train_state=state, meta=meta,
                       is_best=metric is not None and ckpts.is_better(metric))
        barrier()

    results: dict = {}
    t0 = time.time()
    done = step >= total_steps
    for epoch in range(start_epoch, epochs):
        if done:
            break
        method.train()
        loader.sampler.set_epoch(epoch)
        if skip_micro:
            loader.sampler.skip_first(skip_micro * cfg.data.batch_size)
        micro = skip_micro
        skip_micro = 0
        optimizer.zero_grad(set_to_none=True)
        step_losses: dict[str, torch.Tensor] = {}
        for batch in logger.progress(loader, total=micro_per_epoch - micro, desc=f"epoch {epoch + 1}/{epochs}"):
            video = batch["video"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            targets = labels
            if mix is not None:
                video, targets = mix(video, labels, rng=np.random.default_rng([t.seed, epoch, micro, dist.rank]))
            micro += 1
            sync = micro % t.accum_steps == 0
            no_sync = model.no_sync() if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not sync \
                else contextlib.nullcontext()
            with no_sync:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = forward(video, vocab)
                losses = method.loss(logits, targets, label_smoothing=cfg.data.aug.label_smoothing if mix is None else 0.0)
                scaler.scale(losses["loss"] / t.accum_steps).backward()
            for k, v in losses.items():  # the step's loss terms: mean over its micro-batches
                step_losses[k] = step_losses.get(k, 0.0) + torch.as_tensor(v).detach().float() / t.accum_steps
            if not sync:
                continue
            if t.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(method.parameters(), t.clip_grad)
            lr = optimizer.param_groups[0]["lr"]  # the LR this step used
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % t.log_every == 0 or step == total_steps:
                logger.log(step, epoch=epoch + micro / micro_per_epoch, lr=lr, **_mean_over_ranks(step_losses))
            step_losses = {}
            if t.save_every and step % t.save_every == 0 and micro < micro_per_epoch:
                save(epoch, micro)
            if step >= total_steps:
                done = True
                break
        metric = None
        if val_set is not None and ((epoch + 1) % t.eval_every == 0 or done or epoch + 1 == epochs):
            results = evaluate_method(method, val_set, vocab, cfg, dist, logger)
            metric = results.get("top1")
            if dist.is_main:
                write_results(results, run_dir / f"results_epoch{epoch + 1}.json", names,
                              confusion_png=None)
            logger.log(step, **{f"val/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        save(epoch + 1, 0, metric)
    if skipped := train_set.num_skipped:
        log.warning("%d training samples were replaced because their video could not be decoded", skipped)
    summary = {"steps": step, "epochs": epochs, "seconds": round(time.time() - t0, 1),
               "skipped_training_videos": skipped}
    if results and dist.is_main:
        results = dict(results, training=summary)
        write_results(results, run_dir / "results.json", names,
                      confusion_png=run_dir / "confusion.png" if cfg.eval.confusion_png else None)
    return results or {"training": summary}


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The values averaged over all processes (collective: every rank calls it at the same step),
    so a logged loss is the global batch's, whatever the number of processes."""
    from vclip.engine.distributed import all_reduce_sum, world_size

    if not values:
        return {}
    keys = list(values)
    flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).reshape(()).cpu() for k in keys])
    flat = all_reduce_sum(flat) / world_size()
    return {k: float(v) for k, v in zip(keys, flat)}


def _gather_rng() -> list:
    from vclip.engine.distributed import all_gather_object

    return all_gather_object(capture_rng_state())
