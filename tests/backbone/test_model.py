"""vclip.backbone.model piece by piece, against values written out by hand: the initialisation's
scales, stochastic depth, LayerNorm under autocast, the activations, attention's masks and queries,
the positional-embedding interpolation, gradient checkpointing and CLIP's logits. (Whole-tower
parity with transformers, OpenAI's layout and open_clip is in test_parity.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vclip.backbone import CLIP, ForwardState, TowerHook, get_config
from vclip.backbone.config import CLIPConfig
from vclip.backbone.model import (
    MLP,
    Attention,
    DropPath,
    LayerNorm,
    QuickGELU,
    ResidualAttentionBlock,
    TextTransformer,
    Transformer,
    VisionTransformer,
    drop_path_rates,
    interpolate_positional_embedding,
    make_activation,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------ initialisation


def _std_close(t: torch.Tensor, std: float, rel: float = 0.06) -> bool:
    return abs(t.float().std().item() - std) <= rel * std and abs(t.float().mean().item()) <= 4 * std / math.sqrt(t.numel())


def test_openai_initialisation_scales():
    """OpenAI's init: attention std width^-0.5, residual projections scaled by (2·layers)^-0.5, MLP
    input (2·width)^-0.5, biases 0; token embedding 0.02, text positions 0.01, text projection
    width^-0.5; image tower's class / positional embedding and projection width^-0.5."""
    torch.manual_seed(0)
    cfg = get_config("small")  # vision width 192, 4 layers; text width 128, 4 layers
    m = CLIP(cfg)
    for tower in (m.visual, m.text):
        w, layers = tower.transformer.width, tower.transformer.layers
        attn_std, proj_std, fc_std = w**-0.5, w**-0.5 * (2 * layers) ** -0.5, (2 * w) ** -0.5
        for b in tower.transformer.resblocks:
            assert _std_close(b.attn.in_proj_weight, attn_std)
            assert _std_close(b.attn.out_proj.weight, proj_std)
            assert _std_close(b.mlp.c_fc.weight, fc_std)
            assert _std_close(b.mlp.c_proj.weight, proj_std)
            for bias in (b.attn.in_proj_bias, b.attn.out_proj.bias, b.mlp.c_fc.bias, b.mlp.c_proj.bias):
                assert torch.count_nonzero(bias) == 0
            for ln in (b.ln_1, b.ln_2):
                assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.count_nonzero(ln.bias) == 0
    assert _std_close(m.text.token_embedding.weight, 0.02)
    assert _std_close(m.text.positional_embedding, 0.01)
    assert _std_close(m.text.text_projection, cfg.text.width**-0.5)
    wv = cfg.vision.width
    assert _std_close(m.visual.positional_embedding, wv**-0.5)
    assert _std_close(m.visual.proj, wv**-0.5)
    assert abs(m.visual.class_embedding.std().item() - wv**-0.5) < 0.2 * wv**-0.5  # 192 values
    assert m.visual.conv1.bias is None
    assert m.visual.conv1.kernel_size == m.visual.conv1.stride == (cfg.vision.patch_size,) * 2
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert m.visual.positional_embedding.shape == (cfg.vision.num_tokens, wv)
    assert m.text.positional_embedding.shape == (cfg.text.context_length, cfg.text.width)
    assert m.text.token_embedding.weight.shape == (cfg.text.vocab_size, cfg.text.width)
    assert m.visual.proj.shape == (wv, cfg.embed_dim) and m.text.text_projection.shape == (cfg.text.width, cfg.embed_dim)
    block = m.visual.transformer.resblocks[0]
    assert block.mlp.c_fc.weight.shape == (4 * wv, wv) and block.mlp.c_proj.weight.shape == (wv, 4 * wv)
    assert block.attn.heads == cfg.vision.heads and block.attn.head_dim == wv // cfg.vision.heads
    assert block.ln_1.eps == block.ln_2.eps == cfg.layer_norm_eps == m.text.ln_final.eps == m.visual.ln_pre.eps
    assert isinstance(block.mlp.act, QuickGELU) and len(m.visual.transformer.resblocks) == cfg.vision.layers
    assert len(m.text.transformer.resblocks) == cfg.text.layers


