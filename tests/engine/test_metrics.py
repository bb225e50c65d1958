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


# --- found by mutation testing (benchmarks/mutation.sh vclip/engine/metrics.py) -------------------

def test_topk_correct_edges_and_errors():
    with pytest.raises(ValueError, match=r"expected logits \[N, K\] and targets \[N\], got \(5, 3\) and \(4,\)"):
        topk_correct(SCORES, TARGETS[:4])  # 2-D logits, wrong number of targets
    with pytest.raises(ValueError, match=r"got \(3,\) and \(3,\)"):
        topk_correct(SCORES[0], TARGETS[:3])
    assert topk_correct(SCORES, TARGETS, ks=()) == {}
    one = topk_correct(SCORES[:1], TARGETS[:1], ks=(1,))  # a single row is counted, not skipped
    assert int(one[1]) == 1
    empty = topk_correct(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ks=(1, 5))
    assert sorted(empty) == [1, 5]
    for v in empty.values():
        assert v.shape == () and v.dtype == torch.int64 and int(v) == 0


def test_aggregate_views_errors_name_the_shape_and_choices():
    with pytest.raises(ValueError, match=r"view logits must be \[V, K\] or \[B, V, K\], got shape \(4,\)"):
        aggregate_views(torch.zeros(4))
    with pytest.raises(ConfigError, match=r"'max' is unknown \(choose from softmax_sum, mean_logits\)"):
        aggregate_views(torch.zeros(2, 2), "max")


def test_add_single_video_dtypes_and_errors():
    acc = Accumulator()
    acc.add(SCORES[2], torch.tensor(2, dtype=torch.int32), torch.tensor([7], dtype=torch.int32))  # one video, [K]
    scores, targets, indices = acc.local_arrays()
    assert scores.shape == (1, 3) and np.array_equal(scores[0], SCORES[2].numpy())
    assert targets.dtype == np.int64 and indices.dtype == np.int64 and indices.tolist() == [7]
    with pytest.raises(ValueError, match=r"add\(\) expects scores \[B, K\], targets \[B\], indices \[B\]; "
                                         r"got \(2, 3, 1\), \(2,\), \(2,\)"):
        acc.add(torch.zeros(2, 3, 1), torch.zeros(2), [0, 1])
    with pytest.raises(ValueError, match=r"got \(2, 3\), \(1,\), \(2,\)"):
        acc.add(torch.zeros(2, 3), torch.zeros(1), [0, 1])
    with pytest.raises(ValueError, match="scores have 4 classes, the accumulator 3"):
        acc.add(torch.zeros(1, 4), [0], [0])


def test_empty_local_arrays_shapes_and_dtypes():
    for acc, k in ((Accumulator(), 0), (Accumulator(num_classes=3), 3)):
        scores, targets, indices = acc.local_arrays()
        assert scores.shape == (0, k) and targets.shape == indices.shape == (0,)
        assert (scores.dtype, targets.dtype, indices.dtype) == (np.float32, np.int64, np.int64)


def test_duplicate_tolerances():
    """Duplicates agree when |a − b| ≤ atol + rtol·|b| with the accumulator's rtol/atol (1e-3 each);
    NaN at the same place agrees; the error reports the largest difference and names only the
    offending indices."""
    base = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 1.0], [float("nan"), 1.0, 0.0]])
    acc = Accumulator()
    acc.add(base, [0, 2, 1], [0, 1, 2])
    acc.add(base + torch.tensor([[0.05, 0, 0], [0, 0.0005, 0], [0, 0, 0]]), [0, 2, 1], [0, 1, 2])  # rtol for 100, atol for 0, NaN = NaN
    assert acc.gather(expected=3).summary()["num_videos"] == 3
    acc = Accumulator()
    acc.add(SCORES * 10, TARGETS, range(5))
    acc.add(SCORES[[0, 1]] * 10 + torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]), TARGETS[[0, 1]], [0, 1])
    with pytest.raises(EvaluationError, match=r"different scores by different ranks/batches: 1 \(max difference 0\.1; "
                                              r"tolerance rtol=0\.001, atol=0\.001\)"):
        acc.gather()


