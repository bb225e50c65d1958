"""``vclip describe``: per-class text from an OpenAI-compatible chat endpoint.

    OPENAI_API_KEY=... vclip describe --kind ost-spatio --labels labels.csv -n 4 \\
        --base-url https://api.openai.com/v1 --model gpt-3.5-turbo --out spatio_4.json

The key is read from the environment variable named by ``--api-key-env`` (default
``OPENAI_API_KEY``); there is deliberately no flag taking the key itself (shell history, process
lists). Answers are cached under ``--cache-dir`` (default ``$VCLIP_CACHE/llm``): rerunning, or
resuming an interrupted run, sends no request twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


#: ``--base-url`` when neither the flag nor ``OPENAI_BASE_URL`` gives one
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def register(subparsers) -> None:
    from vclip.text.describe import KINDS

    p = subparsers.add_parser("describe", help="generate per-class descriptors with an LLM (OST / MoTED / ALT)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", required=True, choices=[*KINDS, "alt-corpus"],
                   help="what to write; alt-corpus: ALT's global, deduplicated entity corpus with categories "
                        "(vclip/text/corpus.py)")
    p.add_argument("--labels", required=True, help="label CSV (id,name) or a text file with one class per line")
    p.add_argument("--out", required=True, help="output JSON (written atomically)")
    p.add_argument("--format", choices=["vclip", "official"], default="vclip",
                   help="vclip: keyed by class name with prompts/model recorded; official: OST's {\"0\": [...]}")
    p.add_argument("-n", "--num", type=int, default=4, help="items per class (ost-spatio / ost-temporal)")
    p.add_argument("--top-k", type=int, default=5, help="similar classes per class (moted-discriminative)")
    p.add_argument("--clip", help="CLIP weights for the class similarity (moted-discriminative); default: a "
                                  "randomly initialised CLIP (--arch), which makes the 'similar' classes arbitrary")
    p.add_argument("--arch", default="ViT-B-16", help="architecture of the random CLIP when --clip is not given")
    p.add_argument("--max-units", type=int, default=8, help="units per class (alt-entities)")
    p.add_argument("--alt-description", type=int, choices=[0, 1, 2], default=2,
                   help="which of ALT's three description prompts (alt-entities; 2 = 'Concisely explain ... "
                        "in one sentence')")
    p.add_argument("--select", choices=["llm", "first"], default="llm",
                   help="alt-corpus: ask all three description prompts per unit and let the LLM pick the one that "
                        "fits the labels (llm, default), or ask only --alt-description (first)")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), metavar="URL",
                   help="the OpenAI-compatible endpoint, http(s)://HOST[:PORT]/PATH; requests go to "
                        f"URL/chat/completions (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})")
    p.add_argument("--model", default=os.environ.get("OPENAI_MODEL"),
                   help="model name (default: $OPENAI_MODEL; one of the two is required)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                   help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (OST: 0.7)")
    p.add_argument("--max-tokens", type=int, default=None, help="answer length limit sent to the endpoint")
    p.add_argument("--system", default=None, help="an optional system message (part of the cache key)")
    p.add_argument("--cache-dir", default=None, help="response cache (default $VCLIP_CACHE/llm)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=6,
                   help="retries of a request that failed transiently (HTTP 429/5xx, timeout, connection error)")
    p.add_argument("--backoff", type=float, default=1.0, help="base delay of the exponential backoff (s)")
    p.add_argument("--max-reasks", type=int, default=2, help="corrective follow-ups on a wrong item count")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_describe)


def read_class_names(path: str) -> list[str]:
    from vclip.data.annotations import read_label_csv
    from vclip.errors import AnnotationError

    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: label file not found")
    first = next((ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()), "")
    if first.replace(" ", "").lower().startswith("id,name"):
        return read_label_csv(p)
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise AnnotationError(f"{p}: no classes")
    return names


def check_args(args) -> None:
    """``vclip describe``'s argument checks, before any file is read or request sent: one
    :class:`~vclip.errors.ConfigError` line naming the flag and what is wrong."""
    import math

    from vclip.errors import ConfigError
    from vclip.text.llm import LLMError, check_base_url

    try:
        check_base_url(args.base_url)
    except LLMError as e:
        raise ConfigError(f"--base-url: {e}") from None
    if not args.model:
        raise ConfigError("--model: no model name; pass --model NAME or set OPENAI_MODEL")
    if args.kind == "alt-corpus" and args.format != "vclip":
        raise ConfigError("--format official: OST's format holds per-class lists; --kind alt-corpus writes a "
                          "vclip-corpus file (drop --format)")
    at_least = [("-n/--num", args.num, 1), ("--top-k", args.top_k, 1), ("--max-units", args.max_units, 1),
                ("--max-reasks", args.max_reasks, 0), ("--retries", args.retries, 0)]
    if args.max_tokens is not None:
        at_least.append(("--max-tokens", args.max_tokens, 1))
    for flag, value, low in at_least:
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    for flag, value, positive in [("--timeout", args.timeout, True), ("--backoff", args.backoff, False),
                                  ("--temperature", args.temperature, False)]:
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ConfigError(f"{flag} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")


def _describe(args) -> int:
    from vclip.backbone.hub import cache_dir
    from vclip.errors import ConfigError
    from vclip.text.describe import describe, public_url
    from vclip.text.descriptors import write_descriptors, write_official
    from vclip.text.llm import ChatClient

    check_args(args)
    names = read_class_names(args.labels)
    if args.kind == "moted-discriminative" and not 1 <= args.top_k < len(names):
        raise ConfigError(f"--top-k {args.top_k}: must be between 1 and the number of classes - 1 "
                          f"({len(names) - 1}) of {args.labels}")
    params = {"temperature": args.temperature}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    key = os.environ.get(args.api_key_env) or None
    if key is None:
        log.warning("environment variable %s is not set: sending requests without an API key", args.api_key_env)
    client = ChatClient(args.base_url, args.model, key, params=params,
                        cache_dir=args.cache_dir or cache_dir() / "llm", timeout=args.timeout,
                        max_retries=args.retries, backoff_base=args.backoff)
    if args.kind == "alt-corpus":
        from vclip.text.corpus import build_corpus, write_corpus

        doc = build_corpus(names, client, max_units=args.max_units, select=args.select,
                           description=args.alt_description, max_reasks=args.max_reasks, system=args.system,
                           progress=not args.no_progress)
        doc["generator"]["base_url"] = public_url(args.base_url)
        out = write_corpus(args.out, doc)
        print(json.dumps({"out": str(out), "kind": args.kind, "classes": len(names), "entities": doc["size"],
                          "requests": client.requests, "cached": client.cache_hits}))
        return 0
    clip = None
    if args.kind == "moted-discriminative":
        clip = _similarity_clip(args)
    ds = describe(args.kind, names, client, n=args.num, top_k=args.top_k, clip=clip, clip_source=args.clip,
                  max_reasks=args.max_reasks, max_units=args.max_units, alt_description=args.alt_description,
                  system=args.system, progress=not args.no_progress)
    out = (write_official if args.format == "official" else write_descriptors)(args.out, ds)
    print(json.dumps({"out": str(out), "kind": args.kind, "classes": len(names), "requests": client.requests,
                      "cached": client.cache_hits}))
    return 0


def _similarity_clip(args):
    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import load_clip

    if args.clip:
        return load_clip(args.clip).eval()
    log.warning("--clip not given: the top-%d similar classes come from a randomly initialised CLIP %s and are "
                "arbitrary; pass --clip openai/ViT-B-16 (or a file) for the paper's setting", args.top_k, args.arch)
    import torch

    torch.manual_seed(0)
    return CLIP(get_config(args.arch)).eval()
