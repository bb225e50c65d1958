"""OST: the OD solver (POT parity, the official iteration, batching, stability) and the method
end to end (descriptors from `vclip describe` against a fake server → train → evaluate → WiSE-FT)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "text"))

from vclip.methods.od_solver import od_logits, od_scores, pooled_scores, sinkhorn  # noqa: E402
from vclip.methods.ost import OST, kl_contrastive_loss  # noqa: E402
from vclip.methods.base import Vocabulary  # noqa: E402


def official_sinkhorn(K, u, v, max_iter=100, thresh=1e-2):
    """The official scaling-domain iteration with its per-iteration host check (the reference)."""
    r, c = torch.ones_like(u), torch.ones_like(v)
    for i in range(max_iter):
        r0 = r
        r = u / torch.matmul(K, c.unsqueeze(-1)).squeeze(-1)
        c = v / torch.matmul(K.transpose(1, 2), r.unsqueeze(-1)).squeeze(-1)
        if (r - r0).abs().mean().item() < thresh:
            break
    return torch.matmul(r.unsqueeze(-1), c.unsqueeze(-2)) * K, i + 1


# ---------------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("domain", ["scaling", "log"])
@pytest.mark.parametrize("t, n, eps", [(8, 4, 0.1), (32, 4, 0.1), (16, 8, 0.05), (5, 3, 0.2)])
def test_sinkhorn_matches_pot(t, n, eps, domain):
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(t * n)
    cost = torch.rand(6, t, n, generator=g, dtype=torch.float64)
    plan = sinkhorn(cost, eps=eps, max_iter=3000, tol=0.0, stopping="per_problem", domain=domain, check_every=0)
    assert plan.dtype == torch.float32
    for i in range(cost.shape[0]):
        ref = ot.sinkhorn(np.full(t, 1 / t), np.full(n, 1 / n), cost[i].numpy(), eps, numItermax=100000,
                          stopThr=1e-13)
        assert np.abs(plan[i].double().numpy() - ref).max() <= 1e-5
        assert abs(float(plan[i].sum()) - 1) < 1e-5


@pytest.mark.parametrize("domain, check_every", [("scaling", 1), ("scaling", 7), ("scaling", 10), ("scaling", 0),
                                                 ("log", 10), ("log", 0)])
def test_official_iteration_and_stopping_rule(domain, check_every):
    """Same stopping iteration and plan as the official scaling-domain loop (global mean|Δr|),
    whichever host-check interval is used."""
    g = torch.Generator().manual_seed(1)
    sim = F.normalize(torch.randn(40, 32, 8, generator=g, dtype=torch.float64), dim=-1)[..., :4] * 0.5 + 0.2
    K = torch.exp(-(1 - sim) / 0.1)
    ref, iters = official_sinkhorn(K, torch.full((40, 32), 1 / 32, dtype=torch.float64),
                                   torch.full((40, 4), 1 / 4, dtype=torch.float64))
    plan, ours = sinkhorn(1 - sim, eps=0.1, check_every=check_every, domain=domain, return_iters=True)
    assert 1 < iters < 100 and int(ours) == iters
    assert (plan.double() - ref).abs().max() <= 1e-5


def test_batched_equals_per_pair_loop():
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(3, 8, 32, generator=g)
    desc = torch.randn(5, 4, 32, generator=g)
    batched = od_scores(frames, desc, stopping="per_problem")
    loop = torch.stack([torch.stack([od_scores(frames[b:b + 1], desc[k:k + 1], stopping="global")[0, 0]
                                     for k in range(5)]) for b in range(3)])
    assert torch.allclose(batched, loop, atol=1e-6, rtol=0)
    # per-video descriptors [B, K, N, E] (X-CLIP-style video-conditioned text) give the same
    per_video = od_scores(frames, desc.expand(3, -1, -1, -1), stopping="per_problem")
    assert torch.allclose(per_video, batched, atol=1e-6)
    # the log domain gives the same scores
    assert torch.allclose(od_scores(frames, desc, stopping="per_problem", domain="log"), batched, atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.05, 0.01])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("domain", ["auto", "log"])
def test_no_nan_small_eps_and_bf16(eps, autocast, domain):
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(4, 16, 64, generator=g, requires_grad=True)
    desc = torch.randn(10, 4, 64, generator=g)
    desc[0] = -frames[0, :4].detach()  # anti-aligned: cost ≈ 2, K = exp(−200) in the scaling domain
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plan = sinkhorn(1 - torch.einsum("bte,kne->bktn", F.normalize(frames, dim=-1), F.normalize(desc, dim=-1)),
                        eps=eps, domain=domain)
        logits = od_logits(frames, desc, 100.0, eps=eps, domain=domain)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert torch.allclose(plan.sum(dim=(-2, -1)), torch.ones(4, 10), atol=1e-4)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(frames.grad).all()


def test_plan_is_a_constant():
    """d⟨P, sim⟩/d sim = P: no gradient flows through the plan (as in the official code)."""
    sim = (torch.rand(2, 3, 8, 4) * 0.6).requires_grad_(True)
    plan = sinkhorn(1 - sim)
    assert not plan.requires_grad
    (plan * sim).sum().backward()
    assert torch.equal(sim.grad, plan)


def test_pooled_term_is_not_renormalised():
    frames, desc = torch.randn(2, 8, 16), torch.randn(3, 4, 16)
    v = F.normalize(frames, dim=-1).mean(1)
    d = F.normalize(desc, dim=-1).mean(1)
    assert torch.allclose(pooled_scores(frames, desc), v @ d.t(), atol=1e-6)


def test_kl_loss_matches_official_batch_form():
    """Columns logits[:, y_j] are the official B × B logits; KL targets softmax(10·GT), both directions."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 5
    y = torch.tensor([0, 2, 2, 4, 0, 1])
    out = kl_contrastive_loss(logits, y)
    lb = logits[:, y]
    gt = (y[:, None] == y[None, :]).float()
    q = torch.softmax(10 * gt, 1)
    # official: KLDivLoss(reduction="mean") × batch size = the sum over B × B elements / B
    ref = sum(F.kl_div(F.log_softmax(x, 1), q, reduction="sum") / 6 for x in (lb, lb.t()))
    assert torch.allclose(out["kl_v2t"] + out["kl_t2v"], ref, atol=1e-6)


