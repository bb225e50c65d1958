"""Clip transforms: clip consistency, shapes, determinism, colour maths, Mixup/CutMix."""

import colorsys

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
