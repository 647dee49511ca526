"""Degradation presets: shapes and ranges kept, seeds reproduce, FOV black, statistics move
the documented way, spatial ranges scale with image size."""
import dataclasses

import pytest
import torch
from torch.nn import functional as F

from same_fast.degrade import PRESETS, degrade, degrade_with_tone, get_preset, ops
from same_fast.errors import InputError


def _image(n=2, c=3, h=96, w=80, seed=0):
    """Smooth random image with edges: a few rectangles on a gradient, in [0.2, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    x = 0.3 + 0.2 * yy * xx + torch.zeros(n, c, h, w)
    for _ in range(4):
        t = int(torch.randint(0, h // 2, (1,), generator=g))
        lft = int(torch.randint(0, w // 2, (1,), generator=g))
        x[..., t:t + h // 3, lft:lft + w // 3] += 0.3 * torch.rand(n, c, 1, 1, generator=g)
    return x.clamp(0.2, 0.8)


def _grad_energy(x):
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("hw", [(64, 64), (45, 71)])
def test_shape_range_dtype_kept(name, c, hw):
    x = _image(3, c, *hw)
    y = degrade(x, name, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_seed_reproduces_and_differs(name):
    x = _image(4, 3, 64, 64)
    a = degrade(x, name, torch.Generator().manual_seed(7))
    b = degrade(x, name, torch.Generator().manual_seed(7))
    c = degrade(x, name, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_fov_stays_black(name):
    x = _image(2, 3, 64, 64)
    fov = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    fov[..., 8:56, 8:56] = True
    y = degrade(x, name, torch.Generator().manual_seed(0), fov)
    assert float(y[~fov.expand_as(y)].abs().max()) == 0.0
    assert float(y[fov.expand_as(y)].mean()) > 0.05


def _only(name, **fields):
    return dataclasses.replace(get_preset(name), **fields)


def test_fov_mean_averages_each_channel_inside_the_field_of_view_only():
    x = _image(n=2)
    fov = torch.zeros(2, 96, 80)
    fov[0, 10:40, 5:50] = 1
    fov[1, :, :40] = 1
    x_out = x.clone()
    x_out[fov[:, None].expand_as(x) == 0] = 9.0  # whatever lies outside must not count
    got = ops.fov_mean(x_out, fov)
    assert got.shape == (2, 3, 1, 1)
    assert torch.allclose(got[0, :, 0, 0], x[0, :, 10:40, 5:50].mean((1, 2)))
    assert torch.allclose(got[1, :, 0, 0], x[1, :, :, :40].mean((1, 2)))
    assert torch.allclose(ops.fov_mean(x, None), x.mean((2, 3), keepdim=True))
    assert torch.equal(ops.fov_mean(x, torch.zeros(2, 1, 96, 80)), torch.zeros(2, 3, 1, 1))


def test_shen_blur_removes_detail_and_keeps_mean():
    x = _image(2, 3, 128, 128)
    y = degrade(x, _only("fundus-shen2020", types=("blur",)), torch.Generator().manual_seed(0))
    assert _grad_energy(y) < 0.5 * _grad_energy(x)
    assert abs(float(y.mean() - x.mean())) < 0.02


def test_shen_dark_illumination_darkens_and_bright_spots_brighten():
    x = _image(2, 3, 128, 128)
    g = torch.Generator().manual_seed(0)
    dark = _only("fundus-shen2020", types=("illum",), brightness=(0.5, 0.5), contrast=(1.0, 1.0),
                 saturation=(1.0, 1.0), halo_strength=(0.0, 0.0))
    assert float(degrade(x, dark, g).mean()) < 0.75 * float(x.mean())
    spots = _only("fundus-shen2020", types=("spot",), spot_strength=(0.5, 0.5))
    y = degrade(x, spots, g)
    assert (y >= x - 1e-6).all() and float(y.mean()) > float(x.mean()) + 0.001
    assert float((y - x).amax()) > 0.1  # a spot peaks at half way to white


def test_shen_saturation_factor_moves_colourfulness():
    x = _image(2, 3, 64, 64, seed=3)
    x[:, 0] *= 1.2  # make it colourful
    g = torch.Generator().manual_seed(0)
    kw = dict(types=("illum",), brightness=(1.0, 1.0), contrast=(1.0, 1.0),
              halo_strength=(0.0, 0.0), hole_depth_base=0.0, hole_depth_slope=0.0)
    low = degrade(x, _only("fundus-shen2020", saturation=(0.5, 0.5), **kw), g)
    high = degrade(x, _only("fundus-shen2020", saturation=(1.5, 1.5), **kw), g)

    def spread(t):
        return float((t - t.mean(1, keepdim=True)).abs().mean())
    assert spread(low) < spread(x.clamp(0, 1)) < spread(high)


def test_cataract_hazes_and_blurs():
    x = _image(2, 3, 128, 128)
    y = degrade(x, "fundus-cataract", torch.Generator().manual_seed(0))
    assert _grad_energy(y) < _grad_energy(x)
    # haze pulls toward each channel's maximum: the image gets flatter (lower contrast)
    assert float(y.std()) < float(x.std()) * 1.3


def test_gray_dark_branch_and_noise():
    flat = torch.full((4, 1, 64, 64), 0.5)
    dark = _only("gray", bright=(0.5, 0.7), contrast=(1.0, 1.0), p_halo=0.0, p_hole=0.0,
                 p_blur=0.0, noise_var=(0.0, 0.0), speckle_var=(0.0, 0.0))
    y = degrade(flat, dark, torch.Generator().manual_seed(0))
    assert 0.25 <= float(y.min()) and float(y.max()) <= 0.35 + 1e-6
    noisy = _only("gray", dark=(1.0, 1.0), bright=(1.0, 1.0), contrast=(1.0, 1.0), p_halo=0.0,
                  p_hole=0.0, p_blur=0.0, noise_var=(0.02, 0.02), speckle_var=(0.02, 0.02))
    y = degrade(flat, noisy, torch.Generator().manual_seed(0))
    # Gaussian noise of std sqrt(0.02) ~ 0.141, or speckle 0.5 * 0.141: both well above zero
    std = y.flatten(1).std(1)
    assert (std > 0.05).all() and (std < 0.2).all()


def test_ultrasound_speckle_follows_dynamic_range_and_grain():
    flat = torch.full((2, 1, 128, 128), 0.6)

    def run(**kw):
        p = _only("ultrasound-speckle", strength=(1.0, 1.0), gain=(1.0, 1.0),
                  contrast=(1.0, 1.0), p_blur=0.0, **kw)
        return degrade(flat, p, torch.Generator().manual_seed(0))

    wide = run(dynamic_range_db=(60.0, 60.0), grain_sigma=(1.0, 1.0))
    narrow = run(dynamic_range_db=(30.0, 30.0), grain_sigma=(1.0, 1.0))
    # log-compressed Rayleigh speckle: std of ln(amplitude) / D grows as the range shrinks
    assert float(wide.std()) > 0.03 and float(narrow.std()) > 1.5 * float(wide.std())
    coarse = run(dynamic_range_db=(60.0, 60.0), grain_sigma=(4.0, 4.0))

    def neighbour_corr(t):
        a, b = t[..., :, :-1].flatten(), t[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert neighbour_corr(coarse) > neighbour_corr(wide) + 0.1


def test_spatial_ranges_scale_with_size():
    # The same seed on a 2x upsampled image gives (after downsampling) about the same result.
    x = _image(2, 3, 96, 96)
    p = _only("fundus-shen2020", types=("blur",))
    small = degrade(x, p, torch.Generator().manual_seed(3))
    big = degrade(F.interpolate(x, scale_factor=2.0, mode="bilinear"), p,
                  torch.Generator().manual_seed(3))
    back = F.avg_pool2d(big, 2)
    assert float((back - small).abs().mean()) < 0.01


def test_fast_blur_matches_exact_blur():
    x = _image(2, 1, 160, 160)
    s = torch.tensor([8.0, 14.0])
    exact = ops.blur(x, s, exact=True)
    fast = ops.blur(x, s)
    assert float((exact - fast).abs().mean()) < 2e-3


def test_errors():
    x = _image(1, 3, 32, 32)
    with pytest.raises(InputError, match="unknown degradation preset"):
        degrade(x, "nope")
    with pytest.raises(InputError):
        degrade(x[0], "gray")
    with pytest.raises(InputError, match="FOV"):
        degrade(x, "gray", fov=torch.ones(1, 1, 16, 32))


def test_sensor_noise_is_zero_mean_and_grows_with_the_signal():
    # Two flat images, dark and bright, away from the clamp at 0 and 1.
    x = torch.cat([torch.full((1, 3, 128, 128), 0.2), torch.full((1, 3, 128, 128), 0.7)])
    p = dataclasses.replace(PRESETS["sensor-noise"], shot=(0.006, 0.006), read=(0.02, 0.02))
    r = degrade(x, p, torch.Generator().manual_seed(0)) - x
    assert abs(float(r.mean())) < 2e-3  # no change of brightness on average
    var = r.var(dim=(1, 2, 3))
    expect = 0.006 * torch.tensor([0.2, 0.7]) + 0.02 ** 2
    assert torch.allclose(var, expect, rtol=0.05), (var, expect)
    assert var[1] > 2 * var[0]  # shot noise: the brighter image is noisier


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_degrade_with_tone_makes_the_same_draws(name):
    c = 1 if name in ("gray", "ultrasound-speckle") else 3
    x = torch.rand(3, c, 48, 48)
    y = degrade(x, name, torch.Generator().manual_seed(5))
    y2, tone = degrade_with_tone(x, name, torch.Generator().manual_seed(5))
    assert torch.equal(y, y2)
    assert tone.shape == x.shape


def test_tone_target_is_the_clean_image_through_the_global_colour_factors_only():
    import dataclasses

    x = torch.rand(4, 3, 64, 64) * 0.8 + 0.1
    illum = dataclasses.replace(PRESETS["fundus-shen2020"], types=("illum",))
    g = torch.Generator().manual_seed(1)
    y, tone = degrade_with_tone(x, illum, g)
    # the draws that follow the type: brightness, contrast, saturation
    g = torch.Generator().manual_seed(1)
    torch.rand(4, generator=g)
    b, c, s = (0.5 + 0.9 * torch.rand(4, generator=g), 0.5 + torch.rand(4, generator=g),
               0.5 + torch.rand(4, generator=g))
    expect = ops.adjust_saturation(ops.adjust_contrast(ops.adjust_brightness(x, b), c),
                                      s).clamp(0, 1)
    assert torch.allclose(tone, expect, atol=1e-6)
    assert (y - tone).abs().mean() > 0.02  # halo and hole are not in the target
    blur = dataclasses.replace(PRESETS["fundus-shen2020"], types=("blur",))
    assert torch.equal(degrade_with_tone(x, blur, torch.Generator().manual_seed(1))[1], x)
    # no global colour factor in fundus-local: its target is the clean image, its input is not
    y, tone = degrade_with_tone(x, "fundus-local", torch.Generator().manual_seed(2))
    assert torch.allclose(tone, x, atol=1e-6) and (y - x).abs().mean() > 0.01


def test_cataract_tone_keeps_the_colour_factors_and_drops_the_haze():
    x = torch.rand(2, 3, 64, 64) * 0.6 + 0.2
    y, tone = degrade_with_tone(x, "fundus-cataract", torch.Generator().manual_seed(0))
    assert not torch.allclose(tone, x, atol=1e-3)  # contrast/brightness/colour factors
    # the haze brightens and flattens the input; the tone target keeps the clean detail
    assert tone.std((2, 3)).mean() > y.std((2, 3)).mean()


def test_tone_can_keep_the_blur_and_take_only_the_smooth_families_away():
    """``keep_blur``: the same draws, and a tone that keeps each sample's blur (the blur
    family's Gaussian, the cataract's box blur) while the light, spots and haze go."""
    import dataclasses

    x = torch.rand(3, 3, 64, 64) * 0.6 + 0.2
    for name in ("fundus-local", "fundus-shen2020", "fundus-cataract"):
        plain = degrade_with_tone(x, name, torch.Generator().manual_seed(3))
        kept = degrade_with_tone(x, name, torch.Generator().manual_seed(3), keep_blur=True)
        assert torch.equal(plain[0], kept[0])  # the degraded input does not change
    blur = dataclasses.replace(PRESETS["fundus-local"], types=("blur",))
    y, tone = degrade_with_tone(x, blur, torch.Generator().manual_seed(1), keep_blur=True)
    assert torch.allclose(tone, y, atol=1e-6)  # blur is all there is: the tone is the input
    assert (tone - x).abs().mean() > 0.02
    haze = dataclasses.replace(PRESETS["fundus-local"], types=("cataract",))
    x = torch.rand(3, 3, 512, 512) * 0.6 + 0.2  # the cataract's blur is a few taps at 512 px
    y, tone = degrade_with_tone(x, haze, torch.Generator().manual_seed(1), keep_blur=True)
    _, sharp = degrade_with_tone(x, haze, torch.Generator().manual_seed(1))
    assert torch.allclose(sharp, x, atol=1e-6)  # no colour factors under fundus-local
    # the blurred clean image: smoother than the clean one, and the veil gone from it

    def detail(t):
        return (t - F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)).abs().mean()

    assert detail(tone) < 0.9 * detail(x)
    assert (tone - y).abs().mean() > 0.02
    with pytest.raises(InputError, match="keep_blur"):
        degrade_with_tone(x[:, :1], "gray", torch.Generator().manual_seed(0), keep_blur=True)


def test_jpeg_matches_a_real_codec_and_loses_more_at_low_quality():
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    img = data.astronaut()[:120, :136]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    errs = []
    for q in (20, 80):
        ours = ops.jpeg(x, torch.tensor([float(q)]))[0].permute(1, 2, 0).numpy() * 255
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        ref = np.asarray(Image.open(buf)).astype(float)
        assert np.abs(ours - ref).mean() < 1.5  # PIL's libjpeg, within rounding
        errs.append(np.abs(ours - img).mean())
    assert errs[0] > 1.5 * errs[1]
    grey = ops.jpeg(x[:, :1], torch.tensor([30.0]))
    assert grey.shape == (1, 1, 120, 136) and 0 < (grey - x[:, :1]).abs().mean() < 0.05


def test_test_shifts_are_not_the_generic_redegradation():
    from same_fast.degrade import SHIFTS

    assert "generic-mix" in PRESETS and {s.name for s in SHIFTS} == {
        "shift-noise-jpeg", "shift-haze-gamma", "shift-blur-light"}
    x = _image(n=4)
    for s in SHIFTS:
        y = degrade(x, s.name, torch.Generator().manual_seed(0))
        assert (y - x).abs().mean() > 0.01, s.name
    # haze-gamma lowers local contrast; blur-light removes detail and darkens the corners
    hz = degrade(x, "shift-haze-gamma", torch.Generator().manual_seed(0))
    assert hz.std((2, 3)).mean() < x.std((2, 3)).mean()
    big = _image(n=2, h=384, w=384)
    bl = degrade(big, "shift-blur-light", torch.Generator().manual_seed(0))
    assert _grad_energy(bl) < 0.7 * _grad_energy(big)


def test_pillbox_blur_is_a_normalised_disc():
    x = torch.zeros(2, 1, 41, 41)
    x[..., 20, 20] = 1
    y = ops.pillbox_blur(x, torch.tensor([0.0, 5.0]))
    assert torch.allclose(y[0], x[0])  # radius 0: identity
    assert y[1].sum() == pytest.approx(1.0, abs=1e-5)
    assert y[1, 0, 20, 24] > 0 and y[1, 0, 20, 27] == 0  # inside the disc, and outside it
    assert y[1, 0, 20, 16] == pytest.approx(y[1, 0, 24, 20]) == pytest.approx(y[1, 0, 20, 20])


def test_selection_light_blur_shift_defocuses_and_lights_from_one_side():
    x = torch.full((2, 3, 128, 128), 0.5)
    y = degrade(x, "select-light-blur", torch.Generator().manual_seed(0))
    # a flat image: only the light changes it, from unchanged on one side to 50-75 % on the other
    assert float(y.amax()) == pytest.approx(0.5, abs=1e-4)
    assert 0.25 <= float(y.amin()) <= 0.38
    big = _image(n=2, h=384, w=384)
    assert _grad_energy(degrade(big, "select-light-blur", torch.Generator().manual_seed(0))) \
        < 0.8 * _grad_energy(big)


def _bscan(n=2, h=96, w=128, seed=0):
    """A toy B-scan: dark vitreous, a bright layered retina from a third of the height down."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(h).view(1, 1, h, 1).float()
    x = 0.08 + torch.zeros(n, 1, h, w)
    x = torch.where(rows > h // 3, 0.35 + 0.3 * (rows % 12 < 4).float(), x)
    return (x + 0.05 * torch.rand(n, 1, h, w, generator=g)).clamp(0, 1)


# The oct preset with every family off: degrade is the identity (up to float rounding).
_OCT_OFF = dict(p_blur=0.0, p_shadow=0.0, p_motion=0.0, p_jpeg=0.0, signal_loss_db=(0.0, 0.0),
                looks=(1e6, 1e6), noise_floor=(0.0, 0.0), gain=(1.0, 1.0))


def _oct(x, seed=0, **on):
    return degrade(x, _only("oct", **{**_OCT_OFF, **on}), torch.Generator().manual_seed(seed))


def test_oct_families_off_is_identity():
    x = _bscan()
    assert float((_oct(x) - x).abs().max()) < 2e-3


def test_oct_speckle_grows_as_looks_fall():
    x = _bscan()
    few = (_oct(x, looks=(2.0, 2.0)) - x).abs().mean()
    many = (_oct(x, looks=(16.0, 16.0)) - x).abs().mean()
    assert float(many) > 0.005 and float(few) > 2 * float(many)


def test_oct_blur_is_anisotropic():
    x = torch.full((1, 1, 96, 128), 0.1)
    x[..., 48, 64] = 1.0  # a point reflector
    axial = _oct(x, p_blur=1.0, axial_sigma=(16.0, 16.0), lateral_sigma=(0.01, 0.01))[0, 0]
    assert float(axial[51, 64]) > 0.3 and abs(float(axial[48, 67]) - 0.1) < 0.01
    lateral = _oct(x, p_blur=1.0, axial_sigma=(0.01, 0.01), lateral_sigma=(16.0, 16.0))[0, 0]
    assert float(lateral[48, 67]) > 0.3 and abs(float(lateral[51, 64]) - 0.1) < 0.01


def test_oct_signal_loss_and_gain_darken():
    x = _bscan()
    loss = _oct(x, signal_loss_db=(6.0, 6.0), dynamic_range_db=(30.0, 30.0))
    # 6 dB of 30 dB: the log display drops by 0.2 where the signal stays above the floor
    retina = x > 0.3
    assert abs(float((x - loss)[retina].mean()) - 0.2) < 0.01
    gain = _oct(x, gain=(0.7, 0.7))
    assert torch.allclose(gain, 0.7 * x, atol=2e-3)


def test_oct_shadows_darken_columns_below_the_surface_only():
    x = _bscan(h=96)
    y = _oct(x, p_shadow=1.0, shadows=(3, 3), shadow_depth=(0.9, 0.9))
    d = x - y
    assert float(d[..., :25, :].abs().max()) < 2e-3  # the vitreous above the retina is kept
    col = d[..., 50:, :].mean(2)  # (N, 1, W): darkening per column below the surface
    assert float(col.amax()) > 0.03 and float(col.amin()) < 0.005  # bands, not a global drop


def test_oct_motion_shifts_whole_a_scans():
    x = _bscan()
    y = _oct(x, p_motion=1.0, motion_bands=(2, 2), motion_shift=(6.0, 6.0))
    moved = ((y - x).abs().amax(2) > 0.01).flatten(1)  # (N, W) columns that changed
    assert bool(moved.any(1).all()) and bool((~moved).any(1).all())
    # a moved column is the clean column shifted by 6 * 128/512... rounded: 1 or 2 px (scaled)
    n, c = [int(v) for v in moved.nonzero()[0]]
    col_y, col_x = y[n, 0, 30:80, c], x[n, 0, :, c]
    assert any(torch.allclose(col_y, col_x[30 - s:80 - s], atol=2e-3) for s in (-2, -1, 1, 2))


def test_oct_jpeg_quantisation_grows_with_compression():
    x = _bscan()
    err = [float((ops.jpeg(x, torch.full((2,), q)) - x).abs().mean())
           for q in (100.0, 50.0, 10.0)]
    assert err[0] < 1.5 / 255 and err[0] < err[1] < err[2]
    y = _oct(x, p_jpeg=1.0, jpeg_quality=(10.0, 10.0))
    assert float((y - x).abs().mean()) > 2 * err[0]
