"""benchmarks/world_shape_probe.py: the supervised attribute probe of the world's frames (docs/suite.md)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def probe_module(load_benchmark):
    return load_benchmark("world_shape_probe")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from vclip.data.world import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, size="tiny", workers=1, seed=0)
    return out


def test_the_probe_learns_colour_and_reports_its_accuracy(probe_module, tiny_world, tmp_path):
    """Colour is a pixel-wise attribute a tiny tower learns in a few dozen steps: a probe whose labels
    were misaligned with the frames, or scored on the wrong frames, would stay near chance (0.25)."""
    out = tmp_path / "probe.json"
    assert probe_module.main(["--world", str(tiny_world), "--attribute", "colour", "--arch", "tiny",
                              "--steps", "60", "--batch", "32", "--lr", "3e-3", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["attribute"] == "colour" and r["chance"] == 0.25 and r["patch_size"] == 8  # tiny's
    assert r["test_frames"] > 20 and r["accuracy"] >= 0.6  # measured 0.82
    assert r["loss_last"] < r["loss_first"]
    # another patch size reaches the tower; an unknown attribute is refused by name
    r4 = probe_module.probe(tiny_world, attribute="shape", arch="tiny", patch_size=4, steps=2, batch=8)
    assert r4["patch_size"] == 4 and r4["chance"] == 0.25 and 0 <= r4["accuracy"] <= 1
    with pytest.raises(SystemExit, match="--attribute"):
        probe_module.probe(tiny_world, attribute="speed", arch="tiny", steps=1)
