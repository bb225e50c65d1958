"""A minimal, independent CLIP in OpenAI's module layout (``nn.MultiheadAttention``, sequence-first),
written for the tests: it produces state dicts and TorchScript archives with OpenAI's parameter
names, and a second implementation to compare vclip against."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vclip.backbone.config import CLIPConfig


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, causal_len: int | None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)
        mask = None
        if causal_len is not None:
            mask = torch.full((causal_len, causal_len), float("-inf")).triu(1)
        self.mask = mask  # a plain attribute, as in OpenAI's code (not in the state dict)

    def forward(self, x):  # [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads, causal_len=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads, causal_len) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class _Visual(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        v = cfg.vision
        self.conv1 = nn.Conv2d(3, v.width, v.patch_size, v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(v.width) * v.width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(v.num_tokens, v.width) * v.width**-0.5)
        self.ln_pre = nn.LayerNorm(v.width)
        self.transformer = _Transformer(v.width, v.layers, v.heads)
        self.ln_post = nn.LayerNorm(v.width)
        self.proj = nn.Parameter(torch.randn(v.width, cfg.embed_dim) * v.width**-0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenAICLIP(nn.Module):
    """OpenAI's CLIP layout: ``visual`` plus the text tower at the top level."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        t = cfg.text
        self.visual = _Visual(cfg)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.randn(t.context_length, t.width) * 0.01)
        self.transformer = _Transformer(t.width, t.layers, t.heads, causal_len=t.context_length)
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.randn(t.width, cfg.embed_dim) * t.width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        # scalars OpenAI's TorchScript archives carry in their state dict
        self.register_buffer("input_resolution", torch.tensor(cfg.vision.image_size))
        self.register_buffer("context_length", torch.tensor(t.context_length))
        self.register_buffer("vocab_size", torch.tensor(t.vocab_size))
        with torch.no_grad():  # non-trivial LayerNorm and bias values, so a mix-up cannot pass
            for name, p in self.named_parameters():
                if name.endswith("bias") or "ln" in name:
                    p.add_(0.05 * torch.randn_like(p))

    def encode_image(self, images):
        return self.visual(images)

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ self.text_projection

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens)
