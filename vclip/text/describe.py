"""Per-class text from an LLM: OST descriptors, MoTED motion descriptions, ALT text entities.

Kinds (prompts as published; see docs/methods/ost.md):

``ost-spatio``            OST §3.2: "Please give me a long list of descriptors for action: {cls}, {N}
                          descriptors in total."  → N short phrases per class
``ost-temporal``          OST §3.2: "Please give me a long list of decompositions of steps for action:
                          {cls}, {N} steps in total"  → N step sentences per class
``moted-conceptual``      MoTED §3.1, two-shot: "Q: What is the motion concept in a video of {cls}? A:"
                          → 1 description per class
``moted-discriminative``  MoTED §3.1, two-shot, against each class's top-k most similar classes by
                          CLIP text similarity: "Q: What are the useful features for distinguishing the
                          original class {cls} from the similar class {other}? A:" → k per class
``alt-entities``          ALT appendix A: units from "What are identifying object/body parts/scenes/roles
                          of an action {label}? List them concisely.", then per unit "Concisely explain
                          {unit} in one sentence" → {unit, description} items

Every request goes through :class:`~vclip.text.llm.ChatClient` (cache + retries), so an interrupted
run resumes without repeating a request. A reply is parsed into items (numbered lists, bullets,
quotes, markdown, introductory prose); a wrong number of items triggers a corrective follow-up
message (``max_reasks`` times), then a :class:`DescribeError` naming the class.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

from vclip.errors import VclipError
from vclip.text.descriptors import DescriptorSet
from vclip.text.llm import ChatClient

log = logging.getLogger(__name__)

__all__ = ["KINDS", "DescribeError", "parse_items", "parse_single", "describe", "similar_classes"]


class DescribeError(VclipError):
    """The LLM's answers for a class could not be turned into the expected items."""


OST_SPATIO = "Please give me a long list of descriptors for action: {cls}, {n} descriptors in total."
OST_TEMPORAL = "Please give me a long list of decompositions of steps for action: {cls}, {n} steps in total"
MOTED_CONCEPT = "Q: What is the motion concept in a video of {cls}? A:"
MOTED_DISCRIM = ("Q: What are the useful features for distinguishing the original class {cls} from the "
                 "similar class {other}? A:")
ALT_UNITS = "What are identifying object/body parts/scenes/roles of an action {cls}? List them concisely."
ALT_DESCRIPTIONS = ("Concisely describe what an action {unit} looks like",
                    "Concisely list potential explanations for {unit}",
                    "Concisely explain {unit} in one sentence")

#: MoTED's two-shot exemplars. The first of each pair is the paper's Fig. 1 example; the second is
#: vclip's (the paper's exemplars are in its appendix, which is not available: UNVERIFIED).
MOTED_CONCEPT_SHOTS = (
    ("slapping", "a quick hand movement striking against something."),
    ("clapping", "both palms repeatedly moving toward each other and striking together in front of the body."),
)
MOTED_DISCRIM_SHOTS = (
    ("slapping", "clapping", "Direction of motion; Hand position; Contact surface; Number of hands involved; "
                             "Force applied"),
    ("jogging", "running", "Speed of the legs; Stride length; Arm swing amplitude; Forward lean of the body; "
                           "Time with both feet off the ground"),
)

KINDS = ("ost-spatio", "ost-temporal", "moted-conceptual", "moted-discriminative", "alt-entities")

# ------------------------------------------------------------------------------------- parsing
_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}\s*[.):\]]|\d{1,3}\s+-|[-*•·–—+▪◦]|#{1,6})\s*")
_LABEL = re.compile(r"^(?:descriptor|step|item|feature)\s*\d*\s*[:.)-]\s*", re.I)
_QUOTES = "\"'`“”‘’«»"


def _clean(item: str) -> str:
    s = item.strip()
    s = re.sub(r"\*\*|__", "", s)                  # markdown bold
    s = _LABEL.sub("", s)
    s = s.strip().strip(_QUOTES).strip()
    s = s.rstrip(".,;").strip().strip(_QUOTES).strip()
    return re.sub(r"\s+", " ", s)


def _is_intro(line: str) -> bool:
    low = line.lower()
    return line.rstrip().endswith(":") or low.startswith(("here are", "here is", "sure", "certainly", "of course",
                                                          "below are", "i hope", "let me know", "note:"))


