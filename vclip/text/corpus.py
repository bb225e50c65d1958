"""ALT's global entity corpus: one deduplicated list of ``{unit, description, category, classes}``.

ALT (§3.1, App. A–B) builds text entities from the action labels: *units* (label words and
phrases, plus an LLM's answer to "What are identifying object/body parts/scenes/roles of an action
{label}? List them concisely."), a *description* per unit chosen among candidates, and default body
parts; the entities are encoded once by the frozen CLIP text tower and fixed. vclip's steps:

1. per class, units: the LLM's units (``alt-entities`` prompt, ≤ ``max_units``) + the label's
   content words (``label_units``: the class name split at spaces, stop words removed);
2. the **global corpus**: units deduplicated by normalised text (lower case, whitespace and
   punctuation folded) across all classes, each remembering every class that produced it;
   ``BODY_PARTS`` always added;
3. per unit, the three candidate descriptions (the paper's three phrase prompts) and a
   **selection** conditioned on the labels: the LLM is shown the candidates and the labels of
   the classes the unit came from and answers with a number (vclip's stated substitute for the
   paper's Lesk / T5 word-sense disambiguation, whose WordNet data cannot be fetched here);
   ``select="first"`` asks only the first prompt that vclip's ``--alt-description`` names;
4. per unit, a **category** (object / body part / scene / motion) by one more request, for the
   corpus ablation (Table C3); body parts are "body" without asking.

Every request goes through :class:`~vclip.text.llm.ChatClient` (on-disk cache): an interrupted
build resumes without repeating a request. File format::

    {"format": "vclip-corpus/1", "size": K, "generator": {...}, "class_names": [...],
     "entities": [{"unit": "rope", "description": "...", "category": "object",
                   "classes": ["abseiling"]}, ...]}
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from vclip.errors import AnnotationError
from vclip.io import atomic_write_text

FORMAT = "vclip-corpus/1"
CATEGORIES = ("object", "body", "scene", "motion")
#: always in the corpus (ALT App. A: "body parts (head, hands, feet ...) are always added")
BODY_PARTS = ("head", "face", "hands", "arms", "fingers", "legs", "feet", "torso")
#: English stop words removed from the labels (a short fixed list: NLTK's corpus data is not
#: available offline; the words it keeps differ only in rarer function words)
STOP_WORDS = frozenset("""a an the and or of on in at to for from with without by into onto off over under up down
out about as is are be being been it its his her their your my our this that these those some any
other while doing""".split())
CATEGORY_PROMPT = ("Is {unit} (in an action such as {labels}) an object, a body part, a scene or a motion? "
                   "Answer with one word: object, body, scene or motion.")
SELECT_PROMPT = ("Which explanation of {unit} fits the action(s) {labels} best?\n{candidates}\n"
                 "Answer with the number only.")

__all__ = ["BODY_PARTS", "CATEGORIES", "FORMAT", "build_corpus", "entity_sentences", "label_units",
           "normalise_unit", "read_corpus", "write_corpus"]


def normalise_unit(unit: str) -> str:
    """The deduplication key: lower case, punctuation dropped, whitespace folded."""
    s = re.sub(r"[^\w\s-]", " ", unit.lower()).replace("_", " ")
    return re.sub(r"\s+", " ", s).strip()


def label_units(class_name: str) -> list[str]:
    """Content words of a label (stop words and parenthesised remarks dropped), in order."""
    words = normalise_unit(re.sub(r"\(.*?\)", " ", class_name)).replace("-", " ").split()
    return [w for w in words if w not in STOP_WORDS and not w.isdigit()]


def entity_sentences(entities: Sequence[dict], template: str = "{unit}: {description}") -> list[str]:
    """The sentence the text tower encodes per entity (``{unit}`` alone when it has no description)."""
    out = []
    for e in entities:
        d = (e.get("description") or "").strip()
        out.append(template.format(unit=e["unit"], description=d) if d else e["unit"])
    return out


def _parse_category(reply: str) -> str:
    low = reply.lower()
    hits = [(low.find(k), c) for c, keys in (("object", ("object", "role", "tool")), ("body", ("body",)),
                                             ("scene", ("scene", "place", "location")),
                                             ("motion", ("motion", "movement", "action")))
            for k in keys if k in low]
    return min(hits)[1] if hits else "object"


def build_corpus(class_names: Sequence[str], client, *, max_units: int = 8, select: str = "llm",
                 description: int = 2, max_reasks: int = 2, system: str | None = None,
                 categories: bool = True, progress: bool = False) -> dict:
    """The corpus document (see the module docstring) for ``class_names``; ``client`` a ChatClient."""
    from vclip.text.describe import ALT_DESCRIPTIONS, ALT_UNITS, DescribeError, ask_list, ask_single

    if select not in ("llm", "first"):
        raise DescribeError(f"--select: expected llm or first, got {select!r}")
    sys_msgs = [{"role": "system", "content": system}] if system else []
    units: dict[str, dict] = {}          # normalised unit → {"unit", "classes"}

    def add(unit: str, cls: str | None) -> None:
        key = normalise_unit(unit)
        if not key:
            return
        e = units.setdefault(key, {"unit": unit.strip(), "classes": []})
        if cls is not None and cls not in e["classes"]:
            e["classes"].append(cls)

    it = class_names
    if progress:
        from tqdm import tqdm

        it = tqdm(class_names, desc="alt corpus: units", unit="class")
    for cls in it:
        asked = ask_list(client, sys_msgs + [{"role": "user", "content": ALT_UNITS.format(cls=cls)}], None, cls,
                          max_reasks)
        seen: list[str] = []
        for u in asked:
            if normalise_unit(u) not in {normalise_unit(s) for s in seen}:
                seen.append(u)
        for u in seen[:max_units] + label_units(cls):
            add(u, cls)
    body_keys = set()
    for part in BODY_PARTS:
        add(part, None)
        body_keys.add(normalise_unit(part))
    entities = []
    for key, e in units.items():
        labels = ", ".join(e["classes"][:5]) or "human actions"
        prompts = ALT_DESCRIPTIONS if select == "llm" else (ALT_DESCRIPTIONS[description],)
        candidates = [ask_single(client, sys_msgs + [{"role": "user", "content": p.format(unit=e["unit"])}],
                                  f"unit {e['unit']!r}", max_reasks) for p in prompts]
        chosen = 0
        if len(candidates) > 1:
            listing = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(candidates))
            reply = client.chat(sys_msgs + [{"role": "user", "content": SELECT_PROMPT.format(
                unit=e["unit"], labels=labels, candidates=listing)}])
            m = re.search(r"\d+", reply)
            chosen = int(m.group()) - 1 if m and 1 <= int(m.group()) <= len(candidates) else len(candidates) - 1
        category = "body" if key in body_keys else None
        if category is None and categories:
            category = _parse_category(client.chat(sys_msgs + [{"role": "user", "content": CATEGORY_PROMPT.format(
                unit=e["unit"], labels=labels)}]))
        entities.append({"unit": e["unit"], "description": candidates[chosen], "category": category or "object",
                         "classes": e["classes"]})
    generator = {"model": client.model, "params": client.params, "max_units": max_units, "select": select,
                 "prompts": {"units": ALT_UNITS, "descriptions": list(ALT_DESCRIPTIONS), "select": SELECT_PROMPT,
                             "category": CATEGORY_PROMPT},
                 "body_parts": list(BODY_PARTS), "system": system}
    return {"format": FORMAT, "size": len(entities), "generator": generator, "class_names": list(class_names),
            "entities": entities}


def write_corpus(path: str | os.PathLike, doc: dict) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def read_corpus(path: str | os.PathLike) -> list[dict]:
    """The entities of a corpus file, checked: AnnotationError naming the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: corpus file not found (write one with `vclip describe --kind alt-corpus`)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AnnotationError(f"{path}: not a corpus file (expected \"format\": \"{FORMAT}\")")
    ents = data.get("entities")
    if not isinstance(ents, list) or not ents:
        raise AnnotationError(f"{path}: \"entities\" is missing or empty")
    for i, e in enumerate(ents):
        if not isinstance(e, dict) or not isinstance(e.get("unit"), str) or not e["unit"].strip():
            raise AnnotationError(f"{path}: entities[{i}] has no non-empty string \"unit\"")
        if not isinstance(e.get("description", ""), str):
            raise AnnotationError(f"{path}: entities[{i}] ({e['unit']!r}): \"description\" is not a string")
        if e.get("category") is not None and e["category"] not in CATEGORIES:
            raise AnnotationError(f"{path}: entities[{i}] ({e['unit']!r}): category {e['category']!r} is not one of "
                                  f"{', '.join(CATEGORIES)}")
    return ents
