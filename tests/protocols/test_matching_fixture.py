"""K400 ↔ K600 class matching on a committed excerpt of the real label lists (tests/protocols/data/),
so the matching tiers are tested in a plain clone too; the full-list test in test_labels.py needs
../shared/data/labels/. The excerpt keeps every rename the full lists have (10) plus exact matches,
K600-only classes and K400 classes K600 dropped."""

from __future__ import annotations

from pathlib import Path

from vclip.data.annotations import read_label_csv
from vclip.protocols.labels import match_kinetics

DATA = Path(__file__).parent / "data"


def _lists():
    return read_label_csv(DATA / "k400_excerpt.csv"), read_label_csv(DATA / "k600_excerpt.csv")


def test_excerpt_counts_by_tier():
    k400, k600 = _lists()
    assert len(k400) == 19 and len(k600) == 23
    m = match_kinetics(k400, k600)
    assert m.counts() == {"matched": 16, "new": 7, "unmatched_k400": 3,
                          "by_tier": {"exact": 6, "normalised": 3, "qualifier": 5, "words": 1, "alias": 1}}
    # names alone (exact tier only) would call every rename "new": 7 + 10
    assert len(match_kinetics(k400, k600, tiers=["exact"]).new) == 17


def test_excerpt_pairs_and_leftovers():
    k400, k600 = _lists()
    m = match_kinetics(k400, k600)
    renamed = {a: (b, t) for a, b, t in m.matched if t != "exact"}
    assert renamed == {
        "dying hair": ("dyeing hair", "normalised"),
        "making bed": ("making the bed", "normalised"),
        "passing American football (not in game)": ("passing american football (not in game)", "normalised"),
        "hugging": ("hugging (not baby)", "qualifier"),
        "changing wheel": ("changing wheel (not on bike)", "qualifier"),
        "cooking sausages": ("cooking sausages (not on barbeque)", "qualifier"),
        "opening bottle": ("opening bottle (not wine)", "qualifier"),
        "throwing ball": ("throwing ball (not baseball or American football)", "qualifier"),
        "garbage collecting": ("person collecting garbage", "words"),
        "tying tie": ("tying necktie", "alias"),
    }
    # the qualified K600 sibling ("hugging baby", "opening wine bottle") stays new
    assert m.new == ["acting in play", "adjusting glasses", "alligator wrestling", "changing gear in car",
                     "hugging baby", "opening wine bottle", "sipping cup"]
    assert m.unmatched_k400 == ["balloon blowing", "drinking", "skiing (not slalom or crosscountry)"]
    assert [a for a, _, _ in m.matched] == [a for a in k400 if a not in m.unmatched_k400]  # K400 order


def test_ambiguous_names_are_left_unmatched():
    """A K400 name whose key fits two free K600 names in a tier is matched to neither (in no later tier
    either): both K600 names stay new and the K400 class unmatched, instead of a silent pick of the
    first. Here "cleaning pool" fits two qualified K600 names (qualifier tier, and again by words),
    "Riding Bike" two spellings (normalised tier). The rest of the excerpt matches as before."""
    k400, k600 = _lists()
    k400 = k400 + ["cleaning pool", "Riding Bike"]
    k600 = k600 + ["cleaning pool (billiards)", "cleaning pool (swimming)", "riding bikes", "riding a bike"]
    m = match_kinetics(k400, k600)
    matched = {a: b for a, b, _ in m.matched}
    assert "cleaning pool" not in matched and "Riding Bike" not in matched
    assert m.unmatched_k400 == ["balloon blowing", "drinking", "skiing (not slalom or crosscountry)",
                                "cleaning pool", "Riding Bike"]
    assert m.new[-4:] == ["cleaning pool (billiards)", "cleaning pool (swimming)", "riding bikes", "riding a bike"]
    assert m.counts()["matched"] == 16 and len(m.new) == 7 + 4
    # with one of the two gone the other is a unique match again
    m1 = match_kinetics(k400, k600[:-3] + ["riding a bike"])
    assert ("cleaning pool", "cleaning pool (billiards)", "qualifier") in m1.matched
    assert ("Riding Bike", "riding a bike", "normalised") in m1.matched
