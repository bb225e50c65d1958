"""CLIPConfig.from_dict goes through vclip.config.from_dict: nested towers, unknown keys with a
hint, type errors naming the dotted key."""

import pytest

from vclip.backbone.config import CLIPConfig, TextConfig, VisionConfig, get_config
from vclip.errors import ConfigError


def test_round_trip_with_nested_towers():
    cfg = get_config("tiny")
    again = CLIPConfig.from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.vision, VisionConfig) and isinstance(again.text, TextConfig)
    partial = CLIPConfig.from_dict({"embed_dim": 64, "vision": {"patch_size": 16}})
    assert partial.vision.patch_size == 16 and partial.vision.width == VisionConfig().width
    assert CLIPConfig(text={"layers": 3}).text.layers == 3  # direct construction with a dict


@pytest.mark.parametrize("change, message", [
    ({"embed_dimm": 3}, r"unknown config key 'embed_dimm'; did you mean 'embed_dim'"),
    ({"vision": {"patch": 8}}, r"unknown config key 'vision\.patch'; did you mean 'vision\.patch_size'"),
    ({"text": {"layers": "two"}}, r"text\.layers: expected an integer"),
    ({"vision": [1, 2]}, r"vision: expected a mapping"),
    ({"layer_norm_eps": True}, r"layer_norm_eps: expected a number"),
    ({"vision": {"image_size": 30, "patch_size": 8}}, r"vision\.image_size \(30\) must be a multiple"),
])
def test_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        CLIPConfig.from_dict(change)
    with pytest.raises(ConfigError, match=r"unknown config key 'text\.widht'"):
        CLIPConfig(text={"widht": 3})