# ---------------------------------------------------------------------------------- the method
def _tiny_ost(**opts):
    from vclip.backbone import CLIP, get_config

    cfg = get_config("tiny")
    return OST(CLIP(cfg), num_frames=4, options=OST.parse_options({"num_descriptors": 2, **opts}))


def test_logits_fusion_and_cache():
    m = _tiny_ost(stopping="per_problem").eval()
    vocab = Vocabulary(("a", "b", "c"), descriptors=[("x", "y", "step one", "step two")] * 3)
    assert m.descriptor_sentences(vocab)["temporal"][0] == "A video of a usually includes step one"
    calls = []
    enc = m.encode_vocabulary
    m.encode_vocabulary = lambda v: calls.append(1) or enc(v)
    video = torch.randn(2, 4, 3, m.clip.config.vision.image_size, m.clip.config.vision.image_size)
    with torch.no_grad():
        official = m(video, vocab).logits
        m(video, vocab)
        assert len(calls) == 1                                            # encoded once, then cached
        feats, cf = m.encode_video(video), m.class_features(vocab)
        m.options.fusion = "paper"
        paper = m.logits(feats, cf)
    assert torch.allclose(paper, official / 2, atol=1e-5)                 # ¼ Σ vs ½ Σ over 2 kinds
    # the training logits over the batch's own classes are columns of the full logits
    with torch.no_grad():
        y = torch.tensor([2, 0])
        sub = Vocabulary(tuple(vocab.class_names[i] for i in y), descriptors=[vocab.descriptors[i] for i in y])
        assert torch.allclose(m.logits(feats, m.encode_vocabulary(sub)), paper[:, y], atol=1e-5)


