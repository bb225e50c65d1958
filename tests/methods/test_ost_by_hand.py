"""OST's scores pinned against hand computations on tiny inputs (issue 13, item 3): the OT term
⟨P*, cos⟩ summed over the plan (P* from a plain float64 Sinkhorn loop written here), the pooled
term, every fusion mode as numbers, and WiSE-FT's blend (weights and the logits it gives)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vclip.backbone import CLIP, get_config
from vclip.methods.od_solver import od_logits, od_scores, pooled_scores
from vclip.methods.ost import OST

# tight solver settings: the implementation then converges to the exact entropic-OT plan
TIGHT = dict(eps=0.1, max_iter=3000, tol=1e-12, stopping="per_problem")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(-1, keepdims=True))


def hand_plan(cost: np.ndarray, eps: float, iters: int = 5000) -> np.ndarray:
    """Entropic OT with uniform marginals, the textbook Sinkhorn loop in float64."""
    t, n = cost.shape
    k = np.exp(-cost / eps)
    r, c = np.ones(t), np.ones(n)
    for _ in range(iters):
        r = (1.0 / t) / (k @ c)
        c = (1.0 / n) / (k.T @ r)
    return r[:, None] * k * c[None, :]


def hand_ot(frames: np.ndarray, desc: np.ndarray, eps: float = 0.1) -> np.ndarray:
    """⟨P*, cos⟩_F for every (video, class): frames [B, T, E], desc [K, N, E] → [B, K]."""
    out = np.zeros((frames.shape[0], desc.shape[0]))
    for b in range(frames.shape[0]):
        for k in range(desc.shape[0]):
            sim = unit(frames[b]) @ unit(desc[k]).T                      # [T, N]
            p = hand_plan(1.0 - sim, eps)
            assert abs(p.sum() - 1) < 1e-9 and np.allclose(p.sum(1), 1 / sim.shape[0])
            out[b, k] = (p * sim).sum()
    return out


def hand_pool(frames: np.ndarray, desc: np.ndarray) -> np.ndarray:
    """mean_t(unit frames) · mean_n(unit descriptors), not re-normalised: [B, K]."""
    return unit(frames).mean(1) @ unit(desc).mean(1).T


@pytest.fixture
def tiny_inputs():
    g = torch.Generator().manual_seed(13)
    frames = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)     # B=2 videos, T=3 frames, E=5
    desc = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)       # K=2 classes, N=4 descriptors
    return frames, desc


def test_od_scores_is_the_plan_weighted_sum_of_cosines(tiny_inputs):
    torch.set_num_threads(1)
    frames, desc = tiny_inputs
    ref = hand_ot(frames.numpy(), desc.numpy())
    got = od_scores(frames, desc, **TIGHT).double().numpy()
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    # the log domain solves the same problem
    np.testing.assert_allclose(od_scores(frames, desc, domain="log", **TIGHT).double().numpy(), ref, atol=2e-6)
    # cross-check of the hand loop against POT when it is installed (a test dependency)
    ot = pytest.importorskip("ot")
    sim = unit(frames[0].numpy()) @ unit(desc[1].numpy()).T
    pot = ot.sinkhorn(np.full(3, 1 / 3), np.full(4, 1 / 4), 1 - sim, 0.1, numItermax=100000, stopThr=1e-14)
    assert abs((pot * sim).sum() - ref[0, 1]) < 1e-9


def test_od_logits_is_scale_times_ot_plus_pool(tiny_inputs):
    torch.set_num_threads(1)
    frames, desc = tiny_inputs
    ot_ref = hand_ot(frames.numpy(), desc.numpy())
    pool_ref = hand_pool(frames.numpy(), desc.numpy())
    assert np.abs(pool_ref).min() > 0.05          # the pooled term is far from zero: its sign matters
    np.testing.assert_allclose(pooled_scores(frames, desc).double().numpy(), pool_ref, atol=1e-6)
    with_pool = od_logits(frames, desc, 7.0, **TIGHT).double().numpy()
    np.testing.assert_allclose(with_pool, 7.0 * (ot_ref + pool_ref), atol=2e-5, rtol=0)
    without = od_logits(frames, desc, 7.0, pooled=False, **TIGHT).double().numpy()
    np.testing.assert_allclose(without, 7.0 * ot_ref, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------ fusion modes
def _tiny_ost(**opts) -> OST:
    torch.manual_seed(0)
    m = OST(CLIP(get_config("tiny")), num_frames=3,
            options=OST.parse_options({"num_descriptors": 4, "max_iter": 3000, "tol": 1e-12,
                                       "stopping": "per_problem", **opts}))
    return m.eval()


@pytest.mark.parametrize("fusion", ["official", "paper", "ot", "pool"])
def test_fusion_modes_match_the_formulas(fusion):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 3, 6, generator=g)
    spatial, temporal = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    f, s, t = frames.double().numpy(), spatial.double().numpy(), temporal.double().numpy()
    ot_s, ot_t = hand_ot(f, s), hand_ot(f, t)
    pool_s, pool_t = hand_pool(f, s), hand_pool(f, t)
    m = _tiny_ost(fusion=fusion)
    scale = float(m.clip.logit_scale.detach().exp())
    assert abs(scale - np.exp(get_config("tiny").logit_scale_init)) < 1e-5
    by_hand = {
        "official": 0.5 * (ot_t + pool_t) + 0.5 * (ot_s + pool_s),
        "paper": 0.25 * (ot_t + pool_t + ot_s + pool_s),
        "ot": 0.5 * (ot_s + ot_t),
        "pool": 0.5 * (pool_s + pool_t),
    }[fusion]
    with torch.no_grad():
        got = m.logits(frames, {"spatial": F_normalize(spatial), "temporal": F_normalize(temporal)})
    np.testing.assert_allclose(got.double().numpy(), scale * by_hand, atol=1e-4, rtol=0)
    # one kind: official fusion is that kind's OT + pool (weight 1), paper's ½ of it
    m1 = _tiny_ost(fusion=fusion, kinds=["temporal"])
    with torch.no_grad():
        one = m1.logits(frames, {"temporal": F_normalize(temporal)})
    one_hand = {"official": ot_t + pool_t, "paper": 0.5 * (ot_t + pool_t), "ot": ot_t, "pool": pool_t}[fusion]
    np.testing.assert_allclose(one.double().numpy(), scale * one_hand, atol=1e-4, rtol=0)


def F_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------ WiSE-FT
def test_wise_blends_every_parameter_and_the_model_uses_the_blend(tmp_path):
    """θ = ratio·θ_init + (1 − ratio)·θ_ft for every parameter (buffers from the fine-tuned side),
    through ``model.options.wise_checkpoint`` as an evaluation config sets it; the blended model's
    logits equal those of a model loaded with the hand-blended state."""
    from vclip.backbone.weights import save_clip
    from vclip.methods.base import Vocabulary

    torch.set_num_threads(1)
    ratio = 0.3
    torch.manual_seed(1)
    ft_clip = CLIP(get_config("tiny"))
    with torch.no_grad():  # fine-tuned: clearly away from the initialisation everywhere
        for p in ft_clip.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_clip(ft_clip, tmp_path / "ft")
    ft = {f"clip.{k}": v for k, v in ft_clip.state_dict().items()}

    init = _tiny_ost()                                                   # seed 0: the "zero-shot CLIP"
    a = {k: v.clone() for k, v in init.state_dict().items()}
    params = {k for k, _ in init.named_parameters()}
    hand = {k: (ratio * a[k].double() + (1 - ratio) * ft[k].double()).to(a[k].dtype) if k in params else ft[k]
            for k in a}

    torch.manual_seed(0)
    blended = OST(CLIP(get_config("tiny")), num_frames=3,
                  options=OST.parse_options({"num_descriptors": 4, "max_iter": 3000, "tol": 1e-12,
                                             "stopping": "per_problem", "wise_checkpoint": str(tmp_path / "ft"),
                                             "wise_ratio": ratio})).eval()
    got = blended.state_dict()
    assert set(got) == set(hand)
    moved = 0
    for k in hand:
        assert torch.allclose(got[k].double(), hand[k].double(), atol=1e-6, rtol=0), k
        if k in params:
            moved += int(not torch.allclose(got[k], a[k]) and not torch.allclose(got[k], ft[k]))
    assert moved == len(params)                     # every parameter is strictly between A and B

    ref = _tiny_ost()
    ref.load_state_dict(hand)
    vocab = Vocabulary(("a", "b", "c"), descriptors=[("x", "y", "z", "w", "one", "two", "three", "four")] * 3)
    video = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        lb, lr, la = blended(video, vocab).logits, ref(video, vocab).logits, init(video, vocab).logits
    assert torch.allclose(lb, lr, atol=1e-5, rtol=0)
    assert (lb - la).abs().max() > 1e-2             # and the blend is not the initial model


# --- found by mutation testing (benchmarks/mutation.sh vclip/methods/od_solver.py) ---------------

def test_pooled_scores_renormalised_and_per_video_descriptors(tiny_inputs):
    """The two paths of pooled_scores no other test reaches: ``renormalize=True`` (cosine of the two
    means) and descriptors per video [B, K, N, E] (each video against its own text)."""
    frames, desc = tiny_inputs
    f, d = frames.numpy(), desc.numpy()
    np.testing.assert_allclose(pooled_scores(frames, desc, renormalize=True).double().numpy(),
                               unit(unit(f).mean(1)) @ unit(unit(d).mean(1)).T, atol=1e-6)
    per_video = torch.stack([desc, desc.flip(0) * 2.0])          # video 1 sees the classes swapped
    got = pooled_scores(frames, per_video).double().numpy()
    ref = hand_pool(f, d)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)
    np.testing.assert_allclose(got[1], ref[1, ::-1], atol=1e-6)  # unit descriptors: the ×2 does not count


def test_solver_defaults_are_the_documented_ones(tiny_inputs):
    """od_logits / od_scores defaults: eps 0.1, at most 100 iterations, tol 1e-2, global stopping
    checked every 10 iterations (what OST's config sets); a changed default changes the scores."""
    torch.set_num_threads(1)
    frames, desc = tiny_inputs
    explicit = dict(eps=0.1, max_iter=100, tol=1e-2, stopping="global", check_every=10, domain="auto")
    assert torch.equal(od_scores(frames, desc), od_scores(frames, desc, **explicit))
    assert torch.equal(od_logits(frames, desc), od_logits(frames, desc, 1.0, **explicit))
    for change in (dict(eps=1.1), dict(tol=1.01), dict(max_iter=3)):
        assert not torch.allclose(od_scores(frames, desc, **{**explicit, **change}), od_scores(frames, desc))


def test_sinkhorn_arguments_bounds_and_messages():
    from vclip.methods.od_solver import sinkhorn

    cost = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    one = sinkhorn(cost, max_iter=1)  # one iteration is valid; its last (column) update is exact: 1/N
    torch.testing.assert_close(one.sum(-2), torch.full((3, 5), 1 / 5))
    for kwargs, message in ((dict(eps=0), r"^sinkhorn: eps must be > 0, got 0$"),
                            (dict(max_iter=0), r"^sinkhorn: max_iter must be >= 1, got 0$"),
                            (dict(stopping="never"), r"^sinkhorn: unknown stopping rule 'never'$"),
                            (dict(domain="exp"), r"^sinkhorn: unknown domain 'exp'$")):
        with pytest.raises(ValueError, match=message):
            sinkhorn(cost, **kwargs)
    _, per = sinkhorn(cost, stopping="per_problem", return_iters=True)
    _, glob = sinkhorn(cost, return_iters=True)
    _, fixed = sinkhorn(cost, stopping="none", max_iter=7, return_iters=True)
    assert per.shape == (3,) and glob.shape == () and int(fixed) == 7


# ------------------------------------------------ mutation testing (issue 13): the OD solver pinned

def test_solver_defaults_are_the_official_values():
    import inspect

    from vclip.methods.od_solver import sinkhorn

    for fn in (sinkhorn, od_scores, od_logits):
        p = inspect.signature(fn).parameters
        assert (p["eps"].default, p["max_iter"].default, p["tol"].default, p["stopping"].default,
                p["check_every"].default, p["domain"].default) == (0.1, 100, 1e-2, "global", 10, "auto"), fn


def test_stopping_none_runs_every_iteration_unmasked():
    """``stopping="none"``: exactly ``max_iter`` iterations, the plan of the masked rule that never
    converges (tol 0)."""
    from vclip.methods.od_solver import sinkhorn

    cost = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    for domain in ("log", "scaling"):
        plan, iters = sinkhorn(cost, eps=0.2, max_iter=6, stopping="none", domain=domain, return_iters=True)
        assert int(iters) == 6
        ref = sinkhorn(cost, eps=0.2, max_iter=6, tol=0.0, domain=domain)
        assert torch.equal(plan, ref)
        assert not torch.equal(plan, sinkhorn(cost, eps=0.2, max_iter=5, tol=0.0, domain=domain))


def test_log_domain_plan_ignores_a_constant_cost_shift_per_problem():
    """A constant added to one problem's cost leaves its plan unchanged — also when the problems of
    a batch sit far apart (the log-sum-exp is shifted per row, not by the batch maximum)."""
    from vclip.methods.od_solver import sinkhorn

    cost = torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(1))
    batch = torch.cat([cost, cost + 1.5])
    plan = sinkhorn(batch, eps=0.01, max_iter=50, domain="log")
    assert torch.allclose(plan[1], plan[0], atol=1e-4)     # fp32: cost + 1.5 keeps fewer bits
    assert torch.allclose(plan[0], sinkhorn(cost, eps=0.01, max_iter=50, domain="log")[0], atol=1e-6)


