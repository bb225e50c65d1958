"""X-CLIP: parity with transformers' XCLIPModel, checkpoint conversion, T interpolation, errors,
FLOPs, configs. CPU, no network."""

from __future__ import annotations

import glob
import logging
import os
import sys
import types

import pytest
import torch

from vclip.backbone import CLIP, CLIPConfig, TextConfig, VisionConfig, get_config
from vclip.backbone.tokenizer import get_tokenizer
from vclip.errors import CheckpointError
from vclip.methods import METHODS, build_method
from vclip.methods.base import Vocabulary
from vclip.methods.xclip import XCLIP, XCLIPOptions
from vclip.methods import xclip_convert as xc

transformers = pytest.importorskip("transformers")
from transformers import XCLIPConfig, XCLIPModel  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
NAMES = ("playing sports", "eating spaghetti", "go shopping", "juggling")


def small_hf_config(num_frames: int, embed: int = 128, prompt_heads: int = 2, mit_heads: int = 2) -> XCLIPConfig:
    return XCLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, num_frames=num_frames, mit_hidden_size=embed,
                           mit_intermediate_size=4 * embed, mit_num_attention_heads=mit_heads),
        projection_dim=embed, prompt_num_attention_heads=prompt_heads,
    )


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Every parameter random (LayerNorms and biases too), at scales that keep activations sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.05, 0.55, generator=g)
            elif name == "logit_scale":
                p.fill_(4.0)
            elif p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
            elif ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.normal_(1.0, 0.2, generator=g)
            else:
                p.normal_(0.0, 0.1, generator=g)


def random_hf(config: XCLIPConfig, seed: int = 1) -> XCLIPModel:
    """XCLIPModel with random weights, built without transformers' (slow, overwritten) init."""
    with torch.device("meta"):
        hf = XCLIPModel(config)
    hf.to_empty(device="cpu")
    for name, buf in hf.named_buffers():  # the only buffers: position ids
        assert name.endswith("position_ids"), name
        buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    randomize(hf, seed)
    return hf.eval()


def hf_logits(hf: XCLIPModel, video: torch.Tensor, names=NAMES) -> torch.Tensor:
    ids = get_tokenizer()(list(names))
    with torch.no_grad():
        return hf(input_ids=ids, pixel_values=video).logits_per_video


def vclip_logits(method: XCLIP, video: torch.Tensor, names=NAMES) -> torch.Tensor:
    method.eval()
    with torch.no_grad():
        return method(video, Vocabulary(names)).logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def tiny64() -> CLIPConfig:
    """A tiny CLIP whose head counts follow width/64, as every official X-CLIP's (official files
    carry no config: the architecture is read from the shapes)."""
    return CLIPConfig(embed_dim=64, vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2),
                      text=TextConfig(width=64, heads=1, layers=2))


def random_xclip(num_frames: int = 4, seed: int = 3) -> XCLIP:
    torch.manual_seed(seed)
    m = XCLIP(CLIP(tiny64()), num_frames=num_frames)
    randomize(m, seed)
    return m.eval()


# ----------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("num_frames", [8, 4])
def test_parity_small_and_export(tmp_path, num_frames):
    hf = random_hf(small_hf_config(num_frames))
    hf.save_pretrained(tmp_path / "hf")
    method = xc.load_xclip(tmp_path / "hf")
    assert method.num_frames == num_frames and method.mit_heads == 2 and method.prompt_heads == 2
    video = torch.randn(2, num_frames, 3, 32, 32)
    ref = hf_logits(hf, video)
    got = vclip_logits(method, video)
    assert rel_err(got, ref) <= 1e-4, (got, ref)
    # export: transformers loads it and gives the same logits
    xc.save_xclip_hf(method, tmp_path / "out")
    hf2 = XCLIPModel.from_pretrained(tmp_path / "out").eval()
    assert rel_err(hf_logits(hf2, video), ref) <= 1e-5
    # and the exported tensors are exactly the original ones
    a, b = hf.state_dict(), hf2.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parity_b32_shaped(tmp_path):
    """A ViT-B/32-shaped X-CLIP (transformers' default config), T = 8."""
    hf = random_hf(XCLIPConfig())
    # converted in memory (files are exercised by the small configs; 600 MB would cost seconds)
    arch = xc.arch_from_hf(hf.config.to_dict())
    method = xc.build_xclip(xc.hf_to_vclip(hf.state_dict()), arch)
    assert method.clip.config.vision.patch_size == 32 and method.clip.config.vision.width == 768
    assert method.num_frames == 8 and method.mit_heads == 8 and method.prompt_heads == 8
    video = torch.randn(1, 8, 3, 224, 224)
    assert rel_err(vclip_logits(method, video, NAMES[:3]), hf_logits(hf, video, NAMES[:3])) <= 1e-4
    # the export holds exactly transformers' tensors (its logits are checked on the small configs)
    exported = xc.vclip_to_hf(method.state_dict())
    ref = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    assert set(exported) == set(ref)
    assert all(torch.equal(exported[k], ref[k]) for k in ref)


