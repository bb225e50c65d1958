"""Architecture configs of the CLIP towers.

A config holds only what changes the shapes or the maths of the towers; everything else (prompts,
message tokens, token merging) is added by methods through the extension points of
``vclip.backbone.model``. Named configs cover OpenAI's ViT CLIPs plus tiny ones for tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from vclip.config import from_dict as dataclass_from_dict
from vclip.errors import ConfigError


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per frame: one class token plus the patches."""
        return self.grid_size**2 + 1


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    #: "quick_gelu" for OpenAI's models (and open_clip's ``-quickgelu``), "gelu" for open_clip's own.
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    #: log of the initial logit scale (CLIP: 1/0.07); trained models carry their own value.
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = dataclass_from_dict(VisionConfig, self.vision, "vision")
        if isinstance(self.text, dict):
            self.text = dataclass_from_dict(TextConfig, self.text, "text")
        self.validate()

    def validate(self) -> None:
        if self.activation not in ("quick_gelu", "gelu"):
            raise ConfigError(f"activation: expected 'quick_gelu' or 'gelu', got {self.activation!r}")
        v, t = self.vision, self.text
        if v.image_size % v.patch_size:
            raise ConfigError(
                f"vision.image_size ({v.image_size}) must be a multiple of vision.patch_size ({v.patch_size})"
            )
        for name, tower in (("vision", v), ("text", t)):
            if tower.width % tower.heads:
                raise ConfigError(f"{name}.width ({tower.width}) must be divisible by {name}.heads ({tower.heads})")
            if tower.layers < 1:
                raise ConfigError(f"{name}.layers must be >= 1, got {tower.layers}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        """A config from :meth:`to_dict`'s layout (``vision``/``text`` as nested dicts), parsed by
        :func:`vclip.config.from_dict`: unknown keys are rejected with a did-you-mean hint, values
        are type-checked, and errors (:class:`~vclip.errors.ConfigError`) name the dotted key
        (``vision.patch_size``)."""
        return dataclass_from_dict(cls, d)


def _vit(image, patch, width, layers, heads, embed, t_width, t_heads) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=image, patch_size=patch, width=width, layers=layers, heads=heads),
        text=TextConfig(width=t_width, heads=t_heads, layers=12),
    )


#: Named architectures. OpenAI's four ViT CLIPs, and small ones for tests and the CPU demo.
CONFIGS: dict[str, CLIPConfig] = {
    "ViT-B-32": _vit(224, 32, 768, 12, 12, 512, 512, 8),
    "ViT-B-16": _vit(224, 16, 768, 12, 12, 512, 512, 8),
    "ViT-L-14": _vit(224, 14, 1024, 24, 16, 768, 768, 12),
    "ViT-L-14-336": _vit(336, 14, 1024, 24, 16, 768, 768, 12),
    # ~1 M parameters: unit tests
    "tiny": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4),
        text=TextConfig(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
    ),
    # ~8 M parameters: CPU demo on 64 px frames
    "small": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=8, width=192, layers=4, heads=3),
        text=TextConfig(width=128, heads=2, layers=4),
    ),
    # the world's CLIP (vclip pretrain, docs/suite.md): 64 px frames in 16 patches of 16 px, ~0.8 M
    # parameters besides the token embedding; heads = width / 64 and QuickGELU, so OpenAI-layout files
    # of it load by their shapes
    "world-s": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=16, width=128, layers=4, heads=2),
        text=TextConfig(context_length=32, width=64, heads=1, layers=3),
    ),
}

ALIASES = {
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "ViT-L-14-336px": "ViT-L-14-336",
}


def get_config(name: str) -> CLIPConfig:
    """A fresh copy of a named config (``ViT-B-32``, ``ViT-B/16``, ``tiny``, ...)."""
    key = ALIASES.get(name, name)
    if key not in CONFIGS:
        raise ConfigError(f"unknown CLIP architecture {name!r}; known: {', '.join(CONFIGS)}")
    return CLIPConfig.from_dict(CONFIGS[key].to_dict())
