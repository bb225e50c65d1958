"""Frame sampling: every mode's indices against hand-computed values."""

import numpy as np
import pytest

from vclip.data.sampling import (
    FrameSampler,
    apply_short_policy,
    build_sampler,
    dense_indices,
    dense_sparse_indices,
    segment_indices,
    sparse_from_dense,
)
from vclip.errors import ConfigError


class ConstRng:
    """A stand-in generator: ``random`` returns a constant, ``integers`` the low or high end."""

    def __init__(self, u: float):
        self.u = u

    def random(self, size):
        return np.full(size, self.u)

    def integers(self, low, high, size):
        return np.full(size, low if self.u < 0.5 else high - 1)


def test_segment_test_mode_centres():
    # N = 100, T = 8: segment length 12.5, centres floor(12.5 k + 6.25) (= mmaction test mode)
    idx = segment_indices(100, 8, test_mode=True)
    assert idx.tolist() == [[6, 18, 31, 43, 56, 68, 81, 93]]
    assert idx.dtype == np.int64


def test_segment_test_multiclip_interleaves():
    # N = 16, T = 4, J = 2: positions 1/4 and 3/4 of each 4-frame segment
    idx = segment_indices(16, 4, test_mode=True, num_clips=2)
    assert idx.tolist() == [[1, 5, 9, 13], [3, 7, 11, 15]]


def test_segment_train_bounds_and_ends():
    # u = 0 gives each segment's first frame, u -> 1 its last
    assert segment_indices(100, 8, test_mode=False, rng=ConstRng(0.0)).tolist() == [
        [0, 12, 25, 37, 50, 62, 75, 87]
    ]
    assert segment_indices(100, 8, test_mode=False, rng=ConstRng(0.999999)).tolist() == [
        [12, 24, 37, 49, 62, 74, 87, 99]
    ]
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_indices(37, 5, test_mode=False, rng=rng)[0]
        for k, i in enumerate(idx):
            assert np.floor(k * 37 / 5) <= i < np.ceil((k + 1) * 37 / 5)


def test_segment_train_covers_all_frames():
    # unlike mmaction's integer segments, the tail frames are reachable
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(400):
        seen.update(segment_indices(19, 4, test_mode=False, rng=rng).ravel().tolist())
    assert seen == set(range(19))


def test_segment_short_video_repeats_in_order():
    # N = 3 < T = 8: floor((k + .5) * 3 / 8)
    assert segment_indices(3, 8, test_mode=True).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    idx = segment_indices(3, 8, test_mode=False, rng=np.random.default_rng(0))[0]
    assert (np.diff(idx) >= 0).all() and idx.max() <= 2


def test_dense_test_centre_and_multiclip():
    # span = 4 * 8 = 32; start = floor((100 - 32 + 1) / 2) = 34 (mmaction test mode)
    assert dense_indices(100, 4, 8, test_mode=True).tolist() == [[34, 42, 50, 58]]
    # span 8, room 93, starts floor(93 (j + .5) / 3) = 15, 46, 77
    idx = dense_indices(100, 4, 2, test_mode=True, num_clips=3)
    assert idx.tolist() == [[15, 17, 19, 21], [46, 48, 50, 52], [77, 79, 81, 83]]


def test_dense_train_start_range():
    assert dense_indices(100, 4, 8, test_mode=False, rng=ConstRng(0.0)).tolist() == [[0, 8, 16, 24]]
    assert dense_indices(100, 4, 8, test_mode=False, rng=ConstRng(1.0)).tolist() == [[68, 76, 84, 92]]
    rng = np.random.default_rng(0)
    starts = {int(dense_indices(40, 4, 2, test_mode=False, rng=rng)[0, 0]) for _ in range(500)}
    assert starts == set(range(0, 40 - 8 + 1))


def test_dense_short_policies():
    # N = 5, clip 4 x 2: positions 0 2 4 6
    assert dense_indices(5, 4, 2, test_mode=True, short_policy="loop").tolist() == [[0, 2, 4, 1]]
    assert dense_indices(5, 4, 2, test_mode=True, short_policy="repeat_last").tolist() == [[0, 2, 4, 4]]
    assert apply_short_policy(np.array([0, 5, 11]), 5, "loop").tolist() == [0, 0, 1]
    with pytest.raises(ConfigError):
        apply_short_policy(np.array([0]), 5, "wrap")


def test_dense_sparse():
    # 64 frames, T = 4 sparse, alpha = 2 -> 8 segments of 8: centres 4, 12, ..., 60
    dense, sparse = dense_sparse_indices(64, 4, 2, test_mode=True)
    assert dense.tolist() == [[4, 12, 20, 28, 36, 44, 52, 60]]
    assert sparse.tolist() == [[4, 20, 36, 52]]
    assert np.array_equal(sparse_from_dense(dense, 2), sparse)
    s = FrameSampler("dense_sparse", num_frames=4, alpha=2, test_mode=True)
    assert s.clip_len == 8 and s.sparse_stride == 2
    assert np.array_equal(s(64), dense)


