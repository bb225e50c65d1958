"""Extension points of the CLIP towers: one mechanism, *hooks*.

A hook is a small object passed to a tower's ``forward(..., hooks=[...])``. The towers call its
methods at fixed points; every method has a do-nothing default, so a hook implements only what it
needs, and several hooks compose (called in list order). With no hook the towers compute plain
CLIP, and a hook that does nothing leaves the result bit-identical.

=================  ===============================================  ==============================
point              called                                           used by
=================  ===============================================  ==============================
``on_embed``       once, after the embedding (vision: after the     deep prompts at the input
                   positional embedding, before ``ln_pre``; text:   (ViLT-CLIP, MaPLe, IVLP)
                   token embeddings *before* the positional one)
``before_block``   before block ``i``                               deep prompts replaced per layer
``extra_tokens``   inside block ``i``: tokens appended to every     X-CLIP message tokens
                   sequence for self-attention only, dropped
                   before the MLP
``merge``          inside block ``i``, between attention and MLP,   ToMe / ALT token merging
                   with the keys averaged over heads (``metric``)
                   and the per-token sizes; sizes become a log-size
                   logit bias in the next attention
``after_block``    after block ``i``                                MoTED/DiST layer taps
=================  ===============================================  ==============================

The final layer's tokens (X-CLIP's prompt generator input) come from ``return_tokens=True``.

Hooks run inside gradient checkpointing when it is on (``extra_tokens`` and ``merge`` are
re-executed in the backward pass), so those two must be pure functions of their inputs; the
stateful points (``on_embed``, ``before_block``, ``after_block``) run outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class ForwardState:
    """Per-forward scratch space shared by the tower and its hooks."""

    tower: str = "vision"
    #: per-token sizes [N, L] once tokens have been merged (None = all 1)
    size: torch.Tensor | None = None
    #: add log(size) to attention logits (ToMe's proportional attention)
    proportional_attention: bool = True
    #: text tower: position of the end-of-text token per row [N]
    eot_index: torch.Tensor | None = None
    #: layer outputs recorded by ``LayerTaps``: {layer index: [N, L, D]}
    taps: dict[int, torch.Tensor] = field(default_factory=dict)
    #: free slot for methods (e.g. the number of frames per video)
    extras: dict = field(default_factory=dict)


class TowerHook:
    """Base class of extension points; every method defaults to doing nothing."""

    #: set True when ``merge`` needs the attention keys averaged over heads
    needs_metric: bool = False

    def on_embed(self, x: torch.Tensor, state: ForwardState) -> torch.Tensor:
        return x

    def before_block(self, index: int, x: torch.Tensor, state: ForwardState) -> torch.Tensor:
        return x

    def extra_tokens(self, index: int, x: torch.Tensor, state: ForwardState) -> torch.Tensor | None:
        """Tokens [N, E, D] to append to every sequence for this block's attention, or None."""
        return None

    def merge(
        self,
        index: int,
        x: torch.Tensor,
        metric: torch.Tensor | None,
        size: torch.Tensor | None,
        state: ForwardState,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return x, size

    def after_block(self, index: int, x: torch.Tensor, state: ForwardState) -> torch.Tensor:
        return x


class LayerTaps(TowerHook):
    """(d) Record the output of every block, or of the chosen ones, into ``state.taps``."""

    def __init__(self, layers: Sequence[int] | None = None):
        self.layers = None if layers is None else set(layers)

    def after_block(self, index, x, state):
        if self.layers is None or index in self.layers:
            state.taps[index] = x
        return x


class DeepPrompts(TowerHook):
    """(b) Learnable prompt tokens at the input, replaced by new ones in the first K layers.

    ``prompts[0]`` [n_ctx, D] enters at the embedding; ``prompts[i]`` (1 ≤ i < K) replaces the
    prompt tokens before block i (MaPLe / IVLP / ViLT-CLIP); from block K on the prompt tokens are
    carried forward like any other token. ``prompts`` may be a tensor [K, n_ctx, D] or a list (e.g.
    vision prompts produced from text prompts by a mapping layer).

    Vision: the prompts are appended after the patch tokens (after the positional embedding, so
    they carry no position), as in VPT/MaPLe. Text: they are inserted right after the start token,
    *before* the positional embedding (they take positions 1…n_ctx, like CoOp's context words); the
    sequence keeps its length (the last n_ctx positions, padding, are dropped) and the end-of-text
    index moves by n_ctx. Text must leave n_ctx padding positions free.
    """

    def __init__(self, prompts: Sequence[torch.Tensor] | torch.Tensor):
        self.prompts = list(prompts.unbind(0)) if isinstance(prompts, torch.Tensor) else list(prompts)
        if not self.prompts:
            raise ValueError("DeepPrompts needs at least the input prompts")
        self.n_ctx = self.prompts[0].shape[0]

    def _expand(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def on_embed(self, x, state):
        p = self._expand(self.prompts[0], x)
        if state.tower == "vision":
            return torch.cat([x, p], dim=1)
        n = self.n_ctx
        if state.eot_index is not None:
            longest = int(state.eot_index.max())
            if longest + n >= x.shape[1]:
                raise ValueError(
                    f"text of {longest + 1} tokens plus {n} prompt tokens exceeds the context length {x.shape[1]}"
                )
            state.eot_index = state.eot_index + n
        return torch.cat([x[:, :1], p, x[:, 1 : x.shape[1] - n]], dim=1)

    def before_block(self, index, x, state):
        if index == 0 or index >= len(self.prompts):
            return x
        p, n = self._expand(self.prompts[index], x), self.n_ctx
        if state.tower == "vision":
            return torch.cat([x[:, :-n], p], dim=1)
        return torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)


def parse_merge_schedule(r: int | Sequence[int] | tuple[int, float], layers: int) -> list[int]:
    """ToMe's r schedule: an int (same r in every layer), a list (padded with 0), or a tuple
    ``(r, inflect)`` with inflect in [-1, 1]: linear from ``r·(1-inflect)`` to ``2r - start``
    ((r, -1) is the "decreasing" schedule 2r → 0)."""
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], float):
        base, inflect = r
        start = int(base * (1 - inflect))
        end = 2 * base - start
        step = (end - start) / max(layers - 1, 1)
        return [int(start + step * i) for i in range(layers)]
    if isinstance(r, int):
        return [r] * layers
    values = list(r)
    return values[:layers] + [0] * max(0, layers - len(values))


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = True):
    """ToMe's bipartite soft matching (Bolya et al., ICLR 2023).

    Tokens alternate between set A (even positions) and B (odd). Each A token finds its most
    similar B token (cosine of ``metric`` [N, T, C]); the r A tokens with the highest similarity
    merge into their partners. The class token (position 0) is never merged. ``r`` is clamped to
    (T − protected) // 2. Returns ``merge(x, reduce)`` mapping [N, T, C] → [N, T − r, C] with the
    unmerged A tokens first (original order) and then all B tokens, or None when nothing merges.
    """
    protected = int(class_token)
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
        if class_token:
            scores[:, 0, :] = float("-inf")
        best, partner = scores.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True).unsqueeze(-1)
        keep_idx, src_idx = ranked[:, r:], ranked[:, :r]
        dst_idx = partner.unsqueeze(-1).gather(1, src_idx)
        if class_token:
            keep_idx = keep_idx.sort(dim=1).values

    def merge(x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        n, na, c = a.shape
        kept = a.gather(1, keep_idx.expand(n, na - r, c))
        src = a.gather(1, src_idx.expand(n, r, c))
        b = b.scatter_reduce(1, dst_idx.expand(n, r, c), src, reduce=reduce)
        return torch.cat([kept, b], dim=1)

    return merge


class TokenMerging(TowerHook):
    """(c) ToMe token merging between attention and MLP, size-weighted averages, sizes tracked.

    Merged tokens are the size-weighted mean of their group, ``x_d' = Σ s_i x_i / Σ s_i``, and
    sizes add up. With ``proportional_attention`` the next attention adds ``log s`` to its logits
    over keys, so a merged token counts as many tokens as it stands for.
    """

    needs_metric = True

    def __init__(self, r: int | Sequence[int] | tuple[int, float], layers: int, class_token: bool = True,
                 proportional_attention: bool = True):
        self.schedule = parse_merge_schedule(r, layers)
        self.class_token = class_token
        self.proportional_attention = proportional_attention

    def on_embed(self, x, state):
        state.proportional_attention = self.proportional_attention
        return x

    def merge(self, index, x, metric, size, state):
        r = self.schedule[index] if index < len(self.schedule) else 0
        if r <= 0 or metric is None:
            return x, size
        fn = bipartite_soft_matching(metric, r, self.class_token)
        if fn is None:
            return x, size
        if size is None:
            size = x.new_ones(x.shape[:2])
        s = size.unsqueeze(-1).to(x.dtype)
        x = fn(x * s, "sum")
        s = fn(s, "sum")
        return x / s, s.squeeze(-1)
