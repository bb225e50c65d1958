"""Extension points for MoTED, ALT and ViLT-CLIP: sizes at every hook point, input / class-token
taps, ToMe's schedule parsing, source tracking, ``project_tokens``, deep prompts under merging,
and the single-merge rule."""

import pytest
import torch

from vclip.backbone import (
    CLIP,
    DeepPrompts,
    ForwardState,
    LayerTaps,
    TokenMerging,
    TowerHook,
    VisionTransformer,
    get_config,
)
from vclip.backbone.hooks import bipartite_soft_matching, check_single_merge, parse_merge_schedule


def _perturbed(name):
    torch.manual_seed(0)
    m = CLIP(get_config(name)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for n, p in m.named_parameters():
            if "ln" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def tiny():
    return _perturbed("tiny")


@pytest.fixture(scope="module")
def small():
    return _perturbed("small")  # 64 px, patch 8: 1 + 64 = 65 tokens, 4 blocks, width 192


def small_vision_for_training(checkpointing=False):
    """A fresh ``small`` image tower in training mode (no text tower to build)."""
    torch.manual_seed(0)
    cfg = get_config("small")
    v = VisionTransformer(cfg.vision, cfg.embed_dim).train()
    v.transformer.grad_checkpointing = checkpointing
    return v


def pixels(n, size, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class Recorder(TowerHook):
    """Records what the state holds at the before/after points."""

    def __init__(self):
        self.seen = []

    def before_block(self, i, x, state):
        self.seen.append(("before", i, x.shape[1], state.size, state.source))
        return x

    def after_block(self, i, x, state):
        self.seen.append(("after", i, x.shape[1], state.size, state.source))
        return x


# 1. state.size is current at every hook point ------------------------------------------------------

@pytest.mark.parametrize("checkpointing", [False, True])
def test_sizes_current_at_every_hook_point(checkpointing):
    v = small_vision_for_training(checkpointing)
    rec = Recorder()
    hooks = [rec, TokenMerging(8, layers=4)]  # recorder first: hook order does not matter
    if checkpointing:  # training mode, grad enabled: blocks run under checkpoint
        out = v(pixels(2, 64), hooks=hooks)
        out.embeds.square().sum().backward()
    else:
        with torch.no_grad():
            out = v.eval()(pixels(2, 64), hooks=hooks)
    assert [(p, i) for p, i, *_ in rec.seen] == [(p, i) for i in range(4) for p in ("before", "after")]
    assert rec.seen[0][3] is None  # before block 0: nothing merged yet (= all 1)
    lengths, prev = [], None
    for point, i, length, size, _ in rec.seen[1:]:
        assert size.shape == (2, length), (point, i)
        torch.testing.assert_close(size.sum(-1), torch.full((2,), 65.0))
        if point == "after":
            lengths.append(length)
        else:  # block i's input sizes are block i-1's output sizes
            assert torch.equal(size, prev)
        prev = size
    assert lengths == [57, 49, 41, 33]
    assert torch.equal(rec.seen[-1][3], out.state.size)


def test_before_block_hook_may_add_tokens_with_their_sizes(small):
    class AddToken(TowerHook):  # appends one token of size 1 before block 2
        def before_block(self, i, x, state):
            if i != 2:
                return x
            state.size = torch.cat([state.size, state.size.new_ones(x.shape[0], 1)], 1)
            return torch.cat([x, x[:, :1]], 1)

    with torch.no_grad():
        out = small.visual(pixels(2, 64), hooks=[TokenMerging(8, layers=4), AddToken()], return_tokens=True)
    assert out.tokens.shape[1] == out.state.size.shape[1] == 65 + 1 - 4 * 8
    torch.testing.assert_close(out.state.size.sum(-1), torch.full((2,), 66.0))


# 2. input taps, class-token taps ----------------------------------------------------------------------

def test_input_taps_and_class_token_taps(tiny):
    v, images = tiny.visual, pixels(3, 32)
    with torch.no_grad():
        x0 = v.ln_pre(v.embed(images))
        both = v(images, hooks=[LayerTaps(at="both")]).state
        cls_in = v(images, hooks=[LayerTaps(at="input", class_token=True)]).state
        cls_out = v(images, hooks=[LayerTaps(class_token=True)]).state
        only1 = v(images, hooks=[LayerTaps([1], at="input")]).state
        default = v(images, hooks=[LayerTaps()]).state
    assert torch.equal(both.input_taps[0], x0)
    assert torch.equal(both.input_taps[1], both.taps[0])
    assert sorted(both.input_taps) == sorted(both.taps) == [0, 1]
    for i in (0, 1):
        assert cls_in.input_taps[i].shape == (3, v.cfg.width)
        assert torch.equal(cls_in.input_taps[i], both.input_taps[i][:, 0])
        assert torch.equal(cls_out.taps[i], both.taps[i][:, 0])
        assert torch.equal(default.taps[i], both.taps[i])
    assert cls_in.taps == {} and cls_out.input_taps == {} and default.input_taps == {}
    assert sorted(only1.input_taps) == [1] and only1.taps == {}
    with pytest.raises(ValueError, match="at="):
        LayerTaps(at="inputs")


# 3. ToMe's r schedule ---------------------------------------------------------------------------------

DECREASING_16 = [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]  # alt_tome.md B.2, int(32 - i·32/11)


@pytest.mark.parametrize("spec", [(16, -1), (16, -1.0), {"r": 16, "inflect": -1}, {"r": 16, "inflect": -1.0}])
def test_decreasing_schedule(spec):
    assert parse_merge_schedule(spec, 12) == DECREASING_16
    assert TokenMerging(spec, layers=12).schedule == DECREASING_16


def test_other_schedules():
    assert parse_merge_schedule((8, 0.5), 12) == [4, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12]
    assert parse_merge_schedule((8, 1), 12) == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert parse_merge_schedule((8, 0), 12) == parse_merge_schedule({"r": 8}, 12) == [8] * 12
    assert parse_merge_schedule(0, 12) == [0] * 12
    assert parse_merge_schedule(13, 12) == [13] * 12
    assert parse_merge_schedule([4, 4, 2], 12) == [4, 4, 2] + [0] * 9
    assert parse_merge_schedule([4, 4, 2], 2) == [4, 4]


@pytest.mark.parametrize("spec, match", [
    ({"r": 16, "inflec": -1}, "inflec"),
    ({"inflect": -1}, "needs 'r'"),
    (-1, "≥ 0"),
    ([4, -2], r"r\[1\]"),
    ((16, -1.5), "inflect"),
    ((16, "down"), "inflect"),
    ({"r": 16, "inflect": 2}, "inflect"),
    ((16, -1, 0), "tuple"),
    ((16.0, -1), "r must be an int"),
    (8.0, "merge schedule must be"),
    ("8", "merge schedule must be"),
    (True, "merge schedule must be"),
])
def test_bad_schedules_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_merge_schedule(spec, 12)


# 4. source tracking -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tail", [0, 2])
def test_source_merged_token_is_size_weighted_mean_of_its_sources(tail):
    """Identity blocks: apply the merge hook several times to random tokens with random metrics."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 33, 6, dtype=torch.float64, generator=g)
    tm = TokenMerging([5, 4, 6, 3], layers=4, track_source=True)
    state = ForwardState(tail_tokens=tail)
    x, size = tm.on_embed(x0, state), None
    for i in range(4):
        metric = torch.randn(3, x.shape[1], 4, dtype=torch.float64, generator=g)
        x, size = tm.merge(i, x, metric, size, state)
        src = state.source
        assert state.source_layer == i and src.shape == (3, x.shape[1], 33)
        assert set(src.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(src.sum(1), torch.ones(3, 33, dtype=src.dtype))  # each original in one token
        assert torch.equal(size, src.sum(-1))
        torch.testing.assert_close(x, src @ x0 / size.unsqueeze(-1))  # originals all have size 1
        assert torch.equal(src[:, 0], torch.eye(33, dtype=src.dtype)[0].expand(3, -1))  # class token alone
        if tail:
            assert torch.equal(src[:, -tail:], torch.eye(33, dtype=src.dtype)[-tail:].expand(3, -1, -1))
            assert torch.equal(x[:, -tail:], x0[:, -tail:])
    assert x.shape[1] == 33 - 18


def test_source_on_a_real_tower_and_under_checkpointing():
    v = small_vision_for_training()
    images = pixels(2, 64)
    ref = v(images, hooks=[TokenMerging(8, layers=4, track_source=True)]).state
    assert ref.source.shape == (2, 33, 65) and ref.source_layer == 3
    assert torch.equal(ref.source.sum(-1), ref.size)
    assert v(images, hooks=[TokenMerging(8, layers=4)]).state.source is None  # off by default
    v.transformer.grad_checkpointing = True
    out = v(images, hooks=[TokenMerging(8, layers=4, track_source=True)])
    out.embeds.square().sum().backward()  # re-executes every block's merge
    assert out.state.source_layer == 3
    assert torch.equal(out.state.source, ref.source)
    assert torch.equal(out.state.size, ref.size)


# 5. project_tokens ----------------------------------------------------------------------------------------

def test_project_tokens(tiny):
    v = tiny.visual
    with torch.no_grad():
        out = v(pixels(3, 32), return_tokens=True)
        cls = v.project_tokens(out.tokens[:, 0])
        every = v.project_tokens(out.tokens)
        old = v.ln_post(out.tokens[:, 0]) @ v.proj
    assert torch.equal(cls, old) and torch.equal(cls, out.embeds)
    assert every.shape == (3, v.cfg.num_tokens, tiny.config.embed_dim)
    torch.testing.assert_close(every[:, 0], out.embeds)
    torch.testing.assert_close(every[:, 5], v.ln_post(out.tokens[:, 5]) @ v.proj)


# 6. deep prompts + token merging ----------------------------------------------------------------------------

def reference_prompts_with_merging(v, images, prompts, r):
    """By hand: prompts appended, replaced before blocks 1…K-1, kept out of every merge."""
    b, n = prompts[0].shape[0], images.shape[0]
    x = v.ln_pre(torch.cat([v.embed(images), prompts[0].expand(n, -1, -1)], 1))
    size, outs = torch.ones(n, x.shape[1]), []
    for i, block in enumerate(v.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :-b], prompts[i].expand(n, -1, -1)], 1)
        a, metric = block.attn(block.ln_1(x), key_bias=size.log() if i else None, return_metric=True)
        x = x + a
        fn = bipartite_soft_matching(metric[:, :-b], r)
        s = size[:, :-b, None]
        body = fn(x[:, :-b] * s, "sum") / fn(s, "sum")
        x = torch.cat([body, x[:, -b:]], 1)
        size = torch.cat([fn(s, "sum")[..., 0], torch.ones(n, b)], 1)
        x = x + block.mlp(block.ln_2(x))
        outs.append(x)
    return outs


@pytest.mark.parametrize("prompts_first", [True, False])
def test_deep_prompts_survive_token_merging(small, prompts_first):
    torch.manual_seed(4)
    v, b, images = small.visual, 3, pixels(2, 64)
    prompts = torch.randn(3, b, v.cfg.width)  # K = 3: replaced before blocks 1, 2; carried into block 3
    dp, tm = DeepPrompts(prompts), TokenMerging(4, layers=4, track_source=True)
    rec, taps = Recorder(), LayerTaps(at="both")
    hooks = [dp, tm, rec, taps] if prompts_first else [rec, taps, tm, dp]
    with torch.no_grad():
        out = v(images, hooks=hooks, return_tokens=True)
        ref = reference_prompts_with_merging(v, images, prompts, r=4)
    assert out.state.tail_tokens == b
    eye = torch.eye(65 + b)
    for i in range(4):
        _, _, length, size, source = next(s for s in rec.seen if s[:2] == ("after", i))
        assert length == 65 + b - 4 * (i + 1)
        torch.testing.assert_close(out.state.taps[i], ref[i], rtol=1e-5, atol=1e-5)
        assert torch.equal(size[:, -b:], torch.ones(2, b))  # prompts never merged
        torch.testing.assert_close(size[:, :-b].sum(-1), torch.full((2,), 65.0))
        assert torch.equal(source[:, -b:], eye[-b:].expand(2, -1, -1))  # each prompt holds only itself
        assert not source[:, :-b, -b:].any()
        if 0 < i < 3 and prompts_first:  # block i's input ends with exactly the new prompts
            assert torch.equal(out.state.input_taps[i][:, -b:], prompts[i].expand(2, -1, -1))
    torch.testing.assert_close(out.tokens, ref[-1], rtol=1e-5, atol=1e-5)


# 7. one merging hook per forward ------------------------------------------------------------------------------

def test_two_merge_hooks_are_rejected(tiny):
    class OtherMerge(TowerHook):
        def merge(self, index, x, metric, size, state):
            return x, size

    images = pixels(1, 32)
    for hooks in ([TokenMerging(2, 2), TokenMerging(3, 2)], [OtherMerge(), LayerTaps(), TokenMerging(0, 2)]):
        with pytest.raises(ValueError, match="merge"):
            tiny.visual(images, hooks=hooks)
    tiny.visual(images, hooks=[TokenMerging(2, 2), LayerTaps(), DeepPrompts(torch.randn(1, 2, 64))])


# 8. the new options, when off, change nothing -----------------------------------------------------------------

def test_new_options_off_are_bit_identical(tiny):
    images = pixels(4, 32)
    rec = Recorder()
    with torch.no_grad():
        plain = tiny.visual(images, return_tokens=True)
        off = tiny.visual(images, return_tokens=True, hooks=[
            LayerTaps(at="both", class_token=True), TokenMerging({"r": 0}, 2, track_source=True), rec])
    assert torch.equal(plain.embeds, off.embeds) and torch.equal(plain.tokens, off.tokens)
    assert off.state.size is None and off.state.source is None
    assert all(s[3] is None for s in rec.seen)


# --- found by mutation testing (benchmarks/mutation.sh vclip/backbone/hooks.py) -------------------

def test_matching_clamps_r_and_never_merges_the_class_token():
    metric = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(1))
    assert bipartite_soft_matching(metric, 0) is None
    assert bipartite_soft_matching(metric, 1)(x).shape == (2, 5, 3)
    merge = bipartite_soft_matching(metric, 10)  # clamped to (6 - 1) // 2 = 2
    out = merge(x)  # reduce defaults to "sum"
    assert out.shape == (2, 4, 3) and torch.equal(out, merge(x, "sum"))
    assert torch.equal(out[:, 0], x[:, 0])  # the class token stays first, alone
    free = bipartite_soft_matching(metric, 3, class_token=False)  # (6 - 0) // 2 = 3: every A token merges
    assert free(x).shape == (2, 3, 3)


def test_token_merging_schedule_edges(tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    counts = []

    class Count(TowerHook):
        def after_block(self, i, x, state):
            counts.append(x.shape[1])
            return x

    with torch.no_grad():
        tiny.visual(images, hooks=[TokenMerging(1, layers=2), Count()])           # r = 1 merges one token
        tiny.visual(images, hooks=[TokenMerging([4], layers=1), Count()])         # blocks past the schedule: none
    assert counts == [16, 15, 13, 13]
    # called directly without a state: no tail tokens; class_token=False lets the class token merge
    metric = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(3))
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(4))
    out, size = TokenMerging(3, layers=1, class_token=False).merge(0, x, metric, None, None)
    ref = bipartite_soft_matching(metric, 3, class_token=False)
    torch.testing.assert_close(out, ref(x, "sum") / ref(torch.ones(1, 7, 1), "sum"))
    assert size.sum().item() == 7 and out.shape == (1, 4, 5)


def test_schedule_and_merge_errors_name_the_value():
    assert parse_merge_schedule(3, 0) == []  # zero layers is valid
    assert parse_merge_schedule((4, -1.0), 2) == [8, 0]
    with pytest.raises(ValueError, match=r"^merge schedule: layers must be an int ≥ 0, got '2'$"):
        parse_merge_schedule(3, "2")
    with pytest.raises(ValueError, match=r"^merge schedule: r\[1\] must be an int, got 2\.5 \(float\)$"):
        parse_merge_schedule([2, 2.5], 2)
    with pytest.raises(ValueError, match=r"^merge schedule: r must be ≥ 0, got -1$"):
        parse_merge_schedule(-1, 2)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['k'\]; allowed"):
        parse_merge_schedule({"r": 2, "k": 1}, 2)
    with pytest.raises(ValueError, match=r"^merge schedule mapping needs 'r' \(e\.g\. \{'r': 16, 'inflect': -1\}\)$"):
        parse_merge_schedule({"inflect": 1}, 2)
    with pytest.raises(ValueError, match=r"^merge schedule must be an int, a list of ints, an \(r, inflect\) tuple "
                                         r"or a mapping \{'r': \.\.\., 'inflect': \.\.\.\}; got 'x' \(str\)$"):
        parse_merge_schedule("x", 2)
    with pytest.raises(ValueError, match=r"^hooks TokenMerging, TokenMerging all implement merge"):
        check_single_merge([TokenMerging(1, 1), LayerTaps(), TokenMerging(1, 1)])


def test_deep_prompts_dtype_counts_and_room(tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = tiny.visual(images, hooks=[DeepPrompts(torch.randn(1, 2, 64, dtype=torch.float64)),
                                         DeepPrompts(torch.randn(1, 3, 64))], return_tokens=True)
    assert out.tokens.dtype == torch.float32 and out.tokens.shape[1] == 17 + 5
    assert out.state.tail_tokens == 5  # both hooks' prompts are tail tokens
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, 0], tokens[0, 1:74], tokens[0, 74] = 49406, 1, 49407  # 75 tokens: 2 padding positions
    with pytest.raises(ValueError, match=r"^text of 75 tokens plus 3 prompt tokens exceeds the context length 77$"):
        tiny.text(tokens, hooks=[DeepPrompts(torch.randn(1, 3, 32))])
    tiny.text(tokens, hooks=[DeepPrompts(torch.randn(1, 2, 32))])  # two fit
