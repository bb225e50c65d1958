"""The training loop: one process or many (torchrun + DDP), resumable from any checkpoint.

    cfg = load_config(["configs/demo/clip_mean.yaml"])
    results = train(cfg, resume="auto")

Per optimizer step: ``accum_steps`` micro-batches (DDP gradient all-reduce only on the last, via
``no_sync``), autocast in the configured precision (GradScaler for fp16), gradient clipping, AdamW
with the method's parameter groups, and the per-step warm-up + cosine schedule. The method computes
its named loss terms inside its (DDP-wrapped, possibly compiled) ``forward(video, vocab, targets)``;
the loss is ``Σ_k train.loss_weights[k] · term_k`` (default weights: the method's), and every term
is logged. The data order and every
augmentation draw are functions of (seed, epoch, index), so a run resumed from a checkpoint —
saved at the end of an epoch or every ``train.save_every`` steps — continues exactly where the
interrupted one was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vclip.config import RunConfig, save_config
from vclip.engine import data as run_data
from vclip.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from vclip.engine.distributed import DistInfo, barrier, init_distributed
from vclip.engine.evaluate import evaluate_method, write_results
from vclip.engine.logging import RunLogger, setup_logging, teardown_logging
from vclip.engine.optim import WarmupCosine, build_method_optimizer
from vclip.engine.runtime import autocast_dtype, seed_everything
from vclip.errors import CheckpointError, ConfigError
from vclip.methods import build_method, check_config, make_vocabulary

log = logging.getLogger(__name__)

__all__ = ["train", "weighted_loss", "autocast_dtype", "seed_everything"]


def _resolve_resume(resume: str | None, ckpts: CheckpointManager) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return ckpts.latest()
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"--resume {resume}: no such checkpoint")
    return p


def weighted_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``Σ_k weights[k] · losses[k]`` over the terms a method returned (a term without a weight is
    an error naming it: the method's ``loss_weights`` must declare every term it returns)."""
    if not losses:
        raise ConfigError("the method returned no loss terms for the training targets")
    total = None
    for name, term in losses.items():
        if name not in weights:
            raise ConfigError(f"loss term {name!r} has no weight: declare it in the method's loss_weights "
                              f"(has: {', '.join(weights)}) or set train.loss_weights.{name}")
        w = float(weights[name])
        part = term.float() * w if w != 1.0 else term.float()
        total = part if total is None else total + part
    return total


def train(cfg: RunConfig, resume: str | None = None, dist: DistInfo | None = None) -> dict:
    """Train ``cfg``; evaluate every ``train.eval_every`` epochs when ``data.val_list`` is set.
    Returns the last evaluation's results (or the training summary)."""
    check_config(cfg)  # the method-dependent checks, before anything is written
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
        return _Run(cfg, dist, logger).fit(resume)
    finally:
        logger.close()
        if owns_logging:
            teardown_logging()


@dataclass
class _Plan:
    """How long the run is, in micro-batches, optimizer steps and epochs."""

    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int


def _plan(cfg: RunConfig, micro_per_epoch: int, num_videos: int, world_size: int) -> _Plan:
    t = cfg.train
    if micro_per_epoch < t.accum_steps:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} × world {world_size} × train.accum_steps={t.accum_steps} "
            f"is more than the {num_videos} training videos: no full optimizer step per epoch")
    steps_per_epoch = micro_per_epoch // t.accum_steps
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    if total_steps < 1:
        raise ConfigError(f"train.epochs={t.epochs}, train.max_steps={t.max_steps}: no optimizer step to run")
    warmup_steps = int(t.warmup_epochs * steps_per_epoch)
    if warmup_steps and warmup_steps >= total_steps:
        raise ConfigError(
            f"train.warmup_epochs={t.warmup_epochs} is {warmup_steps} optimizer steps ({steps_per_epoch} per epoch), "
            f"not fewer than the run's {total_steps} steps (train.epochs={t.epochs}, train.max_steps={t.max_steps}): "
            "lower train.warmup_epochs (0 turns the warm-up off) or train longer")
    return _Plan(micro_per_epoch, steps_per_epoch, total_steps,
                 min(t.epochs, math.ceil(total_steps / steps_per_epoch)), warmup_steps)