# ------------------------------------------------------------------------------ small modules


def test_layernorm_runs_in_fp32_and_returns_the_input_dtype():
    torch.manual_seed(0)
    ln = LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.3)
        ln.bias.normal_(0.0, 0.3)
    x = (torch.randn(3, 16) * 50 + 1000).to(torch.bfloat16)  # a large mean: bf16 statistics would be off
    y = ln(x)
    assert y.dtype == torch.bfloat16
    xf = x.float()
    ref = (xf - xf.mean(-1, keepdim=True)) / torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + 1e-5)
    ref = ref * ln.weight + ln.bias
    assert torch.allclose(y.float(), ref.to(torch.bfloat16).float(), atol=0, rtol=0)


def test_activations():
    x = torch.linspace(-4, 4, 33)
    assert torch.allclose(QuickGELU()(x), x / (1 + torch.exp(-1.702 * x)), atol=1e-7)
    assert isinstance(make_activation("quick_gelu"), QuickGELU)
    gelu = make_activation("gelu")
    assert torch.allclose(gelu(x), 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), atol=1e-6)
    with pytest.raises(ValueError, match="activation: expected 'quick_gelu' or 'gelu', got 'quickgelu'"):
        make_activation("quickgelu")  # a typo is not silently another activation
    mlp = MLP(4, 8, "gelu")
    assert isinstance(mlp.act, torch.nn.GELU)
    assert (mlp.c_fc.in_features, mlp.c_fc.out_features, mlp.c_proj.out_features) == (4, 8, 4)


def test_drop_path_rates_are_linear_in_depth():
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.2, 1) == [0.0]
    assert drop_path_rates(0.0, 3) == [0.0, 0.0, 0.0]


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 5) + 0.5
    dp = DropPath(0.25).train()
    y = dp(x)
    kept = (y != 0).flatten(1)
    assert torch.equal(kept.all(1), kept.any(1))  # a sample is dropped or kept whole
    k = kept.all(1)
    assert torch.allclose(y[k], x[k] / 0.75)
    assert 0.72 < k.float().mean().item() < 0.78  # keep probability 1 - p
    assert dp(x).mean().item() == pytest.approx(x.mean().item(), rel=0.03)  # the expectation is kept
    assert dp.eval()(x) is x
    assert DropPath(0.0).train()(x) is x
    assert "p=0.25" in repr(dp)


def test_set_drop_path_sets_every_block_and_refuses_bad_rates():
    t = Transformer(8, 3, 2)
    assert [b.drop_path.p for b in t.resblocks] == [0.0, 0.0, 0.0]
    t.set_drop_path(0.2)
    assert [b.drop_path.p for b in t.resblocks] == pytest.approx([0.0, 0.1, 0.2])
    t.set_drop_path(0.0)
    assert [b.drop_path.p for b in t.resblocks] == [0.0, 0.0, 0.0]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"drop-path rate must be in \[0, 1\)"):
            t.set_drop_path(bad)
    assert [b.drop_path.p for b in Transformer(8, 3, 2, drop_path=0.4).resblocks] == pytest.approx([0.0, 0.2, 0.4])
    v = VisionTransformer(get_config("tiny").vision, 32)
    v.set_drop_path(0.1)
    assert [b.drop_path.p for b in v.transformer.resblocks] == pytest.approx([0.0, 0.1])


# ------------------------------------------------------------------------------ attention


def _explicit_attention(attn: Attention, x, mask=None, queries=None):
    n, s, d = x.shape
    qkv = x @ attn.in_proj_weight.t() + attn.in_proj_bias
    q, k, v = qkv.split(d, dim=-1)
    heads = lambda t: t.reshape(n, -1, attn.heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    if queries is not None:
        q = q[:, :, :queries]
    logits = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    if mask is not None:
        logits = logits + mask
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, q.shape[2], d)
    return attn.out_proj(out), k


