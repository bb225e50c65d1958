"""CLIP vision and text towers, their extension points (hooks), tokenizer and weight loading."""

from vclip.backbone.config import CLIPConfig, TextConfig, VisionConfig, get_config
from vclip.backbone.hooks import DeepPrompts, ForwardState, LayerTaps, TokenMerging, TowerHook
from vclip.backbone.model import CLIP, TextTransformer, TowerOutput, VisionTransformer

__all__ = [
    "CLIP",
    "CLIPConfig",
    "DeepPrompts",
    "ForwardState",
    "LayerTaps",
    "TextConfig",
    "TextTransformer",
    "TokenMerging",
    "TowerHook",
    "TowerOutput",
    "VisionConfig",
    "VisionTransformer",
    "get_config",
]
