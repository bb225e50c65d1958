"""Each extension point works, and with the extension off the towers are bit-identical to plain CLIP."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_tokens
from vclip.backbone import CLIP, DeepPrompts, ForwardState, LayerTaps, TokenMerging, TowerHook, get_config
from vclip.backbone.hooks import bipartite_soft_matching, parse_merge_schedule


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def plain_attention(block, x, causal=False):
    """Reference self-attention of a block written out with explicit matmuls."""
    a = block.attn
    n, s, d = x.shape
    q, k, v = F.linear(x, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(n, s, a.heads, a.head_dim).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / a.head_dim**0.5
    if causal:
        logits = logits.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    out = logits.softmax(-1) @ v
    return a.out_proj(out.transpose(1, 2).reshape(n, s, d))


def run_blocks_by_hand(tower, x, causal=False, per_block=None):
    outs = []
    for i, block in enumerate(tower.transformer.resblocks):
        if per_block:
            x = per_block(i, x)
        x = x + plain_attention(block, block.ln_1(x), causal)
        x = x + block.mlp(block.ln_2(x))
        outs.append(x)
    return x, outs


class Nothing(TowerHook):
    """Implements every point and changes nothing."""

    needs_metric = True


OFF_HOOKS = {
    "base": lambda: [Nothing()],
    "extra_tokens_none": lambda: [type("E", (TowerHook,), {"extra_tokens": lambda s, i, x, st: None})()],
    "merge_r0": lambda: [TokenMerging(0, layers=2)],
    "taps": lambda: [LayerTaps()],
    # prompt depth 0 (K = 0 prompt sets) beside every other extension switched off
    "prompts_depth_0_all_off": lambda: [DeepPrompts([]), DeepPrompts(torch.empty(0, 3, 64)), Nothing(),
                                        LayerTaps([]), TokenMerging([0, 0], layers=2)],
}


@pytest.mark.parametrize("name", sorted(OFF_HOOKS))
def test_extension_off_is_bit_identical(model, images, name):
    tokens = random_tokens(3)
    with torch.no_grad():
        img = model.visual(images, return_tokens=True)
        txt = model.text(tokens, return_tokens=True)
        img_h = model.visual(images, hooks=OFF_HOOKS[name](), return_tokens=True)
        txt_h = model.text(tokens, hooks=OFF_HOOKS[name](), return_tokens=True)
    assert torch.equal(img.embeds, img_h.embeds) and torch.equal(img.tokens, img_h.tokens)
    assert torch.equal(txt.embeds, txt_h.embeds) and torch.equal(txt.tokens, txt_h.tokens)
    assert img_h.state.tail_tokens == 0 and torch.equal(txt_h.state.eot_index, tokens.argmax(-1))


def test_prompts_of_zero_tokens_are_no_prompts(model, images):
    """K = 2 prompt sets of n_ctx = 0 tokens: nothing inserted, nothing replaced, plain CLIP exactly
    (the vision replacement must not cut ``x[:, :-0]``, i.e. every token)."""
    tokens = random_tokens(3)
    with torch.no_grad():
        img = model.visual(images, hooks=[DeepPrompts(torch.empty(2, 0, 64))], return_tokens=True)
        txt = model.text(tokens, hooks=[DeepPrompts(torch.empty(2, 0, 32))], return_tokens=True)
        assert torch.equal(img.tokens, model.visual(images, return_tokens=True).tokens)
        assert torch.equal(txt.tokens, model.text(tokens, return_tokens=True).tokens)
        assert torch.equal(txt.embeds, model.text(tokens).embeds)
    assert img.state.tail_tokens == 0 and torch.equal(txt.state.eot_index, tokens.argmax(-1))


def test_plain_tower_matches_hand_written_blocks(model, images):
    with torch.no_grad():
        v = model.visual
        x = v.ln_pre(v.embed(images))
        ref, _ = run_blocks_by_hand(v, x)
        ours = model.visual(images, return_tokens=True).tokens
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# (a) extra tokens appended for attention and dropped before the MLP ---------------------------

class MessageTokens(TowerHook):
    """X-CLIP-like: one token per sequence built from the class token at the block input."""

    def __init__(self, scale):
        self.scale = scale

    def extra_tokens(self, index, x, state):
        return (self.scale[index] * x[:, :1]).tanh()


def test_extra_tokens_attend_and_are_dropped(model, images):
    scale = [0.7, -1.3]
    with torch.no_grad():
        v = model.visual
        x0 = v.ln_pre(v.embed(images))
        x = x0
        for i, block in enumerate(v.transformer.resblocks):
            msg = (scale[i] * x[:, :1]).tanh()
            full = torch.cat([x, msg], dim=1)
            full = full + plain_attention(block, block.ln_1(full))
            x = full[:, : x0.shape[1]]  # dropped before the MLP
            x = x + block.mlp(block.ln_2(x))
        out = model.visual(images, hooks=[MessageTokens(scale)], return_tokens=True)
    assert out.tokens.shape == x0.shape
    torch.testing.assert_close(out.tokens, x, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out.tokens, model.visual(images, return_tokens=True).tokens)


# (b) deep prompts in both towers ---------------------------------------------------------------

def test_vision_deep_prompts(model, images):
    n_ctx, width = 3, model.config.vision.width
    prompts = torch.randn(2, n_ctx, width)  # K = 2: input prompts, replaced before block 1
    with torch.no_grad():
        v = model.visual
        x = torch.cat([v.embed(images), prompts[0].expand(4, -1, -1)], dim=1)
        x = v.ln_pre(x)
        ref, _ = run_blocks_by_hand(
            v, x, per_block=lambda i, h: torch.cat([h[:, :-n_ctx], prompts[i].expand(4, -1, -1)], 1) if i else h)
        out = model.visual(images, hooks=[DeepPrompts(prompts)], return_tokens=True)
    assert out.tokens.shape[1] == v.cfg.num_tokens + n_ctx
    torch.testing.assert_close(out.tokens, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embeds, v.ln_post(ref[:, 0]) @ v.proj, rtol=1e-5, atol=1e-6)


def test_text_deep_prompts_sit_after_sos(model):
    n_ctx, width = 4, model.config.text.width
    tokens = random_tokens(3)
    for row, eot in enumerate([72, 10, 30]):  # leave room for the prompt tokens
        tokens[row, eot:] = 0
        tokens[row, eot] = 49407
    prompts = [torch.randn(n_ctx, width) for _ in range(2)]
    t = model.text
    with torch.no_grad():
        emb = t.token_embedding(tokens)
        x = torch.cat([emb[:, :1], prompts[0].expand(3, -1, -1), emb[:, 1:-n_ctx]], 1) + t.positional_embedding
        ref, _ = run_blocks_by_hand(
            t, x, causal=True,
            per_block=lambda i, h: torch.cat([h[:, :1], prompts[i].expand(3, -1, -1), h[:, 1 + n_ctx:]], 1) if i else h)
        eot = tokens.argmax(-1) + n_ctx
        ref_emb = t.ln_final(ref)[torch.arange(3), eot] @ t.text_projection
        out = t(tokens, hooks=[DeepPrompts(prompts)])
    torch.testing.assert_close(out.embeds, ref_emb, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.state.eot_index, eot)


def test_text_prompts_need_room():
    model = CLIP(get_config("tiny"))
    tokens = random_tokens(1)  # EOT at position 76: no room
    with pytest.raises(ValueError, match="context length"):
        model.text(tokens, hooks=[DeepPrompts(torch.randn(1, 2, model.config.text.width))])


# (c) token merging between attention and MLP, log-size bias -------------------------------------

def naive_matching(metric, r):
    """Loop version of bipartite soft matching with the class token protected."""
    n, t, _ = metric.shape
    m = metric / metric.norm(dim=-1, keepdim=True)
    groups = []
    for b in range(n):
        a_idx, b_idx = list(range(0, t, 2)), list(range(1, t, 2))
        best = []
        for ai in a_idx:
            if ai == 0:
                best.append((float("-inf"), ai, None))
                continue
            sims = [float(m[b, ai] @ m[b, bi]) for bi in b_idx]
            j = max(range(len(sims)), key=sims.__getitem__)
            best.append((sims[j], ai, b_idx[j]))
        chosen = sorted(best, key=lambda e: -e[0])[:r]
        groups.append({ai: bi for _, ai, bi in chosen})
    return groups


def test_bipartite_matching_matches_naive_loop():
    metric = torch.randn(3, 17, 8)
    x = torch.randn(3, 17, 5)
    r = 4
    merge = bipartite_soft_matching(metric, r)
    out = merge(x, "sum")
    assert out.shape == (3, 13, 5)
    for b, src_to_dst in enumerate(naive_matching(metric, r)):
        kept_a = [i for i in range(0, 17, 2) if i not in src_to_dst]
        expected = [x[b, i] for i in kept_a]
        for j in range(1, 17, 2):
            expected.append(x[b, j] + sum((x[b, i] for i, d in src_to_dst.items() if d == j), torch.zeros(5)))
        torch.testing.assert_close(out[b], torch.stack(expected))


def test_merge_schedule():
    assert parse_merge_schedule(16, 12) == [16] * 12
    assert parse_merge_schedule([3, 2], 4) == [3, 2, 0, 0]
    assert parse_merge_schedule((16, -1.0), 12) == [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]


def test_token_merging_counts_and_sizes(model, images):
    counts = []

    class Count(TowerHook):
        def after_block(self, i, x, state):
            counts.append(x.shape[1])
            return x

    with torch.no_grad():
        out = model.visual(images, hooks=[TokenMerging(5, layers=2), Count()], return_tokens=True)
    assert counts == [12, 7]  # 17 tokens, r = 5 (≤ (17 - 1) // 2), then (12 - 1) // 2 = 5
    size = out.state.size
    assert size.shape == (4, 7)
    assert torch.equal(size[:, 0], torch.ones(4))  # the class token is never merged
    torch.testing.assert_close(size.sum(1), torch.full((4,), 17.0))


def test_proportional_attention_is_exact_for_duplicates(model):
    """Two tokens with identical keys and values = one token of size 2 (ToMe's exactness)."""
    block = model.visual.transformer.resblocks[0]
    x = torch.randn(2, 5, model.config.vision.width)
    dup = torch.cat([x, x[:, 3:4]], dim=1)  # token 3 twice
    with torch.no_grad():
        full, _ = block.attn(block.ln_1(dup))
        size = torch.tensor([[1.0, 1, 1, 2, 1]]).expand(2, -1)
        merged, _ = block.attn(block.ln_1(x), key_bias=size.log())
    torch.testing.assert_close(merged, full[:, :5], rtol=1e-5, atol=1e-6)


def test_merging_with_and_without_proportional_attention_differ(model, images):
    with torch.no_grad():
        a = model.visual(images, hooks=[TokenMerging(3, layers=2)]).embeds
        b = model.visual(images, hooks=[TokenMerging(3, layers=2, proportional_attention=False)]).embeds
        c = model.visual(images).embeds
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_merging_metric_is_mean_key(model):
    block = model.visual.transformer.resblocks[0]
    x = torch.randn(2, 6, model.config.vision.width)
    h = block.ln_1(x)
    _, metric = block.attn(h, return_metric=True)
    k = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)[1]
    expected = k.view(2, 6, block.attn.heads, -1).mean(2)
    torch.testing.assert_close(metric, expected)