def _attention(seed=0):
    torch.manual_seed(seed)
    a = Attention(16, 4)
    with torch.no_grad():
        a.in_proj_bias.normal_(0, 0.1)
    return a, torch.randn(2, 6, 16)


def test_attention_matches_explicit_softmax_attention():
    a, x = _attention()
    out, metric = a(x)
    ref, _ = _explicit_attention(a, x)
    assert metric is None
    assert torch.allclose(out, ref, atol=1e-5)


def test_causal_attention_with_a_key_bias_masks_the_future_and_adds_the_bias():
    a, x = _attention(1)
    bias = torch.randn(2, 6)
    out, _ = a(x, causal=True, key_bias=bias)
    future = torch.full((6, 6), float("-inf")).triu(1)
    ref, _ = _explicit_attention(a, x, mask=bias[:, None, None, :] + future)
    assert torch.allclose(out, ref, atol=1e-5)
    out_c, _ = a(x, causal=True)
    ref_c, _ = _explicit_attention(a, x, mask=future)
    assert torch.allclose(out_c, ref_c, atol=1e-5)
    out_b, _ = a(x, key_bias=bias)
    ref_b, _ = _explicit_attention(a, x, mask=bias[:, None, None, :])
    assert torch.allclose(out_b, ref_b, atol=1e-5)


def test_extra_keys_are_not_queries_and_the_metric_is_the_head_mean_of_the_keys():
    a, x = _attention(2)
    out, metric = a(x, num_queries=4, return_metric=True)
    ref, k = _explicit_attention(a, x, queries=4)
    assert out.shape == (2, 4, 16) and torch.allclose(out, ref, atol=1e-5)
    assert metric.shape == (2, 6, 4) and torch.allclose(metric, k.mean(dim=1), atol=1e-6)
    full, _ = a(x, num_queries=6)
    assert torch.allclose(full, _explicit_attention(a, x)[0], atol=1e-5)


# ------------------------------------------------------------------------------ positional embedding


def test_positional_embedding_interpolation():
    g, new = 8, 16
    rows = torch.arange(g, dtype=torch.float64)[:, None].expand(g, g)
    cols = torch.arange(g, dtype=torch.float64)[None, :].expand(g, g)
    grid = torch.stack([rows, cols, torch.full((g, g), 3.0, dtype=torch.float64)], dim=-1).reshape(g * g, 3)
    pos = torch.cat([torch.tensor([[7.0, -7.0, 0.5]], dtype=torch.float64), grid])
    assert interpolate_positional_embedding(pos, 1 + g * g) is pos
    out = interpolate_positional_embedding(pos, 1 + new * new)
    assert out.shape == (1 + new * new, 3) and out.dtype == torch.float64
    assert torch.equal(out[0], pos[0])  # the class position is kept
    o = out[1:].reshape(new, new, 3)
    assert torch.allclose(o[..., 2], torch.full((new, new), 3.0, dtype=torch.float64), atol=1e-6)
    # channel 0 varies with the row only, channel 1 with the column only (no axis swapped)
    assert torch.allclose(o[..., 0], o[:, :1, 0].expand(new, new)) and torch.allclose(o[..., 1], o[:1, :, 1].expand(new, new))
    assert torch.allclose(o[..., 0].t(), o[..., 1], atol=1e-6)
    # half-pixel centres (align_corners=False): output i sits at source x = (i + 0.5)·g/new − 0.5,
    # and its value is the cubic convolution (torch's a = −0.75) of the 4 rows around x — written out
    # here where all 4 lie inside the grid (no border clamping)
    def cubic(t, a=-0.75):
        t = abs(t)
        return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a

    for i in range(3, 13):
        x = (i + 0.5) * g / new - 0.5
        k0 = math.floor(x)
        expected = sum(k * cubic(x - k) for k in range(k0 - 1, k0 + 3))  # row k holds the value k
        assert o[i, 0, 0].item() == pytest.approx(expected, abs=1e-5), i
    half = interpolate_positional_embedding(pos.to(torch.bfloat16), 1 + new * new)
    assert half.dtype == torch.bfloat16 and torch.equal(half[0], pos[0].to(torch.bfloat16))