def parse_items(text: str) -> list[str]:
    """Items of a list-like reply: numbered or bulleted lines if there are any (prose around them is
    dropped), else one item per line, else a single line split at ';' or ','."""
    lines = [ln for ln in (x.strip() for x in text.replace("\r", "\n").split("\n")) if ln]
    marked = [ln for ln in lines if _MARKER.match(ln) and _MARKER.sub("", ln).strip()]
    if marked:
        items = [_MARKER.sub("", ln) for ln in marked]
    else:
        body = [ln for ln in lines if not _is_intro(ln)]
        if len(body) == 1:
            one = body[0]
            sep = ";" if ";" in one else ","
            items = one.split(sep) if sep in one else [one]
        else:
            items = body
    return [c for c in (_clean(i) for i in items) if c]


def parse_single(text: str) -> str:
    """One description: the reply without an ``A:`` prefix, list markers folded into '; '."""
    t = re.sub(r"^\s*A\s*:\s*", "", text.strip())
    lines = [ln for ln in (x.strip() for x in t.split("\n")) if ln]
    if len(lines) > 1 and any(_MARKER.match(ln) for ln in lines):
        items = [_clean(_MARKER.sub("", ln)) for ln in lines if _MARKER.match(ln)]
        return "; ".join(i for i in items if i)
    out = " ".join(lines).strip().strip(_QUOTES).strip()
    return re.sub(r"\s+", " ", out)


def _corrective(n: int, got: int) -> str:
    return (f"Your answer has {got} items, but I need exactly {n}. Please answer again with exactly {n} items, "
            f"one per line, numbered 1 to {n}, with no other text.")


def _ask_list(client: ChatClient, messages: list[dict], n: int | None, cls: str, max_reasks: int,
              minimum: int = 1) -> list[str]:
    msgs = list(messages)
    reply = client.chat(msgs)
    items = parse_items(reply)
    for _ in range(max_reasks):
        if (n is None and len(items) >= minimum) or (n is not None and len(items) == n):
            break
        msgs = msgs + [{"role": "assistant", "content": reply},
                       {"role": "user", "content": _corrective(n, len(items)) if n is not None else
                        f"Please list at least {minimum} items, one per line, numbered, with no other text."}]
        reply = client.chat(msgs)
        items = parse_items(reply)
    if (n is not None and len(items) != n) or len(items) < minimum:
        want = f"exactly {n}" if n is not None else f"at least {minimum}"
        raise DescribeError(f"class {cls!r}: the model returned {len(items)} items, {want} needed, after "
                            f"{max_reasks} corrective follow-up(s); last reply: {reply[:300]!r}")
    return items


def _ask_single(client: ChatClient, messages: list[dict], cls: str, max_reasks: int) -> str:
    msgs = list(messages)
    reply = client.chat(msgs)
    out = parse_single(reply)
    for _ in range(max_reasks):
        if out:
            break
        msgs = msgs + [{"role": "assistant", "content": reply},
                       {"role": "user", "content": "Please answer in one short sentence, with no other text."}]
        reply = client.chat(msgs)
        out = parse_single(reply)
    if not out:
        raise DescribeError(f"class {cls!r}: empty answer after {max_reasks} corrective follow-up(s)")
    return out


def _two_shot(shots: Sequence[tuple], fmt: Callable[..., str], query: str) -> list[dict]:
    msgs = []
    for *args, answer in shots:
        msgs.append({"role": "user", "content": fmt(*args)})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": query})
    return msgs


# ----------------------------------------------------------------------------- similar classes
def similar_classes(class_names: Sequence[str], k: int, clip=None, template: str = "{}") -> list[list[str]]:
    """Per class, the ``k`` other classes with the most similar CLIP text embedding (cosine)."""
    import torch
    import torch.nn.functional as F

    from vclip.backbone.tokenizer import get_tokenizer

    if k < 1 or k >= len(class_names):
        raise DescribeError(f"--top-k {k}: must be between 1 and the number of classes − 1 ({len(class_names) - 1})")
    tok = get_tokenizer()
    with torch.no_grad():
        emb = []
        texts = [template.format(c) for c in class_names]
        for i in range(0, len(texts), 256):
            tokens = tok(texts[i:i + 256], context_length=clip.config.text.context_length)
            emb.append(clip.text(tokens).embeds)
        e = F.normalize(torch.cat(emb).float(), dim=-1)
        sim = e @ e.t()
        sim.fill_diagonal_(float("-inf"))
        idx = sim.topk(k, dim=1).indices.tolist()
    return [[class_names[j] for j in row] for row in idx]


