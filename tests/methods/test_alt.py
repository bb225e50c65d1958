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