def test_options_are_validated():
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match="model.options.kinds"):
        OST.parse_options({"kinds": ["spatial", "motion"]})
    with pytest.raises(ConfigError, match="model.options.temporal_template"):
        OST.parse_options({"temporal_template": "A video of {cls}"})
    with pytest.raises(ConfigError, match="model.options.epsilon"):
        OST.parse_options({"epsilon": 0.1})
    m = _tiny_ost()
    with pytest.raises(ConfigError, match="class 'a' has 3 descriptors"):
        m.encode_vocabulary(Vocabulary(("a",), descriptors=[("x", "y", "z")]))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=4, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def test_ost_trains_and_evaluates_from_described_files(synth, tmp_path):
    import yaml
    from fake_openai import FakeOpenAI

    from vclip.cli import main
    from vclip.config import load_config
    from vclip.engine.evaluate import evaluate
    from vclip.engine.trainer import train

    files = {}
    with FakeOpenAI() as server:
        for kind in ("ost-spatio", "ost-temporal"):
            files[kind] = tmp_path / f"{kind}.json"
            fmt = ["--format", "official"] if kind == "ost-temporal" else []  # one file of each format
            assert main(["describe", "--kind", kind, "--labels", str(synth / "labels.csv"), "-n", "2",
                         "--out", str(files[kind]), "--base-url", server.url, "--model", "m",
                         "--cache-dir", str(tmp_path / "cache"), "--no-progress"] + fmt) == 0
    cfg = {
        "name": "ost", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "model": {"method": "ost", "arch": "tiny",
                  "options": {"spatial_descriptors": str(files["ost-spatio"]),
                              "temporal_descriptors": str(files["ost-temporal"]), "num_descriptors": 2}},
        "data": {"root": str(synth), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                 "labels": str(synth / "labels.csv"), "num_frames": 4, "image_size": 32, "batch_size": 6,
                 "num_workers": 0,
                 "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0,
                         "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 3, "lr": 1e-4, "warmup_epochs": 0, "precision": "fp32", "log_every": 1},
        "eval": {"confusion_png": False},
    }
    path = tmp_path / "ost.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = train(load_config([str(path)]))
    assert results["num_videos"] == 12
    # the run logs one finite, positive loss per step (3 steps, log_every 1)
    metrics = [json.loads(x) for x in (tmp_path / "runs/ost/metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses)) and min(losses) > 0, metrics
    ckpt = tmp_path / "runs/ost/checkpoints/last"
    assert (ckpt / "model.safetensors").is_file()
    # the reported top-1 is that of the saved weights: an independent evaluation of the checkpoint
    # gives the same value, a whole number of the 12 videos
    again = evaluate(load_config([str(path)]), checkpoint=str(ckpt))
    assert again["num_videos"] == 12 and again["top1"] == pytest.approx(results["top1"], abs=1e-9)
    assert results["top1"] * 12 == pytest.approx(round(results["top1"] * 12), abs=1e-9)

    # WiSE-FT: `vclip wise` between the initial CLIP and the fine-tuned checkpoint, and the same
    # blend through the evaluation config; both give the same scores
    from vclip.backbone.weights import save_clip
    from vclip.methods import build_method
    from vclip.methods.wise import load_state

    base = load_config([str(path)])
    torch.manual_seed(1024)
    init = build_method(base)
    save_clip(init.clip, tmp_path / "init_clip")
    assert main(["wise", "--ratio", "0.2", str(tmp_path / "init_clip"), str(ckpt), str(tmp_path / "wise")]) == 0
    blended = load_state(tmp_path / "wise")
    ft = load_state(ckpt)
    own = init.state_dict()
    params = {k for k, _ in init.named_parameters()}
    assert set(blended) == set(own)
    for k in own:   # every parameter blended (`vclip wise` blends every floating tensor both hold)
        assert torch.allclose(blended[k].float(), 0.2 * own[k].float() + 0.8 * ft[k].float(), atol=1e-6), k
    assert any(not torch.allclose(own[k], ft[k]) for k in params)   # training moved the weights
    r1 = evaluate(base, checkpoint=str(tmp_path / "wise"))
    wise_cfg = load_config([str(path)], [f"model.pretrained={tmp_path / 'init_clip'}",
                                         f"model.options.wise_checkpoint={ckpt}", "model.options.wise_ratio=0.2"])
    r2 = evaluate(wise_cfg)
    assert r1["top1"] == r2["top1"] and r1["num_videos"] == r2["num_videos"] == 12


def test_forward_with_targets_returns_both_kl_terms_or_ce():
    """The training loss the trainer sums: both KL directions by name (official ``loss="kl"``) over
    the official B × B logits (every video against every sample's class descriptors, one OT problem
    per pair), or one cross-entropy (``loss="ce"``) from the logits of the same forward."""
    from vclip.methods.ost import kl_batch_loss

    m = _tiny_ost().eval()
    vocab = Vocabulary(("a", "b", "c"), descriptors=[("x", "y", "step one", "step two")] * 3)
    video = torch.randn(4, 4, 3, m.clip.config.vision.image_size, m.clip.config.vision.image_size)
    y = torch.tensor([0, 2, 2, 1])
    with torch.no_grad():
        out = m(video, vocab, y)
        cf = m.class_features(vocab)
        square = m.logits(m.encode_video(video), {k: v[y] for k, v in cf.items()})   # [B, B]
    ref = kl_batch_loss(square, y)
    assert set(out.losses) == {"kl_v2t", "kl_t2v"} and set(out.losses) <= set(OST.loss_weights)
    for k in ref:
        assert torch.equal(out.losses[k], ref[k])
    # the B × B logits are the columns logits[:, y_j] of the all-class logits, up to the global
    # stopping rule (the official B × B problems stop together, not with the B × K of the logits)
    cols = kl_contrastive_loss(out.logits, y)
    for k in ref:
        assert torch.allclose(out.losses[k], cols[k], atol=1e-3)
    lb = out.logits[:, y]
    q = torch.softmax(10 * (y[:, None] == y[None, :]).float(), 1)
    by_hand = sum(F.kl_div(F.log_softmax(x, 1), q, reduction="batchmean") for x in (lb, lb.t()))
    assert torch.allclose(out.losses["kl_v2t"] + out.losses["kl_t2v"], by_hand, atol=1e-6)
    m.options.loss = "ce"
    with torch.no_grad():
        ce = m(video, vocab, y).losses
    assert set(ce) == {"ce"} and torch.allclose(ce["ce"], F.cross_entropy(out.logits, y), atol=1e-6)


# ------------------------------------------------ mutation testing (issue 13): values pinned by hand

def _official_file(path, per_class):
    path.write_text(json.dumps({str(k): list(ds) for k, ds in enumerate(per_class)}))
    return str(path)


def test_vocabulary_descriptors_by_name_count_and_errors(tmp_path):
    """Index-keyed official files read through ``descriptor_labels`` (classes matched by name, in the
    run's order), kinds concatenated in ``kinds`` order, the count checked, errors naming the key."""
    from vclip.errors import AnnotationError, ConfigError

    file_names = ["archery", "bowling", "juggling", "surfing"]
    (tmp_path / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(file_names)))
    sp = _official_file(tmp_path / "s.json", [[f"{n} s{i}" for i in range(2)] for n in file_names])
    te = _official_file(tmp_path / "t.json", [[f"{n} t{i}" for i in range(2)] for n in file_names])
    opts = {"spatial_descriptors": sp, "temporal_descriptors": te, "num_descriptors": 2,
            "descriptor_labels": str(tmp_path / "labels.csv")}
    got = OST.vocabulary_descriptors(opts, ["surfing", "archery"])
    assert got == (("surfing s0", "surfing s1", "surfing t0", "surfing t1"),
                   ("archery s0", "archery s1", "archery t0", "archery t1"))
    assert OST.vocabulary_descriptors({**opts, "kinds": ["temporal", "spatial"]}, ["bowling"]) == \
        (("bowling t0", "bowling t1", "bowling s0", "bowling s1"),)
    with pytest.raises(AnnotationError):                       # 2 descriptors per class, not 3
        OST.vocabulary_descriptors({**opts, "num_descriptors": 3}, ["surfing"])
    with pytest.raises(ConfigError, match=r"^model\.options\.descriptor_labels: .*nope\.csv"):
        OST.vocabulary_descriptors({**opts, "descriptor_labels": str(tmp_path / "nope.csv")}, ["surfing"])
    for kind, tool in (("spatial", "ost-spatio"), ("temporal", "ost-temporal")):
        with pytest.raises(ConfigError, match=rf"^model\.options\.{kind}_descriptors: not set \(a descriptor file "
                                              rf"written by `vclip describe --kind {tool}` or an official OST JSON\)$"):
            OST.vocabulary_descriptors({**opts, f"{kind}_descriptors": None}, ["surfing"])


def test_example_vocabulary_has_the_descriptor_count_of_the_options():
    v = OST.example_vocabulary(2, {"num_descriptors": 3, "kinds": ["temporal"]})
    assert v.class_names == ("class 0", "class 1") and v.templates == OST.default_templates
    assert v.descriptors == (tuple(f"class 0 descriptor {i}" for i in range(3)),
                             tuple(f"class 1 descriptor {i}" for i in range(3)))
    assert len(OST.example_vocabulary(1).descriptors[0]) == 8          # default: 4 per kind, 2 kinds


def test_losses_routes_and_arguments_by_hand():
    """``loss="ce"`` and soft targets: cross-entropy with the smoothing given (none by default); an
    output without the frame/class features: the KL over the local logits' columns, with the
    configured target scale; ``decay_all_parameters`` decays what the base rule does not."""
    from vclip.methods.base import MethodOutput
    from vclip.methods.ost import kl_batch_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 3) * 3
    y = torch.tensor([0, 2, 2, 1])
    out = MethodOutput(logits)
    ce = _tiny_ost(loss="ce")
    assert torch.allclose(ce.losses(out, y)["ce"], F.cross_entropy(logits, y))
    assert torch.allclose(ce.losses(out, y, 0.2)["ce"], F.cross_entropy(logits, y, label_smoothing=0.2))
    soft = torch.softmax(torch.randn(4, 3), 1)
    kl = _tiny_ost(kl_target_scale=4.0)
    assert torch.allclose(kl.losses(out, soft)["ce"], -(soft * F.log_softmax(logits, 1)).sum(1).mean())
    ref = kl_batch_loss(logits[:, y], y, 4.0)
    assert not torch.allclose(ref["kl_v2t"], kl_batch_loss(logits[:, y], y)["kl_v2t"])
    for o in (out, MethodOutput(logits, aux={"frame_features": torch.randn(4, 4, 8)})):
        got = kl.losses(o, y)
        assert set(got) == {"kl_v2t", "kl_t2v"}
        for k in ref:
            assert torch.allclose(got[k], ref[k])
    assert kl_contrastive_loss(logits, y, 4.0)["kl_t2v"] == ref["kl_t2v"]
    bias = torch.zeros(8)
    assert _tiny_ost(decay_all_parameters=True).decays("clip.visual.ln_post.bias", bias) is True
    assert _tiny_ost().decays("clip.visual.ln_post.bias", bias) is False


def test_options_boundaries_and_messages():
    from vclip.errors import ConfigError

    ok = OST.parse_options({"num_descriptors": 1, "eps": 1e-3, "max_iter": 1, "check_every": 0, "wise_ratio": 0.0})
    assert (ok.num_descriptors, ok.max_iter, ok.check_every) == (1, 1, 0)
    assert OST.parse_options({"wise_ratio": 1.0}).wise_ratio == 1.0
    bad = [
        ({"kinds": ["spatial", "motion"]}, r"^model\.options\.kinds: unknown kind 'motion' \(known: spatial, temporal\)$"),
        ({"kinds": []}, r"^model\.options\.kinds: expected one or both of \('spatial', 'temporal'\), got \[\]$"),
        ({"kinds": ["spatial", "spatial"]}, r"^model\.options\.kinds: expected one or both"),
        ({"num_descriptors": 0}, r"^model\.options\.num_descriptors: must be >= 1, got 0$"),
        ({"temporal_template": "A video of {class_name}"},
         r"^model\.options\.temporal_template: 'A video of \{class_name\}' must contain \{descriptor\} and may "
         r"contain \{class_name\}, nothing else in braces$"),
        ({"eps": 0.0}, r"^model\.options\.eps: must be > 0, got 0\.0$"),
        ({"max_iter": 0}, r"^model\.options\.max_iter must be >= 1 and model\.options\.check_every >= 0$"),
        ({"check_every": -1}, r"^model\.options\.max_iter must be >= 1 and model\.options\.check_every >= 0$"),
        ({"wise_ratio": 1.5}, r"^model\.options\.wise_ratio: must be in \[0, 1\], got 1\.5$"),
    ]
    for options, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            OST.parse_options(options)


def test_construction_split_messages_and_normalised_descriptors():
    m = _tiny_ost(freeze_token_embedding=True)
    assert m.num_frames == 4 and not m.clip.text.token_embedding.weight.requires_grad
    assert _tiny_ost().clip.text.token_embedding.weight.requires_grad
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^OST needs descriptors: set model\.options\.spatial_descriptors / "
                                          r"temporal_descriptors \(or build the Vocabulary with descriptors=\.\.\.\)$"):
        m.encode_vocabulary(Vocabulary(("a",)))
    with pytest.raises(ConfigError, match=r"^OST: class 'a' has 3 descriptors; expected 2 per kind for kinds "
                                          r"\['spatial', 'temporal'\] \(4 in all, kinds in that order\)$"):
        m.encode_vocabulary(Vocabulary(("a",), descriptors=[("x", "y", "z")]))
    with torch.no_grad():
        cf = m.encode_vocabulary(Vocabulary(("a", "b"), descriptors=[("x", "y", "p", "q"), ("u", "v", "r", "s")]))
    for kind in ("spatial", "temporal"):
        assert cf[kind].shape[:2] == (2, 2)
        assert torch.allclose(cf[kind].norm(dim=-1), torch.ones(2, 2), atol=1e-6)    # each descriptor a unit vector


