import math

import numpy as np
import pytest
import torch

from vclip.engine.metrics import Accumulator, aggregate_views, save_confusion_png, topk_correct
from vclip.errors import ConfigError, EvaluationError

# 5 videos, 3 classes (hand-checked: see the comments)
SCORES = torch.tensor([
    [0.70, 0.20, 0.10],   # target 0, pred 0  ✓
    [0.50, 0.30, 0.20],   # target 1, pred 0  ✗ (top-2 ✓)
    [0.10, 0.10, 0.80],   # target 2, pred 2  ✓
    [0.25, 0.60, 0.15],   # target 0, pred 1  ✗ (top-2 ✓)
    [0.90, 0.05, 0.05],   # target 0, pred 0  ✓
])
TARGETS = torch.tensor([0, 1, 2, 0, 0])


def test_topk_correct():
    got = topk_correct(SCORES, TARGETS, ks=(1, 2, 5))
    assert {k: int(v) for k, v in got.items()} == {1: 3, 2: 5, 5: 5}  # k > K counts all classes
    assert got[1].dtype == torch.int64
    # target at rank r of 7 classes (0 = best): ranks 0, 2, 4, 5, 6 → top-1 1, top-5 3
    logits = torch.arange(7, 0, -1).float().repeat(5, 1)
    assert {k: int(v) for k, v in topk_correct(logits, torch.tensor([0, 2, 4, 5, 6])).items()} == {1: 1, 5: 3}


def test_aggregate_views():
    v = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])          # softmax: [.5, .5], [.75, .25]
    assert aggregate_views(v).tolist() == pytest.approx([1.25, 0.75])
    assert aggregate_views(v, "mean_logits").tolist() == pytest.approx([math.log(3.0) / 2, 0.0])
    # the two modes can disagree: one confident view against two mild ones
    w = torch.tensor([[10.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    assert aggregate_views(w).argmax().item() == 1
    assert aggregate_views(w, "mean_logits").argmax().item() == 0
    batch = torch.stack([v, v.flip(-1)])                             # [B=2, V=2, K=2]
    out = aggregate_views(batch.half())
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([1.25, 0.75, 0.75, 1.25], abs=1e-3)
    with pytest.raises(ConfigError, match="unknown"):
        aggregate_views(v, "max")


def test_summary_hand_computed():
    acc = Accumulator()
    acc.add(SCORES[:2], TARGETS[:2], [0, 1])
    acc.add(SCORES[2:], TARGETS[2:], torch.tensor([2, 3, 4]))
    s = acc.summary()
    assert s["num_videos"] == 5 and s["num_classes"] == 3
    assert s["top1"] == pytest.approx(0.6)
    assert "top5" not in s  # only k <= number of classes
    assert s["per_class_accuracy"] == pytest.approx([2 / 3, 0.0, 1.0])
    assert s["per_class_count"] == [3, 1, 1]
    assert s["mean_class_accuracy"] == pytest.approx(5 / 9)
    assert s["confusion"].dtype == np.int64
    assert s["confusion"].tolist() == [[2, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert acc.summary(ks=(1, 2))["top2"] == 1.0
    sub = acc.summary(subsets={"first_two": [0, 1], "none": [7]})["subsets"]
    assert sub["first_two"] == {"top1": pytest.approx(2 / 4), "num_videos": 4}
    assert sub["none"] == {"top1": None, "num_videos": 0}


def test_classes_without_videos_and_top5():
    acc = Accumulator(num_classes=7)
    logits = torch.arange(7, 0, -1).float().repeat(5, 1)
    acc.add(logits, torch.tensor([0, 2, 4, 5, 6]), range(5))
    s = acc.summary()
    assert s["top1"] == pytest.approx(0.2) and s["top5"] == pytest.approx(0.6)
    assert s["per_class_accuracy"] == [1.0, None, 0.0, None, 0.0, 0.0, 0.0]
    assert s["mean_class_accuracy"] == pytest.approx(0.2)  # over the 5 classes that have videos


def test_dedup_by_index():
    acc = Accumulator()
    acc.add(SCORES, TARGETS, range(5))
    acc.add(SCORES[[4, 0]] + 1e-5, TARGETS[[4, 0]], [4, 0])  # padded repeats, rounding noise only
    s = acc.gather(expected=5).summary(expected=range(5))
    assert s["num_videos"] == 5 and s["top1"] == pytest.approx(0.6)
    assert len(acc) == 5


def test_local_arrays():
    acc = Accumulator(num_classes=3)
    scores, targets, indices = acc.local_arrays()
    assert scores.shape == (0, 3) and targets.shape == indices.shape == (0,)
    acc.add(SCORES[:3], TARGETS[:3], [2, 0, 1])
    acc.add(SCORES[[0]], TARGETS[[0]], [2])  # a padded repeat
    scores, targets, indices = acc.local_arrays()
    assert indices.tolist() == [2, 0, 1, 2] and scores.dtype == np.float32 and targets.dtype == np.int64
    assert np.array_equal(scores[:3], SCORES[:3].numpy())
    acc.gather()  # merged and de-duplicated: sorted by index
    scores, targets, indices = acc.local_arrays()
    assert indices.tolist() == [0, 1, 2] and targets.tolist() == TARGETS[[1, 2, 0]].tolist()


def test_inconsistent_duplicates_raise():
    acc = Accumulator()
    acc.add(SCORES, TARGETS, range(5))
    acc.add(SCORES[[1]].flip(-1), TARGETS[[1]], [1])
    with pytest.raises(EvaluationError, match=r"different scores.*: 1 "):
        acc.summary()
    acc = Accumulator()
    acc.add(SCORES, TARGETS, range(5))
    acc.add(SCORES[[3]], torch.tensor([2]), [3])
    with pytest.raises(EvaluationError, match=r"different targets.*: 3 "):
        acc.gather()


def test_missing_and_unexpected_indices_reported():
    acc = Accumulator()
    acc.add(SCORES[:4], TARGETS[:4], [0, 1, 2, 9])
    with pytest.raises(EvaluationError, match=r"2 of 5 expected videos are missing \(indices 3, 4\).*unexpected.*9"):
        acc.gather(expected=5)
    with pytest.raises(EvaluationError, match="no videos"):
        Accumulator().summary()
    bad = Accumulator(num_classes=3)
    bad.add(SCORES[:1], torch.tensor([5]), [0])
    with pytest.raises(EvaluationError, match="outside the 3 classes"):
        bad.summary()


def test_confusion_png(tmp_path):
    m = np.array([[2, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.int64)
    p = save_confusion_png(tmp_path / "sub" / "confusion.png", m, ["juggling", "a very long class name " * 3, "c"])
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 150 classes: labels hidden; still one file and no temp files left
    rng = np.random.default_rng(0)
    big = rng.integers(0, 5, size=(150, 150))
    q = save_confusion_png(tmp_path / "big.png", big, [f"class {i}" for i in range(150)], title="K=150")
    assert q.stat().st_size > 1000
    assert sorted(x.name for x in tmp_path.iterdir()) == ["big.png", "sub"]
    assert [x.name for x in (tmp_path / "sub").iterdir()] == ["confusion.png"]
    with pytest.raises(ValueError, match="class names"):
        save_confusion_png(tmp_path / "x.png", m, ["a"])
