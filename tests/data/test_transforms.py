"""Clip transforms: clip consistency, shapes, determinism, colour maths, Mixup/CutMix."""

import colorsys
import math

import numpy as np
import pytest
import torch

from vclip.data import transforms as T
from vclip.errors import ConfigError


def rand_clip(t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8)


def same_frames_clip(t=5, h=60, w=80, seed=0):
    return rand_clip(1, h, w, seed).expand(t, -1, -1, -1).contiguous()


def test_to_clip_tensor_layout():
    frames = np.zeros((3, 10, 12, 3), np.uint8)
    frames[1, 2, 5] = (10, 20, 30)
    clip = T.to_clip_tensor(frames)
    assert clip.shape == (3, 3, 10, 12) and clip.dtype == torch.uint8
    assert clip[1, :, 2, 5].tolist() == [10, 20, 30]
    with pytest.raises(ValueError):
        T.to_clip_tensor(np.zeros((3, 10, 12), np.uint8))


@pytest.mark.parametrize("crop", ["multiscale", "random_resized"])
def test_train_transform_is_clip_consistent(crop):
    tf = T.build_train_transform(input_size=32, crop=crop, color_jitter=1.0, grayscale=0.5)
    clip = same_frames_clip()
    for seed in range(12):
        out = tf(clip, np.random.default_rng(seed))
        assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32
        for i in range(1, 5):
            assert torch.equal(out[i], out[0]), f"seed {seed}: frame {i} differs"


def test_train_transform_deterministic_with_seed():
    tf = T.build_train_transform(input_size=32)
    clip = rand_clip()
    a = tf(clip, np.random.default_rng(7))
    b = tf(clip, np.random.default_rng(7))
    assert torch.equal(a, b)
    outs = {tf(clip, np.random.default_rng(s)).sum().item() for s in range(8)}
    assert len(outs) > 1


def test_colour_jitter_same_factors_every_frame():
    """Jittering a clip == jittering each frame alone with the same draw (one draw per clip)."""
    jit = T.ColorJitter(p=1.0)
    clip = rand_clip(3, 16, 16).float()
    out = jit(clip, np.random.default_rng(3))
    for i in range(3):
        alone = jit(clip[i : i + 1], np.random.default_rng(3))
        assert torch.allclose(out[i : i + 1], alone, atol=1e-4)
    assert not torch.allclose(out, clip)


def test_hue_and_grayscale_on_known_pixels():
    red = torch.tensor([255.0, 0, 0]).view(1, 3, 1, 1)
    assert torch.allclose(T.adjust_hue(red, 1 / 3).flatten(), torch.tensor([0.0, 255, 0]), atol=1e-3)
    assert torch.allclose(T.adjust_hue(red, -1 / 3).flatten(), torch.tensor([0.0, 0, 255]), atol=1e-3)
    gray = T.RandomGrayscale(p=1.0)(red)
    assert torch.allclose(gray.flatten(), torch.full((3,), 0.299 * 255))
    # random pixels against colorsys
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 1, (50, 3))
    x = torch.tensor(px, dtype=torch.float32).T.reshape(1, 3, 50, 1) * 255
    shift = 0.07
    out = T.adjust_hue(x, shift).reshape(3, 50).T.numpy() / 255
    for p, o in zip(px, out):
        h, s, v = colorsys.rgb_to_hsv(*p)
        assert np.allclose(colorsys.hsv_to_rgb((h + shift) % 1, s, v), o, atol=1e-4)
    # HSV round trip
    assert torch.allclose(T.hsv_to_rgb(T.rgb_to_hsv(x / 255)) * 255, x, atol=1e-3)


def test_brightness_contrast_saturation():
    x = torch.tensor([[100.0, 50, 200]]).T.reshape(1, 3, 1, 1)
    assert torch.allclose(T.adjust_brightness(x, 1.5).flatten(), torch.tensor([150.0, 75, 255]))
    assert torch.allclose(T.adjust_saturation(x, 0.0).flatten(), T.rgb_to_grayscale(x).flatten().expand(3))
    flat = torch.full((1, 3, 4, 4), 80.0)
    assert torch.allclose(T.adjust_contrast(flat, 0.3), flat)


def test_flip_applies_to_all_frames():
    clip = rand_clip(3, 8, 10).float()
    flip = T.RandomHorizontalFlip(p=1.0)
    assert torch.equal(flip(clip), clip.flip(-1))
    assert torch.equal(T.RandomHorizontalFlip(p=0.0)(clip), clip)