# ------------------------------------------------------------------------------ towers and CLIP


def test_image_tower_refuses_another_resolution_with_advice():
    v = VisionTransformer(get_config("tiny").vision, 32)  # 32 px, patch 8: 16 patches
    with pytest.raises(ValueError, match=r"input of 48x40 px gives 30 patches, but the model was built for 32 px "
                                         r"\(16 patches\); resize the input or load the weights with image_size=\.\.\. "
                                         r"to interpolate the positional embedding"):
        v(torch.randn(1, 3, 48, 40))


def test_embed_puts_the_class_token_first_and_adds_positions():
    torch.manual_seed(0)
    v = VisionTransformer(get_config("tiny").vision, 32)
    px = torch.randn(2, 3, 32, 32)
    x = v.embed(px)
    patches = v.conv1(px).flatten(2).transpose(1, 2)
    assert torch.allclose(x[:, 0], v.class_embedding + v.positional_embedding[0])
    assert torch.allclose(x[:, 1:], patches + v.positional_embedding[1:], atol=1e-6)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).train()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1, 100, (2, 77))
    ids[:, 5] = 49407
    grads = []
    for on in (False, True):
        m.zero_grad()
        m.set_grad_checkpointing(on)
        assert m.visual.transformer.grad_checkpointing is on and m.text.transformer.grad_checkpointing is on
        li, lt = m(px, ids)
        (li.square().sum() + lt[0].sum()).backward()
        grads.append((li.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys()
    for n in grads[0][1]:
        assert torch.allclose(grads[0][1][n], grads[1][1][n], atol=1e-6), n
    m.set_grad_checkpointing(False)
    m.set_grad_checkpointing(True, towers=("text",))
    assert m.text.transformer.grad_checkpointing and not m.visual.transformer.grad_checkpointing
    with pytest.raises(ValueError, match=r"unknown tower\(s\) \['vision'\]; expected 'visual' and/or 'text'"):
        m.set_grad_checkpointing(True, towers=("vision",))


def test_checkpointed_blocks_run_only_when_training_with_gradients(monkeypatch):
    import vclip.backbone.model as model

    calls = []
    monkeypatch.setattr(model, "checkpoint", lambda fn, *a, **k: calls.append(k) or fn(*a))
    t = Transformer(8, 2, 2)
    t.grad_checkpointing = True
    x = torch.randn(1, 3, 8)
    t.eval()(x)
    with torch.no_grad():
        t.train()(x)
    assert calls == []
    t.train()(x)
    assert calls == [{"use_reentrant": False}] * 2


def test_clip_logits_and_normalised_embeddings():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    px = torch.randn(3, 3, 32, 32)
    ids = torch.randint(1, 100, (2, 77))
    ids[:, 4] = 49407
    with torch.no_grad():
        img, txt = m.encode_image(px), m.encode_text(ids)
        assert torch.equal(img, m.visual(px).embeds) and torch.equal(txt, m.text(ids).embeds)
        ni, nt = m.encode_image(px, normalize=True), m.encode_text(ids, normalize=True)
        assert torch.allclose(ni, F.normalize(img, dim=-1)) and torch.allclose(nt, F.normalize(txt, dim=-1))
        assert torch.allclose(ni.norm(dim=-1), torch.ones(3))
        per_image, per_text = m(px, ids)
    assert per_image.shape == (3, 2) and torch.equal(per_text, per_image.t())
    assert torch.allclose(per_image, math.exp(2.0) * ni @ nt.t(), atol=1e-5)
    assert m.dtype == torch.float32


def test_text_tower_pools_the_end_of_text_token_after_the_final_layernorm():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).eval()
    ids = torch.randint(1, 100, (2, 77))
    ids[0, 3], ids[1, 9] = 49407, 49407
    with torch.no_grad():
        out = m.text(ids, return_tokens=True)
        assert torch.equal(out.state.eot_index, torch.tensor([3, 9]))
        assert out.state.tower == "text" and m.text(ids).tokens is None
        assert torch.allclose(out.pooled, out.tokens[torch.arange(2), torch.tensor([3, 9])])
        assert torch.allclose(out.embeds, out.pooled @ m.text.text_projection)
        # causal: tokens after the end-of-text token do not change the embedding
        later = ids.clone()
        later[0, 10:] = 5
        assert torch.allclose(m.text(later).embeds[0], out.embeds[0], atol=1e-6)
    with pytest.raises(ValueError, match="text tokens have length 10, the model expects 77"):
        m.text(ids[:, :10])


def test_image_tower_pools_the_class_token_after_ln_post():
    torch.manual_seed(0)
    v = VisionTransformer(get_config("tiny").vision, 32).eval()
    with torch.no_grad():
        v.ln_post.bias.normal_(0, 0.5)
        px = torch.randn(2, 3, 32, 32)
        out = v(px, return_tokens=True)
        assert out.tokens.shape == (2, 17, 64) and v(px).tokens is None and out.state.tower == "vision"
        assert torch.allclose(out.pooled, v.ln_post(out.tokens[:, 0]))
        assert torch.equal(out.embeds, v.project_tokens(out.tokens[:, 0]))
        assert torch.allclose(out.embeds, out.pooled @ v.proj)


def test_constructor_defaults():
    """The defaults a method relies on when it builds blocks itself (X-CLIP's MIT, MoTED's LME)."""
    t = Transformer(8, 1, 2)
    b = t.resblocks[0]
    assert t.grad_checkpointing is False
    assert isinstance(b.mlp.act, QuickGELU) and b.mlp.c_fc.out_features == 32 and b.ln_1.eps == b.ln_2.eps == 1e-5
    assert ResidualAttentionBlock(8, 2, 4.0, "quick_gelu", 1e-5).drop_path.p == 0.0 and DropPath().p == 0.0
    tiny = get_config("tiny")
    for tower in (VisionTransformer(tiny.vision, 32), TextTransformer(tiny.text, 32)):
        blk = tower.transformer.resblocks[0]
        assert isinstance(blk.mlp.act, QuickGELU) and blk.ln_1.eps == 1e-5
    m = CLIP(tiny)
    m.set_grad_checkpointing()
    assert m.visual.transformer.grad_checkpointing is True and m.text.transformer.grad_checkpointing is True


def test_layer_norm_eps_of_the_config_reaches_every_layernorm():
    cfg = CLIPConfig.from_dict(get_config("tiny").to_dict() | {"layer_norm_eps": 0.25, "activation": "gelu"})
    m = CLIP(cfg)
    norms = [mod for mod in m.modules() if isinstance(mod, LayerNorm)]
    assert len(norms) == 2 * (2 + 2) + 3  # ln_1/ln_2 of 2 + 2 blocks, ln_pre, ln_post, ln_final
    assert all(n.eps == 0.25 for n in norms)
    assert all(isinstance(mod.act, torch.nn.GELU) for mod in m.modules() if isinstance(mod, MLP))
    x = torch.randn(2, 64) * 0.3
    ln = norms[0]
    ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 0.25)
    assert torch.allclose(ln(x), ref * ln.weight + ln.bias, atol=1e-6)  # the eps is used, not only stored


