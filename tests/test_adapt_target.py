"""What adaptation reads off the target itself (issue #21): the noise level behind the default
re-degraded view, the picker's calibration share from its own score distribution, and the
views (whole frames for context networks, paper-style frame crops, field-of-view masks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from same_fast.adapt.augment import AugmentConfig, random_views
from same_fast.adapt.loop import AdaptConfig, adapt_offline, redegradation
from same_fast.degrade import degrade, ops
from same_fast.degrade.estimate import (
    TargetNoise,
    blur_sigma,
    jpeg_noise_sigma,
    jpeg_quality,
    noise_sigma,
    target_redegradation,
)
from same_fast.errors import InputError
from same_fast.nn import SAMENet
from same_fast.picker import share_from_scores


def _smooth(n=3, c=3, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic",
                                           align_corners=False).clamp(0.1, 0.9)


@pytest.mark.parametrize("std", [0.0, 0.01, 0.03])
def test_noise_estimate_reads_the_added_noise(std):
    x = _smooth()
    y = (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    est = noise_sigma(y)
    assert torch.all((est - std).abs() < 0.2 * std + 0.003), (est, std)


def test_noise_estimate_ignores_what_is_outside_the_fov():
    x = _smooth(n=1)
    fov = torch.zeros(1, 1, 96, 96)
    fov[..., 20:76, 20:76] = 1
    noisy_outside = x + (1 - fov) * 0.2 * torch.randn_like(x)
    assert noise_sigma(noisy_outside, fov)[0] < 0.005 < noise_sigma(noisy_outside)[0]


def test_target_redegradation_follows_the_target():
    x = _smooth(n=4)
    clean = target_redegradation(list(x))
    noisy = target_redegradation(list((x + 0.04 * torch.randn_like(x)).clamp(0, 1)))
    assert clean.sigma == pytest.approx(0.005)  # the floor
    assert noisy.sigma == pytest.approx(0.04, rel=0.2)
    y = degrade(x, noisy, torch.Generator().manual_seed(0))
    assert 0.02 < float(noise_sigma(y).mean()) - 0.0 < 0.07
    assert isinstance(redegradation(AdaptConfig(), list(x)), TargetNoise)
    assert redegradation(AdaptConfig(redegrade_preset="generic-mix"), list(x)) == "generic-mix"


def _edges(n=2, size=256, seed=0):
    """Piecewise-constant scenes (random rectangles) drawn at 4x and area-resized to ``size``:
    sharp step edges, as a resized photograph's."""
    g = torch.Generator().manual_seed(seed)
    big = torch.full((n, 3, size * 4, size * 4), 0.3)
    for i in range(n):
        for _ in range(40):
            y0, x0 = torch.randint(0, size * 4 - 64, (2,), generator=g).tolist()
            h, w = torch.randint(32, size * 2, (2,), generator=g).tolist()
            big[i, :, y0:y0 + h, x0:x0 + w] = 0.1 + 0.8 * torch.rand(3, 1, 1, generator=g)
    return torch.nn.functional.interpolate(big, size=(size, size), mode="area")


