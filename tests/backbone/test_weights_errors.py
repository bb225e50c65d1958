"""Bad weight files give a clear CheckpointError naming the file."""


import pytest
import torch

from vclip.backbone import CLIP, get_config
from vclip.backbone.convert import vclip_to_openai
from vclip.backbone.weights import load_clip, read_state_dict, save_clip
from vclip.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(0)
    return vclip_to_openai(CLIP(get_config("tiny")).state_dict())


class NotATensor:
    pass


def test_truncated_pickle(tmp_path, tiny_sd):
    f = tmp_path / "trunc.pt"
    torch.save(tiny_sd, f)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{f}.*truncated or corrupt"):
        load_clip(f)


def test_truncated_safetensors(tmp_path):
    d = save_clip(CLIP(get_config("tiny")), tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"{w}.*safetensors"):
        load_clip(d)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_clip(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    f = tmp_path / "notes.pt"
    f.write_text("hello, I am not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match=str(f)):
        load_clip(f)


def test_pickle_needing_trust(tmp_path, tiny_sd):
    f = tmp_path / "full_pickle.pth"
    torch.save({"model": tiny_sd, "config": NotATensor()}, f)
    with pytest.raises(CheckpointError, match=r"trust_checkpoint=True") as e:
        load_clip(f)
    assert str(f) in str(e.value) and "--trust-checkpoint" in str(e.value)
    model = load_clip(f, trust_checkpoint=True)  # with trust it loads
    assert torch.equal(model.visual.proj, tiny_sd["visual.proj"])


def test_missing_keys(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    del sd["visual.transformer.resblocks.1.ln_2.weight"]
    f = tmp_path / "missing.pt"
    torch.save(sd, f)
    with pytest.raises(CheckpointError, match=r"missing.pt.*1 missing key.*resblocks\.1\.ln_2\.weight"):
        load_clip(f, config=get_config("tiny"))


def test_missing_block(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if ".resblocks.0." not in k or not k.startswith("visual")}
    f = tmp_path / "noblock.pt"
    torch.save(sd, f)
    with pytest.raises(CheckpointError, match=r"noblock.pt.*blocks \[0\] are missing"):
        load_clip(f)


def test_wrong_architecture(tmp_path, tiny_sd):
    f = tmp_path / "tiny.pt"
    torch.save(tiny_sd, f)
    with pytest.raises(CheckpointError, match=r"tiny.pt.*shape mismatch.*visual.conv1.weight"):
        load_clip(f, config=get_config("small"))


def test_resnet_and_foreign_state_dicts(tmp_path):
    f = tmp_path / "rn50.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}, f)
    with pytest.raises(CheckpointError, match=r"rn50.pt.*ResNet"):
        load_clip(f)
    g = tmp_path / "resnet_imagenet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "conv1.weight": torch.zeros(1)}, g)
    with pytest.raises(CheckpointError, match=r"resnet_imagenet.pt.*not a CLIP state dict"):
        load_clip(g)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = CLIP(get_config("tiny"))
    d = save_clip(model, tmp_path / "m")
    before = (d / "model.safetensors").read_bytes()

    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_clip(model, d)
    assert (d / "model.safetensors").read_bytes() == before  # the old file survives
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]  # no temp left


def test_image_size_interpolation(tmp_path):
    model = CLIP(get_config("tiny"))
    d = save_clip(model, tmp_path / "m")
    big = load_clip(d, image_size=48)
    assert big.visual.positional_embedding.shape == (37, 64)
    assert big.encode_image(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    with pytest.raises(ValueError, match="48x48 px"):
        model.encode_image(torch.randn(1, 3, 48, 48))
