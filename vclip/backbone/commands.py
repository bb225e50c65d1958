"""``vclip selfcheck`` and ``vclip convert``: the backbone's own commands."""

from __future__ import annotations

import json
import time

import torch

from vclip.backbone.config import CONFIGS, get_config
from vclip.backbone.hooks import LayerTaps, TokenMerging, TowerHook
from vclip.backbone.model import CLIP
from vclip.backbone.tokenizer import get_tokenizer
from vclip.backbone.weights import load_clip, save_clip

# ids OpenAI's tokenizer gives; a broken vocabulary cannot reproduce them
_GOLDEN = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])


def register(subparsers) -> None:
    p = subparsers.add_parser("selfcheck", help="check the CLIP backbone (random or loaded weights) on this machine")
    p.add_argument("--arch", default="tiny", choices=sorted(CONFIGS), help="architecture for random weights")
    p.add_argument("--weights", help="a weight file/directory/name to load instead of random weights")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of --weights")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_selfcheck)

    c = subparsers.add_parser("convert", help="convert CLIP weights (OpenAI, open_clip, transformers, vclip)")
    c.add_argument("source", help="file, directory, or name such as openai/ViT-B-32")
    c.add_argument("dest", help="output directory")
    c.add_argument("--to", choices=["vclip", "hf"], default="vclip", help="output layout (default: vclip)")
    c.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of the source")
    c.set_defaults(handler=_convert)


def run_selfcheck(model: CLIP) -> dict:
    """Tokenizer ids, embedding shapes, and extension-off bit-identity on ``model``."""
    tok = get_tokenizer()
    text, ids = _GOLDEN
    got = tok(text)[0]
    checks = {"tokenizer_golden_ids": got[: len(ids)].tolist() == ids}
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    tokens = tok(["a video of a person juggling", "a video of a dog"], context_length=cfg.text.context_length)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        img = model.visual(images).embeds
        txt = model.text(tokens).embeds
        seconds = time.perf_counter() - t0
        off = [TowerHook(), LayerTaps([]), TokenMerging(0, layers=cfg.vision.layers)]
        checks["embedding_shapes"] = img.shape == (2, cfg.embed_dim) and txt.shape == (2, cfg.embed_dim)
        checks["finite"] = bool(torch.isfinite(img).all() and torch.isfinite(txt).all())
        checks["hooks_off_bit_identical"] = torch.equal(model.visual(images, hooks=off).embeds, img)
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "config": cfg.to_dict(),
        "forward_seconds": round(seconds, 4),
        "torch": torch.__version__,
    }


def _selfcheck(args) -> int:
    if args.weights:
        model = load_clip(args.weights, trust_checkpoint=args.trust_checkpoint)
    else:
        model = CLIP(get_config(args.arch))
    report = run_selfcheck(model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        v, t = model.config.vision, model.config.text
        print(f"vclip backbone self-check — torch {report['torch']}")
        print(f"  weights   : {args.weights or f'random ({args.arch})'}")
        print(f"  vision    : {v.image_size}px patch {v.patch_size}, width {v.width}, {v.layers} layers, {v.heads} heads")
        print(f"  text      : width {t.width}, {t.layers} layers, {t.heads} heads, context {t.context_length}")
        print(f"  parameters: {report['parameters_M']} M; forward of 2 images + 2 texts {report['forward_seconds']} s")
        for name, ok in report["checks"].items():
            print(f"  [{'ok' if ok else 'FAIL'}] {name}")
        print("self-check passed" if report["ok"] else "self-check FAILED")
    return 0 if report["ok"] else 1


def _convert(args) -> int:
    model = load_clip(args.source, trust_checkpoint=args.trust_checkpoint)
    out = save_clip(model, args.dest, format=args.to)
    print(f"wrote {args.to} weights to {out}")
    return 0