def test_multiscale_crop_params():
    msc = T.MultiScaleCrop(224)  # X-CLIP: fixed 5-position grid
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        top, left, h, w = msc.get_params(256, 341, rng)
        # sides int(256 * s) = 256, 224, 192, 168 (224 snapped), aspect gap <= 1 scale step
        assert h in (256, 224, 192, 168) and w in (256, 224, 192, 168)
        assert abs([256, 224, 192, 168].index(h) - [256, 224, 192, 168].index(w)) <= 1
        ws, hs = (341 - w) // 4, (256 - h) // 4
        assert (top, left) in {(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)}
        seen.add((h, w))
    assert len(seen) == 10  # 4 + 2 * 3 pairs
    top, left, h, w = T.MultiScaleCrop(224, random_crop=True).get_params(256, 341, rng)
    assert 0 <= top <= 256 - h and 0 <= left <= 341 - w


def test_test_transforms_shapes_and_crops():
    clip = rand_clip(4, 120, 160)
    one = T.build_test_transform(input_size=32)
    out = one(clip)
    assert out.shape == (4, 3, 32, 32)
    assert torch.equal(out, one(clip, np.random.default_rng(1)))  # deterministic
    three = T.build_test_transform(input_size=32, num_crops=3)
    out3 = three(clip)
    assert out3.shape == (3, 4, 3, 32, 32)
    # ThreeCrop positions on a landscape image: left, centre, right
    img = torch.arange(10 * 16, dtype=torch.float32).view(1, 1, 10, 16).expand(1, 3, 10, 16)
    crops = T.ThreeCrop(10)(img)
    assert crops.shape == (3, 1, 3, 10, 10)
    assert [c[0, 0, 0, 0].item() for c in crops] == [0.0, 3.0, 6.0]
    cc = T.CenterCrop(4)(img)
    assert cc[0, 0, 0, 0].item() == 3 * 16 + 6


def test_resize_short_side():
    clip = rand_clip(2, 48, 64)
    assert T.ResizeShortSide(24)(clip).shape == (2, 3, 24, 32)
    assert T.ResizeShortSide(24)(clip.transpose(-1, -2)).shape == (2, 3, 32, 24)