# ------------------------------------------------------------------------------------ generate
def prompts_of(kind: str, n: int | None = None) -> dict:
    """The prompt templates of a kind (recorded in the output file)."""
    if kind == "ost-spatio":
        return {"user": OST_SPATIO}
    if kind == "ost-temporal":
        return {"user": OST_TEMPORAL}
    if kind == "moted-conceptual":
        return {"user": MOTED_CONCEPT, "shots": [list(s) for s in MOTED_CONCEPT_SHOTS]}
    if kind == "moted-discriminative":
        return {"user": MOTED_DISCRIM, "shots": [list(s) for s in MOTED_DISCRIM_SHOTS]}
    if kind == "alt-entities":
        return {"units": ALT_UNITS, "descriptions": list(ALT_DESCRIPTIONS)}
    raise DescribeError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")


def describe_class(kind: str, cls: str, client: ChatClient, *, n: int = 4, similar: Sequence[str] = (),
                   max_reasks: int = 2, max_units: int = 8, alt_description: int = 2,
                   system: str | None = None) -> list:
    sys_msgs = [{"role": "system", "content": system}] if system else []
    if kind == "ost-spatio":
        return _ask_list(client, sys_msgs + [{"role": "user", "content": OST_SPATIO.format(cls=cls, n=n)}], n, cls,
                         max_reasks)
    if kind == "ost-temporal":
        return _ask_list(client, sys_msgs + [{"role": "user", "content": OST_TEMPORAL.format(cls=cls, n=n)}], n, cls,
                         max_reasks)
    if kind == "moted-conceptual":
        msgs = _two_shot(MOTED_CONCEPT_SHOTS, lambda c: MOTED_CONCEPT.format(cls=c), MOTED_CONCEPT.format(cls=cls))
        return [_ask_single(client, sys_msgs + msgs, cls, max_reasks)]
    if kind == "moted-discriminative":
        out = []
        for other in similar:
            msgs = _two_shot(MOTED_DISCRIM_SHOTS, lambda c, o: MOTED_DISCRIM.format(cls=c, other=o),
                             MOTED_DISCRIM.format(cls=cls, other=other))
            out.append(_ask_single(client, sys_msgs + msgs, f"{cls} (vs {other})", max_reasks))
        return out
    if kind == "alt-entities":
        units = _ask_list(client, sys_msgs + [{"role": "user", "content": ALT_UNITS.format(cls=cls)}], None, cls,
                          max_reasks)
        seen, uniq = set(), []
        for u in units:
            if u.lower() not in seen:
                seen.add(u.lower())
                uniq.append(u)
        tmpl = ALT_DESCRIPTIONS[alt_description]
        return [{"unit": u, "description": _ask_single(client, sys_msgs + [
            {"role": "user", "content": tmpl.format(unit=u)}], f"{cls} (unit {u!r})", max_reasks)}
            for u in uniq[:max_units]]
    raise DescribeError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")


def describe(kind: str, class_names: Sequence[str], client: ChatClient, *, n: int = 4, top_k: int = 5,
             clip=None, clip_source: str | None = None, max_reasks: int = 2, max_units: int = 8,
             alt_description: int = 2, system: str | None = None, progress: bool = True) -> DescriptorSet:
    """Generate ``kind`` text for every class (in order) and return it as a :class:`DescriptorSet`
    recording the prompts, model and parameters."""
    if kind not in KINDS:
        raise DescribeError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if n < 1:
        raise DescribeError(f"-n {n}: must be >= 1")
    similar: list[list[str]] = [[] for _ in class_names]
    extra: dict = {}
    if kind == "moted-discriminative":
        similar = similar_classes(class_names, top_k, clip)
        extra = {c: {"similar": s} for c, s in zip(class_names, similar)}
    items = []
    it = list(zip(class_names, similar))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"describe {kind}", unit="class")
    for cls, sim in it:
        items.append(describe_class(kind, cls, client, n=n, similar=sim, max_reasks=max_reasks,
                                    max_units=max_units, alt_description=alt_description, system=system))
    generator = {"model": client.model, "base_url": _public_url(client.base_url), "params": client.params,
                 "prompts": prompts_of(kind), "system": system}
    if kind in ("ost-spatio", "ost-temporal"):
        generator["n"] = n
    if kind == "moted-discriminative":
        generator.update(top_k=top_k, similarity_clip=clip_source or "randomly initialised CLIP")
    if kind == "alt-entities":
        generator.update(max_units=max_units, description_prompt=ALT_DESCRIPTIONS[alt_description])
    return DescriptorSet(kind=kind, class_names=list(class_names), items=items, generator=generator, extra=extra)


def _public_url(url: str) -> str:
    """The base URL without credentials or query string (never recorded)."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


#: for other builders of LLM text (``vclip.text.corpus``): a list answer with corrective follow-ups,
#: a one-sentence answer, a base URL safe to record
ask_list = _ask_list
ask_single = _ask_single
public_url = _public_url
__all__ += ["ask_list", "ask_single", "public_url"]
