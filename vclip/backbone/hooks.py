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
``before_block``   before block ``i`` (block 0: after ``ln_pre``)   deep prompts replaced per layer;
                                                                    input taps (MoTED X⁽⁰⁾…)
``extra_tokens``   inside block ``i``: tokens appended to every     X-CLIP message tokens
                   sequence for self-attention only, dropped
                   before the MLP
``merge``          inside block ``i``, between attention and MLP,   ToMe / ALT token merging
                   with the keys averaged over heads (``metric``)
                   and the per-token sizes; sizes become a log-size
                   logit bias in the next attention. At most one
                   hook per forward may implement it (ValueError)
``after_block``    after block ``i``                                MoTED/DiST layer taps
=================  ===============================================  ==============================

The final layer's tokens (X-CLIP's prompt generator input) come from ``return_tokens=True``;
``VisionTransformer.project_tokens`` maps any tokens into the joint space (``ln_post`` + ``proj``).

``state.size`` is current at every hook point: the transformer sets it before block 0's hooks and
after every block (before the ``after_block`` hooks); it reads it back after the ``before_block``
hooks, so a hook that adds or removes tokens while sizes are set updates ``state.size`` to match.
``None`` means every token has size 1 (nothing merged yet).

Hooks run inside gradient checkpointing when it is on (``extra_tokens`` and ``merge`` are
re-executed in the backward pass), so those two must be pure functions of their inputs, or record
into the state idempotently (``TokenMerging``'s source tracking skips a layer it has already
recorded); the stateful points (``on_embed``, ``before_block``, ``after_block``) run outside it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ForwardState:
    """Per-forward scratch space shared by the tower and its hooks (one state per forward)."""

    tower: str = "vision"
    #: per-token sizes [N, L] of the tokens at the current hook point (None = all 1); set by the
    #: transformer before block 0's hooks and after every block; the vision tower returns the
    #: final sizes here
    size: torch.Tensor | None = None
    #: add log(size) to attention logits (ToMe's proportional attention)
    proportional_attention: bool = True
    #: text tower: position of the end-of-text token per row [N]
    eot_index: torch.Tensor | None = None
    #: block outputs recorded by ``LayerTaps``: {block index: [N, L, D], or [N, D] class token only}
    taps: dict[int, torch.Tensor] = field(default_factory=dict)
    #: block inputs recorded by ``LayerTaps(at="input" | "both")``: {block index: [N, L, D] or [N, D]}
    input_taps: dict[int, torch.Tensor] = field(default_factory=dict)
    #: vision: number of trailing tokens (deep prompts, set by ``DeepPrompts.on_embed``) that token
    #: merging keeps out of matching and leaves last, each with size 1
    tail_tokens: int = 0
    #: ``TokenMerging(track_source=True)``: which original tokens each current token holds, a 0/1
    #: matrix [N, L_now, L_0] (L_0 = tokens after ``on_embed``, prompts included); None until the
    #: first merge (= identity)
    source: torch.Tensor | None = None
    #: the block whose merge produced ``source`` (-1 = none yet); makes recording idempotent under
    #: gradient checkpointing
    source_layer: int = -1
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


def check_single_merge(hooks: Sequence[TowerHook]) -> None:
    """Raise ValueError when more than one hook implements ``merge`` (overrides ``TowerHook.merge``):
    two merges in one block would each match and re-order tokens and sizes without knowing of the
    other."""
    merging = [h for h in hooks if type(h).merge is not TowerHook.merge]
    if len(merging) > 1:
        names = ", ".join(type(h).__name__ for h in merging)
        raise ValueError(f"hooks {names} all implement merge; at most one token-merging hook per forward")


class LayerTaps(TowerHook):
    """(d) Record block outputs (``state.taps``) and/or block inputs (``state.input_taps``).

    ``layers``: the block indices to record (None = all). ``at``: ``"output"`` (default; the
    ``after_block`` point), ``"input"`` (the ``before_block`` point; block 0's input is the output
    of ``ln_pre``, block i+1's input is block i's output unless a hook between them changes it) or
    ``"both"``. ``class_token``: keep only ``x[:, 0]`` ([N, D] instead of [N, L, D]; the vision class
    token). A tap records ``x`` as it reaches this hook, after the hooks before it in the list.
    """

    def __init__(self, layers: Sequence[int] | None = None, *, at: str = "output", class_token: bool = False):
        if at not in ("output", "input", "both"):
            raise ValueError(f"LayerTaps(at=...) must be 'output', 'input' or 'both', got {at!r}")
        self.layers = None if layers is None else set(layers)
        self.inputs = at in ("input", "both")
        self.outputs = at in ("output", "both")
        self.class_token = class_token

    def _record(self, taps: dict, index: int, x: torch.Tensor) -> None:
        if self.layers is None or index in self.layers:
            taps[index] = x[:, 0] if self.class_token else x

    def before_block(self, index, x, state):
        if self.inputs:
            self._record(state.input_taps, index, x)
        return x

    def after_block(self, index, x, state):
        if self.outputs:
            self._record(state.taps, index, x)
        return x