def test_official_map_matches_transformers_names():
    """official → HF gives exactly XCLIPModel's keys; spot-check the renames of the reference map."""
    hf = random_hf(small_hf_config(4))
    ref = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    official = xc.hf_to_official(ref)
    for key in ("token_embedding.weight", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
                "ln_final.weight", "text_projection", "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight",
                "visual.transformer.resblocks.1.message_attn.in_proj_weight",
                "visual.transformer.resblocks.1.message_attn.out_proj.weight",
                "visual.transformer.resblocks.0.message_fc.weight", "visual.transformer.resblocks.0.message_ln.bias",
                "mit.positional_embedding", "mit.resblocks.0.attn.in_proj_bias", "mit.resblocks.0.mlp.c_fc.weight",
                "prompts_visual_ln.weight", "prompts_visual_proj", "prompts_generator.norm.weight",
                "prompts_generator.alpha", "prompts_generator.decoder.1.cross_attn.q_proj.weight",
                "prompts_generator.decoder.0.mlp.3.bias", "logit_scale"):
        assert key in official, key
    torch.testing.assert_close(official["visual.proj"], ref["visual_projection.weight"].t(), rtol=0, atol=0)
    torch.testing.assert_close(official["prompts_visual_proj"], ref["prompts_visual_projection"], rtol=0, atol=0)
    back = xc.official_to_hf(official)
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)


# ----------------------------------------------------------------------------------- official files


def test_round_trip_official_vclip_hf_vclip(tmp_path):
    m = random_xclip()
    path = xc.save_xclip_official(m, tmp_path / "best.pth")
    a = xc.load_xclip(path)
    xc.save_xclip_hf(a, tmp_path / "hf")
    b = xc.load_xclip(tmp_path / "hf")
    sd0, sd1, sd2 = m.state_dict(), a.state_dict(), b.state_dict()
    assert set(sd0) == set(sd1) == set(sd2)
    assert all(torch.equal(sd0[k], sd1[k]) and torch.equal(sd0[k], sd2[k]) for k in sd0)
    video = torch.randn(2, 4, 3, 32, 32)
    assert torch.equal(vclip_logits(m, video), vclip_logits(b, video))
    # official → vclip → official is the identity on names and tensors
    off = torch.load(path, weights_only=True)["model"]
    again = xc.vclip_to_official(xc.official_to_vclip(off))
    assert set(again) == set(off) and all(torch.equal(again[k], off[k]) for k in off)


