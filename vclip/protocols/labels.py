"""Class-name normalisation and K400 ↔ K600 class matching.

Normalisation options (applied to a label list before it becomes the text of the classes; the
options used are recorded in every protocol result):

* ``camelcase`` — UCF-101's ``ApplyEyeMakeup`` → ``Apply Eye Makeup`` (only names without spaces;
  acronyms stay together: ``YoYo`` → ``Yo Yo``, ``PlayingDaf`` → ``Playing Daf``);
* ``underscores`` — ``brush_hair`` → ``brush hair`` (also ``-`` between words is left alone);
* ``placeholders`` — SSv2's ``Putting [something] on [something]`` → ``Putting something on something``;
* ``lower`` — lower case.

The papers feed raw names (X-CLIP, ViFi-CLIP, OST); TC-CLIP splits UCF's CamelCase.

K600's classes outside K400 (:func:`match_kinetics`): Kinetics-600 kept 368 of K400's classes
unchanged and renamed, split or removed the other 32 ("dying hair" → "dyeing hair", "hugging" →
"hugging (not baby)" + "hugging baby", "drinking" removed). Matching by name goes in tiers:
``exact``; ``normalised`` (case, punctuation, ``&``/``and``, articles, British/American and known
spelling variants, plurals); ``qualifier`` (the K600 name is the K400 name plus a parenthesised
qualifier: "changing wheel" → "changing wheel (not on bike)"); ``words`` (the same content words in
another order, ignoring "person"); ``alias`` (a short table of synonym renames). Every K400 class
matches at most one K600 class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

NORMALISATIONS = ("camelcase", "underscores", "placeholders", "lower")


def split_camel_case(name: str) -> str:
    """``ApplyEyeMakeup`` → ``Apply Eye Makeup``; names that already contain spaces are unchanged."""
    if " " in name.strip():
        return name
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", s)
    return s


def normalise_name(name: str, options: Sequence[str] = ()) -> str:
    """Apply the normalisation ``options`` (see the module docstring) in a fixed order."""
    unknown = [o for o in options if o not in NORMALISATIONS]
    if unknown:
        raise ValueError(f"unknown label normalisation {unknown} (known: {', '.join(NORMALISATIONS)})")
    s = name
    if "placeholders" in options:
        s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"\1", s)
    if "underscores" in options:
        s = s.replace("_", " ")
    if "camelcase" in options:
        s = split_camel_case(s)
    if "lower" in options:
        s = s.lower()
    return " ".join(s.split())


def normalise_names(names: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    out = [normalise_name(n, options) for n in names]
    if len(set(out)) != len(out):
        seen: dict[str, str] = {}
        for a, b in zip(names, out):
            if b in seen:
                raise ValueError(f"label normalisation {list(options)} makes {seen[b]!r} and {a!r} the same name {b!r}")
            seen[b] = a
    return out


# ------------------------------------------------------------------------------ K400 ↔ K600
#: spelling variants mapped to one form (British → American, and K400's misspellings)
SPELLINGS = {
    "dying": "dyeing",          # K400 "dying hair" (sic) = K600 "dyeing hair"
    "colouring": "coloring", "colour": "color", "aeroplane": "airplane", "aeroplanes": "airplanes",
    "tyre": "tire", "tyres": "tires", "moustache": "mustache", "favourite": "favorite",
    "practise": "practice", "practising": "practicing", "barbeque": "barbecue", "bbq": "barbecue",
    "grey": "gray", "theatre": "theater", "jewellery": "jewelry", "pyjamas": "pajamas",
    "crosscountry": "cross country",
}
#: synonym renames that no spelling rule finds (checked on the real K400/K600 lists)
ALIASES = {
    "tying tie": "tying necktie",
}
_ARTICLES = {"a", "an", "the"}
_IGNORED_WORDS = _ARTICLES | {"person", "people", "someone"}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(name: str) -> list[str]:
    s = name.lower().replace("&", " and ")
    s = re.sub(r"[^a-z0-9() ]+", " ", s)
    words = []
    for w in s.split():
        w = SPELLINGS.get(w, w)
        words.extend(w.split())
    return words


def match_key(name: str, qualifier: bool = True) -> str:
    """Normalised name: lower case, punctuation dropped, ``&`` = ``and``, no articles, spelling
    variants unified, words singular; ``qualifier=False`` also drops a parenthesised qualifier."""
    s = " ".join(_words(name))
    if not qualifier:
        s = re.sub(r"\([^)]*\)", " ", s)
    s = s.replace("(", " ( ").replace(")", " ) ")
    return " ".join(_singular(w) for w in s.split() if w not in _ARTICLES)


def _bag(name: str) -> tuple[str, ...]:
    s = re.sub(r"\([^)]*\)", " ", " ".join(_words(name)))
    return tuple(sorted(_singular(w) for w in s.split() if w not in _IGNORED_WORDS))


@dataclass
class KineticsMatch:
    """Result of :func:`match_kinetics`."""

    #: (K400 name, K600 name, tier) for every matched pair
    matched: list[tuple[str, str, str]] = field(default_factory=list)
    #: K600 classes outside K400, in K600 order
    new: list[str] = field(default_factory=list)
    #: K400 classes with no K600 counterpart (removed or split in K600)
    unmatched_k400: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        tiers: dict[str, int] = {}
        for _, _, t in self.matched:
            tiers[t] = tiers.get(t, 0) + 1
        return {"matched": len(self.matched), "new": len(self.new), "unmatched_k400": len(self.unmatched_k400),
                "by_tier": tiers}

    def to_dict(self) -> dict:
        return {"counts": self.counts(),
                "renamed": [{"k400": a, "k600": b, "tier": t} for a, b, t in self.matched if t != "exact"],
                "unmatched_k400": self.unmatched_k400, "new": self.new}


def match_kinetics(k400: Sequence[str], k600: Sequence[str], tiers: Sequence[str] = (
        "exact", "normalised", "qualifier", "words", "alias")) -> KineticsMatch:
    """Match K400 class names to K600 ones (one-to-one, tier by tier) and list K600's new classes."""
    free400 = list(k400)
    free600 = list(k600)
    result = KineticsMatch()

    def run(tier: str, key400, key600) -> None:
        index: dict[str, list[str]] = {}
        for n in free600:
            k = key600(n)
            if k is not None:
                index.setdefault(k, []).append(n)
        for a in list(free400):
            k = key400(a)
            cands = [c for c in index.get(k, []) if c in free600] if k is not None else []
            if len(cands) == 1:  # ambiguous keys are left alone
                result.matched.append((a, cands[0], tier))
                free400.remove(a)
                free600.remove(cands[0])

    for tier in tiers:
        if tier == "exact":
            run(tier, lambda n: n, lambda n: n)
        elif tier == "normalised":
            run(tier, match_key, match_key)
        elif tier == "qualifier":
            # the K600 name narrows the K400 one with a "(...)" qualifier the K400 name lacks
            run(tier, lambda n: None if "(" in n else match_key(n),
                lambda n: match_key(n, qualifier=False) if "(" in n else None)
        elif tier == "words":
            run(tier, _bag, _bag)
        elif tier == "alias":
            aliases = {match_key(a): match_key(b) for a, b in ALIASES.items()}
            run(tier, lambda n: aliases.get(match_key(n)), match_key)
        else:
            raise ValueError(f"unknown matching tier {tier!r}")
    order = {n: i for i, n in enumerate(k400)}
    result.matched.sort(key=lambda m: order[m[0]])
    result.new = [n for n in k600 if n in free600]
    result.unmatched_k400 = [n for n in k400 if n in free400]
    return result
