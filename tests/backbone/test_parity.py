"""The backbone is CLIP: identical random weights through every converter give transformers'
CLIPModel embeddings (≤ 1e-5 relative, fp32), and conversions round-trip exactly."""

import shutil

import pytest
import torch

from tests.backbone.reference_openai import OpenAICLIP
from tests.conftest import random_tokens
from vclip.backbone import CLIPConfig, TextConfig, VisionConfig, convert, get_config
from vclip.backbone.model import CLIP
from vclip.backbone.weights import load_clip, save_clip

transformers = pytest.importorskip("transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _pool(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def hf_model(arch: str):
    cfg = get_config(arch)
    hf_cfg = transformers.CLIPConfig.from_dict(convert.config_to_hf(cfg))
    model = transformers.CLIPModel(hf_cfg).eval()
    with torch.no_grad():  # random non-trivial LayerNorms/biases so no mix-up can pass unnoticed
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    return cfg, model


@pytest.fixture(scope="module", params=["tiny", "ViT-B-32"])
def hf_dir(request, tmp_path_factory):
    torch.manual_seed(1)
    cfg, model = hf_model(request.param)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    yield cfg, model, d
    shutil.rmtree(d, ignore_errors=True)  # ViT-B/32's weights: 578 MB of the CI's disk


def test_hf_directory_parity(hf_dir):
    cfg, hf, d = hf_dir
    ours = load_clip(d).eval()
    assert ours.config.vision == cfg.vision and ours.config.text == cfg.text
    size = cfg.vision.image_size
    images = torch.randn(3, 3, size, size)
    tokens = random_tokens(4)
    with torch.no_grad():
        ref_img = _pool(hf.get_image_features(pixel_values=images))
        ref_txt = _pool(hf.get_text_features(input_ids=tokens))
        img, txt = ours.encode_image(images), ours.encode_text(tokens)
        assert ref_img.shape == img.shape == (3, cfg.embed_dim)
        assert rel_err(img, ref_img) <= 1e-5
        assert rel_err(txt, ref_txt) <= 1e-5
        ref_logits = hf(input_ids=tokens, pixel_values=images).logits_per_image
        assert rel_err(ours(images, tokens)[0], ref_logits) <= 1e-5


def test_round_trip_vclip_hf_vclip_is_exact(hf_dir, tmp_path):
    _, _, d = hf_dir
    first = load_clip(d)
    save_clip(first, tmp_path / "hf", format="hf")
    save_clip(first, tmp_path / "ours", format="vclip")
    for again in (load_clip(tmp_path / "hf"), load_clip(tmp_path / "ours")):
        a, b = first.state_dict(), again.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the exported transformers directory is what transformers reads, tensor for tensor
    hf_again = transformers.CLIPModel.from_pretrained(tmp_path / "hf")
    hsd = convert.vclip_to_hf(first.state_dict())
    assert all(torch.equal(hf_again.state_dict()[k], v) for k, v in hsd.items())


def _openai_reference():
    """A tiny model with OpenAI's 64-wide heads, so its architecture can be inferred from shapes."""
    torch.manual_seed(2)
    cfg = CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2),
                     text=TextConfig(width=128, heads=2, layers=2))
    return cfg, OpenAICLIP(cfg).eval()


def test_openai_state_dict_and_torchscript_archive(tmp_path):
    cfg, ref = _openai_reference()
    images = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = random_tokens(3)
    with torch.no_grad():
        ref_img, ref_txt = ref(images, tokens)
    # plain OpenAI-layout state dict, as people save it
    torch.save(ref.state_dict(), tmp_path / "openai_sd.pt")
    # a TorchScript archive, as OpenAI released its .pt files (fp16 weights, like theirs)
    scripted = torch.jit.trace(ref, (images, tokens))
    torch.jit.save(scripted, str(tmp_path / "ViT-tiny.pt"))
    for f in ("openai_sd.pt", "ViT-tiny.pt"):
        ours = load_clip(tmp_path / f).eval()
        assert ours.config.vision == cfg.vision
        with torch.no_grad():
            assert rel_err(ours.encode_image(images), ref_img) <= 1e-5, f
            assert rel_err(ours.encode_text(tokens), ref_txt) <= 1e-5, f


def test_fp16_openai_file_loads_as_fp32(tmp_path):
    cfg, ref = _openai_reference()
    torch.save(ref.half().state_dict(), tmp_path / "half.pt")
    ours = load_clip(tmp_path / "half.pt")
    assert ours.dtype == torch.float32
    assert torch.equal(ours.visual.proj, ref.visual.proj.float())


def test_open_clip_training_checkpoint_layout(tmp_path):
    """open_clip's training checkpoints: {"epoch", "state_dict": {"module.visual...": ...}} plus an
    open_clip_config.json that declares the activation."""
    cfg, ref = _openai_reference()
    sd = {"module." + k: v for k, v in ref.state_dict().items() if k not in ("input_resolution", "context_length", "vocab_size")}
    sd["module.attn_mask"] = torch.zeros(77, 77)  # open_clip keeps a mask buffer in older versions
    torch.save({"epoch": 3, "name": "run", "state_dict": sd}, tmp_path / "epoch_3.pt")
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 32, "quick_gelu": true, "vision_cfg": {}}}')
    ours = load_clip(tmp_path / "epoch_3.pt")
    assert ours.config.activation == "quick_gelu"
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 32, "vision_cfg": {}}}')
    assert load_clip(tmp_path / "epoch_3.pt").config.activation == "gelu"


def test_open_clip_parity_when_installed():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    ours = CLIP(get_config("ViT-B-32")).eval()
    ours.load_state_dict(convert.to_vclip(model.state_dict()))
    images, tokens = torch.randn(2, 3, 224, 224), random_tokens(2)
    with torch.no_grad():
        assert rel_err(ours.encode_image(images), model.encode_image(images)) <= 1e-5
        assert rel_err(ours.encode_text(tokens), model.encode_text(tokens)) <= 1e-5


def test_architecture_inferred_for_every_named_config():
    for name in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"):
        cfg = get_config(name)
        with torch.device("meta"):
            sd = CLIP(cfg).state_dict()
        assert convert.infer_config(sd) == cfg, name