def test_duplicates_keep_the_first_row_added():
    """Stable de-duplication: of an index's rows (equal within tolerance) the first added is kept,
    bit for bit, also when many rows are sorted (numpy's default sort is not stable beyond 16)."""
    g = torch.Generator().manual_seed(0)
    n = 300
    scores = torch.randn(n, 4, generator=g)
    targets = torch.randint(0, 4, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    acc = Accumulator()
    for _ in range(3):  # every index three times, later copies off by rounding noise
        acc.add(scores[order] if _ == 0 else scores[order] + 1e-4 * _, targets[order], order)
    acc.gather(expected=n)
    kept, _, idx = acc.local_arrays()
    assert idx.tolist() == list(range(n))
    assert np.array_equal(kept, scores.numpy())


def test_gather_merges_ranks(monkeypatch):
    """gather() with other ranks simulated: a rank without rows (num_classes unknown) takes the
    class count from the others; ranks disagreeing on it raise; all-empty stays [0, 0]."""
    from vclip.engine import distributed

    def fake_ranks(*others):
        monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, *others])

    a = Accumulator(num_classes=3)
    a.add(SCORES[:3].double(), TARGETS[:3], [0, 1, 2])
    part_a = (3, *a.local_arrays())
    fake_ranks(part_a)
    mine = Accumulator()  # this rank evaluated nothing
    mine.gather(expected=3)
    scores, targets, indices = mine.local_arrays()
    assert mine.num_classes == 3 and scores.dtype == np.float32
    assert np.array_equal(scores, SCORES[:3].numpy()) and indices.tolist() == [0, 1, 2]
    fake_ranks((4, np.zeros((1, 4), np.float32), np.zeros(1, np.int64), np.array([5])))
    with pytest.raises(EvaluationError, match=r"ranks report scores over different numbers of classes: \[3, 4\]"):
        a.gather()
    fake_ranks(part_a)
    declared = Accumulator(num_classes=4)  # a rank that scored nothing: its class count is not a report
    assert declared.gather(expected=3).num_classes == 3
    fake_ranks((None, *Accumulator().local_arrays()))
    empty = Accumulator().gather()
    assert empty.local_arrays()[0].shape == (0, 0)
    # float64 scores from another rank come back float32
    fake_ranks((3, SCORES[3:].double().numpy(), TARGETS[3:].numpy(), np.array([3, 4])))
    assert a.gather(expected=5).local_arrays()[0].dtype == np.float32


def test_incomplete_messages_list_indices():
    acc = Accumulator()
    acc.add(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), range(10))
    with pytest.raises(EvaluationError, match=r"^evaluation is incomplete: 10 of 20 expected videos are missing "
                                              r"\(indices 10, 11, 12, 13, 14, 15, 16, 17, 18, 19\)$"):
        acc.check_complete(20)  # exactly 10: all listed, no "more"
    with pytest.raises(EvaluationError, match=r"missing \(indices 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, "
                                              r"… \(\+2 more\)\); 1 unexpected video indices were reported \(9\)$"):
        acc.check_complete([i for i in range(22) if i != 9])  # an iterable: indices printed as ints
    with pytest.raises(EvaluationError, match=r"^no videos were evaluated \(the evaluation set is empty\)$"):
        Accumulator().summary()


def test_targets_outside_the_classes_are_listed():
    acc = Accumulator(num_classes=3)
    acc.add(torch.zeros(4, 3), torch.tensor([-1, 0, 3, 5]), range(4))
    with pytest.raises(EvaluationError, match=r"^targets -1, 3, 5 are outside the 3 classes scored$"):
        acc.summary()
    edge = Accumulator(num_classes=3)
    edge.add(torch.zeros(1, 3), torch.tensor([3]), [0])  # target == K
    with pytest.raises(EvaluationError, match="targets 3 are outside"):
        edge.summary()


def test_top_k_equal_to_classes_and_subset_accuracy():
    acc = Accumulator()
    acc.add(SCORES, TARGETS, range(5))
    s = acc.summary(ks=(1, 3), subsets={"two": [2], "zero": [0]})
    assert s["top3"] == 1.0  # k = K is reported
    assert s["subsets"]["two"] == {"top1": 1.0, "num_videos": 1}
    assert s["subsets"]["zero"] == {"top1": pytest.approx(2 / 3), "num_videos": 3}
