import json

import torch

from tests.backbone.reference_openai import OpenAICLIP
from vclip.backbone import CLIPConfig, TextConfig, VisionConfig
from vclip.backbone.weights import load_clip
from vclip.cli import main


def test_selfcheck_random(capsys):
    assert main(["selfcheck", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and all(report["checks"].values())
    assert report["config"]["vision"]["image_size"] == 32


def test_convert_openai_file_to_hf_and_back(tmp_path, capsys):
    cfg = CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2),
                     text=TextConfig(width=128, heads=2, layers=2))
    ref = OpenAICLIP(cfg)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["selfcheck", "--weights", str(tmp_path / "hf")]) == 0
    assert "self-check passed" in capsys.readouterr().out
    assert torch.equal(load_clip(tmp_path / "hf").visual.proj, ref.visual.proj)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    assert main(["convert", str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vclip convert: error: ") and "bad.pt" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