def test_descriptor_dtype_shapes_and_renormalised_pool_by_hand():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    shared = torch.randn(4, 2, 8, generator=g)                      # float32 [K, N, E]
    per_video = torch.randn(2, 4, 2, 8, generator=g)                # float32 [B, K, N, E]
    for d in (shared, per_video):                                   # cast to the frames' dtype
        assert torch.allclose(od_scores(frames, d), od_scores(frames, d.double()), atol=1e-6)
    with pytest.raises(ValueError, match=r"^descriptor features must be \[K, N, E\] or \[B, K, N, E\], got \(4, 8\)$"):
        od_scores(frames, shared[:, 0])
    # renormalised pool with per-video descriptors: cos(mean unit frame, mean unit descriptor)
    got = pooled_scores(frames, per_video, renormalize=True)
    v = F.normalize(frames.float(), dim=-1).mean(1)
    for b in range(2):
        for k in range(4):
            d = F.normalize(per_video[b, k], dim=-1).mean(0)
            assert abs(float(got[b, k]) - float(F.cosine_similarity(v[b], d, dim=0))) < 1e-6


def test_auto_domain_at_small_eps_is_the_log_domain():
    """Costs spanning 2 at ε = 0.005 (span/ε = 400, far past the scaling domain's range): "auto"
    must take the log domain — the same plan bit for bit, finite — for given and measured spans."""
    from vclip.methods.od_solver import sinkhorn

    cost = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(2)) * 2.0
    ref = sinkhorn(cost, eps=0.005, domain="log")
    assert torch.isfinite(ref).all()
    assert torch.equal(sinkhorn(cost, eps=0.005), ref)
    assert torch.equal(sinkhorn(cost, eps=0.005, max_cost_span=2.0), ref)
    # od_scores on unnormalised features measures the span (it is not the 2 of unit vectors)
    g = torch.Generator().manual_seed(3)
    frames, desc = torch.randn(2, 3, 8, generator=g) * 3, torch.randn(4, 2, 8, generator=g) * 3
    s = od_scores(frames, desc, eps=0.05, normalize=False)
    assert torch.isfinite(s).all()
    assert torch.equal(s, od_scores(frames, desc, eps=0.05, normalize=False, domain="log"))


def test_od_logits_passes_the_solver_options():
    g = torch.Generator().manual_seed(4)
    frames, desc = torch.randn(2, 3, 8, generator=g), torch.randn(4, 2, 8, generator=g)
    kw = dict(eps=0.3, max_iter=2, tol=1e-9, stopping="per_problem", check_every=1, domain="log")
    got = od_logits(frames, desc, 2.0, pooled=False, **kw)
    assert torch.equal(got, od_scores(frames, desc, **kw) * 2.0)
    for key, default in (("eps", 0.1), ("max_iter", 100), ("domain", "auto")):
        assert not torch.equal(got, od_logits(frames, desc, 2.0, pooled=False, **{**kw, key: default})), key