def test_sampler_test_mode_deterministic_without_rng():
    for mode in ("segment", "dense", "dense_sparse"):
        s = FrameSampler(mode, num_frames=4, interval=2, num_clips=4, test_mode=True)
        a, b = s(57), s(57, np.random.default_rng(123))
        assert a.shape == (4, s.clip_len) and np.array_equal(a, b)


def test_compat_random_test_clips():
    s = FrameSampler("segment", num_frames=8, num_clips=4, test_mode=True, compat_random_test_clips=True)
    a = s(300, np.random.default_rng(0))
    b = s(300, np.random.default_rng(1))
    assert a.shape == (4, 8) and not np.array_equal(a, b)
    # each view is a train-mode draw: inside the segments, not the centres
    train = segment_indices(300, 8, test_mode=False, num_clips=4, rng=np.random.default_rng(0))
    assert np.array_equal(a, train)
    with pytest.raises(ValueError):
        s(300)  # needs an rng


def test_train_needs_rng_and_is_seeded():
    s = FrameSampler("segment", num_frames=8)
    with pytest.raises(ValueError):
        s(100)
    assert np.array_equal(s(100, np.random.default_rng(5)), s(100, np.random.default_rng(5)))


def test_config_errors():
    with pytest.raises(ConfigError):
        FrameSampler("uniform")
    with pytest.raises(ConfigError):
        FrameSampler(short_policy="mirror")
    with pytest.raises(ConfigError):
        FrameSampler(num_frames=0)
    with pytest.raises(ValueError):
        segment_indices(0, 8, test_mode=True)
    s = build_sampler({"mode": "dense", "num_frames": 16, "interval": 4}, test_mode=True, num_clips=2)
    assert (s.mode, s.num_frames, s.interval, s.num_clips, s.test_mode) == ("dense", 16, 4, 2, True)
    with pytest.raises(ConfigError):
        build_sampler(None, frames=3)


# --- found by mutation testing (benchmarks/mutation.sh vclip/data/sampling.py) --------------------

def test_smallest_valid_inputs_are_accepted():
    """1 frame, 1 segment, interval 1, alpha 1 are valid (off-by-one bounds would reject them)."""
    assert segment_indices(1, 4, test_mode=True).tolist() == [[0, 0, 0, 0]]
    assert segment_indices(10, 1, test_mode=True).tolist() == [[5]]
    assert dense_indices(10, 4, test_mode=True).tolist() == [[3, 4, 5, 6]]  # interval defaults to 1
    assert dense_indices(10, 1, 1, test_mode=True).tolist() == [[5]]
    dense, sparse = dense_sparse_indices(12, 3, 1, test_mode=True)
    assert dense.tolist() == sparse.tolist() == [[2, 6, 10]]
    dense, sparse = dense_sparse_indices(12, 3, test_mode=True)  # alpha defaults to 2
    assert dense.tolist() == [[1, 3, 5, 7, 9, 11]] and sparse.tolist() == [[1, 5, 9]]
    assert apply_short_policy(np.array([3, 5, 6]), 4).tolist() == [3, 1, 2]  # "loop" by default


def test_index_dtypes_are_int64():
    rng = np.random.default_rng(0)
    for idx in (dense_indices(50, 4, 2, test_mode=True), dense_indices(50, 4, 2, test_mode=False, rng=rng),
                segment_indices(50, 4, test_mode=True), dense_sparse_indices(50, 2, test_mode=False, rng=rng)[0]):
        assert idx.dtype == np.int64


