"""Evaluation metrics: view aggregation, top-k, per-class accuracy, confusion matrix, and an
accumulator that counts every video exactly once across DDP ranks.

A ``DistributedSampler`` pads the dataset so that every rank gets the same number of items; some
videos are then evaluated twice. :class:`Accumulator` keys every score by the video's dataset index,
merges the ranks' results (:meth:`Accumulator.gather`) and keeps one row per index — after checking
that duplicates agree and, when told which indices to expect, that none is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from vclip.errors import ConfigError, EvaluationError
from vclip.io import atomic_write

__all__ = ["VIEW_MODES", "aggregate_views", "topk_correct", "Accumulator", "save_confusion_png"]

VIEW_MODES = ("softmax_sum", "mean_logits")


def aggregate_views(view_logits: torch.Tensor, mode: str = "softmax_sum") -> torch.Tensor:
    """One score row per video from its views' logits: ``[V, K] → [K]`` or ``[B, V, K] → [B, K]``.
    ``softmax_sum``: class probabilities summed over views (X-CLIP's multi-view test);
    ``mean_logits``: logits averaged over views. Computed in float32."""
    if view_logits.ndim not in (2, 3):
        raise ValueError(f"view logits must be [V, K] or [B, V, K], got shape {tuple(view_logits.shape)}")
    x = view_logits.float()
    if mode == "softmax_sum":
        return x.softmax(dim=-1).sum(dim=-2)
    if mode == "mean_logits":
        return x.mean(dim=-2)
    raise ConfigError(f"view aggregation mode {mode!r} is unknown (choose from {', '.join(VIEW_MODES)})")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """``{k: number of rows whose target is among the k highest scores}`` (int64 scalar tensors);
    ``k`` larger than the number of classes counts as all classes."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, K] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes) if ks else 0
    out: dict[int, torch.Tensor] = {}
    if kmax == 0 or logits.shape[0] == 0:
        return {k: torch.zeros((), dtype=torch.int64) for k in ks}
    top = logits.topk(kmax, dim=1).indices  # [N, kmax], best first
    hit = top == targets.to(top.device).view(-1, 1)
    for k in ks:
        out[k] = hit[:, : min(k, num_classes)].any(dim=1).sum().to(torch.int64)
    return out


def _few(items: Iterable, n: int = 10) -> str:
    items = list(items)
    return ", ".join(str(i) for i in items[:n]) + (f", … (+{len(items) - n} more)" if len(items) > n else "")


class Accumulator:
    """Per-video final scores (after view aggregation), targets and dataset indices.

    ``add`` on every rank, then ``gather()`` (collective: every rank must call it) merges all ranks'
    rows, keeps one per index, and leaves the merged result on every rank; ``summary()`` computes
    the metrics. In a single process ``gather()`` only de-duplicates. Duplicate rows of one index
    must have equal targets and scores equal within ``rtol``/``atol`` (a padded video evaluated in
    two different batches differs by rounding only); anything else raises
    :class:`~vclip.errors.EvaluationError` naming the indices."""

    def __init__(self, num_classes: int | None = None, *, rtol: float = 1e-3, atol: float = 1e-3):
        self.num_classes = num_classes
        self.rtol, self.atol = rtol, atol
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []

    def add(self, scores: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | Sequence[int]) -> None:
        scores = torch.as_tensor(scores).detach().float().cpu()
        targets = torch.as_tensor(targets).detach().cpu().reshape(-1)
        indices = torch.as_tensor(indices).detach().cpu().reshape(-1)
        if scores.ndim == 1:
            scores = scores.unsqueeze(0)
        if scores.ndim != 2 or not (len(scores) == len(targets) == len(indices)):
            raise ValueError(
                f"add() expects scores [B, K], targets [B], indices [B]; got {tuple(scores.shape)}, "
                f"{tuple(targets.shape)}, {tuple(indices.shape)}"
            )
        if self.num_classes is None:
            self.num_classes = scores.shape[1]
        elif scores.shape[1] != self.num_classes:
            raise ValueError(f"scores have {scores.shape[1]} classes, the accumulator {self.num_classes}")
        self._scores.append(scores.numpy())
        self._targets.append(targets.to(torch.int64).numpy())
        self._indices.append(indices.to(torch.int64).numpy())

    def __len__(self) -> int:
        return sum(len(i) for i in self._indices)

    def local_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores [N, K] float32, targets [N] int64, indices [N] int64)``: the rows this
        accumulator holds, in the order they were added — this process's rows before
        :meth:`gather`, every rank's de-duplicated rows (sorted by index) after it. Empty arrays
        when nothing was added."""
        k = self.num_classes or 0
        if not self._indices:
            return np.zeros((0, k), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self._scores), np.concatenate(self._targets), np.concatenate(self._indices)


    def _set(self, scores: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> None:
        self._scores, self._targets, self._indices = [scores], [targets], [indices]

    def _dedup(self, scores: np.ndarray, targets: np.ndarray, indices: np.ndarray):
        order = np.argsort(indices, kind="stable")
        scores, targets, indices = scores[order], targets[order], indices[order]
        if len(indices) == 0:
            return scores, targets, indices
        first = np.ones(len(indices), dtype=bool)
        first[1:] = indices[1:] != indices[:-1]
        head = np.cumsum(first) - 1                         # group number of every row
        rep = np.flatnonzero(first)[head]                   # row of the group's first occurrence
        dup = ~first
        if dup.any():
            bad_t = dup & (targets != targets[rep])
            if bad_t.any():
                raise EvaluationError(
                    f"video indices reported with different targets by different ranks/batches: "
                    f"{_few(np.unique(indices[bad_t]).tolist())} (the evaluation data differs between processes)"
                )
            close = np.isclose(scores, scores[rep], rtol=self.rtol, atol=self.atol, equal_nan=True).all(axis=1)
            bad_s = dup & ~close
            if bad_s.any():
                worst = float(np.abs(scores[bad_s] - scores[rep[bad_s]]).max())
                raise EvaluationError(
                    f"video indices reported with different scores by different ranks/batches: "
                    f"{_few(np.unique(indices[bad_s]).tolist())} (max difference {worst:.3g}; "
                    f"tolerance rtol={self.rtol}, atol={self.atol}) — the index → video mapping is inconsistent"
                )
        return scores[first], targets[first], indices[first]

    def gather(self, *, expected: int | Iterable[int] | None = None) -> "Accumulator":
        """Merge all ranks' rows (collective), de-duplicate by index and, when ``expected`` is given
        (a count N meaning indices 0..N-1, or the indices themselves), check every expected index is
        present and no other. Returns self, holding the merged rows on every rank."""
        from vclip.engine import distributed

        scores, targets, indices = self.local_arrays()
        parts = distributed.all_gather_object((self.num_classes, scores, targets, indices))
        ks = {p[0] for p in parts if p[0] is not None and len(p[3])}
        if len(ks) > 1:
            raise EvaluationError(f"ranks report scores over different numbers of classes: {sorted(ks)}")
        if ks:
            self.num_classes = ks.pop()
        k = self.num_classes or 0
        scores = np.concatenate([p[1].reshape(len(p[3]), k) for p in parts]).astype(np.float32, copy=False)
        targets = np.concatenate([p[2] for p in parts])
        indices = np.concatenate([p[3] for p in parts])
        self._set(*self._dedup(scores, targets, indices))
        if expected is not None:
            self.check_complete(expected)
        return self

    def check_complete(self, expected: int | Iterable[int]) -> None:
        """Raise :class:`~vclip.errors.EvaluationError` listing missing / unexpected indices."""
        want = np.arange(expected) if isinstance(expected, (int, np.integer)) else np.unique(np.fromiter(expected, np.int64))
        have = np.unique(self.local_arrays()[2])
        missing = np.setdiff1d(want, have)
        extra = np.setdiff1d(have, want)
        problems = []
        if len(missing):
            problems.append(f"{len(missing)} of {len(want)} expected videos are missing (indices {_few(missing.tolist())})")
        if len(extra):
            problems.append(f"{len(extra)} unexpected video indices were reported ({_few(extra.tolist())})")
        if problems:
            raise EvaluationError("evaluation is incomplete: " + "; ".join(problems))

    def summary(
        self,
        ks: Sequence[int] = (1, 5),
        *,
        expected: int | Iterable[int] | None = None,
        subsets: Mapping[str, Iterable[int]] | None = None,
    ) -> dict:
        """Metrics over the (de-duplicated) rows: ``top{k}`` for each k ≤ the number of classes,
        ``mean_class_accuracy`` (over classes that have videos), ``per_class_accuracy`` (a list, None
        for classes without videos), ``per_class_count``, ``num_videos``, ``num_classes``,
        ``confusion`` (numpy int64 [K, K], rows = true class, columns = predicted). Accuracies are
        fractions in [0, 1]. ``subsets`` (name → class ids) adds ``subsets[name] = {top1,
        num_videos}`` over the videos whose true class is in the subset."""
        scores, targets, indices = self._dedup(*self.local_arrays())
        if expected is not None:
            self.check_complete(expected)
        n = len(indices)
        if n == 0:
            raise EvaluationError("no videos were evaluated (the evaluation set is empty)")
        k = int(self.num_classes)
        if targets.min() < 0 or targets.max() >= k:
            bad = np.unique(targets[(targets < 0) | (targets >= k)])
            raise EvaluationError(f"targets {_few(bad.tolist())} are outside the {k} classes scored")
        logits = torch.from_numpy(scores)
        tgt = torch.from_numpy(targets)
        valid_ks = [kk for kk in ks if kk <= k]
        correct = topk_correct(logits, tgt, valid_ks)
        out: dict = {"num_videos": n, "num_classes": k}
        for kk in valid_ks:
            out[f"top{kk}"] = float(correct[kk]) / n
        pred = scores.argmax(axis=1)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (targets, pred), 1)
        count = confusion.sum(axis=1)
        diag = np.diag(confusion)
        per_class = [float(diag[c] / count[c]) if count[c] else None for c in range(k)]
        present = [a for a in per_class if a is not None]
        out["mean_class_accuracy"] = float(np.mean(present))
        out["per_class_accuracy"] = per_class
        out["per_class_count"] = count.tolist()
        out["confusion"] = confusion
        if subsets:
            out["subsets"] = {}
            for name, classes in subsets.items():
                mask = np.isin(targets, np.fromiter(classes, np.int64))
                m = int(mask.sum())
                out["subsets"][name] = {
                    "top1": float((pred[mask] == targets[mask]).mean()) if m else None,
                    "num_videos": m,
                }
        return out


def save_confusion_png(
    path: str | os.PathLike,
    matrix: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
    max_labels: int = 100,
) -> Path:
    """Write the confusion matrix (rows = true class) as a PNG, atomically. Colours are row-normalised
    (the fraction of each true class predicted as each class); counts are printed in the cells up
    to 25 classes; class names label the axes up to ``max_labels`` classes."""
    # Figure + the Agg canvas directly: no pyplot, so a user's backend and global state are untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {m.shape}")
    k = m.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}-class confusion matrix")
    rows = m.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(m, rows, out=np.zeros(m.shape, np.float64), where=rows > 0)

    side = float(np.clip(3.0 + 0.2 * k, 5.0, 24.0))
    fig = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if k <= max_labels:
        names = [str(i) for i in range(k)] if class_names is None else [
            (s if len(s) <= 28 else s[:27] + "…") for s in map(str, class_names)]
        size = 9 if k <= 20 else 7 if k <= 50 else 5
        ax.set_xticks(range(k), names, rotation=90, fontsize=size)
        ax.set_yticks(range(k), names, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")

    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
