"""AdamW over a method's parameter groups, and a per-step warm-up + cosine schedule.

Parameter groups (X-CLIP ``utils/optimizer.py``, generalised; written fresh): every trainable
parameter belongs to one *group* — "clip", or one the method declares in its
``parameter_groups`` (X-CLIP: "new" = message tokens, MIT, prompt generator; ALT: "new" and
"decoder") — and is *decay* or *no_decay*. A group trains at ``lr × lr_mult[group]``
(``VideoMethod.lr_mults``: ``train.lr_mults``, the method's defaults, ``train.lr_mult_new`` for
added modules, 1 for CLIP). No weight decay for parameters with fewer than two dimensions
(LayerNorm weights, scales), biases, and names containing one of the method's
``no_weight_decay`` substrings (default: position/class embeddings and ``logit_scale``).

The schedule (:class:`WarmupCosine`) is stepped once per optimizer step: linear warm-up from 0 to
each group's base LR, then a half cosine down to the *absolute* ``min_lr`` — the same floor for
every group, as timm's ``CosineLRScheduler(lr_min=...)`` does in X-CLIP, so the 10× groups also end
at ``min_lr``. Two shapes (``train.schedule``):

* ``cosine_after_warmup`` (:func:`warmup_cosine_lr`): the cosine starts at the end of the warm-up
  and runs over the remaining steps (the LR is the base LR when the warm-up ends).
* ``timm_cosine`` (:func:`timm_cosine_lr`): what the official X-CLIP / ViFi-CLIP / OST code gets from
  timm's ``CosineLRScheduler(t_initial=total, warmup_t=warmup, warmup_lr_init=0, t_in_epochs=False)``
  (no ``warmup_prefix``): the cosine runs over the *whole* run from step 0 and the warm-up only
  replaces its first steps, so the LR jumps from ``base · (W-1)/W`` to ``cosine(W)`` when the
  warm-up ends (0.934 × base for 5 of 30 epochs, and 0.505 × base at epoch 15, where
  ``cosine_after_warmup`` gives 0.658 × base).

Without warm-up the two are the same.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from vclip.errors import ConfigError
from vclip.methods.base import NO_DECAY_KEYWORDS, default_decays

__all__ = ["NO_DECAY_KEYWORDS", "param_groups", "build_optimizer", "fused_by_default", "build_method_optimizer", "WarmupCosine",
           "warmup_cosine_lr", "timm_cosine_lr", "SCHEDULES"]


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _plain_name(name: str) -> str:
    """The parameter name without DDP / torch.compile wrapper prefixes."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _no_decay(name: str, param: torch.Tensor, keywords: Sequence[str]) -> bool:
    return not default_decays(name, param, keywords)


def _check_number(what: str, value: float, positive: bool = False) -> None:
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"optimizer {what} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    group_of: Callable[[str], str] = lambda name: "clip",
    lr_mults: Mapping[str, float] | None = None,
    group_order: Sequence[str] = (),
    no_decay: Sequence[str] = NO_DECAY_KEYWORDS,
    decays: Callable[[str, torch.Tensor], bool] | None = None,
) -> list[dict[str, Any]]:
    """The trainable (``requires_grad``) parameters of ``model`` split by ``group_of(name)`` and
    decay, as optimizer groups named ``<group>/decay`` and ``<group>/no_decay`` (empty ones omitted;
    "clip" first, then ``group_order``, then any other group in order of appearance). Each is a
    dict with ``params``, ``lr`` (= ``lr × lr_mults[group]``, default 1), ``weight_decay``,
    ``name``, ``lr_mult`` and ``param_names`` (in the order of ``params``). Names are seen without
    the ``module.`` / ``_orig_mod.`` prefixes of DDP and ``torch.compile`` wrappers. ``decays(name,
    param)`` (a method's :meth:`~vclip.methods.base.VideoMethod.decays`), when given, decides decay
    instead of the ``no_decay`` rule."""
    _check_number("lr", lr)
    _check_number("weight_decay", weight_decay)
    mults = dict(lr_mults or {})
    for g, m in mults.items():
        _check_number(f"LR multiplier of group {g!r}", m, positive=True)

    buckets: dict[tuple[str, str], tuple[list, list]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = _plain_name(name)
        no = not decays(name, p) if decays is not None else _no_decay(name, p, no_decay)
        key = (group_of(name), "no_decay" if no else "decay")
        params, names = buckets.setdefault(key, ([], []))
        params.append(p)
        names.append(name)

    order = ["clip", *group_order]
    order += [g for g, _ in buckets if g not in order]
    groups = []
    for group in dict.fromkeys(order):
        for decay in ("decay", "no_decay"):
            if (group, decay) not in buckets:
                continue
            params, names = buckets[(group, decay)]
            mult = float(mults.get(group, 1.0))
            groups.append({
                "params": params,
                "param_names": names,
                "lr": lr * mult,
                "weight_decay": weight_decay if decay == "decay" else 0.0,
                "name": f"{group}/{decay}",
                "lr_mult": mult,
            })
    return groups


def fused_by_default(params) -> bool:
    """Whether ``build_optimizer(fused=None)`` picks the fused AdamW kernel: when every trainable
    parameter is a floating-point CUDA tensor (one kernel launch per step for all parameters, the
    step counters on the device: no host sync); on the CPU torch's default (foreach)."""
    params = list(params)
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    fused: bool | None = None,
    **group_kwargs,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (``group_kwargs`` go there). ``fused=None`` uses the fused
    kernel when every trainable parameter is a floating-point CUDA tensor, otherwise torch's
    default (foreach where supported)."""
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, **group_kwargs)
    if not groups:
        raise ConfigError(
            "no trainable parameters: every parameter has requires_grad=False "
            "(are both towers frozen and the method adds no new modules?)"
        )
    params = [p for g in groups for p in g["params"]]
    kwargs: dict[str, Any] = {}
    if fused is None:
        if fused_by_default(params):
            kwargs["fused"] = True
    else:
        kwargs["fused"] = bool(fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kwargs)


def build_method_optimizer(method, train_cfg, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW for a ``VideoMethod`` from a ``TrainConfig``: the method's parameter groups, LR
    multipliers (``train.lr_mults`` / ``lr_mult_new`` / the method's defaults) and the method's
    weight-decay rule (``method.decays``)."""
    t = train_cfg
    _check_number("lr_mult_new", t.lr_mult_new, positive=True)
    return build_optimizer(method, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), eps=t.eps,
                           fused=fused, group_of=method.parameter_group,
                           lr_mults=method.lr_mults(t.lr_mult_new, t.lr_mults),
                           group_order=list(method.parameter_groups), decays=method.decays)