def test_solver_options_and_class_name_term_reach_the_logits():
    """The solver options reach ``od_scores`` (bitwise the same call), the official fusion is
    ½ Σ_kinds (OT + pool), and ``class_name_weight`` adds w · cos(mean frame, class-name prompt)."""
    opts = dict(eps=0.2, max_iter=7, tol=0.2, stopping="per_problem", check_every=1, domain="log",
                class_name_weight=0.5)
    torch.manual_seed(0)
    m = _tiny_ost(**opts).eval()
    vocab = Vocabulary(("a", "b", "c"), descriptors=[("x", "y", "step one", "step two"), ("p", "q", "r", "s"),
                                                     ("jump", "run", "fall", "stand")])
    torch.manual_seed(0)
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        feats, cf = m.encode_video(video), m.class_features(vocab)
        assert torch.allclose(cf["names"], m.encode_prompt_ensemble(vocab))
        kw = {k: opts[k] for k in ("eps", "max_iter", "tol", "stopping", "check_every", "domain")}
        total = sum(od_scores(feats, cf[k], **kw) + pooled_scores(feats, cf[k]) for k in ("spatial", "temporal"))
        v = F.normalize(feats.float().mean(dim=1), dim=-1)
        hand = m.clip.logit_scale.exp() * (0.5 * total + 0.5 * v @ cf["names"].t())
        got = m.logits(feats, cf)
    assert torch.allclose(got, hand.float(), atol=1e-5, rtol=0)
    # each option matters in these settings: its default gives other logits (not checked:
    # check_every, which only sets when the host looks at the on-device stop flag, and stopping,
    # whose two rules differ here by one float32 ulp at most)
    for key, default, setting in (("eps", 0.1, {}), ("tol", 1e-2, {}), ("domain", "auto", {}),
                                  ("max_iter", 100, {"max_iter": 1, "tol": 1e-9})):
        for k, v in {**opts, **setting}.items():
            setattr(m.options, k, v)
        with torch.no_grad():
            ref = m.logits(feats, cf)
            setattr(m.options, key, default)
            assert not torch.equal(m.logits(feats, cf), ref), key


