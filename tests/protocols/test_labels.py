"""Class-name normalisation and K400 ↔ K600 matching (synthetic cases and the real label lists)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from vclip.protocols.labels import match_kinetics, normalise_name, normalise_names, split_camel_case

LABELS = Path(os.path.dirname(__file__)).parents[1].parent / "shared" / "data" / "labels"


def _names(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row[1] for row in list(csv.reader(f))[1:]]


def test_normalisation_options():
    assert split_camel_case("ApplyEyeMakeup") == "Apply Eye Makeup"
    assert split_camel_case("YoYo") == "Yo Yo"
    assert split_camel_case("brush hair") == "brush hair"
    assert normalise_name("Putting [something] on [something]", ["placeholders"]) == "Putting something on something"
    assert normalise_name("brush_hair", ["underscores"]) == "brush hair"
    assert normalise_name("BlowDryHair", ["camelcase", "lower"]) == "blow dry hair"
    assert normalise_name("ApplyEyeMakeup") == "ApplyEyeMakeup"
    with pytest.raises(ValueError, match="unknown label normalisation"):
        normalise_name("x", ["snake"])
    with pytest.raises(ValueError, match="the same name"):
        normalise_names(["a_b", "a b"], ["underscores"])


def test_matching_tiers_on_made_up_names():
    k400 = ["dying hair", "hugging", "making bed", "garbage collecting", "Rock & Roll", "tying tie", "drinking",
            "colouring in", "passing American football (in game)"]
    k600 = ["dyeing hair", "hugging (not baby)", "hugging baby", "making the bed", "person collecting garbage",
            "rock and roll", "tying necktie", "coloring in", "passing American football (in game)", "sipping cup"]
    m = match_kinetics(k400, k600)
    tiers = {a: t for a, _, t in m.matched}
    assert tiers == {"dying hair": "normalised", "hugging": "qualifier", "making bed": "normalised",
                     "garbage collecting": "words", "Rock & Roll": "normalised", "tying tie": "alias",
                     "colouring in": "normalised", "passing American football (in game)": "exact"}
    assert m.new == ["hugging baby", "sipping cup"]
    assert m.unmatched_k400 == ["drinking"]


@pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels/ is absent (vclip does not ship it)")
def test_k600_classes_outside_k400_from_the_real_lists():
    """K600 classes outside K400 by name: 222, against the protocol's 220.

    Kinetics-600 keeps 368 K400 classes under the same name (exact matches: 600 − 368 = 232 new).
    Name rules find 10 more renames: 3 spelling/case/article variants ("dying hair" → "dyeing hair",
    "making bed" → "making the bed", "passing American football (not in game)" with a lower-case
    "american"), 5 narrowed by a qualifier ("hugging" → "hugging (not baby)", "changing wheel",
    "cooking sausages", "opening bottle", "throwing ball"), 1 reordered ("garbage collecting" →
    "person collecting garbage") and 1 synonym ("tying tie" → "tying necktie"): 378 matched,
    600 − 378 = 222 new. The 22 K400 classes left (e.g. "drinking", "balloon blowing", "skiing (not
    slalom or crosscountry)") were removed or split in K600. The 220 of ER-ZSAR/ViFi-CLIP were chosen
    "by checking the action names and video ids" (DeLightCMU/ElaborativeRehearsal#6): two more K600
    classes share videos with K400 classes, which names alone cannot show. Users counting by name
    report 221 (microsoft/VideoX#128, muzairkhattak/ViFi-CLIP#24). The official ZS_split*_K600 files
    fix the classes; generated draws take 160 of these 222.
    """
    k400 = _names(LABELS / "kinetics_400_labels.csv")
    k600 = _names(LABELS / "kinetics_600_labels.csv")
    assert len(k400) == 400 and len(k600) == 600
    m = match_kinetics(k400, k600)
    c = m.counts()
    assert c["by_tier"] == {"exact": 368, "normalised": 3, "qualifier": 5, "words": 1, "alias": 1}
    assert c["new"] == 222
    assert c["new"] - 220 == 2  # the documented difference (see the docstring)
    exact_only = match_kinetics(k400, k600, tiers=["exact"])
    assert len(exact_only.new) == 232
    assert len(m.unmatched_k400) == 22 and "drinking" in m.unmatched_k400
    assert "hugging baby" in m.new and "hugging (not baby)" not in m.new
    assert all(n not in m.new for n in ("dyeing hair", "making the bed", "tying necktie", "person collecting garbage"))


@pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels/ is absent")
def test_real_ucf_camelcase_is_one_to_one():
    ucf = _names(LABELS / "ucf_101_labels.csv")
    out = normalise_names(ucf, ["camelcase"])
    assert len(set(out)) == 101 and out[0] == "Apply Eye Makeup" and "Yo Yo" in out
    hmdb = _names(LABELS / "hmdb_51_labels.csv")
    assert normalise_names(hmdb, ["camelcase"]) == hmdb  # HMDB names have spaces or are one word