def test_dense_sparse_train_mode_uses_the_rng():
    a = dense_sparse_indices(100, 4, test_mode=False, rng=np.random.default_rng(3))[0]
    b = segment_indices(100, 8, test_mode=False, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_error_messages_name_the_value():
    with pytest.raises(ValueError, match=r"^cannot sample from a video with 0 frames$"):
        segment_indices(0, 8, test_mode=True)
    with pytest.raises(ValueError, match=r"^clip_len \(0\) and num_clips \(2\) must be >= 1$"):
        segment_indices(10, 0, test_mode=True, num_clips=2)
    with pytest.raises(ValueError, match=r"^clip_len \(3\) and num_clips \(0\) must be >= 1$"):
        dense_indices(10, 3, test_mode=True, num_clips=0)
    with pytest.raises(ValueError, match=r"^train-mode sampling needs a numpy Generator \(rng\)$"):
        segment_indices(10, 3, test_mode=False)
    with pytest.raises(ValueError, match=r"^interval must be >= 1, got 0$"):
        dense_indices(10, 3, 0, test_mode=True)
    with pytest.raises(ValueError, match=r"^alpha must be >= 1, got 0$"):
        dense_sparse_indices(10, 3, 0, test_mode=True)
    with pytest.raises(ConfigError, match=r"^short_policy must be one of \('loop', 'repeat_last'\), got 'mirror'$"):
        apply_short_policy(np.array([1]), 4, "mirror")
    with pytest.raises(ConfigError, match=r"^sampling mode must be one of \('segment', 'dense', 'dense_sparse'\), "
                                          r"got 'uniform'$"):
        FrameSampler("uniform")
    with pytest.raises(ConfigError, match=r"^short_policy must be one of .*, got 'mirror'$"):
        FrameSampler(short_policy="mirror")
    with pytest.raises(ConfigError, match=r"^sampling alpha must be >= 1, got 0$"):
        FrameSampler(alpha=0)


def test_window_bounds_and_offset():
    """``window=(first, stop)`` samples frames first..stop-1 only, offset by first; every window
    inside the video is accepted (also the whole video and one frame at either end), others not."""
    s = FrameSampler("segment", num_frames=4, test_mode=True)
    assert s(30, window=(10, 18)).tolist() == [[11, 13, 15, 17]]
    assert s(30, window=(0, 30)).tolist() == s(30).tolist()
    assert s(30, window=(0, 1)).tolist() == [[0, 0, 0, 0]]
    assert s(30, window=(29, 30)).tolist() == [[29, 29, 29, 29]]
    r = FrameSampler("segment", num_frames=4)
    assert np.array_equal(r(30, np.random.default_rng(1), window=(10, 18)),
                          10 + r(8, np.random.default_rng(1)))
    for bad in ((-1, 5), (5, 5), (6, 5), (0, 31)):
        with pytest.raises(ValueError, match=rf"^frame window \[{bad[0]}, {bad[1]}\) is not inside a video of 30 frames$"):
            s(30, window=bad)


def test_sampler_passes_its_settings_through():
    """FrameSampler forwards interval, short_policy and alpha to the sampling functions."""
    dense = FrameSampler("dense", num_frames=4, interval=3, short_policy="repeat_last", test_mode=True)
    assert dense(20).tolist() == dense_indices(20, 4, 3, test_mode=True).tolist() == [[4, 7, 10, 13]]
    assert dense(8).tolist() == [[0, 3, 6, 7]]  # past the end: repeat the last frame (loop would give 1)
    ds = FrameSampler("dense_sparse", num_frames=2, alpha=3, test_mode=True)
    assert ds(12).tolist() == dense_sparse_indices(12, 2, 3, test_mode=True)[0].tolist() == [[1, 3, 5, 7, 9, 11]]


def test_build_sampler_from_an_object_and_defaults():
    from types import SimpleNamespace

    s = build_sampler(SimpleNamespace(mode="dense", num_frames=16, interval=None, other="ignored"))
    assert (s.mode, s.num_frames, s.interval, s.test_mode) == ("dense", 16, 1, False)  # train mode by default
    with pytest.raises(ConfigError, match=r"^unknown sampling option\(s\): \['frames'\]$"):
        build_sampler(None, frames=3)


def test_segment_train_clamps_float_rounding_to_the_last_frame():
    """u just below 1: k + u rounds up to k + 1 in float64 for k >= 1, so the last segment's
    floor((k + u) N / T) would be N; it is clamped to N - 1."""
    idx = segment_indices(8, 8, test_mode=False, rng=ConstRng(np.nextafter(1.0, 0.0)))
    assert idx.tolist() == [[0, 2, 3, 4, 5, 6, 7, 7]]


def test_symmetric_test_positions_map_onto_themselves_when_the_clip_is_reversed():
    # the world's clips: 16 frames, 4 segments; the official middle frames are not symmetric
    assert segment_indices(16, 4, test_mode=True).tolist() == [[2, 6, 10, 14]]
    assert segment_indices(16, 4, test_mode=True, symmetric=True).tolist() == [[2, 6, 9, 13]]
    # two views: each is the other reversed
    assert segment_indices(16, 4, test_mode=True, num_clips=2, symmetric=True).tolist() == [[1, 5, 8, 12], [3, 7, 10, 14]]
    for n in range(2, 40):
        for t in range(1, min(n, 12) + 1):
            for j in (1, 2, 3, 4):
                sym = segment_indices(n, t, test_mode=True, num_clips=j, symmetric=True)
                mid = segment_indices(n, t, test_mode=True, num_clips=j)
                assert np.abs(sym - mid).max() <= 1, (n, t, j)  # the frame nearest the same position
                assert (np.diff(sym, axis=1) >= 0).all()
                if n % 2 == 0 and t % 2 == 1 and j % 2 == 1:
                    continue  # a view centred on the middle of an even-length clip: no middle frame
                assert sorted((n - 1 - sym).ravel()) == sorted(sym.ravel()), (n, t, j)
    # the option on the sampler; training draws are unaffected; bad values are refused
    s = FrameSampler("segment", num_frames=4, test_mode=True, test_positions="symmetric")
    assert s(16).tolist() == [[2, 6, 9, 13]]
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    assert np.array_equal(FrameSampler("segment", num_frames=4, test_positions="symmetric")(16, rng_a),
                          FrameSampler("segment", num_frames=4)(16, rng_b))
    with pytest.raises(ConfigError, match="test_positions"):
        FrameSampler("segment", test_positions="mirror")
    with pytest.raises(ConfigError, match="segment sampling"):
        FrameSampler("dense", test_positions="symmetric")
    assert build_sampler({"test_positions": "symmetric"}, test_mode=True).test_positions == "symmetric"