def warmup_cosine_lr(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float) -> float:
    """The LR used by optimizer step ``step`` (0-based): ``base_lr * step / warmup_steps`` during
    warm-up, then ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, and ``min_lr`` from
    ``total_steps`` on."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def timm_cosine_lr(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float,
                   warmup_lr_init: float = 0.0) -> float:
    """The LR used by optimizer step ``step`` (0-based) under timm's ``CosineLRScheduler`` as the
    official X-CLIP/OST code configures it (``t_initial=total_steps``, ``warmup_t=warmup_steps``,
    ``warmup_lr_init``, one cycle, no ``warmup_prefix``): ``warmup_lr_init + step · (base_lr -
    warmup_lr_init) / warmup_steps`` during warm-up, then ``min_lr + (base_lr - min_lr) · (1 +
    cos(pi · step / total_steps)) / 2`` — the cosine counts from step 0, warm-up included — and
    ``min_lr`` from ``total_steps`` on."""
    if step < warmup_steps:
        return warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * step / total_steps))


#: ``train.schedule`` → the per-step LR function
SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine_after_warmup": warmup_cosine_lr,
    "timm_cosine": timm_cosine_lr,
}


class WarmupCosine(LRScheduler):
    """Per-step warm-up + cosine schedule. Call ``step()`` once after every optimizer step; the LR
    in effect for optimizer step ``i`` (0-based) is ``SCHEDULES[schedule](i)`` of each group's base
    LR (the group's ``lr`` when the scheduler is created): :func:`warmup_cosine_lr` for
    ``"cosine_after_warmup"`` (default), :func:`timm_cosine_lr` for ``"timm_cosine"``.

    ``load_state_dict`` re-applies the restored step's LRs to the optimizer, so resuming works
    whether the optimizer state is loaded before or after the scheduler is created."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float,
                 schedule: str = "cosine_after_warmup"):
        if schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: {schedule!r} is not one of {', '.join(map(repr, SCHEDULES))}")
        if int(total_steps) != total_steps or total_steps < 1:
            raise ConfigError(f"schedule total_steps must be an integer >= 1, got {total_steps!r}")
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ConfigError(f"schedule warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if warmup_steps >= total_steps and warmup_steps > 0:
            raise ConfigError(
                f"schedule warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}); "
                "shorten the warm-up or train longer"
            )
        if not (min_lr >= 0 and math.isfinite(min_lr)):
            raise ConfigError(f"schedule min_lr must be a finite number >= 0, got {min_lr!r}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.schedule = schedule
        super().__init__(optimizer)

    def lr_at(self, step: int) -> list[float]:
        fn = SCHEDULES[self.schedule]
        return [
            fn(step, base_lr=float(b), total_steps=self.total_steps, warmup_steps=self.warmup_steps,
               min_lr=self.min_lr)
            for b in self.base_lrs
        ]

    def get_lr(self) -> list[float]:  # called by LRScheduler.step with last_epoch already advanced
        return self.lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if len(self.base_lrs) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"scheduler state has {len(self.base_lrs)} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)} (the trainable parameters changed since the checkpoint)"
            )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"scheduler state has an unknown schedule {self.schedule!r} "
                              f"(known: {', '.join(SCHEDULES)})")
        lrs = self.lr_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)