def test_module_prefix_and_official_wrapping(tmp_path):
    m = random_xclip()
    sd = xc.vclip_to_official(m.state_dict())
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    loaded = xc.load_xclip(tmp_path / "ddp.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in m.state_dict().items())


class _FakeCfgNode(dict):
    """Stands for yacs' CfgNode (a dict subclass with attributes), which official .pth files pickle."""


def test_full_pickle_needs_trust(tmp_path):
    m = random_xclip()
    fake = types.ModuleType("fake_yacs_config")
    _FakeCfgNode.__module__ = "fake_yacs_config"
    fake.CfgNode = _FakeCfgNode
    _FakeCfgNode.__qualname__ = "CfgNode"
    sys.modules["fake_yacs_config"] = fake
    try:
        cfg = _FakeCfgNode(MODEL={"ARCH": "ViT-B/32"})
        torch.save({"model": xc.vclip_to_official(m.state_dict()), "config": cfg, "epoch": 29},
                   tmp_path / "ckpt_epoch_29.pth")
    finally:
        del sys.modules["fake_yacs_config"]  # as on a machine without yacs
    with pytest.raises(CheckpointError) as e:
        xc.load_xclip(tmp_path / "ckpt_epoch_29.pth")
    msg = str(e.value)
    assert "ckpt_epoch_29.pth" in msg and "trust_checkpoint" in msg and "yacs" in msg
    loaded = xc.load_xclip(tmp_path / "ckpt_epoch_29.pth", trust_checkpoint=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in m.state_dict().items())


def test_missing_keys_error_names_file_and_key(tmp_path):
    m = random_xclip()
    sd = xc.vclip_to_official(m.state_dict())
    del sd["prompts_generator.decoder.0.norm1.weight"]
    torch.save({"model": sd}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing.*prompts_generator\.decoder\.0\.norm1\.weight"):
        xc.load_xclip(tmp_path / "broken.pth")
    sd = xc.vclip_to_official(m.state_dict())
    del sd["mit.positional_embedding"]
    torch.save({"model": sd}, tmp_path / "nomit.pth")
    with pytest.raises(CheckpointError, match=r"nomit\.pth.*mit\.positional_embedding"):
        xc.load_xclip(tmp_path / "nomit.pth")
    with pytest.raises(CheckpointError, match="not an X-CLIP checkpoint"):
        torch.save({"model": {k[5:]: v for k, v in m.state_dict().items() if k.startswith("clip.")}},
                   tmp_path / "clip.pth")
        xc.load_xclip(tmp_path / "clip.pth")


# ----------------------------------------------------------------------------------- frames


def test_temporal_interpolation(tmp_path, caplog):
    m = random_xclip(num_frames=8)
    path = xc.save_xclip_official(m, tmp_path / "t8.pth")
    with caplog.at_level(logging.INFO, logger="vclip.methods.xclip_convert"):
        m16 = xc.load_xclip(path, num_frames=16)
    assert "interpolated the MIT temporal position embedding from 8 to 16 frames" in caplog.text
    pos8, pos16 = m.mit.positional_embedding, m16.mit.positional_embedding
    assert pos16.shape == (1, 16, pos8.shape[2])
    # linear, align_corners=False: doubling T puts every old position between two new ones
    torch.testing.assert_close((pos16[:, 1:-1:2] + pos16[:, 2::2]) / 2, pos8[:, 1:] * 0.5 + pos8[:, :-1] * 0.5)
    torch.testing.assert_close(pos16[:, 0], pos8[:, 0])
    torch.testing.assert_close(xc.interpolate_temporal_embedding(pos8.detach(), 8), pos8.detach())
    assert vclip_logits(m16, torch.randn(1, 16, 3, 32, 32)).shape == (1, len(NAMES))
    # 8-frame weights run 8 frames only, with a clear message
    with pytest.raises(ValueError, match="built for 8 frames"):
        vclip_logits(m, torch.randn(1, 16, 3, 32, 32))


def test_wrong_frames_without_interpolation_is_an_error(tmp_path):
    path = xc.save_xclip_official(random_xclip(num_frames=8), tmp_path / "t8.pth")
    with pytest.raises(CheckpointError, match=r"t8\.pth.*8 frames.*16 frames.*interpolat"):
        xc.load_xclip(path, num_frames=16, options=XCLIPOptions(interpolate_frames=False))


def test_large_config_head_count_warning(tmp_path, caplog):
    """transformers' large configs declare 8 MIT / prompt heads where the official code uses
    embed/64 (12 for 768): warn, follow the official code unless the options say otherwise."""
    hf = random_hf(small_hf_config(4, embed=768, prompt_heads=8, mit_heads=8))
    hf.save_pretrained(tmp_path / "large")
    with caplog.at_level(logging.WARNING):
        m = xc.load_xclip(tmp_path / "large")
    assert "prompt_num_attention_heads=8" in caplog.text and "mit_num_attention_heads=8" in caplog.text
    assert m.mit_heads == 12 and m.prompt_heads == 12
    m8 = xc.load_xclip(tmp_path / "large", options=XCLIPOptions(mit_heads=8, prompt_heads=8))
    assert m8.mit_heads == 8 and m8.prompt_heads == 8
    video = torch.randn(1, 4, 3, 32, 32)
    assert rel_err(vclip_logits(m8, video), hf_logits(hf.eval(), video)) <= 1e-4


# ----------------------------------------------------------------------------------- the method


def test_defaults_init_and_param_groups():
    m = XCLIP(CLIP(get_config("tiny")), num_frames=8)
    o = m.options
    assert (o.mit_layers, o.prompt_layers, o.prompt_alpha, o.drop_path, o.fix_text) == (1, 2, 0.1, 0.0, True)
    assert XCLIP.default_templates == ("{}",) and METHODS["xclip"] is XCLIP
    assert not any(p.requires_grad for p in m.clip.text.parameters()) and not m.clip.logit_scale.requires_grad
    assert torch.all(m.prompts_generator.alpha == 0.1)
    assert len(m.message_fc) == len(m.clip.visual.transformer.resblocks) == 2
    assert torch.all(m.message_attn[0].in_proj_bias == 0) and torch.all(m.message_attn[0].out_proj.bias == 0)
    assert torch.all(m.mit.resblocks[0].mlp.c_fc.bias == 0)
    assert float(m.mit.resblocks[0].mlp.c_fc.weight.detach().std()) == pytest.approx(0.02, rel=0.3)
    assert float(m.prompts_visual_proj.detach().std()) == pytest.approx(1.0, rel=0.2)  # official plain randn
    new = {n for n, p in m.named_parameters() if m.parameter_group(n) == "new"}
    assert new and all(n.startswith(("message_", "mit.", "prompts_")) for n in new)
    assert all(m.parameter_group(n) == "clip" for n, _ in m.clip.named_parameters(prefix="clip"))
    assert m.lr_mults(10.0) == {"clip": 1.0, "new": 10.0}
    m.freeze(text=False)
    assert m.text_trainable() and m.clip.logit_scale.requires_grad


def test_text_cache_and_forward_consistency():
    m = random_xclip()
    vocab = Vocabulary(NAMES)
    video = torch.randn(2, 4, 3, 32, 32)
    m.train()
    first = m.class_features(vocab)
    assert m.class_features(vocab) is first  # frozen text: cached
    m.eval()
    with torch.no_grad():
        direct = m.logits(m.encode_video(video), m.encode_vocabulary(vocab))
        assert torch.equal(m(video, vocab).logits, direct)
    # each video gets its own text features: swapping the videos swaps the rows
    with torch.no_grad():
        swapped = m(video.flip(0), vocab).logits
    torch.testing.assert_close(swapped, direct.flip(0))


def test_grad_checkpointing_and_drop_path():
    m = random_xclip()
    m.train()
    video = torch.randn(2, 4, 3, 32, 32)
    vocab = Vocabulary(NAMES)
    out = m(video, vocab).logits
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert "message_fc.0.weight" in grads and "mit.positional_embedding" in grads and "prompts_generator.alpha" in grads
    m.zero_grad()
    m.clip.set_grad_checkpointing(True)
    out2 = m(video, vocab).logits
    out2.sum().backward()
    torch.testing.assert_close(out2, out)
    for n, g in grads.items():
        torch.testing.assert_close(dict(m.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6)
    # drop-path: the backbone's per-block rates, linear over depth; the message attention uses them
    m2 = XCLIP(CLIP(get_config("tiny")), num_frames=4, options=XCLIPOptions(drop_path=0.2))
    rates = [b.drop_path.p for b in m2.clip.visual.transformer.resblocks]
    assert rates == pytest.approx([0.0, 0.2])
    assert m2.cross_frame_hook().drop_paths[1] is m2.clip.visual.transformer.resblocks[1].drop_path


def test_build_method_from_official_file_and_plain_clip(tmp_path):
    from vclip.backbone.weights import save_clip
    from vclip.config import load_config

    m = random_xclip(num_frames=8)
    path = xc.save_xclip_official(m, tmp_path / "xclip.pth")
    cfg = load_config(["configs/xclip/k400_b32_8f.yaml"] if os.getcwd() == ROOT else
                      [os.path.join(ROOT, "configs/xclip/k400_b32_8f.yaml")],
                      [f"model.pretrained={path}", "data.num_frames=8", "data.image_size=32"])
    built = build_method(cfg)
    assert isinstance(built, XCLIP)
    assert all(torch.equal(built.state_dict()[k], v) for k, v in m.state_dict().items())
    # a plain CLIP: its weights, the new modules initialised officially
    clip_dir = save_clip(m.clip, tmp_path / "clip")
    cfg.model.pretrained = str(clip_dir)
    cfg.data.num_frames = 4
    fresh = build_method(cfg)
    assert fresh.num_frames == 4 and torch.all(fresh.prompts_generator.alpha == 0.1)
    assert all(torch.equal(fresh.clip.state_dict()[k], v) for k, v in m.clip.state_dict().items())


# ----------------------------------------------------------------------------------- FLOPs


def test_flop_counter_on_known_layers():
    from vclip.backbone.model import Attention
    from vclip.methods.flops import count_macs

    attn = Attention(64, 4)
    x = torch.randn(2, 10, 64)
    macs, _ = count_macs(lambda: attn(x))
    # qkv 3·64·64 + out 64·64 per token, plus QKᵀ and AV: 2·10·64 per token
    assert macs == 2 * 10 * (4 * 64 * 64 + 2 * 10 * 64)


@pytest.mark.parametrize("arch,frames,official", [("ViT-B-32", 8, 39), ("ViT-B-16", 8, 145), ("ViT-B-16", 16, 287)])
def test_xclip_flops_match_official(arch, frames, official):
    from vclip.methods.flops import method_flops

    # measured: 38.95 / 144.82 / 286.46 GFLOPs, within 0.2 % of the papers' rounded figures; 0.5 %
    # still fails a counter that misses X-CLIP's modules (plain CLIP-mean B/32: 38.25, 1.9 % off)
    r = method_flops("xclip", arch, frames)
    assert abs(r.gflops - official) / official < 0.005, r.line()
    clip = method_flops("clip", arch, frames)
    assert r.parts["text tower"] == pytest.approx(clip.parts["text tower"], rel=1e-12)
    assert r.parts["image tower"] > clip.parts["image tower"] * 1.001     # message attention runs inside it
    assert r.parts["rest"] > 0.004 * r.gflops                              # MIT + prompt generator


def test_flops_command(capsys):
    from vclip.cli import main

    assert main(["flops", "--arch", "ViT-B-32", "--frames", "8"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs per view" in out and "1 multiply-add = 1 FLOP" in out


# ----------------------------------------------------------------------------------- configs


def test_every_xclip_config_loads():
    from vclip.config import load_config

    files = sorted(glob.glob(os.path.join(ROOT, "configs", "xclip", "*.yaml")))
    assert len(files) >= 12
    for f in files:
        cfg = load_config([f])
        assert cfg.model.method == "xclip" and cfg.model.templates == ["{}"]
        assert cfg.train.betas == [0.9, 0.98] and cfg.train.weight_decay == 0.001 and cfg.train.lr_mult_new == 10
        assert (cfg.eval.num_clips, cfg.eval.num_crops) == (4, 3)


# ------------------------------------------------ mutation testing (issue 13): values pinned by hand

def test_cross_frame_messages_by_hand():
    """The message tokens of block i computed by hand from the hook's modules: T from the forward
    state when it says, else the hook's own ``num_frames``; frames not a multiple of T refused."""
    from vclip.backbone.hooks import ForwardState

    torch.set_num_threads(1)
    m = random_xclip(num_frames=4)
    x = torch.randn(8, 5, 128, generator=torch.Generator().manual_seed(0))

    def by_hand(t, i=1):
        msg = m.message_fc[i](x[:, 0]).view(8 // t, t, 128)
        return (msg + m.message_attn[i](m.message_ln[i](msg))[0]).reshape(8, 1, 128)

    with torch.no_grad():
        assert not torch.allclose(by_hand(2), by_hand(4), atol=1e-3)
        hook = m.cross_frame_hook(2)
        assert hook.num_frames == 2 and m.cross_frame_hook().num_frames == 4
        torch.testing.assert_close(hook.extra_tokens(1, x, None), by_hand(2))
        torch.testing.assert_close(hook.extra_tokens(1, x, ForwardState()), by_hand(2))
        torch.testing.assert_close(hook.extra_tokens(1, x, ForwardState(extras={"num_frames": 4})), by_hand(4))
        with pytest.raises(ValueError, match="8 frames in the batch are not a whole number of 3-frame videos"):
            m.cross_frame_hook(3).extra_tokens(0, x, None)


def test_video_shape_and_mit_frame_errors():
    m = random_xclip(num_frames=4)
    with pytest.raises(ValueError, match=r"expected video \[B, T, 3, H, W\], got shape \(4, 3, 32, 32\)"):
        m.encode_video(torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"built for 4 frames, got 3; load the weights with num_frames=3 "):
        m.mit(torch.zeros(2, 3, 64))


def test_added_modules_keep_the_autocast_dtype():
    """Under bfloat16 autocast the float32 position embedding and α are cast to the activations'
    dtype: the MIT and the prompt generator return bfloat16 (not float32 by type promotion)."""
    m = random_xclip(num_frames=4)
    frames = torch.randn(2, 4, 64).bfloat16()
    text, visual = torch.randn(2, 3, 64).bfloat16(), torch.randn(2, 5, 64).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.mit(frames).dtype == torch.bfloat16
        assert m.prompts_generator(text, visual).dtype == torch.bfloat16


def test_module_defaults_initialisation_and_validation():
    from vclip.methods.xclip import CrossAttention, MultiframeIntegrationTransformer, VideoSpecificPrompt, default_heads

    assert [default_heads(d) for d in (32, 64, 127, 128, 768)] == [1, 1, 1, 2, 12]
    torch.manual_seed(0)
    mit = MultiframeIntegrationTransformer(32, 512)
    assert len(mit.resblocks) == 1 and mit.resblocks[0].attn.heads == 8
    assert float(mit.positional_embedding.detach().std()) == pytest.approx(0.02, rel=0.1)
    vsp = VideoSpecificPrompt(256)
    assert len(vsp.decoder) == 2 and torch.all(vsp.alpha == 0.1)
    w = torch.cat([m.weight.detach().flatten() for m in vsp.modules() if isinstance(m, torch.nn.Linear)])
    assert float(w.std()) == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="^prompt generator: dim 64 is not divisible by 3 heads$"):
        CrossAttention(64, 3)
    # no prompt layers is allowed (the text features are then the raw ones); no MIT layer is not
    m = XCLIP(CLIP(tiny64()), num_frames=4, options=XCLIPOptions(prompt_layers=0))
    assert len(m.prompts_generator.decoder) == 0 and m.prompt_heads == 1
    with pytest.raises(ValueError, match=r"^X-CLIP needs mit_layers >= 1 and prompt_layers >= 0, got 0, 2$"):
        XCLIP(CLIP(tiny64()), num_frames=4, options=XCLIPOptions(mit_layers=0))
    with pytest.raises(ValueError, match=r"got 1, -1$"):
        XCLIP(CLIP(tiny64()), num_frames=4, options=XCLIPOptions(prompt_layers=-1))


def test_added_layer_norms_use_the_backbone_eps():
    import dataclasses

    cfg = dataclasses.replace(tiny64(), layer_norm_eps=1e-6)
    m = XCLIP(CLIP(cfg), num_frames=4)
    assert m.message_ln[0].eps == 1e-6 and m.prompts_visual_ln.eps == 1e-6


def test_class_features_are_cast_to_the_model_dtype():
    """Class features cached in float32 scored by a float64 model: cast, the logits are those of
    float64 class features."""
    torch.set_num_threads(1)
    m = random_xclip().double()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cf = torch.randn(len(NAMES), 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = m.encode_video(video)
        got = m.logits(feats, cf)
        ref = m.logits(feats, cf.double())
    assert got.dtype == torch.float64 and torch.allclose(got, ref, atol=1e-12, rtol=0)