class DeepPrompts(TowerHook):
    """(b) Learnable prompt tokens at the input, replaced by new ones in the first K layers.

    ``prompts[0]`` [n_ctx, D] enters at the embedding; ``prompts[i]`` (1 ≤ i < K) replaces the
    prompt tokens before block i (MaPLe / IVLP / ViLT-CLIP); from block K on the prompt tokens are
    carried forward like any other token. ``prompts`` may be a tensor [K, n_ctx, D] or a list (e.g.
    vision prompts produced from text prompts by a mapping layer).

    Vision: the prompts are appended after the patch tokens (after the positional embedding, so
    they carry no position), as in VPT/MaPLe, and ``state.tail_tokens`` grows by n_ctx, so token
    merging leaves them out of matching and keeps them last with size 1 (in any hook order).
    Text: they are inserted right after the start token,
    *before* the positional embedding (they take positions 1…n_ctx, like CoOp's context words); the
    sequence keeps its length (the last n_ctx positions, padding, are dropped) and the end-of-text
    index moves by n_ctx. Text must leave n_ctx padding positions free.

    Depth 0 (``prompts`` empty: K = 0) or prompts of 0 tokens (n_ctx = 0) is "no prompts": the hook
    leaves the tower bit-identical to plain CLIP (a prompt-depth-0 config needs no special case).
    """

    def __init__(self, prompts: Sequence[torch.Tensor] | torch.Tensor):
        self.prompts = list(prompts.unbind(0)) if isinstance(prompts, torch.Tensor) else list(prompts)
        self.n_ctx = self.prompts[0].shape[0] if self.prompts else 0

    def _expand(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)

    def on_embed(self, x, state):
        if self.n_ctx == 0:
            return x
        p = self._expand(self.prompts[0], x)
        if state.tower == "vision":
            state.tail_tokens += self.n_ctx
            return torch.cat([x, p], dim=1)
        n = self.n_ctx
        if state.eot_index is not None:
            # (no values on the meta device, where FLOPs are counted: the check needs the lengths)
            longest = -1 if state.eot_index.is_meta else int(state.eot_index.max())
            if longest + n >= x.shape[1]:
                raise ValueError(
                    f"text of {longest + 1} tokens plus {n} prompt tokens exceeds the context length {x.shape[1]}"
                )
            state.eot_index = state.eot_index + n
        return torch.cat([x[:, :1], p, x[:, 1 : x.shape[1] - n]], dim=1)

    def before_block(self, index, x, state):
        if index == 0 or index >= len(self.prompts) or self.n_ctx == 0:
            return x
        p, n = self._expand(self.prompts[index], x), self.n_ctx
        if state.tower == "vision":
            return torch.cat([x[:, :-n], p], dim=1)
        return torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)


MergeSchedule = int | Sequence[int] | tuple[int, float] | Mapping[str, float]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_r(v, what: str) -> int:
    if not _is_int(v):
        raise ValueError(f"merge schedule: {what} must be an int, got {v!r} ({type(v).__name__})")
    if v < 0:
        raise ValueError(f"merge schedule: {what} must be ≥ 0, got {v}")
    return int(v)


def _linear_schedule(r, inflect, layers: int) -> list[int]:
    r = _check_r(r, "r")
    if not isinstance(inflect, numbers.Real) or isinstance(inflect, bool):
        raise ValueError(f"merge schedule: inflect must be a number in [-1, 1], got {inflect!r}")  # noqa: TRY004
    if not -1 <= inflect <= 1:
        raise ValueError(f"merge schedule: inflect must be in [-1, 1], got {inflect}")
    start = int(r * (1 - inflect))
    end = 2 * r - start
    step = (end - start) / max(layers - 1, 1)
    return [int(start + step * i) for i in range(layers)]


