"""The training loop: one process or many (torchrun + DDP), resumable from any checkpoint.

    cfg = load_config(["configs/demo/clip_mean.yaml"])
    results = train(cfg, resume="auto")

Per optimizer step: ``accum_steps`` micro-batches (DDP gradient all-reduce only on the last, via
``no_sync``: :func:`accumulation_context`), autocast in the configured precision (GradScaler for fp16), gradient clipping, AdamW
with the method's parameter groups, and the per-step warm-up + cosine schedule. The method computes
its named loss terms inside its (DDP-wrapped, possibly compiled) ``forward(video, vocab, targets)``;
the loss is ``Σ_k train.loss_weights[k] · term_k`` (default weights: the method's), and every term
is logged. The data order and every
augmentation draw are functions of (seed, epoch, index), so a run resumed from a checkpoint —
saved at the end of an epoch or every ``train.save_every`` steps — continues exactly where the
interrupted one was.

Host syncs: a step makes none unless it is a *check step* (every ``train.check_every`` steps, and
every logging, saving, epoch-end and last step), where the loss terms and the gradient norm are
exchanged, logged and checked; in between, finiteness is accumulated on the device and checked at
the next check step. Frozen-text class features are taken from the method's cache outside the
(possibly compiled) forward, which then gets tensors only.

Run safety: a new run refuses a run directory that already holds a run (``resume="auto"`` continues
it, ``overwrite=True`` deletes its files first); the directory is probed for writing before any
data or model work; a resumed run refuses a config that differs from the one stored in the
checkpoint (``allow_config_change=True`` accepts it); a non-finite loss term or gradient norm stops
the run (:class:`~vclip.errors.TrainingError`) unless ``train.max_nonfinite_skips`` allows skipping
the update; SIGINT/SIGTERM save a checkpoint at the next optimizer-step boundary and stop with
:class:`~vclip.errors.TrainingInterrupted` (its message holds the resume command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vclip.config import RunConfig
from vclip.engine import data as run_data
from vclip.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from vclip.engine.distributed import DistInfo, barrier, init_distributed
from vclip.engine.evaluate import evaluate_method, write_results
from vclip.engine.logging import RunLogger, setup_logging, teardown_logging
from vclip.engine.optim import WarmupCosine, build_method_optimizer
from vclip.engine.runtime import autocast_dtype, seed_everything
from vclip.engine.rundir import RESUME_FREE_KEYS, any_rank, config_changes, prepare_run_dir
from vclip.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted, VclipError
from vclip.methods import build_method, check_config, make_vocabulary

log = logging.getLogger(__name__)

__all__ = ["train", "weighted_loss", "accumulation_context", "resolve_check_every", "autocast_dtype", "seed_everything", "config_changes", "RESUME_FREE_KEYS"]

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


def accumulation_context(model: torch.nn.Module, sync: bool):
    """The context of one micro-batch's forward and backward: DDP's ``no_sync`` (gradients kept
    local, no all-reduce) on every micro-batch of an accumulation but the last (``sync=False``);
    a null context for the last one and for a model that is not DDP-wrapped."""
    if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def resolve_check_every(train_cfg, device: torch.device) -> int:
    """Optimizer steps between host checks (see ``train.check_every``): 1 when
    ``max_nonfinite_skips`` > 0 (a skipped step needs its own check), else ``check_every``, else
    ``log_every`` on CUDA (a sync drains the GPU queue) and 1 elsewhere (exact error steps)."""
    t = train_cfg
    if t.max_nonfinite_skips > 0:
        return 1
    if t.check_every is not None:
        return t.check_every
    return t.log_every if device.type == "cuda" else 1


def train(cfg: RunConfig, resume: str | None = None, dist: DistInfo | None = None, *,
          overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """Train ``cfg``; evaluate every ``train.eval_every`` epochs when ``data.val_list`` is set.
    Returns the last evaluation's results (or the training summary).

    ``resume``: ``"auto"`` (the run directory's ``checkpoints/last``; a fresh start when the
    directory holds no checkpoint) or a checkpoint path. Without it, a run directory that already
    holds a run is refused unless ``overwrite`` (which deletes that run's files first). Resuming
    with a config other than the checkpoint's is refused unless ``allow_config_change``
    (:data:`RESUME_FREE_KEYS` may always differ). Raises :class:`~vclip.errors.TrainingError` on a
    non-finite loss or gradient norm, :class:`~vclip.errors.TrainingInterrupted` after SIGINT/SIGTERM
    (a checkpoint saved; ``.resume_command``)."""
    check_config(cfg)  # the method-dependent checks, before anything is written
    dist = dist or init_distributed(cfg.device)
    run_dir = cfg.run_dir
    resume_path, notes = prepare_run_dir(cfg, resume, dist, overwrite, allow_config_change)
    barrier()
    # the run's log file handlers are removed again at the end (a library caller may train again)
    owns_logging = not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("vclip").handlers)
    setup_logging(run_dir, dist.rank)
    logger = RunLogger(run_dir, rank=dist.rank)
    for level, line in notes:
        log.log(level, line)
    try:
        return _Run(cfg, dist, logger).fit(resume_path)
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
        # the config as given (before any build step could fill anything in): stored in every checkpoint
        self.config_dict, self.config_hash = cfg.to_dict(), cfg.digest()
        self.nonfinite_skips = 0  # optimizer steps skipped for a non-finite loss / gradient norm
        self.check_every = resolve_check_every(cfg.train, self.device)
        self._finite: torch.Tensor | None = None  # on-device: all finite since the last check step
        self._checked_step = 0  # the last check step
        self.signal: int | None = None  # SIGINT / SIGTERM received: stop at the next step boundary
        self._stop = False  # every process agreed to stop (set at each optimizer step)
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
                                      min_lr=t.min_lr if t.min_lr is not None else t.lr / 100,
                                      schedule=t.schedule)
        self.amp_dtype = autocast_dtype(t.precision, device)
        if self.amp_dtype == torch.float16 and device.type != "cuda":
            raise ConfigError(f"train.precision: fp16 needs a CUDA device (this run is on {device}); use bf16 or fp32")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.model = self.method
        if self.dist.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(self.model) if t.compile else self.model

    def _restore(self, path: Path | None) -> tuple[int, int]:
        """Load the checkpoint ``path`` (if any) into model, optimizer, schedule, scaler and RNG; the
        epoch and micro-batch to continue from."""
        if path is None:
            return 0, 0
        model_state, state, meta = self.ckpts.load(path)
        from vclip.engine.checkpoint import load_model_state  # errors list missing/unexpected/mis-shaped
        load_model_state(self.method, model_state, f"--resume {path}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rank = self.dist.rank
        restore_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        self.step = self._checked_step = meta["step"]
        self.nonfinite_skips = int(meta.get("nonfinite_skips", 0))
        log.info("resumed from %s at epoch %d, step %d", path, meta["epoch"], self.step)
        return meta["epoch"], meta["micro_in_epoch"]

    def _save(self, epoch: int, micro_in_epoch: int, metric: float | None = None) -> None:
        """Rank 0 writes ``last`` (and ``best``); every process raises if that failed (a full disk,
        non-finite weights: CheckpointError, the previous checkpoint kept)."""
        rng = _gather_rng()
        error: Exception | None = None
        if self.dist.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng}
            meta = {"step": self.step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, "metric": metric,
                    "config_hash": self.config_hash, "config": self.config_dict, "method": self.cfg.model.method,
                    "nonfinite_skips": self.nonfinite_skips}
            try:
                self.ckpts.save("last", model_state=self.method.state_dict(), train_state=state, meta=meta,
                                is_best=metric is not None and self.ckpts.is_better(metric))
            except VclipError as e:
                error = e
        if any_rank(error is not None, self.dist):  # also the barrier: nobody runs ahead of the save
            raise error or CheckpointError("process 0 could not save the checkpoint (see its error)")

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: Path | None) -> dict:
        with self._stop_on_signals():
            return self._fit(resume)

    def _fit(self, resume: Path | None) -> dict:
        start_epoch, skip_micro = self._restore(resume)
        results: dict = {}
        t0 = time.time()
        done = self.step >= self.plan.total_steps
        for epoch in range(start_epoch, self.plan.epochs):
            if done:
                break
            if epoch > start_epoch and any_rank(self.signal is not None, self.dist):
                raise self._interrupted(epoch, 0)  # a signal during the evaluation: saved just before
            done = self._train_epoch(epoch, skip_micro)
            skip_micro = 0
            metric = None
            if self._evaluate_now(epoch, done):
                results = self._evaluate(epoch)
                metric = results.get("epoch_views", results).get("top1")  # comparable across epochs
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
            lr, terms = self._optimizer_step(step_losses, check=self._check_step(micro))
            if terms is not None and (self.step % t.log_every == 0 or self.step == plan.total_steps):
                self.logger.log(self.step, epoch=epoch + micro / plan.micro_per_epoch, lr=lr, **terms)
            step_losses = {}
            saved = False
            if t.save_every and self.step % t.save_every == 0 and micro < plan.micro_per_epoch:
                self._save(epoch, micro)
                saved = True
            if self.step >= plan.total_steps:
                return True
            if self._stop:  # SIGINT/SIGTERM: every process stops here, after the same step
                if not saved:
                    self._save(epoch, micro)  # mid-epoch (micro may be the epoch's last): resumes exactly
                raise self._interrupted(epoch, micro)
        return False

    def _check_step(self, micro: int) -> bool:
        """Whether the optimizer step ending at micro-batch ``micro`` is a check step (the same on
        every process: it depends on the step count and the plan only)."""
        t, plan, n = self.cfg.train, self.plan, self.step + 1
        return (n % self.check_every == 0 or n % t.log_every == 0 or n >= plan.total_steps
                or bool(t.save_every and n % t.save_every == 0) or micro + t.accum_steps > plan.micro_per_epoch)

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
        # frozen text side: the cached class features (tensors) go into the forward, so a compiled
        # forward holds no cache lookup; a trained text side is encoded inside it, with gradients
        m = self.method
        vocab = m.class_features(self.vocab) if hasattr(m, "class_features") and not m.text_trainable() else self.vocab
        amp = self.amp_dtype
        with accumulation_context(self.model, sync):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = self.forward(video, vocab, targets, label_smoothing=smoothing)
            loss = weighted_loss(out.losses, self.loss_weights)
            self.scaler.scale(loss / cfg.train.accum_steps).backward()
        terms = {"loss": loss.detach()}
        terms.update({k: v.detach().float() for k, v in out.losses.items() if k != "loss"})
        return terms

    def _optimizer_step(self, step_losses: dict[str, torch.Tensor], check: bool = True
                        ) -> tuple[float, dict[str, float] | None]:
        """Check, clip, step, schedule: the LR the step used and the step's loss terms averaged over
        the processes (None when ``check`` is False: no host sync, finiteness accumulated on the
        device for the next check step). The gradient norm is computed at every step (clipped to ``train.clip_grad``
        when set); a non-finite loss term or gradient norm stops the run, or skips the update
        within ``train.max_nonfinite_skips`` (see :meth:`_nonfinite`). Also agrees with the other
        processes on whether a signal asks to stop (``self._stop``)."""
        t = self.cfg.train
        self.scaler.unscale_(self.optimizer)  # the true gradients (a no-op without fp16's GradScaler)
        params = [p for p in self.method.parameters() if p.grad is not None]
        norm = (torch.nn.utils.get_total_norm([p.grad for p in params]) if params
                else torch.zeros((), device=self.device))
        if not check:
            # fp16: an overflowing gradient is the GradScaler's business (it skips the step on the device)
            watched = (*step_losses.values(),) + (() if self.scaler.is_enabled() else (norm,))
            finite = torch.stack([torch.isfinite(v.detach().float()).all() for v in watched]).all()
            self._finite = finite if self._finite is None else self._finite & finite
            if t.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad, norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            return lr, None
        if self._finite is not None:
            step_losses = {**step_losses, _FINITE: self._finite}
        # one exchange per step: the terms' means, the (same on every process) norm, any stop request
        stats = _mean_over_ranks({**step_losses, _NORM: norm, _STOP: float(self.signal is not None)})
        grad_norm, self._stop = stats.pop(_NORM), stats.pop(_STOP) > 0
        earlier_finite = stats.pop(_FINITE, 1.0)
        if earlier_finite < 1.0:  # some process saw a non-finite value at an unchecked step
            first, last = self._checked_step + 1, self.step
            raise TrainingError(
                f"a non-finite loss term or gradient norm at one of steps {first}–{last} (host checks every "
                f"train.check_every={self.check_every} steps); training stopped, nothing saved (last checkpoint: "
                f"{self.ckpts.latest() or 'none'}); rerun with train.check_every=1 to find the step, then lower "
                "train.lr, set train.clip_grad, or skip such steps with train.max_nonfinite_skips=N")
        self._finite, self._checked_step = None, self.step + 1
        lr = self.optimizer.param_groups[0]["lr"]
        bad_terms = [k for k, v in stats.items() if not math.isfinite(v)]
        # fp16: an overflowing gradient is the GradScaler's business (it skips the step, lowers the scale)
        bad_norm = not math.isfinite(grad_norm) and not self.scaler.is_enabled()
        if bad_terms or bad_norm:
            self._nonfinite(bad_terms, stats, grad_norm)  # raises, or the update is skipped
        else:
            if t.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad, norm)
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return lr, stats

    def _nonfinite(self, bad_terms: list[str], terms: dict[str, float], grad_norm: float) -> None:
        """A non-finite loss term or gradient norm at the step being taken: skip its update while
        ``train.max_nonfinite_skips`` allows (counted, logged; the schedule moves on as for any
        step), else raise TrainingError naming the step and the term."""
        step, limit = self.step + 1, self.cfg.train.max_nonfinite_skips
        if bad_terms:
            named = [k for k in bad_terms if k != "loss"] or bad_terms
            what = (f"non-finite loss term{'s' if len(named) > 1 else ''} "
                    + ", ".join(f"{k!r} ({terms[k]})" for k in named))
            if "loss" in terms and "loss" not in named:
                what += f" (weighted loss {terms['loss']})"
        else:
            first = next((n for n, p in self.method.named_parameters()
                          if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
            what = (f"non-finite gradient norm ({grad_norm}) with a finite loss ({terms.get('loss')})"
                    + (f", first in {first!r}" if first else ""))
        epoch = self.step // self.plan.steps_per_epoch + 1
        if self.nonfinite_skips < limit:
            self.nonfinite_skips += 1
            log.warning("step %d (epoch %d): %s; update skipped (%d of train.max_nonfinite_skips=%d)",
                        step, epoch, what, self.nonfinite_skips, limit)
            self.logger.log(step, nonfinite_skips=self.nonfinite_skips)
            return
        last = self.ckpts.latest()
        hint = (f"{self.nonfinite_skips} such steps were skipped already (train.max_nonfinite_skips={limit})"
                if limit else "lower train.lr, set train.clip_grad, or skip up to N such steps with "
                              "train.max_nonfinite_skips=N")
        raise TrainingError(f"step {step} (epoch {epoch}): {what}; training stopped, nothing saved "
                            f"(last checkpoint: {last or 'none'}); {hint}")

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While the run trains: SIGINT/SIGTERM ask it to save at the next optimizer-step boundary
        and stop (a second one stops at once: KeyboardInterrupt); the previous handlers are
        restored afterwards. Only in the main thread (elsewhere Python cannot install handlers);
        a signal the process ignores stays ignored. Data worker processes forked while this is in
        place inherit the handler, so a Ctrl-C reaching them too does not kill them mid-batch."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signal is not None:
                raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopped without saving")
            self.signal = signum

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (nohup) stays ignored
                    previous[sig] = signal.signal(sig, handler)
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h if h is not None else signal.SIG_DFL)

    def _interrupted(self, epoch: int, micro: int) -> TrainingInterrupted:
        """The exception (and log line) of a run stopped by a signal after saving at (epoch, micro)."""
        sig = self.signal or signal.SIGTERM  # another process got it: stop as if terminated
        name = signal.Signals(sig).name if self.signal else "a signal to another process"
        config = self.cfg.run_dir / "config.yaml"
        command = f"vclip train -c {shlex.quote(str(config))} --resume auto"
        if self.dist.world_size > 1:
            command += " (launched as this run was, e.g. under torchrun)"
        where = (f"epoch {epoch + 1}, micro-batch {micro} of {self.plan.micro_per_epoch}" if micro
                 else f"end of epoch {epoch}")
        message = (f"stopped by {name} after step {self.step} ({where}); checkpoint saved in "
                   f"{self.ckpts.path('last')}; resume with: {command}")
        log.warning(message)
        return TrainingInterrupted(message, signum=int(sig), exit_code=128 + int(sig), resume_command=command,
                                   checkpoint=str(self.ckpts.path("last")))

    def _evaluate_now(self, epoch: int, done: bool) -> bool:
        every = self.cfg.train.eval_every
        return self.val_set is not None and ((epoch + 1) % every == 0 or done or epoch + 1 == self.plan.epochs)

    def _evaluate(self, epoch: int) -> dict:
        """Score the model after ``epoch`` with ``eval.epoch_views`` (``results_epoch{N}.json``,
        ``val/*`` metrics) and, after the last epoch, with the full ``eval.num_clips × num_crops``
        views too (``final/*`` metrics); the full-view results are returned, with the epoch-view
        scores of the same model under ``epoch_views`` when the two differ (the best checkpoint is
        chosen on epoch-view scores, comparable across epochs)."""
        e = self.cfg.eval
        full, views = (e.num_clips, e.num_crops), e.epoch_view_counts()
        final = epoch + 1 == self.plan.epochs
        if views == full:
            results = self._evaluate_views(self.cfg, self.val_set)
        else:
            if getattr(self, "_epoch_val", None) is None:
                self._epoch_cfg = dataclasses.replace(
                    self.cfg, eval=dataclasses.replace(e, num_clips=views[0], num_crops=views[1]))
                self._epoch_val = run_data.eval_dataset(self._epoch_cfg, self.names)
            results = self._evaluate_views(self._epoch_cfg, self._epoch_val)
        if self.dist.is_main:
            write_results(results, self.cfg.run_dir / f"results_epoch{epoch + 1}.json", self.names,
                          confusion_png=None)
        self.logger.log(self.step, **{f"val/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        if not final or views == full:
            return results
        at_epoch_views = results
        results = self._evaluate_views(self.cfg, self.val_set)
        self.logger.log(self.step, **{f"final/{k}": v for k, v in results.items() if isinstance(v, (int, float))})
        keep = ("top1", "top5", "mean_class_accuracy", "num_videos", "views")
        return dict(results, epoch_views={k: at_epoch_views[k] for k in keep if k in at_epoch_views})

    def _evaluate_views(self, cfg: RunConfig, dataset) -> dict:
        return evaluate_method(self.method, dataset, self.vocab, cfg, self.dist, self.logger)

    def _finish(self, results: dict, seconds: float) -> dict:
        skipped = self.train_set.num_skipped
        if skipped:
            log.warning("%d training samples were replaced because their video could not be decoded", skipped)
        if self.nonfinite_skips:
            log.warning("%d optimizer steps were skipped for a non-finite loss or gradient norm", self.nonfinite_skips)
        summary = {"steps": self.step, "epochs": self.plan.epochs, "seconds": round(seconds, 1),
                   "skipped_training_videos": skipped, "nonfinite_skips": self.nonfinite_skips}
        if results and self.dist.is_main:
            results = dict(results, training=summary)
            run_dir = self.cfg.run_dir
            write_results(results, run_dir / "results.json", self.names,
                          confusion_png=run_dir / "confusion.png" if self.cfg.eval.confusion_png else None)
        return results or {"training": summary}


_NORM, _STOP, _FINITE = "\0grad_norm", "\0stop", "\0finite"  # internal entries of the per-step exchange


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