def test_a_bf16_model_takes_fp32_pixels():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).to(torch.bfloat16).eval()
    with torch.no_grad():
        e = m.encode_image(torch.randn(2, 3, 32, 32))  # a float32 batch from the data pipeline
    assert e.dtype == torch.bfloat16 and torch.isfinite(e.float()).all()


class _Extra(TowerHook):
    """Appends two fixed extra tokens in every block (as X-CLIP's message tokens) and records the
    state it was given."""

    def __init__(self, tokens):
        self.tokens, self.states = tokens, []

    def extra_tokens(self, index, x, state):
        self.states.append(state)
        return self.tokens


def test_extra_tokens_with_token_sizes_keep_the_log_size_bias_on_the_real_tokens():
    """Message tokens and proportional attention together (X-CLIP with token merging): the real
    tokens' keys get log(size), the extra tokens' keys 0, and only the real tokens are queries."""
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 4, 4.0, "quick_gelu", 1e-5).eval()
    x, extra = torch.randn(2, 5, 16), torch.randn(2, 2, 16)
    size = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0], [2.0, 1.0, 1.0, 4.0, 1.0]])
    hook, state = _Extra(extra), ForwardState()
    with torch.no_grad():
        out, out_size = block(x, size, [hook], state, 0)
        h = block.ln_1(torch.cat([x, extra], dim=1))
        bias = torch.cat([size.log(), torch.zeros(2, 2)], dim=1)[:, None, None, :]
        a, _ = _explicit_attention(block.attn, h, mask=bias, queries=5)
        y = x + a
        ref = y + block.mlp(block.ln_2(y))
    assert torch.allclose(out, ref, atol=1e-5)
    assert out_size is size and hook.states == [state]
    state.proportional_attention = False  # ToMe without proportional attention: no bias at all
    with torch.no_grad():
        plain, _ = block(x, size, [hook], state, 0)
        a0, _ = _explicit_attention(block.attn, h, queries=5)
    assert torch.allclose(plain, (x + a0) + block.mlp(block.ln_2(x + a0)), atol=1e-5)