def test_global_kl_uses_the_target_scale():
    from vclip.methods.ost import kl_batch_loss

    m = _tiny_ost(kl_target_scale=4.0).eval()
    vocab = Vocabulary(("a", "b", "c"), descriptors=[("x", "y", "step one", "step two")] * 3)
    torch.manual_seed(0)
    video = torch.randn(3, 4, 3, 32, 32)
    y = torch.tensor([0, 2, 2])
    with torch.no_grad():
        out = m(video, vocab, y)
        square = m.logits(m.encode_video(video), {k: v[y] for k, v in m.class_features(vocab).items()})
    for k, ref in kl_batch_loss(square, y, 4.0).items():
        assert torch.equal(out.losses[k], ref)


def test_apply_wise_blends_every_parameter_and_names_missing_keys(tmp_path, monkeypatch, caplog):
    import logging

    from vclip.errors import ConfigError

    m = _tiny_ost()
    own = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ft = {k: torch.randn(v.shape, generator=g) for k, v in own.items()}
    monkeypatch.setattr("vclip.methods.wise.load_state", lambda path: ft)
    with caplog.at_level(logging.INFO, logger="vclip.methods.ost"):
        m.apply_wise("ft-ckpt", 0.25)
    for k, v in m.state_dict().items():
        assert torch.allclose(v, 0.25 * own[k] + 0.75 * ft[k], atol=1e-6), k
    assert "WiSE-FT: ft-ckpt blended with the initial weights, 0.25 initial / 0.75 fine-tuned" in caplog.messages
    keys = list(own)
    monkeypatch.setattr("vclip.methods.wise.load_state", lambda path: {k: ft[k] for k in keys[3:]})
    with pytest.raises(ConfigError, match=rf"^model\.options\.wise_checkpoint: ft-ckpt lacks {keys[0]} \(and 2 more\): "
                                          r"not a checkpoint of this model$"):
        m.apply_wise("ft-ckpt", 0.25)
