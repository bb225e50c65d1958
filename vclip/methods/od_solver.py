"""OST's Optimal Descriptor Solver: entropy-regularised optimal transport between the frames of a
video and the descriptors of a class, solved for all (video, class) pairs at once.

For every pair, with frame features ``V`` [T, E] and descriptor embeddings ``D`` [N, E]::

    sim = cos(V, D)                 [T, N]
    C   = 1 − sim,  K = exp(−C/ε)   (Gibbs kernel)
    r, c ← 1;  repeat ≤ max_iter:  r ← u / (K c),  c ← v / (Kᵀ r)   (u = 1/T, v = 1/N: uniform)
            stop once mean|r − r_prev| < tol        (the official rule, r in the scaling domain)
    P   = diag(r) K diag(c)         (a constant: no gradient flows through the plan)
    score = ⟨P, sim⟩_F = Σ_tn P_tn sim_tn

Implementation (``sinkhorn``), always fp32 with autocast switched off (so bf16/fp16 autocast
around it is safe):

* **two numerically safe iterations of the same algorithm**: the *scaling domain* on a row-shifted
  kernel ``K̃ = diag(e^−a) K`` (``a_t = max_n log K_tn``; every row has max 1, nothing underflows
  while ``span(C)/ε ≤ 40``: OST's ε = 0.1 with costs in [0, 2]) and the *log domain* (potentials
  ``f = log r``, ``g = log c`` updated with logsumexp, the plan ``exp(f + log K + g)``) for smaller
  ε — no NaN/inf for ε down to 0.01 and below. ``domain="auto"`` picks between them; the scaling
  domain is the faster on CPUs (no ``exp`` per iteration). The official code iterates in the
  scaling domain without the shift, and its ``K`` underflows in fp16 under apex O1 (its NaNs).
* **the stopping rule without a host sync per iteration**: the official code evaluates
  ``mean|r − r_prev| < tol`` with ``.item()`` every iteration. Here the test is evaluated on the
  device every iteration and sets a ``done`` flag; once done, updates are masked (``torch.where``),
  so the result is exactly the official one — the same iteration count, the same plan — while the
  host looks at the flag only every ``check_every`` iterations to leave the loop early
  (``check_every=0``: never; always ``max_iter`` masked iterations, zero syncs, graph-capturable).
  ``r`` in the test is the official (unshifted) scaling in both domains.
* ``stopping="global"`` (official): one ``mean|Δr|`` over *all* problems of the call, so the
  iteration count depends on the batch. ``stopping="per_problem"``: each (video, class) problem
  stops on its own ``mean_t|Δr|``; the batched result then equals solving every pair alone.
* ``r = exp(f)`` in the stopping test overflows to ``inf`` for very small ε (the official r would
  too); an overflowed test counts as "not converged" (the true ``mean|Δr|`` is then far above any
  tolerance), the plan itself stays finite.

``od_logits`` is the scoring head any method with frame-level features can call.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["sinkhorn", "od_scores", "od_logits", "pooled_scores"]


#: the scaling-domain iteration is used while (cost span)/ε stays below this (exp(−40) ≈ 4e−18 is
#: far from fp32's underflow); beyond it, the log domain
SCALING_SAFE_SPAN = 40.0


def sinkhorn(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2,
             stopping: Literal["global", "per_problem", "none"] = "global", check_every: int = 10,
             domain: Literal["auto", "log", "scaling"] = "auto", max_cost_span: float | None = None,
             return_iters: bool = False):
    """Entropy-regularised OT plans of a batch of problems with uniform marginals.

    cost: [..., T, N]. Returns the plan [..., T, N] (fp32, no grad; each plan sums to 1), and with
    ``return_iters`` also the number of iterations applied (a tensor: scalar for ``global``/``none``,
    per problem for ``per_problem``).

    ``domain``: ``"log"`` iterates the potentials with logsumexp (safe for any ε); ``"scaling"``
    iterates the scalings on a row-shifted kernel (the official algorithm, several times faster on
    a CPU where ``exp`` is slow, safe while ``span/ε ≤ 40``); ``"auto"`` picks scaling when
    ``max_cost_span / ε ≤ 40`` (the span is measured, one host sync, when not given; OST's costs
    1 − cos have span ≤ 2, so ε ≥ 0.05 runs in the scaling domain) and the log domain otherwise."""
    if eps <= 0:
        raise ValueError(f"sinkhorn: eps must be > 0, got {eps}")
    if max_iter < 1:
        raise ValueError(f"sinkhorn: max_iter must be >= 1, got {max_iter}")
    if stopping not in ("global", "per_problem", "none"):
        raise ValueError(f"sinkhorn: unknown stopping rule {stopping!r}")
    if domain not in ("auto", "log", "scaling"):
        raise ValueError(f"sinkhorn: unknown domain {domain!r}")
    shape = cost.shape
    t, n = shape[-2], shape[-1]
    with torch.no_grad(), torch.autocast(cost.device.type, enabled=False):
        c32 = cost.detach().reshape(-1, t, n).float()
        if domain == "auto":
            if max_cost_span is None:
                max_cost_span = float((c32.amax(dim=(1, 2)) - c32.amin(dim=(1, 2))).max()) if c32.numel() else 0.0
            domain = "scaling" if max_cost_span / eps <= SCALING_SAFE_SPAN else "log"
        run = _sinkhorn_scaling if domain == "scaling" else _sinkhorn_log
        plan, iters = run(c32, eps, max_iter, tol, stopping, check_every)
        plan = plan.reshape(shape)
    if return_iters:
        return plan, (iters if stopping == "per_problem" else iters.reshape(()))
    return plan


def _loop(step, state, p, device, max_iter, tol, stopping, check_every):
    """Run ``state = step(state)`` with the official stopping rule, masked once converged.

    ``step(state) -> (new_state, r_old, r_new)`` (r in the official scaling, for the test)."""
    done = torch.zeros(p if stopping == "per_problem" else 1, dtype=torch.bool, device=device)
    iters = torch.zeros_like(done, dtype=torch.int32)
    for i in range(max_iter):
        new, r_old, r_new = step(state)
        if stopping == "none":
            state = new
            iters += 1
            continue
        delta = (r_new - r_old).abs()
        err = delta.mean(dim=1) if stopping == "per_problem" else delta.mean().reshape(1)
        keep = done[:, None] if stopping == "per_problem" else done
        state = tuple(torch.where(keep, old, nw) for old, nw in zip(state, new))
        iters += (~done).int()
        done = done | (err < tol)   # NaN/inf (an overflowed r) compares False: not converged
        if check_every and (i + 1) % check_every == 0 and i + 1 < max_iter and bool(done.all()):
            break
    return state, iters


def _sinkhorn_log(cost, eps, max_iter, tol, stopping, check_every):
    p, t, n = cost.shape
    log_k = cost / -eps                                                    # [P, T, N]
    log_u, log_v = -math.log(t), -math.log(n)

    def lse(x, dim):  # logsumexp; terms below e^-80 of the largest are dropped (no denormals)
        m = x.amax(dim=dim, keepdim=True)
        return (x - m).clamp_min_(-80.0).exp_().sum(dim).log_() + m.squeeze(dim)

    def step(state):
        f, g = state                                                       # log r, log c
        f_new = log_u - lse(log_k + g[:, None, :], 2)
        g_new = log_v - lse(log_k + f_new[:, :, None], 1)
        return (f_new, g_new), f.exp(), f_new.exp()

    zeros = (torch.zeros(p, t, device=cost.device), torch.zeros(p, n, device=cost.device))
    (f, g), iters = _loop(step, zeros, p, cost.device, max_iter, tol, stopping, check_every)
    return torch.exp(f[:, :, None] + log_k + g[:, None, :]), iters


def _sinkhorn_scaling(cost, eps, max_iter, tol, stopping, check_every):
    """The official iteration on K̃ = diag(e^−a) K, a_t = max_n log K_tn: with r̃ = e^a r the
    iterates are r = e^−a r̃ and the same c, and the plan diag(r̃) K̃ diag(c) is the same."""
    p, t, n = cost.shape
    log_k = cost / -eps
    a = log_k.amax(dim=2)                                                  # [P, T], ≤ 0 for costs ≥ 0
    k_t = torch.exp(log_k - a[:, :, None])                                 # row max 1
    scale = torch.exp(-a)                                                  # r = scale · r̃
    u, v = 1.0 / t, 1.0 / n

    def step(state):
        rt, c = state
        rt_new = u / torch.bmm(k_t, c[:, :, None]).squeeze(2)
        c_new = v / (k_t * rt_new[:, :, None]).sum(1)
        return (rt_new, c_new), scale * rt, scale * rt_new

    # r = 1 at the start: r̃ = e^a
    (rt, c), iters = _loop(step, (torch.exp(a), torch.ones(p, n, device=cost.device)), p, cost.device,
                           max_iter, tol, stopping, check_every)
    return rt[:, :, None] * k_t * c[:, None, :], iters


def _similarity(frame_features: torch.Tensor, descriptor_features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """cos(frame, descriptor) for every (video, class): [B, K, T, N]."""
    v, d = frame_features, descriptor_features
    if normalize:
        v, d = F.normalize(v, dim=-1), F.normalize(d, dim=-1)
    if d.dim() == 3:        # shared class descriptors [K, N, E]
        return torch.einsum("bte,kne->bktn", v, d.to(v.dtype))
    if d.dim() == 4:        # per-video descriptors [B, K, N, E] (e.g. X-CLIP's video-conditioned text)
        return torch.einsum("bte,bkne->bktn", v, d.to(v.dtype))
    raise ValueError(f"descriptor features must be [K, N, E] or [B, K, N, E], got {tuple(d.shape)}")


def od_scores(frame_features: torch.Tensor, descriptor_features: torch.Tensor, *, eps: float = 0.1,
              max_iter: int = 100, tol: float = 1e-2, stopping: str = "global", check_every: int = 10,
              domain: str = "auto", normalize: bool = True) -> torch.Tensor:
    """Frobenius product ⟨P*, sim⟩ for every (video, class): [B, K], fp32, unscaled (a weighted
    mean of cosines). Gradients flow through ``sim`` only; the plan is a constant."""
    sim = _similarity(frame_features, descriptor_features, normalize)
    plan = sinkhorn(1.0 - sim, eps=eps, max_iter=max_iter, tol=tol, stopping=stopping, check_every=check_every,
                    domain=domain, max_cost_span=2.0 if normalize else None)
    return (plan * sim.float()).sum(dim=(-2, -1))


def pooled_scores(frame_features: torch.Tensor, descriptor_features: torch.Tensor, *,
                  renormalize: bool = False) -> torch.Tensor:
    """OST's pooled term: mean over frames of the unit frame features · mean over descriptors of
    the unit descriptor embeddings (not re-normalised, as in the official code). [B, K], fp32."""
    v = F.normalize(frame_features, dim=-1).float().mean(dim=1)
    d = F.normalize(descriptor_features, dim=-1).float().mean(dim=-2)
    if renormalize:
        v, d = F.normalize(v, dim=-1), F.normalize(d, dim=-1)
    if d.dim() == 2:
        return v @ d.t()
    return torch.einsum("be,bke->bk", v, d)


def od_logits(frame_features: torch.Tensor, descriptor_features: torch.Tensor, logit_scale: torch.Tensor | float = 1.0,
              *, pooled: bool = True, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2,
              stopping: str = "global", check_every: int = 10, domain: str = "auto") -> torch.Tensor:
    """OD-solver logits of one descriptor kind, for any method with frame-level features.

    frame_features: [B, T, E] (per-frame video features, normalised here); descriptor_features:
    [K, N, E] (or [B, K, N, E] when the text depends on the video). Returns
    ``scale · (⟨P*, sim⟩ + pool)`` [B, K] in fp32 (``pooled=False``: the OT term alone), the
    per-kind term of OST's fusion. ``logit_scale`` is the *already exponentiated* scale."""
    s = od_scores(frame_features, descriptor_features, eps=eps, max_iter=max_iter, tol=tol,
                  stopping=stopping, check_every=check_every, domain=domain)
    if pooled:
        s = s + pooled_scores(frame_features, descriptor_features)
    return s * logit_scale
