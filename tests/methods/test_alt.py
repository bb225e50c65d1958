"""ALT: region tokens by token merging, the hard straight-through alignment, the decoder, the frozen
text side, the LR levels, few-shot initialisation, FLOPs against the paper, and runs through the
CLI on the tiny synthetic set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "text"))

from vclip.backbone import CLIP, get_config  # noqa: E402
from vclip.config import RunConfig, from_dict  # noqa: E402
from vclip.errors import ConfigError  # noqa: E402
from vclip.methods import METHODS, build_method  # noqa: E402
from vclip.methods.alt import ALT, hard_alignment, merged_token_count  # noqa: E402
from vclip.methods.base import Vocabulary  # noqa: E402

NAMES = ("moving left", "moving right", "rotating")


pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


def tiny_alt(seed: int = 0, **options) -> ALT:
    torch.manual_seed(seed)
    return ALT(CLIP(get_config("tiny")), num_frames=4, options=ALT.parse_options({"r": 2, **options}))


def video(b=2, t=4, seed=1):
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ Eqs. 4-5: the hard alignment
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aligned_assignment_is_exactly_one_hot_and_passes_the_soft_gradient(dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(3, 7, 50, generator=g) * 2 - 1).to(dtype).requires_grad_(True)
    s = torch.randn(50, 16, generator=g).to(dtype)
    a_hat = hard_alignment(w, 1.0, noise=True, generator=torch.Generator().manual_seed(5))
    # forward: exactly one-hot (no rounding residue), the argmax of the noisy softmax
    assert a_hat.dtype == dtype
    assert torch.equal((a_hat == 1).sum(-1), torch.ones(3, 7, dtype=torch.long))
    assert torch.equal((a_hat == 0).sum(-1), torch.full((3, 7), 49))
    # backward: the gradient of the soft assignment A (same noise) through Â S
    weights = torch.randn(3, 7, 16, generator=g).to(dtype)
    (a_hat @ s * weights).sum().backward()
    grad_hard = w.grad.clone()
    w.grad = None
    e = torch.empty(w.shape, dtype=torch.float32).exponential_(generator=torch.Generator().manual_seed(5))
    soft = (w + (-e.log()).to(dtype)).softmax(-1)
    assert torch.equal(a_hat.detach().argmax(-1), soft.detach().argmax(-1))
    (soft @ s * weights).sum().backward()
    assert grad_hard.abs().sum() > 0
    torch.testing.assert_close(grad_hard, w.grad, rtol=0, atol=0)


def test_evaluation_gathers_the_best_entity_deterministically():
    m = tiny_alt().eval()
    tokens = torch.randn(2, 4, m.num_tokens, 32)
    s = F.normalize(torch.randn(40, 32), dim=-1)
    aligned, index = m.align(tokens, s)
    onehot = F.one_hot((F.normalize(tokens, dim=-1) @ s.t()).argmax(-1), 40).float()
    assert torch.equal(aligned, onehot @ s) and torch.equal(index, onehot.argmax(-1))
    again, _ = m.align(tokens, s)
    assert torch.equal(again, aligned)
    m.train()  # training draws Gumbel noise: assignments change between draws
    torch.manual_seed(0)
    _, i1 = m.align(tokens, s)
    _, i2 = m.align(tokens, s)
    assert not torch.equal(i1, i2)


# ------------------------------------------------------------------ region tokens and shapes
def test_region_tokens_101_for_b16_and_sizes_on_the_tiny_tower():
    assert merged_token_count(197, [8] * 12) == 101
    assert merged_token_count(197, [4] * 12) == 149 and merged_token_count(197, [13] * 12) == 41
    assert merged_token_count(257, [8] * 24) == 65
    m = tiny_alt().eval()
    assert m.num_tokens == merged_token_count(17, [2, 2]) == 13
    with torch.no_grad():
        feats = m.encode_video(video())
    assert feats["tokens"].shape == (2, 4, 13, 32)
    torch.testing.assert_close(feats["sizes"].sum(-1), torch.full((2, 4), 17.0))
    assert torch.equal(feats["sizes"][..., 0], torch.ones(2, 4))  # class token never merged
    # the class row is CLIP's frame embedding (projected class token)
    with torch.no_grad():
        plain = m.clip.visual(video().flatten(0, 1), hooks=[m.merging]).embeds.view(2, 4, -1)
    assert torch.equal(feats["tokens"][:, :, 0], plain)


def test_b16_new_parameters_match_the_paper():
    with torch.device("meta"):
        m = ALT(CLIP(get_config("ViT-B-16")), num_frames=8, options=ALT.parse_options({}))
    new = {g: sum(p.numel() for n, p in m.named_parameters() if m.parameter_group(n) == g)
           for g in ("new", "decoder")}
    assert m.num_tokens == 101
    assert new["new"] == 101 * 512 * 512 + 512 + 512 * 512 + 512
    assert sum(new.values()) / 1e6 == pytest.approx(38.31, abs=0.01)  # paper: 124.6 M − 86.19 M = 38.41 M


# ------------------------------------------------------------------ training: what learns
def test_text_tower_gets_no_gradient_and_the_rest_does():
    m = tiny_alt().train()
    out = m(video(), Vocabulary(NAMES, m.default_templates), torch.tensor([0, 2]))
    out.losses["ce"].backward()
    assert all(p.grad is None for p in m.clip.text.parameters())
    assert m.clip.logit_scale.grad is None and not m.text_trainable()
    for name in ("query_mlp.weight", "decoder.blocks.0.conv.weight", "decoder.blocks.3.cross_attn.q_proj.weight",
                 "final_mlp.weight", "clip.visual.transformer.resblocks.0.attn.in_proj_weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_region_tokens_receive_gradient_through_the_alignment_scores():
    """Only the straight-through path carries the region tokens (but the class row) to the loss:
    with the decoder reading the class row detached, the patch rows still get a gradient."""
    m = tiny_alt().train()
    feats = m.encode_video(video())
    tokens = feats["tokens"].detach().requires_grad_(True)
    cls_row = tokens[:, :, :1].detach()
    x = torch.cat([cls_row, tokens[:, :, 1:]], dim=2)
    classes = m.class_features(Vocabulary(NAMES, m.default_templates))
    out = m.outputs({"tokens": x, "sizes": feats["sizes"]}, classes)
    out.logits.sum().backward()
    assert tokens.grad[:, :, 1:].abs().sum() > 0


def test_lr_levels_and_few_shot_decoder_multiplier():
    m = tiny_alt()
    assert m.lr_mults(10.0) == {"clip": 1.0, "decoder": 10.0, "new": 10.0}
    assert m.parameter_group("decoder.blocks.0.conv.weight") == "decoder"
    assert m.parameter_group("query_mlp.weight") == m.parameter_group("final_mlp.bias") == "new"
    from vclip.methods import load_run_config

    cfg = load_run_config([str(Path(__file__).parents[2] / "configs/alt/fewshot_hmdb51_b16_32f.yaml")])
    mults = m.lr_mults(cfg.train.lr_mult_new, cfg.train.lr_mults)
    assert cfg.train.lr * mults["clip"] == pytest.approx(8e-6)
    assert cfg.train.lr * mults["new"] == pytest.approx(8e-5)
    assert cfg.train.lr * mults["decoder"] == pytest.approx(8e-4)


def _cfg(**model):
    return from_dict(RunConfig, {"model": {"method": "alt", "arch": "tiny", "options": {"r": 2}, **model},
                                 "data": {"image_size": 32, "num_frames": 4}})


def test_few_shot_initialisation_loads_the_decoder(tmp_path):
    from vclip.engine.checkpoint import save_checkpoint

    torch.manual_seed(3)
    trained = build_method(_cfg())
    with torch.no_grad():
        for p in (*trained.decoder.parameters(), trained.query_mlp.weight, trained.final_mlp.bias):
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / "k400", trained.state_dict(), meta={"method": "alt"})
    torch.manual_seed(4)
    fresh = build_method(_cfg())
    torch.manual_seed(4)
    m = build_method(_cfg(init_checkpoint=str(tmp_path / "k400")))
    for k, v in trained.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert not torch.equal(fresh.decoder.blocks[0].conv.weight, m.decoder.blocks[0].conv.weight)


# ------------------------------------------------------------------ the decoder's temporal modelling
def test_without_the_temporal_conv_the_head_ignores_frame_order():
    for conv in (False, True):
        m = tiny_alt(temporal_conv=conv).eval()
        classes = m.class_features(Vocabulary(NAMES, m.default_templates))
        with torch.no_grad():
            feats = m.encode_video(video())
            perm = torch.tensor([2, 0, 3, 1])
            shuffled = {k: v[:, perm] for k, v in feats.items()}
            a, b = m.outputs(feats, classes).logits, m.outputs(shuffled, classes).logits
        if conv:
            assert (a - b).abs().max() > 1e-4
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ corpus and options
def test_corpus_file_label_words_and_body_parts(tmp_path):
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps({"format": "vclip-corpus/1", "entities": [
        {"unit": "rope", "description": "a thick cord", "category": "object", "classes": ["abseiling"]},
        {"unit": "Hands", "description": "", "category": "body", "classes": []}]}))
    m = tiny_alt(corpus=str(corpus))
    s = m.entity_sentences(Vocabulary(("moving left", "left turn")))
    assert s[:2] == ["rope: a thick cord", "Hands"]
    assert s.count("left") == 1 and "moving" in s and "turn" in s and "feet" in s
    assert "hands" not in s  # deduplicated against the file's "Hands"
    feats = m.class_features(Vocabulary(("moving left", "left turn")))
    assert feats["entities"].shape == (len(s), 32) and feats["classes"].shape == (2, 32)
    torch.testing.assert_close(feats["entities"].norm(dim=-1), torch.ones(len(s)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "vclip-corpus/1", "entities": [{"unit": "x", "category": "colour"}]}))
    with pytest.raises(ConfigError, match=r"model\.options\.corpus: .*bad\.json: entities\[0\].*colour"):
        tiny_alt(corpus=str(bad))


def test_token_merging_config_is_refused_for_alt():
    with pytest.raises(ConfigError, match="model.token_merging: method 'alt' merges tokens by its own"):
        build_method(_cfg(token_merging={"r": 2}))


# ------------------------------------------------------------------ FLOPs: the paper's table
def test_flops_b16_8f_and_the_r_sweep_are_within_10_percent_of_the_paper(capsys):
    from vclip.cli import main
    from vclip.methods.flops import method_flops

    paper = {0: 141, 4: 129, 8: 110, 13: 86}
    got = {r: method_flops("alt", "ViT-B-16", 8, options={"r": r}).gflops for r in paper}
    for r, ref in paper.items():
        assert abs(got[r] / ref - 1) < 0.10, (r, got[r])
    assert got[0] > got[4] > got[8] > got[13]
    assert main(["flops", "--method", "alt", "--views", "3x1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["gflops"] == pytest.approx(got[8]) and rep["gflops_per_video"] == pytest.approx(3 * got[8])
    assert rep["parts"]["text tower"] == 0 and rep["num_texts"] == 0


# ------------------------------------------------------------------ runs through the CLI
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=4, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def test_alt_trains_evaluates_and_predicts_through_the_cli(synth, tmp_path, capsys):
    import yaml

    from vclip.cli import main

    cfg = {
        "name": "alt", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "model": {"method": "alt", "arch": "tiny", "options": {"r": 2}},
        "data": {"root": str(synth), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                 "labels": str(synth / "labels.csv"), "num_frames": 4, "image_size": 32, "batch_size": 6,
                 "num_workers": 0,
                 "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0,
                         "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 2, "lr": 1e-4, "warmup_epochs": 0, "precision": "fp32", "log_every": 1},
        "eval": {"confusion_png": False},
    }
    path = tmp_path / "alt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(path)]) == 0
    ckpt = tmp_path / "runs/alt/checkpoints/last"
    assert (ckpt / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt)]) == 0
    assert "top-1" in capsys.readouterr().out
    clip = next(p for p in sorted(synth.rglob("*")) if p.suffix in (".mp4", ".avi", ".mkv", ".webm"))
    assert main(["predict", str(clip), "--checkpoint", str(ckpt), "--top-k", "2", "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    labels = {ln.split(",", 1)[1] for ln in (synth / "labels.csv").read_text().splitlines()[1:]}
    assert item["video"] == str(clip) and len(item["top"]) == 2
    assert {t["class"] for t in item["top"]} <= labels


def test_registered():
    assert METHODS["alt"] is ALT


def test_options_change_what_they_say():
    vocab = Vocabulary(NAMES)
    base = tiny_alt().eval()
    with torch.no_grad():
        ref = base(video(), vocab).logits
    for opts in ({"query_pool": "mean"}, {"chain_conv": True}, {"decoder_layers": 2}, {"conv_kernel": 1}):
        m = tiny_alt(**opts).eval()
        with torch.no_grad():
            out = m(video(), vocab).logits
        assert out.shape == ref.shape and (out - ref).abs().max() > 1e-6, opts
    assert tiny_alt(query_pool="mean").query_mlp.in_features == 32
    # align_scale multiplies the cosines by exp(logit_scale) > 0: the same argmax at evaluation
    m = tiny_alt(align_scale=True).eval()
    with torch.no_grad():
        assert torch.equal(m(video(), vocab).logits, ref)
    # gumbel_at_eval: noisy assignments in eval mode too
    m = tiny_alt(gumbel_at_eval=True).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        a = m(video(), vocab).aux["assignment"]
        b = m(video(), vocab).aux["assignment"]
    assert not torch.equal(a, b)
    for bad, match in [({"r": -1}, r"model\.options\.r"), ({"tau": 0}, r"model\.options\.tau"),
                       ({"conv_kernel": 2}, "conv_kernel"), ({"label_entities": False}, "empty"),
                       ({"query_pool": "max"}, "query_pool")]:
        with pytest.raises(ConfigError, match=match):
            ALT.parse_options(bad)


# ------------------------------------------------------------------ by hand: values a broken module changes
def test_merged_token_count_clamps_each_block_to_half_the_tokens():
    # 17 tokens, r = 8: block 1 merges min(8, 16 // 2) = 8 → 9, block 2 min(8, 8 // 2) = 4 → 5
    assert merged_token_count(17, [8, 8]) == 5
    assert merged_token_count(18, [9]) == 10 and merged_token_count(3, [5, 5]) == 2
    assert merged_token_count(17, []) == 17 and merged_token_count(17, [0, 3]) == 14


def test_gumbel_assignment_at_another_temperature_is_the_noisy_softmax_of_w_over_tau():
    """τ = 0.25: the forward is the argmax of softmax(w/τ + γ), the gradient that of that softmax
    (τ = 1 in the test above would not tell w/τ from w·τ)."""
    g = torch.Generator().manual_seed(2)
    w = (torch.rand(4, 9, generator=g) * 2 - 1).requires_grad_(True)
    weights = torch.randn(4, 9, generator=g)
    a_hat = hard_alignment(w, 0.25, noise=True, generator=torch.Generator().manual_seed(7))
    (a_hat * weights).sum().backward()
    grad_hard, w.grad = w.grad.clone(), None
    e = torch.empty(4, 9).exponential_(generator=torch.Generator().manual_seed(7))
    soft = (w / 0.25 - e.log()).softmax(-1)
    assert torch.equal(a_hat.detach(), F.one_hot(soft.argmax(-1), 9).float())
    (soft * weights).sum().backward()
    torch.testing.assert_close(grad_hard, w.grad, rtol=1e-6, atol=1e-7)
    # without noise: the argmax of w itself, and the soft gradient of softmax(w / τ)
    w2 = w.detach().clone().requires_grad_(True)
    plain = hard_alignment(w2, 0.25, noise=False)
    assert torch.equal(plain.detach(), F.one_hot(w.detach().argmax(-1), 9).float())
    (plain * weights).sum().backward()
    w3 = w.detach().clone().requires_grad_(True)
    ((w3 / 0.25).softmax(-1) * weights).sum().backward()
    torch.testing.assert_close(w2.grad, w3.grad, rtol=1e-6, atol=1e-7)
    # the defaults: τ = 1 (App. B) with noise (the gradient tells τ apart, the noise the argmax)
    def grad_of(*args, **kwargs):
        w5 = w.detach().clone().requires_grad_(True)
        a = hard_alignment(w5, *args, generator=torch.Generator().manual_seed(7), **kwargs)
        (a * weights).sum().backward()
        return a.detach(), w5.grad

    a_def, g_def = grad_of()
    a_one, g_one = grad_of(1.0, noise=True)
    assert torch.equal(a_def, a_one) and torch.equal(g_def, g_one)
    assert not torch.allclose(grad_of(2.0, noise=True)[1], g_def, atol=1e-4)
    assert not torch.equal(grad_of(1.0, noise=False)[0], a_def)


def _mha_by_hand(m, query, kv):
    b, lq, d = query.shape
    h = m.heads
    q = F.linear(query, m.q_proj.weight, m.q_proj.bias).view(b, lq, h, d // h).transpose(1, 2)
    k = F.linear(kv, m.k_proj.weight, m.k_proj.bias).view(b, -1, h, d // h).transpose(1, 2)
    v = F.linear(kv, m.v_proj.weight, m.v_proj.bias).view(b, -1, h, d // h).transpose(1, 2)
    att = (q @ k.transpose(-1, -2) / (d // h) ** 0.5).softmax(-1) @ v
    return F.linear(att.transpose(1, 2).reshape(b, lq, d), m.out_proj.weight, m.out_proj.bias)


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def test_decoder_block_and_decoder_equal_eq_8_by_hand():
    """Eq. 8 written out: X̂' = X̂ + Conv1d(X̂) (kernel 3, padding 1, over time), Q̂' = Q̂ + SA(LN Q̂),
    Q̂ = Q̂' + CA(LN Q̂', LN X̂'); LayerNorms at their initial 1/0 (ε 1e-5), attention with a scale
    1/√(d/h) over 2 heads; M blocks each convolve X̂ itself unless chain_conv."""
    from vclip.methods.alt import DecoderBlock, MultiHeadAttention, VideoDecoder

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="width 10 is not divisible by 4 heads"):
        MultiHeadAttention(10, 4)
    block = DecoderBlock(8, 2, 3)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for ln in (block.ln_self, block.ln_query, block.ln_frames):
        torch.nn.init.ones_(ln.weight), torch.nn.init.zeros_(ln.bias)
    g = torch.Generator().manual_seed(1)
    q0, x0 = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    with torch.no_grad():
        conv = F.conv1d(x0.transpose(1, 2), block.conv.weight, block.conv.bias, padding=1).transpose(1, 2)
        x1 = x0 + conv
        q1 = q0 + _mha_by_hand(block.self_attn, _ln(q0), _ln(q0))
        q2 = q1 + _mha_by_hand(block.cross_attn, _ln(q1), _ln(x1))
        q, x = block(q0, x0)
        torch.testing.assert_close(x, x1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q, q2, rtol=1e-5, atol=1e-6)
        # without the convolution: X̂ unchanged
        flat = DecoderBlock(8, 2, 3, conv=False)
        assert flat.conv is None and torch.equal(flat(q0, x0)[1], x0)
        # two blocks: each convolves X̂ (Eq. 8), or the previous block's X̂' with chain_conv
        for chain in (False, True):
            dec = VideoDecoder(8, layers=2, heads=2, kernel=3, chain_conv=chain)
            for p in dec.parameters():
                torch.nn.init.normal_(p, std=0.3)
            qa, xa = dec.blocks[0](q0, x0)
            qb, _ = dec.blocks[1](qa, xa if chain else x0)
            torch.testing.assert_close(dec(q0, x0), qb, rtol=1e-5, atol=1e-6)
            assert dec.chain_conv is chain
        assert not torch.allclose(dec.blocks[1](qa, x0)[0], qb, atol=1e-4)


def test_new_modules_start_trunc_normal_002_with_zero_biases_and_unit_layernorms():
    m = tiny_alt()
    w = m.query_mlp.weight.detach()
    assert float(w.std()) == pytest.approx(0.02, rel=0.05) and float(w.mean()) == pytest.approx(0, abs=1e-3)
    for mod in (m.query_mlp, m.final_mlp, m.decoder.blocks[0].conv, m.decoder.blocks[3].cross_attn.out_proj):
        assert torch.equal(mod.bias, torch.zeros_like(mod.bias))
    conv = m.decoder.blocks[1].conv.weight.detach()
    assert float(conv.std()) == pytest.approx(0.02, rel=0.1)
    ln = m.decoder.blocks[2].ln_frames
    assert torch.equal(ln.weight, torch.ones(32)) and torch.equal(ln.bias, torch.zeros(32))
    assert ln.eps == 1e-5
    assert m.decoder.blocks[0].self_attn.heads == 8 and m.decoder.blocks[0].conv.padding == (1,)
    assert len(m.decoder.blocks) == 4 and m.decoder.blocks[0].conv.kernel_size == (3,)
    assert tiny_alt(conv_kernel=5).decoder.blocks[0].conv.padding == (2,)
    from vclip.methods.alt import DecoderBlock, VideoDecoder

    assert VideoDecoder(8, 1, 2).chain_conv is False                      # Eq. 8: every block convolves X̂
    # the defaults of the decoder classes: ALT-B's M = 4 blocks, 8 heads, temporal kernel 3
    plain = VideoDecoder(16)
    assert len(plain.blocks) == 4 and plain.blocks[0].self_attn.heads == 8
    assert plain.blocks[0].conv.kernel_size == (3,) and DecoderBlock(16, 2).conv.kernel_size == (3,)
    assert m.merging.proportional_attention is True
    assert tiny_alt(proportional_attention=False).merging.proportional_attention is False


def test_outputs_equal_eqs_6_to_10_by_hand_for_both_query_pools():
    """Evaluation (no noise): Â S gathers each token's best entity; Q̂ = MLP(flatten), or MLP of the
    size-weighted mean; the decoder reads the class rows; z = Linear(mean_t Q̂_M); logits =
    exp(logit_scale) · cos(z, c)."""
    g = torch.Generator().manual_seed(3)
    for pool in ("flatten", "mean"):
        m = tiny_alt(query_pool=pool).eval()
        n = m.num_tokens
        x = torch.randn(2, 4, n, 32, generator=g)
        sizes = torch.randint(1, 4, (2, 4, n), generator=g).float()
        s = F.normalize(torch.randn(11, 32, generator=g), dim=-1)
        c = F.normalize(torch.randn(3, 32, generator=g), dim=-1)
        with torch.no_grad():
            out = m.outputs({"tokens": x, "sizes": sizes}, {"classes": c, "entities": s})
            best = (F.normalize(x, dim=-1) @ s.t()).argmax(-1)
            aligned = s[best]
            if pool == "flatten":
                q = F.linear(aligned.reshape(2, 4, n * 32), m.query_mlp.weight, m.query_mlp.bias)
            else:
                wts = sizes / sizes.sum(-1, keepdim=True)
                q = F.linear((aligned * wts[..., None]).sum(2), m.query_mlp.weight, m.query_mlp.bias)
            z = F.linear(m.decoder(q, x[:, :, 0]).mean(1), m.final_mlp.weight, m.final_mlp.bias)
            logits = m.clip.logit_scale.exp() * F.normalize(z, dim=-1) @ c.t()
        torch.testing.assert_close(out.aux["video"], z, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(out.aux["assignment"], best)
        assert torch.equal(m.logits({"tokens": x, "sizes": sizes}, {"classes": c, "entities": s}), out.logits)
        # float64 class features and tokens: cast to the video embedding's / the tokens' dtype
        with torch.no_grad():
            wide = m.outputs({"tokens": x, "sizes": sizes}, {"classes": c.double(), "entities": s})
            assert m.align(x.double(), s)[0].dtype == torch.float64
        torch.testing.assert_close(wide.logits, out.logits)


def test_training_alignment_is_the_gumbel_assignment_of_the_scaled_cosines():
    """Training mode: Â = hard_alignment(w, τ) on the global RNG with w = cos(X, S) (× exp(logit_scale)
    with align_scale), aligned = Â S and the index its argmax."""
    from vclip.methods import alt as alt_module

    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 3, 5, 32, generator=g)
    s = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    for scale, tau in ((False, 0.5), (True, 2.0)):
        m = tiny_alt(align_scale=scale, tau=tau).train()
        with torch.no_grad():
            m.clip.logit_scale.fill_(1.5)
        torch.manual_seed(9)
        aligned, index = m.align(tokens, s)
        w = F.normalize(tokens, dim=-1) @ s.t()
        if scale:
            w = w * torch.exp(torch.tensor(1.5))
        torch.manual_seed(9)
        a_hat = alt_module.hard_alignment(w, tau, noise=True)
        torch.testing.assert_close(aligned, a_hat @ s, rtol=1e-6, atol=1e-6)
        assert torch.equal(index, a_hat.argmax(-1))


def test_encode_video_sizes_without_merging_and_the_token_count_error():
    m = tiny_alt(r=0).eval()
    assert m.num_tokens == 17
    with torch.no_grad():
        feats = m.encode_video(video(b=1, t=2))
    assert torch.equal(feats["sizes"], torch.ones(1, 2, 17)) and feats["tokens"].shape == (1, 2, 17, 32)
    m.num_tokens = 13
    with pytest.raises(ValueError, match=r"^ALT was built for 13 region tokens per frame, the image tower gave 17 "
                                         r"\(another image size than the model's\?\)$"):
        m.encode_video(video(b=1, t=2))


def test_entity_sentences_descriptors_deduplication_and_the_example_vocabulary():
    m = tiny_alt()
    voc = Vocabulary(("jump rope", "Jump  high"), ("{}",), (("a rope", "Feet"), ("jump",)))
    s = m.entity_sentences(voc)
    # label words (deduplicated by unit), body parts, then descriptors deduplicated by normalised text
    assert s == ["jump", "rope", "high", "head", "face", "hands", "arms", "fingers", "legs", "feet", "torso",
                 "a rope"]
    ex = ALT.example_vocabulary(3, {"example_corpus_size": 7})
    assert ex.class_names == ("class 0", "class 1", "class 2") and ex.templates == ("{}",)
    assert ex.descriptors == (("entity 0", "entity 3", "entity 6"), ("entity 1", "entity 4"),
                              ("entity 2", "entity 5"))
    assert sum(map(len, ALT.example_vocabulary(4).descriptors)) == 5000
    # the entity template reaches the corpus sentences; an empty corpus (only reachable by editing the
    # object: the options refuse it) is named
    tmpl = tiny_alt(entity_template="{unit} - {description}")
    tmpl.corpus_entities = [{"unit": "rope", "description": "a cord"}]
    assert tmpl.entity_sentences(Vocabulary(("run",)))[0] == "rope - a cord"
    ws = tiny_alt().entity_sentences(Vocabulary(("run",), ("{}",), (("a  big rope", "a big  rope"),)))
    assert ws.count("a  big rope") == 1 and "a big  rope" not in ws      # whitespace runs fold in the key
    m.options.label_entities, m.corpus_entities = False, []
    with pytest.raises(ConfigError, match=r"^ALT: the entity corpus is empty \(set model\.options\.corpus or "
                                          r"label_entities\)$"):
        m.entity_sentences(Vocabulary(("run",)))


def test_option_errors_name_the_option():
    for bad, match in [({"r": -2}, r"model\.options\.r: expected an int >= 0, got -2"),
                       ({"tau": -1.0}, r"model\.options\.tau: must be > 0, got -1\.0"),
                       ({"decoder_layers": 0}, r"^model\.options\.decoder_layers and decoder_heads must be >= 1$"),
                       ({"decoder_heads": 0}, r"^model\.options\.decoder_layers and decoder_heads must be >= 1$"),
                       ({"conv_kernel": 0}, r"model\.options\.conv_kernel: must be odd and >= 1, got 0"),
                       ({"conv_kernel": 4}, r"model\.options\.conv_kernel: must be odd and >= 1, got 4"),
                       ({"example_corpus_size": 0}, r"model\.options\.example_corpus_size: must be >= 1, got 0"),
                       ({"entity_template": "{description}"}, r"model\.options\.entity_template: .* must contain "
                                                              r"\{unit\}"),
                       ({"label_entities": False}, r"^model\.options: label_entities is false and no corpus is "
                                                   r"given: the entity corpus would be empty$")]:
        with pytest.raises(ConfigError, match=match):
            ALT.parse_options(bad)
    for good in ({"r": 0}, {"conv_kernel": 1}, {"decoder_layers": 1, "decoder_heads": 1}, {"example_corpus_size": 1},
                 {"tau": 1e-3}):
        ALT.parse_options(good)
