"""Fixtures of the engine integration tests: a small synthetic motion set generated once per
session and tiny run configs (helpers in ``engine_utils.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from engine_utils import base_config, deep_update  # noqa: E402
from vclip.data.synthetic import SynthConfig, generate  # noqa: E402


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """12 classes × 16 videos of 8 frames at 40 px: 144 training and 48 validation videos."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(40, 40), frames=8, videos_per_class=16, val_fraction=0.25, seed=0),
             workers=2)
    return out


@pytest.fixture
def make_config(synth, tmp_path):
    """``make_config(name, **sections) -> path`` of a YAML config under the test's tmp_path
    (runs go to ``tmp_path / "runs"``); ``sections`` update :func:`base_config`."""

    def factory(name: str = "run", **over) -> Path:
        cfg = deep_update(base_config(synth, tmp_path / "runs", name), over)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return factory


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread in this process (tests/conftest.py), as in the subprocesses
    (OMP_NUM_THREADS=1): tiny models gain nothing from more, and spinning OpenMP threads crawl on a
    busy 2-core machine."""