class _Run:
    """One training run: data, model, optimisation and checkpoints, and the loop over them."""

    def __init__(self, cfg: RunConfig, dist: DistInfo, logger: RunLogger):
        self.cfg, self.dist, self.logger = cfg, dist, logger
        self.device = dist.device
        seed_everything(cfg.train.seed + dist.rank)
        self._build_data()
        self.method = build_method(cfg).to(self.device)
        self.plan = _plan(cfg, len(self.loader), len(self.train_set), dist.world_size)
        self.loss_weights = {**self.method.loss_weights, **cfg.train.loss_weights}
        self._build_optimization()
        self.ckpts = CheckpointManager(cfg.run_dir)
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _build_data(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.names = run_data.class_names(cfg)
        self.vocab = make_vocabulary(cfg, self.names)
        self.train_set = run_data.train_dataset(cfg, self.names)
        self.loader = run_data.train_loader(cfg, self.train_set, dist.rank, dist.world_size)
        self.val_set = run_data.eval_dataset(cfg, self.names) if cfg.data.val_list else None
        self.mix = run_data.mixup(cfg, len(self.names))

    def _build_optimization(self) -> None:
        t, device = self.cfg.train, self.device
        self.optimizer = build_method_optimizer(self.method, t)
        self.scheduler = WarmupCosine(self.optimizer, total_steps=self.plan.total_steps,
                                      warmup_steps=self.plan.warmup_steps,
                                      min_lr=t.min_lr if t.min_lr is not None else t.lr / 100)
        self.amp_dtype = autocast_dtype(t.precision, device)
        if self.amp_dtype == torch.float16 and device.type != "cuda":
            raise ConfigError(f"train.precision: fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.model = self.method
        if self.dist.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(self.model) if t.compile else self.model

    def _restore(self, resume: str | None) -> tuple[int, int]:
        """Load ``resume`` (if any) into model, optimizer, schedule, scaler and RNG; the epoch and
        micro-batch to continue from."""
        path = _resolve_resume(resume, self.ckpts)
        if path is None:
            return 0, 0
        model_state, state, meta = self.ckpts.load(path)
        self.method.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rank = self.dist.rank
        restore_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        self.step = meta["step"]
        log.info("resumed from %s at epoch %d, step %d", path, meta["epoch"], self.step)
        return meta["epoch"], meta["micro_in_epoch"]

    def _save(self, epoch: int, micro_in_epoch: int, metric: float | None = None) -> None:
        rng = _gather_rng()
        if self.dist.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng}
            meta = {"step": self.step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "metric": metric,
                    "config_hash": self.cfg.digest(), "method": self.cfg.model.method}
            self.ckpts.save("last", model_state=self.method.state_dict(), train_state=state, meta=meta,
                            is_best=metric is not None and self.ckpts.is_better(metric))
        barrier()

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: str | None) -> dict:
        start_epoch, skip_micro = self._restore(resume)
        results: dict = {}
        t0 = time.time()
        done = self.step >= self.plan.total_steps
        for epoch in range(start_epoch, self.plan.epochs):
            if done:
                break
            done = self._train_epoch(epoch, skip_micro)
            skip_micro = 0
            metric = None
            if self._evaluate_now(epoch, done):
                results = self._evaluate(epoch)
                metric = results.get("top1")
            self._save(epoch + 1, 0, metric)
        return self._finish(results, time.time() - t0)

    def _train_epoch(self, epoch: int, skip_micro: int) -> bool:
        """One epoch from micro-batch ``skip_micro`` on; True when the run's last step is done."""
        cfg, t, plan = self.cfg, self.cfg.train, self.plan
        self.method.train()
        self.loader.sampler.set_epoch(epoch)
        if skip_micro:
            self.loader.sampler.skip_first(skip_micro * cfg.data.batch_size)
        micro = skip_micro
        self.optimizer.zero_grad(set_to_none=True)
        step_losses: dict[str, torch.Tensor] = {}
        bar = self.logger.progress(self.loader, total=plan.micro_per_epoch - micro,
                                   desc=f"epoch {epoch + 1}/{plan.epochs}")
        for batch in bar:
            micro += 1
            sync = micro % t.accum_steps == 0
            for k, v in self._micro_step(batch, epoch, micro - 1, sync).items():  # the step's mean term
                step_losses[k] = step_losses.get(k, 0.0) + v / t.accum_steps
            if not sync:
                continue
            lr = self._optimizer_step()
            if self.step % t.log_every == 0 or self.step == plan.total_steps:
                self.logger.log(self.step, epoch=epoch + micro / plan.micro_per_epoch, lr=lr,
                                **_mean_over_ranks(step_losses))
            step_losses = {}
            if t.save_every and self.step % t.save_every == 0 and micro < plan.micro_per_epoch:
                self._save(epoch, micro)
            if self.step >= plan.total_steps:
                return True
        return False

    def _micro_step(self, batch: dict, epoch: int, micro: int, sync: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (gradients all-reduced only when ``sync``); the
        detached loss and each term."""
        cfg, device = self.cfg, self.device
        video = batch["video"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        targets = labels
        if self.mix is not None:
            rng = np.random.default_rng([cfg.train.seed, epoch, micro, self.dist.rank])
            video, targets = self.mix(video, labels, rng=rng)
        smoothing = cfg.data.aug.label_smoothing if self.mix is None else 0.0
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        no_sync = self.model.no_sync() if ddp and not sync else contextlib.nullcontext()
        amp = self.amp_dtype
        with no_sync:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = self.forward(video, self.vocab, targets, label_smoothing=smoothing)
            loss = weighted_loss(out.losses, self.loss_weights)
            self.scaler.scale(loss / cfg.train.accum_steps).backward()
        terms = {"loss": loss.detach()}
        terms.update({k: v.detach().float() for k, v in out.losses.items() if k != "loss"})
        return terms

    def _optimizer_step(self) -> float:
        """Clip, step, schedule; the LR the step used."""
        t = self.cfg.train
        if t.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), t.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return lr

    def _evaluate_now(self, epoch: int, done: bool) -> bool:
        every = self.cfg.train.eval_every
        return self.val_set is not None and ((epoch + 1) % every == 0 or done or epoch + 1 == self.plan.epochs)

    def _evaluate(self, epoch: int) -> dict:
        results = evaluate_method(self.method, self.val_set, self.vocab, self.cfg, self.dist, self.logger)
        if self.dist.is_main:
            write_results(results, self.cfg.run_dir / f"results_epoch{epoch + 1}.json", self.names,
                          confusion_png=None)
        self.logger.log(self.step, **{f"val/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        return results

    def _finish(self, results: dict, seconds: float) -> dict:
        skipped = self.train_set.num_skipped
        if skipped:
            log.warning("%d training samples were replaced because their video could not be decoded", skipped)
        summary = {"steps": self.step, "epochs": self.plan.epochs, "seconds": round(seconds, 1),
                   "skipped_training_videos": skipped}
        if results and self.dist.is_main:
            results = dict(results, training=summary)
            run_dir = self.cfg.run_dir
            write_results(results, run_dir / "results.json", self.names,
                          confusion_png=run_dir / "confusion.png" if self.cfg.eval.confusion_png else None)
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