def test_blur_estimate_reads_the_blur_relative_to_the_frame():
    x = _edges()
    sharp = blur_sigma(x)
    assert torch.all((sharp > 0.3) & (sharp < 0.7)), sharp  # what area resizing leaves
    est = {s: blur_sigma(ops.blur(x, torch.full((2,), float(s)), exact=True)) for s in (1, 2, 3)}
    for s, e in est.items():
        assert torch.all((e - (s * s + 0.25) ** 0.5).abs() < 0.25 * s), (s, e)
    # the same scene at twice the size, blurred twice as much, reads the same
    x2 = _edges(size=512)
    e2 = blur_sigma(ops.blur(x2, torch.full((2,), 4.0), exact=True))
    assert torch.allclose(e2, est[2], rtol=0.2), (e2, est[2])
    # noise makes an image read sharp, not blurred
    noisy = (ops.blur(x, torch.full((2,), 2.0)) + 0.03 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(blur_sigma(noisy) < 0.5 * est[2])


def _jpeg(x, quality, std=0.0, seed=1):
    """``x`` with Gaussian noise, saved as an 8-bit JPEG at ``quality`` and decoded."""
    g = torch.Generator().manual_seed(seed)
    y = (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return (ops.jpeg(y, torch.full((len(x),), float(quality))) * 255).round() / 255


@pytest.mark.parametrize("quality", [30, 50, 75])
def test_jpeg_quality_is_read_from_the_pixels(quality):
    x = _smooth(n=2, size=128)
    for y in _jpeg(x, quality, std=0.02):
        assert jpeg_quality(y) == pytest.approx(quality, abs=2.5)
    # no lattice: a lossless 8-bit image, and a JPEG resized afterwards
    assert np.isnan(jpeg_quality((x[0] * 255).round() / 255))
    resized = torch.nn.functional.interpolate(_jpeg(x, quality), scale_factor=0.9, mode="bilinear")
    assert np.isnan(jpeg_quality((resized[0] * 255).round() / 255))


def test_jpeg_noise_estimate_sees_through_the_compression():
    x = _smooth(n=2, size=128)
    est = {std: [jpeg_noise_sigma(y, None, 50) for y in _jpeg(x, 50, std)] for std in (0, 0.03, 0.06)}
    assert max(est[0]) < min(est[0.03]) and max(est[0.03]) < min(est[0.06])
    assert min(est[0.06]) > 0.03  # Immerkaer's reads the compressed noise as about 0.01
    assert float(noise_sigma(_jpeg(x, 50, 0.06)).max()) < 0.015


def test_target_redegradation_compresses_as_a_jpeg_target_was():
    x = _smooth(n=4, size=128)
    r = target_redegradation(list(_jpeg(x, 40, std=0.03)))
    assert r.p_jpeg == 1.0 and r.jpeg_quality[0] < 40 < r.jpeg_quality[1]
    assert r.jpeg_images == (4, 4) and r.describe().startswith("JPEG at quality ")
    assert "in 4 of 4 image(s)" in r.describe()
    assert 0.015 < r.sigma < 0.05
    assert target_redegradation(list(x)).p_jpeg == TargetNoise(0.01).p_jpeg  # not a JPEG: as before


def test_offline_adaptation_keeps_the_source_where_the_target_shows_nothing_to_undo(tmp_path):
    from same_fast.adapt.audit import AuditLog, read_audit

    net = SAMENet(3, "lite", base=4, levels=3)
    clean = list(_smooth(n=3, size=64))
    noisy = [(x + 0.04 * torch.randn_like(x)).clamp(0, 1) for x in clean]
    cfg = AdaptConfig(steps=2, size=32, batch=2)
    with AuditLog(tmp_path / "a.jsonl") as audit:
        kept = adapt_offline(net, clean, None, cfg, audit=audit)
    assert kept.skipped and kept.history == []
    assert all(torch.equal(a, b) for a, b in zip(kept.student.state_dict().values(),
                                                  net.state_dict().values(), strict=True))
    last = read_audit(tmp_path / "a.jsonl")[-1]
    assert last["event"] == "skipped" and "nothing the automatic view models" in last["student_view"]
    assert len(adapt_offline(net, noisy, None, cfg).history) == 2  # noise: something to undo
    forced = adapt_offline(net, clean, None, AdaptConfig(steps=2, size=32, batch=2,
                                                          skip_unmeasured=False))
    assert forced.skipped is None and len(forced.history) == 2
    # a named re-degradation or none at all is the user's choice: never skipped
    assert len(adapt_offline(net, clean, None, AdaptConfig(steps=2, size=32, batch=2,
                                                            redegrade=False)).history) == 2


def test_online_adaptation_holds_while_the_stream_shows_nothing_to_undo(tmp_path):
    # measured on clean IDRiD photographs: online adaptation drifted 0.014 SSIM below the source
    # (2000 frames, either learning rate); so a stream that shows nothing the automatic view
    # models is left alone, as offline keeps the source, and read again every `buffer` frames
    from same_fast.adapt.audit import AuditLog, read_audit
    from same_fast.adapt.online import HOLD_REASON, OnlineAdapter

    net = SAMENet(3, "lite", base=4, levels=3)
    clean = list(_smooth(n=8, size=64))
    noisy = [(x + 0.04 * torch.randn_like(x)).clamp(0, 1) for x in _smooth(n=8, size=64, seed=1)]
    cfg = AdaptConfig(mode="online", every=1, buffer=4, size=32, batch=2)
    with AuditLog(tmp_path / "a.jsonl") as audit:
        ad = OnlineAdapter(net, None, cfg, audit=audit)
        for x in clean:
            assert ad.observe(x) == []
        assert ad.steps == 0 and ad.holding == HOLD_REASON and ad.stats()["holding"]
        assert all(torch.equal(a, b) for a, b in zip(ad.served.state_dict().values(),
                                                      net.state_dict().values(), strict=True))
        steps = [len(ad.observe(x)) for x in noisy]  # the buffer refills with noisy frames
    assert ad.holding is None and ad.steps > 0 and steps[:3] == [0, 0, 0] and steps[-1] == 1
    assert "noise" in ad.stats()["student_view"]
    events = [r["event"] for r in read_audit(tmp_path / "a.jsonl") if r["event"] != "step"]
    assert events == ["start", "hold", "resume", "view"]  # one hold, however long it lasts
    forced = OnlineAdapter(net, None, AdaptConfig(mode="online", every=1, buffer=4, size=32,
                                                  batch=2, skip_unmeasured=False))
    for x in clean:
        forced.observe(x)
    assert forced.steps == len(clean) and forced.holding is None


def test_share_from_scores_finds_an_implausible_group_and_leaves_one_group_alone():
    rng = np.random.default_rng(0)
    good = rng.normal(1.2, 0.05, 70)
    bad = rng.normal(0.3, 0.05, 30)
    assert share_from_scores(np.concatenate([good, bad])) == pytest.approx(0.7, abs=0.02)
    assert share_from_scores(rng.normal(1.0, 0.1, 100)) == 0.9  # no second group: the default
    assert share_from_scores([1.0, 1.0, 1.0, 1.0]) == 0.9


def test_views_whole_frames_fraction_and_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, 60)
    fov = torch.zeros(1, 40, 60)
    fov[:, 5:35, 5:55] = 1
    # whole frames keep their own scale: padded (not resized) to the batch's largest side
    # rounded up to the network's multiple; the view size does not apply
    y = torch.rand(3, 20, 30)
    v, m = random_views([x, y], AugmentConfig(size=32, whole=True, hflip=0, vflip=0,
                                              multiple=16), g, [fov, None], with_masks=True)
    assert v.shape == (2, 3, 64, 64) and m.shape == (2, 1, 64, 64)
    assert torch.equal(v[0, :, 12 + 5:12 + 35, 2 + 5:2 + 55], x[:, 5:35, 5:55])  # not resampled
    assert float(m[0].sum()) == 30 * 50 and float(m[1].sum()) == 20 * 30
    assert float(v[0][:, m[0, 0] == 0].abs().max()) == 0.0  # outside the FOV and padding: black
    capped = random_views([x], AugmentConfig(whole=True, multiple=16, max_whole=32), g)
    assert capped.shape == (1, 3, 32, 32)
    v, m = random_views([x], AugmentConfig(size=16, frame_fraction=0.8), g, with_masks=True)
    assert v.shape == (1, 3, 16, 16) and bool(m.all())


def test_context_networks_adapt_on_whole_frames():
    cfg = AdaptConfig()
    assert cfg.augment_config(32, context=True).whole
    assert not cfg.augment_config(32, context=False).whole
    with pytest.raises(InputError, match="views"):
        AdaptConfig(views="tiles").check()
    net = SAMENet(3, "lite", base=4, levels=3, context=True)
    # a light field pools nothing over the frame: crops, like a plain network
    from same_fast.adapt.loop import reads_whole_frame
    assert reads_whole_frame(net)
    assert not reads_whole_frame(SAMENet(3, "lite", base=4, levels=3, field=True))
    imgs = list(_smooth(n=2, size=64))
    res = adapt_offline(net, imgs, None, AdaptConfig(steps=2, size=32, batch=2,
                                                     skip_unmeasured=False),
                        [torch.ones(1, 64, 64)] * 2)
    assert len(res.history) == 2 and np.isfinite(res.history[-1]["loss"])


def test_offline_adaptation_sets_the_picker_share_from_the_target(reject_all_picker):
    """By default a picker without a calibration share gets one from the target's own scores
    before the first step (recorded in its config); the switch turns that off, and an explicit
    share is kept."""
    from same_fast.picker import PickerConfig, load_picker

    net = SAMENet(1, "lite", base=4, levels=3)
    imgs = list(_smooth(n=4, c=1, size=32))
    cfg = AdaptConfig(steps=1, size=32, batch=2, modality="ultrasound")
    pick = load_picker(reject_all_picker)
    adapt_offline(net, imgs, pick, cfg)
    assert 0.2 <= pick.config.calibrate <= 0.95
    pick = load_picker(reject_all_picker)
    adapt_offline(net, imgs, pick, AdaptConfig(steps=1, size=32, batch=2, modality="ultrasound",
                                               picker_share_auto=False))
    assert pick.config.calibrate == 0
    pick = load_picker(reject_all_picker, config=PickerConfig(calibrate=0.5))
    adapt_offline(net, imgs, pick, cfg)
    assert pick.config.calibrate == 0.5


def _speckled(grain, std=0.06, n=3, h=160, w=192, seed=0):
    """Toy B-scans: a smooth layered band plus Gaussian speckle correlated over ``grain`` px."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(h).view(1, 1, h, 1).float()
    x = 0.2 + 0.4 * torch.exp(-((rows - h / 2) / (h / 5)) ** 2).expand(n, 1, h, w)
    z = ops.blur(torch.randn(n, 1, h, w, generator=g), torch.full((n,), float(grain)), exact=True)
    return (x + std * z / z.std((1, 2, 3), keepdim=True)).clamp(0, 1)


def test_speckle_grain_reads_strength_and_axial_grain():
    from same_fast.degrade.estimate import speckle_grain

    fine, coarse = speckle_grain(_speckled(0.7)), speckle_grain(_speckled(1.4))
    assert torch.all(coarse[:, 1] > fine[:, 1] + 0.4), (fine, coarse)
    assert torch.all((fine[:, 1] - 0.7).abs() < 0.2) and torch.all((coarse[:, 1] - 1.4).abs() < 0.35)
    # the strength is what the 3 px smoothing removes: most of fine speckle, less of coarse
    assert torch.all((fine[:, 0] > 0.04) & (fine[:, 0] < 0.065))
    assert torch.all(speckle_grain(_speckled(0.7, std=0.02))[:, 0] < 0.5 * fine[:, 0])


def test_oct_view_adds_speckle_only_where_it_is_coarser_than_the_source_s():
    from same_fast.degrade.estimate import GRAIN_FLOOR, TargetSpeckle, speckle_grain

    cfg = AdaptConfig(modality="oct")
    fine = redegradation(cfg, list(_speckled(0.6)))
    assert isinstance(fine, TargetSpeckle) and not fine.measured and fine.sigma == 0
    x = _speckled(0.6)
    assert torch.equal(degrade(x, fine, torch.Generator().manual_seed(0)), x)  # the teacher's view
    assert "no speckle coarser than the source's" in fine.describe()
    coarse = redegradation(cfg, list(_speckled(1.4)))
    assert coarse.measured and coarse.grain > GRAIN_FLOOR and coarse.sigma > 0.03
    y = degrade(x, coarse, torch.Generator().manual_seed(0))
    read = speckle_grain(y)
    assert torch.all(read[:, 0] > speckle_grain(x)[:, 0] + 0.01)  # stronger speckle
    assert torch.all(read[:, 1] > speckle_grain(x)[:, 1])         # and coarser
    assert "correlated over" in coarse.describe()
    # fundus keeps its noise-and-JPEG view
    assert isinstance(redegradation(AdaptConfig(modality="fundus"), list(_smooth())), TargetNoise)


def test_offline_oct_adaptation_runs_only_on_coarser_speckle():
    net = SAMENet(1, "lite", base=4, levels=3)
    cfg = AdaptConfig(steps=2, size=32, batch=2, modality="oct")
    kept = adapt_offline(net, list(_speckled(0.6, n=2)), None, cfg)
    assert kept.skipped and kept.history == [] and "speckle" in kept.view
    ran = adapt_offline(net, list(_speckled(1.4, n=2)), None, cfg)
    assert ran.skipped is None and len(ran.history) == 2 and "correlated over" in ran.view


def test_adaptation_benchmark_arms_and_overrides(bench_script):
    # benchmarks/adaptation_shifts.py: the paper arm is faithful (its Adam rate is the paper's
    # 2e-4, not fundus's 2e-3); --set types each field and refuses what is not a scalar field
    mod = bench_script("adaptation_shifts")
    paper, _ = mod.arm_setup("paper", "shift-noise-jpeg", 300, 128, 0)
    default, uses_picker = mod.arm_setup("default", "shift-noise-jpeg", 300, 128, 0)
    assert paper.learning_rate() == 2e-4 and default.learning_rate() == 2e-3 and uses_picker
    oracle, _ = mod.arm_setup("oracle-redegrade", "shift-noise-jpeg", 300, 128, 0)
    assert default.view_strength() == 1.5 and oracle.view_strength() == 1.0
    assert mod.parse_overrides(["redegrade_strength=1"]) == {"redegrade_strength": 1.0}
    # --skip-images gives a fresh set after the first N; past the end is a clear exit
    assert mod.load_target("skimage-retina", 64, 0)[2] == ["skimage-retina/retina.jpg"]
    with pytest.raises(SystemExit, match="no images after the first 1"):
        mod.load_target("skimage-retina", 64, 0, skip=1)
    assert mod.parse_overrides(["lr=5e-4", "skip_unmeasured=false", "batch=8"]) == \
        {"lr": 5e-4, "skip_unmeasured": False, "batch": 8}
    mt, _ = mod.arm_setup("mean-teacher", "none", 300, 128, 0, {"lr": 5e-4})
    assert mt.learning_rate() == 5e-4 and mt.redegrade is False
    for bad in (["nope=1"], ["lr"], ["betas=1"]):
        with pytest.raises(SystemExit, match="--set wants FIELD=VALUE"):
            mod.parse_overrides(bad)


def test_adaptation_benchmark_over_seeds_keeps_each_run_and_their_mean(bench_script, tmp_path):
    # benchmarks/adaptation_shifts.py --seeds: one whole run per seed (degradation, adaptation,
    # bootstrap) and per case and arm every seed's gain and their mean, in one JSON; arms of
    # one seed differ by more than their intervals over images, so arms are compared this way
    import json

    mod = bench_script("adaptation_shifts")
    out = tmp_path / "seeds.json"
    common = ["--camera", "skimage-retina", "--shift", "sensor-noise", "--arm", "mean-teacher",
              "--steps", "2", "--size", "64", "--view", "32"]
    mod.main(common + ["--seeds", "0,1", "--json", str(out)])
    res = json.loads(out.read_text())
    assert list(res["runs"]) == ["seed0", "seed1"] and res["provenance"]["seeds"] == {"seeds": [0, 1]}
    case = "skimage-retina/sensor-noise"
    per = []
    for s in (0, 1):
        run = res["runs"][f"seed{s}"]
        assert run["provenance"]["seeds"] == {"degradation": s, "adaptation": s, "bootstrap": s}
        per.append(run["cases"][case]["arms"]["mean-teacher"]["gain_ssim"]["mean"])
    v = res["mean_over_seeds"][case]["mean-teacher"]["gain_ssim"]
    assert v["per_seed"] == per and v["mean"] == pytest.approx(sum(per) / 2)
    assert v["min"] == min(per) and v["max"] == max(per)
    source = [res["runs"][f"seed{s}"]["cases"][case]["arms"]["source"]["ssim"]["mean"] for s in (0, 1)]
    assert source[0] != source[1]  # a seed draws its own degradation
    with pytest.raises(SystemExit):
        mod.main(common + ["--seeds", "0,x"])
