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


def _cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (the one of PyTorch's and OpenCV's bicubic)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _bicubic_matrix(old: int, new: int):
    """[new, old] weights of a 1-D bicubic resize, half-pixel centres (align_corners=False), the
    taps beyond the border clamped to the edge sample."""
    import numpy as np

    m = np.zeros((new, old))
    for i in range(new):
        src = (i + 0.5) * old / new - 0.5
        base = int(np.floor(src))
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), old - 1)] += _cubic(src - tap)
    return m


@pytest.mark.parametrize("size, grid", [(48, 6), (16, 2)])
def test_image_size_interpolation_values(tmp_path, size, grid):
    """The positional embedding loaded at another image size is the bicubic resize of the patch
    grid (computed here separably with numpy), the class position kept as is. Channels 0 and 1
    hold the patch's row and column, so a transposed or zeroed grid fails."""
    import numpy as np

    torch.manual_seed(0)
    model = CLIP(get_config("tiny"))  # 32 px, patch 8: a 4x4 grid, 64 channels
    g = 4
    pos = torch.randn(1 + g * g, 64)
    rows, cols = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                                indexing="ij")
    pos[1:, 0] = rows.flatten()
    pos[1:, 1] = 10 * cols.flatten()
    pos[0] = torch.linspace(-3, 3, 64)
    with torch.no_grad():
        model.visual.positional_embedding.copy_(pos)
    big = load_clip(save_clip(model, tmp_path / "m"), image_size=size)
    got = big.visual.positional_embedding.detach().double().numpy()
    assert got.shape == (1 + grid * grid, 64)
    assert np.array_equal(got[0], pos[0].double().numpy())  # the class position, untouched

    m = _bicubic_matrix(g, grid)
    src = pos[1:].double().numpy().reshape(g, g, 64)
    want = np.einsum("ir,rcd,jc->ijd", m, src, m).reshape(grid * grid, 64)
    np.testing.assert_allclose(got[1:], want, rtol=1e-5, atol=1e-5)
    # orientation, without the reference: channel 0 (the row) varies down the grid only
    new = got[1:].reshape(grid, grid, 64)
    assert np.allclose(new[:, :, 0], new[:, :1, 0]) and np.all(np.diff(new[:, 0, 0]) > 0)
    assert np.allclose(new[:, :, 1], new[:1, :, 1]) and np.all(np.diff(new[0, :, 1]) > 0)
