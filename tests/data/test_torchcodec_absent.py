"""The clear error of a missing torchcodec, also where torchcodec is installed (CI installs it, so
``test_decode.py::test_torchcodec_missing_is_a_clear_error`` skips there)."""

from __future__ import annotations

import pytest

from vclip.data import decode
from vclip.errors import VideoDecodeError


def test_torchcodec_unavailable_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(decode, "_TORCHCODEC_OK", None)  # probed again, without the package
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # `from torchcodec.decoders import` fails
    assert "torchcodec" not in decode.available_backends()
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 16)
    with pytest.raises(VideoDecodeError, match="torchcodec backend is not available"):
        decode.open_video(video, backend="torchcodec")
