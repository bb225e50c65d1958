"""Shared fixtures of the data tests. The writers live in ``tests/data/videos.py``
(``from videos import make_video``; pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from videos import make_video  # noqa: E402


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """A 2 s, 64x48, 30 fps H.264 mp4 with a keyframe every 15 frames (60 frames)."""
    return make_video(tmp_path_factory.mktemp("vid") / "small.mp4", frames=60, size=(64, 48), fps=30, gop=15)


@pytest.fixture
def video_factory(tmp_path):
    """``video_factory(name, **make_video_kwargs) -> Path`` writing under the test's tmp_path."""

    def factory(name: str = "v.mp4", **kwargs) -> Path:
        return make_video(tmp_path / name, **kwargs)

    return factory