class _SizeRecorder(TowerHook):
    def __init__(self, on_embed_size=None):
        self.on_embed_size, self.seen = on_embed_size, []

    def on_embed(self, x, state):
        if self.on_embed_size is not None:
            state.size = self.on_embed_size
        return x

    def before_block(self, index, x, state):
        self.seen.append(state.size)
        return x


def test_sizes_given_to_the_transformer_or_set_on_embed_reach_block_0():
    t = Transformer(8, 2, 2).eval()
    size = torch.ones(1, 3) * 2
    rec, state = _SizeRecorder(), ForwardState()
    t(torch.randn(1, 3, 8), [rec], state, size=size)
    assert rec.seen == [size, size]
    v = VisionTransformer(get_config("tiny").vision, 32).eval()
    sizes = torch.full((2, 17), 2.0)
    rec = _SizeRecorder(on_embed_size=sizes)
    out = v(torch.randn(2, 3, 32, 32), [rec])
    assert rec.seen[0] is sizes and out.state.size is sizes


def test_transformer_is_not_causal_by_default():
    torch.manual_seed(0)
    t = Transformer(8, 1, 2).eval()
    x = torch.randn(1, 4, 8)
    y = x.clone()
    y[0, 3] = torch.randn(8)  # change the last token only
    with torch.no_grad():
        assert not torch.allclose(t(x)[0][0, 0], t(y)[0][0, 0])  # the first token sees it
        assert torch.allclose(t(x, causal=True)[0][0, 0], t(y, causal=True)[0][0, 0])


def test_encoders_pass_their_hooks_and_the_text_tower_fills_the_given_state():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).eval()

    class Shift(TowerHook):  # not a constant: a LayerNorm would remove that
        def on_embed(self, x, state):
            return x + torch.linspace(-1.0, 1.0, x.shape[-1])

    px = torch.randn(1, 3, 32, 32)
    ids = torch.randint(1, 100, (1, 77))
    ids[0, 6] = 49407
    with torch.no_grad():
        assert torch.equal(m.encode_image(px, hooks=[Shift()]), m.visual(px, [Shift()]).embeds)
        assert not torch.allclose(m.encode_image(px, hooks=[Shift()]), m.encode_image(px))
        assert torch.equal(m.encode_text(ids, hooks=[Shift()]), m.text(ids, [Shift()]).embeds)
        assert not torch.allclose(m.encode_text(ids, hooks=[Shift()]), m.encode_text(ids))
        state = ForwardState(tower="text")
        out = m.text(ids, state=state)
    assert out.state is state and torch.equal(state.eot_index, torch.tensor([6]))