def test_normalize_presets():
    n = T.Normalize("imagenet")
    assert torch.allclose(n.mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    c = T.Normalize("clip")
    assert torch.allclose(c.mean.flatten(), torch.tensor([122.771, 116.746, 104.094]), atol=1e-3)
    assert torch.allclose(c.std.flatten(), torch.tensor([68.500, 66.632, 70.323]), atol=1e-3)
    x = n.mean.view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert torch.allclose(n(x), torch.zeros(2, 3, 2, 2), atol=1e-5)
    with pytest.raises(ConfigError):
        T.Normalize("coco")


def test_builder_defaults_match_xclip():
    tf = T.build_train_transform()
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["ResizeShortSide", "MultiScaleCrop", "Resize", "RandomHorizontalFlip",
                     "ColorJitter", "RandomGrayscale", "Normalize"]
    assert tf.transforms[0].size == 256 and tf.transforms[4].p == 0.8 and tf.transforms[5].p == 0.2
    assert T.build_train_transform(input_size=336).transforms[0].size == 384
    t3 = T.build_test_transform({"num_crops": 3})
    assert t3.transforms[0].size == 224  # X-CLIP: three-crop resizes the short side to S
    assert T.build_test_transform().transforms[0].size == 256
    with pytest.raises(ConfigError):
        T.build_train_transform({"crop_size": 3})


def test_mixup_cutmix_soft_targets():
    mc = T.MixupCutmix(num_classes=5, switch_prob=0.5, label_smoothing=0.1)
    x = torch.rand(4, 2, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    kinds = set()
    for seed in range(20):
        xm, ym = mc(x, y, np.random.default_rng(seed))
        assert xm.shape == x.shape and ym.shape == (4, 5)
        assert torch.allclose(ym.sum(1), torch.ones(4))
        kinds.add(mc._draw(np.random.default_rng(seed))[0])
    assert kinds == {"mixup", "cutmix"}
    # Mixup: x and targets mixed with the same lambda (batch reversed: sample 0 with sample 3)
    mix = T.MixupCutmix(5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, partner="reversed")
    xm, ym = mix(x, y, np.random.default_rng(0))
    lam = ym[0, 0].item()
    assert 0 < lam < 1 and ym[0, 3].item() == pytest.approx(1 - lam)
    assert torch.allclose(xm[0], lam * x[0] + (1 - lam) * x[3], atol=1e-6)
    # CutMix: lambda equals the kept area; the box is the same in every frame
    cut = T.MixupCutmix(5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, partner="reversed")
    xm, ym = cut(x, y, np.random.default_rng(2))
    from_self = (xm[0] == x[0]).all(0).all(0).float().mean().item()  # pixels kept in all frames
    assert abs(ym[0, 0].item() - from_self) < 1e-6
    # label smoothing only
    none = T.MixupCutmix(5, prob=0.0, label_smoothing=0.1)
    _, ys = none(x, y)
    assert torch.allclose(ys[0], torch.tensor([0.92, 0.02, 0.02, 0.02, 0.02]))


# ------------------------------------------------------------- official X-CLIP behaviours (options)

def test_colour_jitter_per_frame_draws_new_parameters_for_every_frame():
    """``per_frame``: torchvision's ColorJitter applied frame by frame (new factors and order per
    frame, one p-decision per clip); default: one draw for the whole clip."""
    clip = same_frames_clip(t=6, h=16, w=16).float()
    per_clip, per_frame = T.ColorJitter(p=1.0), T.ColorJitter(p=1.0, per_frame=True)
    for seed in range(5):
        a = per_clip.get_clip_params(np.random.default_rng(seed), 6)
        assert len(a) == 6 and all(ops == a[0] for ops in a)
        b = per_frame.get_clip_params(np.random.default_rng(seed), 6)
        assert len(b) == 6 and len({tuple(ops) for ops in b}) == 6      # six different draws
    # the output: frame t is frame t jittered with its own draw; identical frames come out different
    params = per_frame.get_clip_params(np.random.default_rng(4), 6)
    out = per_frame(clip, np.random.default_rng(4))
    for t in range(6):
        assert torch.allclose(out[t], T.ColorJitter.apply(clip[t], params[t]), atol=1e-4)
    assert not torch.allclose(out[0], out[1])
    same = per_clip(clip, np.random.default_rng(4))
    assert all(torch.equal(same[t], same[0]) for t in range(6))
    # the probability is decided once per clip: p = 0 leaves every frame alone
    assert torch.equal(T.ColorJitter(p=0.0, per_frame=True)(clip, np.random.default_rng(0)), clip)
    # the builder passes the option through (data.aug.color_jitter_per_frame)
    jit = [t for t in T.build_train_transform(input_size=32, jitter_per_frame=True).transforms
           if isinstance(t, T.ColorJitter)]
    assert jit[0].per_frame and not T.build_train_transform().transforms[4].per_frame


def test_mixup_partner_is_a_seeded_random_permutation():
    """The official code mixes each video with ``x[randperm(B)]``: the partners are a permutation of
    the batch drawn from the rng (the trainer's (seed, epoch, micro, rank) generator), the same for
    the same seed, not simply the reversed batch; images and targets use the same partner."""
    B = 8
    mix = T.MixupCutmix(B, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    assert mix.partner == "permutation"
    x = torch.rand(B, 2, 3, 8, 8)
    y = torch.arange(B)
    perms = []
    for micro in range(6):
        def rng(micro=micro):  # the trainer's generator of (seed, epoch, micro-batch, rank)
            return np.random.default_rng([1024, 0, micro, 0])

        xm, ym = mix(x, y, rng())
        again_x, again_y = mix(x, y, rng())
        assert torch.equal(xm, again_x) and torch.equal(ym, again_y)   # same seed, same result
        r = rng()
        mix._draw(r)
        perm = mix.partner_index(B, r).tolist()
        assert sorted(perm) == list(range(B))
        for i, j in enumerate(perm):
            if j == i:
                assert torch.allclose(xm[i], x[i]) and ym[i, i] == pytest.approx(1.0)
                continue
            lam = ym[i, i].item()
            assert ym[i, j].item() == pytest.approx(1 - lam, abs=1e-6)
            assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
        perms.append(tuple(perm))
    assert len(set(perms)) > 1 and tuple(range(B - 1, -1, -1)) not in perms
    # CutMix uses the same partner rule
    cut = T.MixupCutmix(B, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    r = np.random.default_rng(5)
    cut._draw(r)
    perm = cut.partner_index(B, r)
    xm, ym = cut(x, y, np.random.default_rng(5))
    i = next(k for k in range(B) if perm[k] != k)
    pasted = (xm[i] != x[i]).any(0).any(0)
    assert pasted.any() and torch.equal(xm[i][..., pasted], x[perm[i]][..., pasted])
    # the reversed batch stays available
    rev = T.MixupCutmix(B, partner="reversed")
    assert rev.partner_index(B, np.random.default_rng(0)).tolist() == list(range(B - 1, -1, -1))
    with pytest.raises(ConfigError, match="partner"):
        T.MixupCutmix(B, partner="shuffle")


def _mixed_partner(xm_i: torch.Tensor, x: torch.Tensor, i: int, kind: str) -> tuple[int, float]:
    """``(j, lam)``: the sample ``xm_i`` was mixed with, and its own share, read from the pixels
    alone. Mixup: the j whose least-squares ``lam x_i + (1 - lam) x_j`` fits exactly; CutMix: the j
    whose pixels fill every pixel that changed, ``lam`` the fraction of pixels kept."""
    if kind == "mixup":
        if torch.allclose(xm_i, x[i], atol=1e-6, rtol=0):
            return i, 1.0  # its own partner (then every j fits with lam = 1)
        fits = []
        for j in range(x.shape[0]):
            if j == i:
                continue
            a, b = (x[i] - x[j]).flatten().double(), (xm_i - x[j]).flatten().double()
            lam = float(a @ b / (a @ a))
            fits.append((float((lam * a - b).abs().max()), j, lam))
        err, j, lam = min(fits)
        assert err < 1e-5, (i, fits)
        return j, lam
    changed = (xm_i != x[i]).flatten(0, -3).any(0)  # [H, W], the same box in every frame and channel
    if not changed.any():
        return i, 1.0
    for j in range(x.shape[0]):
        if j != i and torch.equal(xm_i[..., changed], x[j][..., changed]):
            return j, 1.0 - changed.float().mean().item()
    raise AssertionError(f"row {i}: the changed pixels come from no sample")


@pytest.mark.parametrize("partner", ["permutation", "reversed"])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_cutmix_every_row_targets_its_partner(partner, kind):
    """Every row's soft target is ``lam y_i + (1 - lam) y_j`` for the sample ``j`` its pixels were
    actually mixed with (found from the pixels, not from the code's permutation); ``partner``
    "reversed" pairs i with B-1-i, "permutation" with a seeded permutation of the batch."""
    B, K, eps = 6, 8, 0.1
    x = torch.rand(B, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([5, 0, 7, 2, 3, 6])
    mc = T.MixupCutmix(K, mixup_alpha=0.8 if kind == "mixup" else 0.0, cutmix_alpha=1.0 if kind == "cutmix" else 0.0,
                       label_smoothing=eps, partner=partner)
    smooth = torch.full((B, K), eps / K).scatter_(1, y[:, None], 1 - eps + eps / K)
    perms = set()
    for seed in range(8):
        xm, ym = mc(x, y, np.random.default_rng(seed))
        xm2, ym2 = mc(x, y, np.random.default_rng(seed))
        assert torch.equal(xm, xm2) and torch.equal(ym, ym2)  # seeded
        partners = []
        for i in range(B):
            j, lam = _mixed_partner(xm[i], x, i, kind)
            partners.append(j)
            torch.testing.assert_close(ym[i], lam * smooth[i] + (1 - lam) * smooth[j], atol=1e-5, rtol=0)
        mixed = [i for i in range(B) if partners[i] != i]
        if partner == "reversed":
            assert all(partners[i] == B - 1 - i for i in mixed) and (kind == "cutmix" or len(mixed) == B)
        elif len(mixed) == B or kind == "mixup":
            assert sorted(partners) == list(range(B))  # a permutation: every sample used once as a partner
        perms.add(tuple(partners))
    if partner == "permutation":
        assert len(perms) > 2  # drawn anew from each seed


# ------------------------------------------------ mutation testing (issue 13): values pinned by hand

class _FixedRng:
    """A stand-in for numpy's Generator whose ``integers`` returns given values in order."""

    def __init__(self, *values):
        self.values = list(values)

    def integers(self, n):
        v = self.values.pop(0)
        assert 0 <= v < n
        return v


def test_build_mixup_reads_every_key_from_a_mapping_or_an_object():
    from types import SimpleNamespace

    d = T.build_mixup(None, 7)                      # X-CLIP's defaults
    assert (d.num_classes, d.mixup_alpha, d.cutmix_alpha, d.switch_prob, d.prob, d.label_smoothing,
            d.partner) == (7, 0.8, 1.0, 0.5, 1.0, 0.1, "permutation")
    keys = dict(mixup=0.3, cutmix=0.6, switch_prob=0.25, prob=0.75, label_smoothing=0.05, partner="reversed")
    for cfg in (keys, SimpleNamespace(**keys)):
        m = T.build_mixup(cfg, 5)
        assert (m.num_classes, m.mixup_alpha, m.cutmix_alpha, m.switch_prob, m.prob, m.label_smoothing,
                m.partner) == (5, 0.3, 0.6, 0.25, 0.75, 0.05, "reversed")
    # keys left out (or None) take the defaults; both alphas 0 = no mixing at all
    assert T.build_mixup(SimpleNamespace(prob=None), 3).prob == 1.0
    assert T.build_mixup({"mixup": 0.0, "cutmix": 0.0}, 3) is None
    assert T.build_mixup({"mixup": 0.0}, 3).cutmix_alpha == 1.0
    assert T.build_mixup({"cutmix": 0.0}, 3).mixup_alpha == 0.8
    assert T.build_mixup({"mixup": 0.5, "cutmix": 0.0}, 3) is not None


def test_build_train_transform_options_reach_the_steps():
    from types import SimpleNamespace

    tf = T.build_train_transform(T.TransformConfig(input_size=32, short_side=40, random_crop=True,
                                                   scales=(1, 0.5), jitter=(0.1, 0.2, 0.3, 0.05),
                                                   color_jitter=0.6, jitter_per_frame=True, flip=0.3,
                                                   grayscale=0.4))
    rs, msc, r, flip, cj, gray, norm = tf.transforms
    assert rs.size == 40 and (msc.input_size, msc.scales, msc.max_wh_scale_gap, msc.random_crop) == \
        ((32, 32), (1.0, 0.5), 1, True)
    assert r.size == (32, 32) and flip.p == 0.3 and gray.p == 0.4
    assert (cj.brightness, cj.contrast, cj.saturation, cj.hue, cj.p, cj.per_frame) == (0.1, 0.2, 0.3, 0.05, 0.6, True)
    # an object with some of the fields (the run config's data.aug section)
    tf = T.build_train_transform(SimpleNamespace(input_size=32, crop="center", flip=0.0, color_jitter=0.0,
                                                 grayscale=0.0, norm="clip"))
    assert [type(t).__name__ for t in tf.transforms] == ["ResizeShortSide", "CenterCrop", "Normalize"]
    assert tf.transforms[0].size == 36 and tf.transforms[1].size == (32, 32) and tf.transforms[2].preset == "clip"
    rrc = T.build_train_transform(input_size=32, crop="random_resized", rrc_scale=(0.5, 0.9)).transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (32, 32) and rrc.scale == (0.5, 0.9)
    with pytest.raises(ConfigError, match="train crop must be multiscale"):
        T.build_train_transform(crop="centre")
    with pytest.raises(ConfigError, match=r"unknown transform option\(s\): \['crop_size'\]"):
        T.build_train_transform({"crop_size": 3})
    with pytest.raises(ConfigError, match="num_crops must be 1 or 3, got 2"):
        T.build_test_transform(num_crops=2)


def test_colour_jitter_draws_factors_from_the_torchvision_ranges():
    """The draw of ``get_params`` reproduced from the same seed: a permutation of the 4 ops, then a
    uniform factor in [max(0, 1 - x), 1 + x] (hue in [-h, h]) for each op of non-zero strength."""
    assert (lambda c: (c.brightness, c.contrast, c.saturation, c.hue, c.p, c.per_frame))(T.ColorJitter()) == \
        (0.4, 0.4, 0.2, 0.1, 0.8, False)
    strengths = (0.4, 0.3, 0.2, 0.1)
    jit = T.ColorJitter(*strengths)
    names = ("brightness", "contrast", "saturation", "hue")
    for seed in range(6):
        ref = np.random.default_rng(seed)
        expected = []
        for idx in ref.permutation(4):
            x = strengths[idx]
            lo, hi = (-x, x) if idx == 3 else (1 - x, 1 + x)
            expected.append((names[idx], ref.uniform(lo, hi)))
        assert jit.get_params(np.random.default_rng(seed)) == expected
    # strength above 1: the lower bound is 0; strength 0: the op is left out
    for seed in range(6):
        ops = dict(T.ColorJitter(1.5, 0, 0, 0).get_params(np.random.default_rng(seed)))
        ref = np.random.default_rng(seed)
        ref.permutation(4)
        assert ops == {"brightness": ref.uniform(0.0, 2.5)}
    assert T.ColorJitter(0, 0, 0, 0).get_params(np.random.default_rng(0)) == []
    T.ColorJitter(hue=0.0), T.ColorJitter(hue=0.5)  # the bounds are allowed
    with pytest.raises(ConfigError, match=r"hue jitter must be in \[0, 0.5\], got 0.6"):
        T.ColorJitter(hue=0.6)


def test_colour_jitter_on_one_frame_draws_once():
    """A single frame [C, H, W] with ``per_frame``: one draw (not one per channel): the rng then
    continues where a clip of one frame leaves it."""
    jit = T.ColorJitter(p=1.0, per_frame=True)
    frame = rand_clip(1, 8, 8)[0].float()
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    out = jit(frame, a)
    ref = jit(frame[None], b)[0]
    assert torch.allclose(out, ref) and a.random() == b.random()


def test_colour_ops_clamp_to_the_0_255_range():
    # contrast 1.5 around the grey level moves the extremes out of range: clamped to 0 and 255
    x = torch.tensor([0.0, 250.0, 10.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2).contiguous()
    grey = 0.299 * 0 + 0.587 * 250 + 0.114 * 10
    c = T.adjust_contrast(x, 1.5)[0, :, 0, 0]
    hand = [min(255.0, max(0.0, 1.5 * v - 0.5 * grey)) for v in (0.0, 250.0, 10.0)]
    assert torch.allclose(c, torch.tensor(hand), atol=1e-4) and c.max() == 255.0 and c.min() == 0.0
    s = T.adjust_saturation(x, 2.0)[0, :, 0, 0]
    hand = [min(255.0, max(0.0, 2.0 * v - grey)) for v in (0.0, 250.0, 10.0)]
    assert torch.allclose(s, torch.tensor(hand), atol=1e-4) and s.max() == 255.0
    assert T.adjust_brightness(torch.zeros(1, 3, 1, 1), 0.5).max() == 0.0  # black stays black


def test_rgb_to_hsv_matches_colorsys():
    px = [(1.0, 0.0, 0.5), (0.2, 0.9, 0.4), (0.1, 0.3, 0.8), (0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.9, 0.1, 0.2)]
    x = torch.tensor(px).T.reshape(3, len(px), 1)
    hsv = T.rgb_to_hsv(x).reshape(3, len(px)).T
    for p, h in zip(px, hsv.tolist()):
        assert np.allclose(h, colorsys.rgb_to_hsv(*p), atol=1e-6), p


def test_normalize_by_hand_and_its_arguments():
    n = T.Normalize()
    assert n.preset == "imagenet"
    x = torch.tensor([123.675 + 58.395, 116.28, 103.53 - 2 * 57.375]).view(3, 1, 1)
    assert torch.allclose(n(x).flatten(), torch.tensor([1.0, 0.0, -2.0]), atol=1e-5)
    own = T.Normalize(mean=np.array([10.0, 20.0, 30.0]), std=np.array([2.0, 4.0, 5.0]))  # float64 in
    out = own(torch.full((3, 1, 1), 40.0))
    assert out.dtype == torch.float32 and out.flatten().tolist() == [15.0, 5.0, 2.0]
    with pytest.raises(ConfigError, match=r"^Normalize: give both mean and std \(or neither, for the preset\), "
                                          r"got mean=\(1.0, 2.0, 3.0\), std=None$"):
        T.Normalize(mean=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="give both mean and std"):
        T.Normalize(std=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match=r"preset must be one of \['imagenet', 'clip'\], got 'coco'"):
        T.Normalize("coco")


def test_multiscale_crop_snapping_grid_and_ranges():
    # sides int(100 * s) = 22 and 33 for input (20, 30): 22 snaps to 20 in height (|22 - 20| < 3),
    # 33 does not snap to 30 in width (|33 - 30| = 3)
    msc = T.MultiScaleCrop((20, 30), scales=(0.22, 0.33))
    sizes = {msc.get_params(100, 100, np.random.default_rng(s))[2:] for s in range(60)}
    assert sizes == {(20, 22), (20, 33), (33, 22), (33, 33)}
    msc = T.MultiScaleCrop((30, 20), scales=(0.22, 0.33))     # the same with height and width swapped
    sizes = {msc.get_params(100, 100, np.random.default_rng(s))[2:] for s in range(60)}
    assert sizes == {(22, 20), (33, 20), (22, 33), (33, 33)}
    # the 13-position grid on quarter steps
    m13 = T.MultiScaleCrop(8, scales=(1,), num_fixed_crops=13)
    assert m13.num_fixed_crops == 13 and T.MultiScaleCrop().input_size == (224, 224)
    pos = {m13.get_params(8, 16, np.random.default_rng(s))[:2] for s in range(300)}
    assert pos == {(0, 2 * x) for x in (0, 1, 2, 3, 4)} | {(0, 0), (0, 8), (0, 4)}  # ws = 2, hs = 0
    pos = {T.MultiScaleCrop(4, scales=(1,), num_fixed_crops=13).get_params(12, 4, np.random.default_rng(s))[:2]
           for s in range(300)}
    hs = 2
    assert pos == {(gy * hs, 0) for gy in range(5)}
    m13w = T.MultiScaleCrop(8, scales=(0.5,), num_fixed_crops=13)
    pos = {m13w.get_params(24, 24, np.random.default_rng(s))[:2] for s in range(400)}   # 12 px: hs = ws = 3
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    assert pos == {(3 * gy, 3 * gx) for gy, gx in grid}
    with pytest.raises(ConfigError, match="num_fixed_crops must be 5 or 13, got 7"):
        T.MultiScaleCrop(num_fixed_crops=7)
    # a side of 0 pixels becomes 1
    assert T.MultiScaleCrop(50, scales=(0.1,)).get_params(4, 4, np.random.default_rng(0))[2:] == (1, 1)
    # random offsets cover exactly 0 .. H - h and 0 .. W - w
    rnd = T.MultiScaleCrop(50, scales=(0.5,), random_crop=True)
    got = [rnd.get_params(6, 10, np.random.default_rng(s)) for s in range(300)]
    assert {g[2:] for g in got} == {(3, 3)}
    assert {g[0] for g in got} == set(range(4)) and {g[1] for g in got} == set(range(8))


def _rrc_reference(height, width, scale, ratio, rng):
    """torchvision's RandomResizedCrop.get_params, written from its documentation."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 1 <= w <= width and 1 <= h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def test_random_resized_crop_params_and_fallback():
    rrc = T.RandomResizedCrop((4, 6), scale=(0.05, 1.0), ratio=(0.5, 2.0))
    n = 0
    for h, w in ((5, 5), (3, 8), (9, 4)):
        for s in range(150):
            ref = _rrc_reference(h, w, rrc.scale, rrc.ratio, np.random.default_rng(s))
            if ref is not None:
                n += 1
                assert rrc.get_params(h, w, np.random.default_rng(s)) == ref
    assert n > 300
    d = T.RandomResizedCrop()
    assert (d.size, d.scale, d.ratio, d.antialias) == ((224, 224), (0.08, 1.0), (0.75, 4 / 3), True)
    # an impossible area: 10 attempts (20 draws), then the centre crop clamped to the ratio
    imp = T.RandomResizedCrop(8, scale=(4.0, 5.0))
    for (h, w), box in {(40, 10): (13, 0, 13, 10), (10, 40): (0, 13, 10, 13), (10, 12): (0, 0, 10, 12)}.items():
        a, b = np.random.default_rng(0), np.random.default_rng(0)
        assert imp.get_params(h, w, a) == box
        b.uniform(size=20)
        assert a.random() == b.random()
    # crops that round to 0 pixels wide (or high) are not accepted: every attempt fails here
    for s in range(20):
        assert T.RandomResizedCrop(4, scale=(0.02, 0.06), ratio=(0.1, 0.2)).get_params(4, 4, np.random.default_rng(s)) \
            == (0, 1, 4, 1)                                              # fallback: w = round(4 · 0.2)
        assert T.RandomResizedCrop(4, scale=(0.02, 0.06), ratio=(5.0, 10.0)).get_params(4, 4, np.random.default_rng(s)) \
            == (1, 0, 1, 4)                                              # fallback: h = round(4 / 5)
    out = imp(torch.arange(40 * 10, dtype=torch.float32).view(1, 1, 40, 10), np.random.default_rng(0))
    assert out.shape == (1, 1, 8, 8)


def test_resizes_antialias_by_hand():
    """Downscaling with and without antialiasing against torch's bilinear ``interpolate``."""
    import torch.nn.functional as F

    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0)) * 255

    def ref(size, aa):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=aa)

    assert not torch.allclose(ref((4, 5), True), ref((4, 5), False))
    assert torch.allclose(T.resize(x, (4, 5)), ref((4, 5), True))
    assert torch.allclose(T.Resize((4, 5))(x), ref((4, 5), True))
    assert torch.allclose(T.Resize((4, 5), antialias=False)(x), ref((4, 5), False))
    assert torch.allclose(T.ResizeShortSide(4)(x), ref((4, 5), True))
    assert torch.allclose(T.ResizeShortSide(4, antialias=False)(x), ref((4, 5), False))
    rrc = T.RandomResizedCrop((4, 5), scale=(4.0, 4.0), antialias=False)   # fallback: the whole image
    assert torch.allclose(rrc(x, np.random.default_rng(0)), ref((4, 5), False))
    assert torch.allclose(T.RandomResizedCrop((4, 5), scale=(4.0, 4.0))(x, np.random.default_rng(0)), ref((4, 5), True))
    # a single frame [C, H, W] works as a one-frame clip
    for tf in (T.ResizeShortSide(4), T.CenterCrop((3, 5)), T.MultiScaleCrop(8, scales=(0.5,)),
               T.RandomResizedCrop(4), T.ThreeCrop(6)):
        one = tf(x[0], np.random.default_rng(1))
        clip = tf(x[:1], np.random.default_rng(1))
        assert torch.equal(one, clip[:, 0] if isinstance(tf, T.ThreeCrop) else clip[0])
    # the smallest output side is 1 pixel
    assert T.ResizeShortSide(1)(torch.zeros(1, 3, 4, 5)).shape[-2:] == (1, 1)
    assert T.ResizeShortSide(1)(torch.zeros(1, 3, 5, 4)).shape[-2:] == (1, 1)


def test_three_crop_and_centre_crop_boxes_by_hand():
    img = torch.arange(10 * 10, dtype=torch.float32).view(1, 1, 10, 10)
    # square image, square crop 6: along the width (start, centre, end), centred in height
    assert [c[0, 0, 0, 0].item() for c in T.ThreeCrop(6)(img)] == [2 * 10 + 0, 2 * 10 + 2, 2 * 10 + 4]
    tall = torch.arange(16 * 8, dtype=torch.float32).view(1, 1, 16, 8)
    crops = T.ThreeCrop(6)(tall)            # along the height, centred in width (x = 1)
    assert crops.shape == (3, 1, 1, 6, 6)
    assert [c[0, 0, 0, 0].item() for c in crops] == [0 * 8 + 1, 5 * 8 + 1, 10 * 8 + 1]
    wide = torch.arange(8 * 16, dtype=torch.float32).view(1, 1, 8, 16)
    crops = T.ThreeCrop((4, 6))(wide)       # a (h, w) = (4, 6) crop: y = 2
    assert crops.shape == (3, 1, 1, 4, 6)
    assert [c[0, 0, 0, 0].item() for c in crops] == [2 * 16 + 0, 2 * 16 + 5, 2 * 16 + 10]
    cc = T.CenterCrop((4, 6))(wide)
    assert cc.shape == (1, 1, 4, 6) and cc[0, 0, 0, 0].item() == 2 * 16 + 5


def test_small_pieces_by_hand():
    u8 = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    assert T.ToFloat()(u8).dtype == torch.float32 and repr(T.ToFloat()) == "ToFloat()"
    f = torch.zeros(1, 3, 2, 2)
    assert T.ToFloat()(f) is f
    assert repr(T.Compose([T.ToFloat(), T.Resize(4)])) == "Compose(\n  ToFloat(),\n  Resize((4, 4))\n)"
    assert T.Resize((8, 12)).size == (8, 12) and T.Resize(np.int64(5)).size == (5, 5)
    with pytest.raises(ValueError, match=r"expected frames \[T, H, W, 3\], got \(10, 12, 3\)"):
        T.to_clip_tensor(np.zeros((10, 12, 3), np.uint8))
    assert T.RandomHorizontalFlip().p == 0.5 and T.RandomGrayscale().p == 0.2
    # flips and greyscale draw from the rng given
    clip = rand_clip(1, 4, 6).float()
    for cls, p in ((T.RandomHorizontalFlip, 0.5), (T.RandomGrayscale, 0.5)):
        got = [not torch.equal(cls(p)(clip, np.random.default_rng(s)), clip) for s in range(20)]
        assert got == [np.random.default_rng(s).random() < p for s in range(20)]
    # one-hot targets: no smoothing by default
    assert T.one_hot_smooth(torch.tensor([2, 0]), 3).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_mixup_defaults_no_mixing_and_dtypes():
    m = T.MixupCutmix(4)
    assert (m.mixup_alpha, m.cutmix_alpha, m.switch_prob, m.prob, m.label_smoothing) == (0.8, 1.0, 0.5, 1.0, 0.1)
    x = torch.randint(0, 255, (3, 2, 3, 6, 6), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2])
    for mc in (T.MixupCutmix(4, prob=0.0), T.MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=0.0)):
        rng = np.random.default_rng(0)
        out, _ = mc(x, y, rng)
        assert out is x                       # untouched, not even converted
        assert rng.random() == np.random.default_rng(0).uniform(size=2)[1]   # one draw only
    cut = T.MixupCutmix(4, mixup_alpha=0.0, label_smoothing=0.0)
    assert cut(x, y, np.random.default_rng(0))[0].dtype == torch.float32
    mix = T.MixupCutmix(4, cutmix_alpha=0.0, label_smoothing=0.0)
    assert mix(x.double(), y, np.random.default_rng(0))[0].dtype == torch.float64


def test_cutmix_box_by_hand():
    box = T.MixupCutmix.cutmix_box
    # lam 0.64: sides 0.6 × (10, 20) = (6, 12), centre (5, 10): rows 2..8, columns 4..16
    assert box(10, 20, 0.64, _FixedRng(5, 10)) == (2, 8, 4, 16)
    # odd sides 0.7 × (10, 10) → 7: half 3 (floor), centre at the corner: clipped to 0
    assert box(10, 10, 0.51, _FixedRng(0, 0)) == (0, 3, 0, 3)
    assert box(10, 10, 0.51, _FixedRng(9, 9)) == (6, 10, 6, 10)
    assert box(11, 13, 0.51, _FixedRng(4, 6)) == (1, 7, 2, 10)     # sides int(7.7) = 7, int(9.1) = 9
    # lam near 1: a 1-pixel side (half 0): an empty box at the corner
    assert box(10, 10, 0.99, _FixedRng(0, 0)) == (0, 0, 0, 0)