# (d) layer taps ------------------------------------------------------------------------------------

def test_layer_taps(model, images):
    with torch.no_grad():
        v = model.visual
        _, per_layer = run_blocks_by_hand(v, v.ln_pre(v.embed(images)))
        out = v(images, hooks=[LayerTaps()])
        sub = v(images, hooks=[LayerTaps([1])])
    assert sorted(out.state.taps) == [0, 1]
    for i, ref in enumerate(per_layer):
        torch.testing.assert_close(out.state.taps[i], ref, rtol=1e-5, atol=1e-6)
    assert sorted(sub.state.taps) == [1]


# (e) final-layer patch tokens beside the pooled embedding -------------------------------------------

def test_final_tokens(model, images):
    with torch.no_grad():
        out = model.visual(images, return_tokens=True)
    v = model.visual
    assert out.tokens.shape == (4, v.cfg.num_tokens, v.cfg.width)
    torch.testing.assert_close(out.embeds, v.ln_post(out.tokens[:, 0]) @ v.proj)
    assert model.visual(images).tokens is None


# composition, checkpointing, compile, autocast -------------------------------------------------------

def test_hooks_compose(model, images):
    """Deep prompts (replaced before block 1) + message tokens + a tap, all in one forward, equal the
    three applied by hand, in list order, with explicit attention."""
    n_ctx, scale = 2, [0.8, -1.1]
    prompts = torch.randn(2, n_ctx, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.visual(images, hooks=[DeepPrompts(prompts), MessageTokens(scale), LayerTaps([0])],
                           return_tokens=True)
        v = model.visual
        x = v.ln_pre(torch.cat([v.embed(images), prompts[0].expand(4, -1, -1)], dim=1))
        length, taps = x.shape[1], {}
        for i, block in enumerate(v.transformer.resblocks):
            if i:  # DeepPrompts.before_block: replace the trailing prompt tokens
                x = torch.cat([x[:, :-n_ctx], prompts[i].expand(4, -1, -1)], dim=1)
            full = torch.cat([x, (scale[i] * x[:, :1]).tanh()], dim=1)  # message token from the new x
            x = (full + plain_attention(block, block.ln_1(full)))[:, :length]
            x = x + block.mlp(block.ln_2(x))
            if i == 0:
                taps[0] = x
        embeds = v.ln_post(x[:, 0]) @ v.proj
    assert out.tokens.shape == (4, 17 + n_ctx, 64) and sorted(out.state.taps) == [0]
    torch.testing.assert_close(out.tokens, x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.state.taps[0], taps[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embeds, embeds, rtol=1e-5, atol=1e-6)
    assert out.state.tail_tokens == n_ctx


def test_gradient_checkpointing_same_values_and_grads(images):
    torch.manual_seed(0)
    m = CLIP(get_config("tiny")).train()
    hooks = lambda: [MessageTokens([0.5, 0.5]), TokenMerging(2, layers=2), LayerTaps()]  # noqa: E731
    m.visual(images, hooks=hooks()).embeds.square().sum().backward()
    ref = {n: p.grad.clone() for n, p in m.visual.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    out = m.visual(images, hooks=hooks())
    out.embeds.square().sum().backward()
    assert sorted(out.state.taps) == [0, 1]  # taps recorded once, not again in recomputation
    for n, p in m.visual.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_torch_compile_fullgraph(model, images):
    tokens = random_tokens(2)
    compiled = torch.compile(model.visual, backend="aot_eager", fullgraph=True)
    compiled_t = torch.compile(model.text, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images).embeds, model.visual(images).embeds)
        torch.testing.assert_close(compiled_t(tokens).embeds, model.text(tokens).embeds)


def test_bf16_autocast(model, images):
    with torch.no_grad():
        ref = model.encode_image(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.visual(images, return_tokens=True)
            ln = model.visual.ln_post(out.tokens.to(torch.bfloat16))
    assert out.embeds.dtype == torch.bfloat16 and ln.dtype == torch.bfloat16
    assert float((out.embeds.float() - ref).norm() / ref.norm()) < 0.03


def test_forward_state_is_fresh_per_call(model, images):
    """Each forward without a state gets a new one: taps, sizes, prompt counts and source of one call
    never reach the next, and the same call repeated gives the same result; a state the caller
    passes collects that call's records only."""
    prompts = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(4))
    rich = lambda: [DeepPrompts(prompts), TokenMerging(3, layers=2, track_source=True), LayerTaps([1])]  # noqa: E731
    tokens = random_tokens(2)
    tokens[0, 40:] = 0
    tokens[0, 40] = 49407  # room for 3 prompt tokens
    with torch.no_grad():
        plain = model.visual(images).embeds
        plain_text = model.text(tokens).embeds
        first = model.visual(images, hooks=rich())
        second = model.visual(images[:2], hooks=[LayerTaps([0])])
        third = model.visual(images)
        again = model.visual(images, hooks=rich())
        text_prompted = model.text(tokens, hooks=[DeepPrompts(torch.randn(1, 3, 32))])
        text_plain = model.text(tokens)
        mine = ForwardState(tower="vision")
        model.visual(images, hooks=[LayerTaps([0])], state=mine)
        model.visual(images, hooks=[LayerTaps([1])], state=ForwardState(tower="vision"))
    states = [first.state, second.state, third.state, again.state, mine]
    assert len({id(s) for s in states}) == len(states)
    assert first.state.tail_tokens == 2 and again.state.tail_tokens == 2
    assert first.state.size.shape == (4, 17 + 2 - 6) and first.state.source.shape == (4, 13, 19)
    assert sorted(second.state.taps) == [0] and second.state.taps[0].shape[0] == 2
    assert second.state.tail_tokens == 0 and second.state.size is None and second.state.source is None
    assert third.state.taps == {} and third.state.size is None and third.state.tail_tokens == 0
    assert torch.equal(third.embeds, plain)
    assert torch.equal(again.embeds, first.embeds) and torch.equal(again.state.size, first.state.size)
    assert torch.equal(again.state.source, first.state.source)
    assert torch.equal(text_plain.state.eot_index, tokens.argmax(-1))
    assert torch.equal(text_prompted.state.eot_index, tokens.argmax(-1) + 3)
    assert torch.equal(text_plain.embeds, plain_text)
    assert sorted(mine.taps) == [0]


# ToMe against an independent, straightforward implementation (float64) ---------------------------

def straightforward_tome(x, size, metric, r):
    """Bipartite soft matching + size-weighted merge, written from the algorithm's description with
    Python loops: A = even positions, B = odd; each A token's most similar B token (cosine); the r
    A tokens with the highest similarity (class token excluded) merge into their B partners as the
    size-weighted mean of the group; output = kept A tokens in order, then every B token in order."""
    n, t, _ = x.shape
    r = min(r, (t - 1) // 2)
    out_x, out_s = [], []
    for b in range(n):
        a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
        unit = [metric[b, i] / metric[b, i].norm() for i in range(t)]
        best = {}
        for ai in a_pos[1:]:  # the class token (position 0) is never a source
            sims = [float(unit[ai] @ unit[bj]) for bj in b_pos]
            k = max(range(len(sims)), key=lambda j: sims[j])
            best[ai] = (sims[k], b_pos[k])
        sources = sorted(best, key=lambda ai: -best[ai][0])[:r]
        groups = {bj: [bj] for bj in b_pos}
        for ai in sources:
            groups[best[ai][1]].append(ai)
        rows, sizes = [], []
        for ai in a_pos:
            if ai not in sources:
                rows.append(x[b, ai])
                sizes.append(size[b, ai])
        for bj in b_pos:
            total = sum(size[b, i] for i in groups[bj])
            rows.append(sum(size[b, i] * x[b, i] for i in groups[bj]) / total)
            sizes.append(total)
        out_x.append(torch.stack(rows))
        out_s.append(torch.stack(sizes))
    return torch.stack(out_x), torch.stack(out_s)


@pytest.mark.parametrize("t, r", [(17, 4), (17, 99), (33, 16), (65, 8), (8, 3)])
def test_token_merging_equals_a_straightforward_implementation_float64(t, r):
    g = torch.Generator().manual_seed(t * 100 + r)
    x = torch.randn(3, t, 6, dtype=torch.float64, generator=g)
    metric = torch.randn(3, t, 5, dtype=torch.float64, generator=g)
    size = torch.randint(1, 5, (3, t), generator=g).to(torch.float64)
    size[:, 0] = 1
    merged, merged_size = TokenMerging(r, layers=1).merge(0, x, metric, size, ForwardState())
    ref, ref_size = straightforward_tome(x, size, metric, r)
    assert merged.shape == ref.shape == (3, t - min(r, (t - 1) // 2), 6)
    assert (merged - ref).abs().max() <= 1e-12
    assert (merged_size - ref_size).abs().max() <= 1e-12


def test_whole_tower_with_merging_equals_a_straightforward_forward_float64(model, images):
    """The tiny image tower with ``TokenMerging(r)`` against a forward written out here: attention
    with log(size) added over keys, merge between attention and MLP on the same layer's keys
    averaged over heads."""
    m = CLIP(get_config("tiny")).double().eval()
    m.load_state_dict(model.state_dict())
    v = m.visual
    pix = images.double()
    for r in (0, 3, 5):
        with torch.no_grad():
            out = v(pix, hooks=[TokenMerging(r, layers=2)], return_tokens=True)
            x = v.ln_pre(v.embed(pix))
            size = torch.ones(x.shape[:2], dtype=torch.float64)
            for block in v.transformer.resblocks:
                a = block.attn
                h = block.ln_1(x)
                n, s, d = h.shape
                q, k, val = F.linear(h, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
                q, k, val = (z.view(n, s, a.heads, a.head_dim).transpose(1, 2) for z in (q, k, val))
                logits = q @ k.transpose(-1, -2) / a.head_dim**0.5 + size.log()[:, None, None, :]
                att = a.out_proj((logits.softmax(-1) @ val).transpose(1, 2).reshape(n, s, d))
                x = x + att
                x, size = straightforward_tome(x, size, k.mean(dim=1), r) if r else (x, size)
                x = x + block.mlp(block.ln_2(x))
        assert out.tokens.shape == x.shape
        assert (out.tokens - x).abs().max() <= 1e-12
        got = out.state.size if out.state.size is not None else torch.ones_like(size)
        assert (got - size).abs().max() <= 1e-12
        if r == 0:
            assert torch.equal(out.embeds, v(pix).embeds)