def parse_merge_schedule(r: MergeSchedule, layers: int) -> list[int]:
    """Tokens to merge per block, as ToMe's ``parse_r``; one int per layer.

    * int ``r``: the same r in every layer;
    * list (any non-tuple sequence, e.g. a YAML list) of ints: per-layer values, padded with 0 or
      truncated to ``layers``;
    * any 2-tuple ``(r, inflect)``, inflect int or float in [-1, 1]: linear from
      ``start = int(r·(1 − inflect))`` to ``2r − start``, each value truncated by ``int()``
      ((r, 0) is constant, (r, -1) the "decreasing" schedule 2r → 0, (r, 1) increases 0 → 2r);
    * a mapping ``{"r": 16, "inflect": -1}`` (how YAML writes the tuple; inflect defaults to 0).

    Anything else (other keys, a tuple of another length, negative or non-integer r, inflect outside
    [-1, 1]) raises ValueError. The matching still clamps each value to (T − 1) // 2.
    """
    if not _is_int(layers) or layers < 0:
        raise ValueError(f"merge schedule: layers must be an int ≥ 0, got {layers!r}")
    if isinstance(r, Mapping):
        unknown = sorted(str(k) for k in r if k not in ("r", "inflect"))
        if unknown:
            raise ValueError(f"merge schedule mapping has unknown key(s) {unknown}; allowed: 'r', 'inflect'")
        if "r" not in r:
            raise ValueError("merge schedule mapping needs 'r' (e.g. {'r': 16, 'inflect': -1})")
        return _linear_schedule(r["r"], r.get("inflect", 0), layers)
    if isinstance(r, tuple):
        if len(r) != 2:
            raise ValueError(
                f"merge schedule tuple must be (r, inflect), got {len(r)} values; use a list for per-layer values"
            )
        return _linear_schedule(r[0], r[1], layers)
    if _is_int(r):
        return [_check_r(r, "r")] * layers
    if isinstance(r, Sequence) and not isinstance(r, (str, bytes)):
        values = [_check_r(v, f"r[{i}]") for i, v in enumerate(r)]
        return values[:layers] + [0] * max(0, layers - len(values))
    raise ValueError(
        "merge schedule must be an int, a list of ints, an (r, inflect) tuple or a mapping "
        f"{{'r': ..., 'inflect': ...}}; got {r!r} ({type(r).__name__})"
    )


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
    over keys, so a merged token counts as many tokens as it stands for. ``r``: any schedule
    ``parse_merge_schedule`` accepts (int, list, ``(r, inflect)``, ``{"r": .., "inflect": ..}``).

    The last ``state.tail_tokens`` tokens (vision deep prompts) take no part in matching: each merge
    passes them through unchanged, last, with size 1, so prompt replacement in deeper layers still
    hits them and the sizes of the other tokens sum to 1 + patches.

    ``track_source``: keep ``state.source`` [N, L_now, L_0], the 0/1 matrix of which original
    tokens each current token holds (ToMe's "source"; ``source.sum(-1)`` equals the sizes). A
    layer's merge updates it only when ``state.source_layer`` is lower than its index, so the
    re-execution of ``merge`` in the backward pass under gradient checkpointing leaves it alone.
    """

    needs_metric = True

    def __init__(self, r: MergeSchedule, layers: int, class_token: bool = True,
                 proportional_attention: bool = True, track_source: bool = False):
        self.schedule = parse_merge_schedule(r, layers)
        self.class_token = class_token
        self.proportional_attention = proportional_attention
        self.track_source = track_source

    def on_embed(self, x, state):
        state.proportional_attention = self.proportional_attention
        if self.track_source:
            state.source, state.source_layer = None, -1
        return x

    def merge(self, index, x, metric, size, state):
        r = self.schedule[index] if index < len(self.schedule) else 0
        if r <= 0 or metric is None:
            return x, size
        tail = state.tail_tokens if state is not None else 0
        body = x.shape[1] - tail
        fn = bipartite_soft_matching(metric[:, :body] if tail else metric, r, self.class_token)
        if fn is None:
            return x, size
        if size is None:
            size = x.new_ones(x.shape[:2])
        if self.track_source and state is not None and state.source_layer < index:
            self._record_source(fn, x, body, state, index)
        s = size.unsqueeze(-1).to(x.dtype)
        if tail:
            merged_s = fn(s[:, :body], "sum")
            merged_x = fn(x[:, :body] * s[:, :body], "sum") / merged_s
            x = torch.cat([merged_x, x[:, body:]], dim=1)
            return x, torch.cat([merged_s.squeeze(-1), size[:, body:].to(merged_s.dtype)], dim=1)
        x = fn(x * s, "sum")
        s = fn(s, "sum")
        return x / s, s.squeeze(-1)

    @staticmethod
    def _record_source(fn, x: torch.Tensor, body: int, state: ForwardState, index: int) -> None:
        with torch.no_grad():
            src = state.source
            if src is None:
                n, t = x.shape[:2]
                src = torch.eye(t, dtype=x.dtype, device=x.device).unsqueeze(0).repeat(n, 1, 1)
            src = torch.cat([fn(src[:, :body], "amax"), src[:, body:]], dim=1)
        state.source, state.source_layer = src, index
