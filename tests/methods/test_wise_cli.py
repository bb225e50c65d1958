"""``vclip wise``: --ratio and OUT are checked before any weight is read; the output checkpoint
is the blend, with the file permissions of any other output."""

from __future__ import annotations

import math

import pytest
import torch

from vclip.cli import main
from vclip.methods import wise


def _clips(tmp_path):
    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import save_clip

    out = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        out.append(save_clip(CLIP(get_config("tiny")), tmp_path / name))
    return out


@pytest.mark.parametrize("ratio", ["2", "-0.1", "1.0001", "nan", "inf"])
def test_ratio_outside_0_1_fails_before_loading(tmp_path, capsys, monkeypatch, ratio):
    def no_load(*a, **k):
        raise AssertionError("weights read before --ratio was checked")

    monkeypatch.setattr(wise, "load_state", no_load)
    assert main(["wise", "--ratio", ratio, "A", "B", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vclip wise: error: --ratio must be in [0, 1]")
    assert f"got {float(ratio)}" in lines[0] or math.isnan(float(ratio))
    assert not (tmp_path / "out").exists()


def test_occupied_out_fails_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wise, "load_state", lambda *a, **k: pytest.fail("weights read before OUT was checked"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["wise", "--ratio", "0.5", "A", "B", str(out)]) == 2
    assert "OUT" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("ratio", ["0", "1", "0.25"])
def test_bounds_are_accepted_and_the_blend_is_written_readable(tmp_path, ratio):
    from vclip.io import default_file_mode

    a, b = _clips(tmp_path)
    out = tmp_path / "wise"
    assert main(["wise", "--ratio", ratio, str(a), str(b), str(out)]) == 0
    r = float(ratio)
    got, sa, sb = wise.load_state(out), wise.load_state(a), wise.load_state(b)
    k = "clip.visual.proj"
    assert torch.allclose(got[k], r * sa[k] + (1 - r) * sb[k], atol=1e-6)
    for folder in (out, a):  # a wise checkpoint, a saved (converted) CLIP: none left 0600 by safetensors
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
        assert modes == dict.fromkeys(modes, oct(default_file_mode())) and "model.safetensors" in modes
