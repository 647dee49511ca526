"""The pseudo-label picker: per-sample device weights, thresholds, all-rejected batches, files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils._python_dispatch

from same_fast.adapt.step import AdaptStep, StepConfig
from same_fast.errors import CheckpointError
from same_fast.nn import SAMENet
from same_fast.nn.iqa import IQANet
from same_fast.nn.isd import StructureVAE
from same_fast.picker import Picker, PickerConfig, load_picker, save_picker


def _picker(config: PickerConfig | None = None, channels: int = 1, thr: float = 0.5) -> Picker:
    torch.manual_seed(0)
    iqa = IQANet(channels, width=4, depth=2, size=32)
    isd = StructureVAE(size=16, latent=4, width=4)
    return Picker(iqa, isd, thr, "ultrasound", config)


def test_hard_rule_per_sample():
    p = _picker(PickerConfig(p_good=0.8), thr=0.2)
    s = {"p_good": torch.tensor([0.9, 0.5, 0.95, 0.9, 0.81]),
         "good_top": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
         "isd": torch.tensor([0.1, 0.1, 0.1, 0.3, 0.19])}
    w = p.weights_from_scores(s)
    assert w.dtype == torch.float32 and w.shape == (5,)
    # good & confident & plausible; not confident; good not top; implausible; all pass
    assert w.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_soft_rule_is_monotone_and_switchable():
    p = _picker(PickerConfig(p_good=0.8, soft=True, temperature=0.05), thr=0.2)
    s = {"p_good": torch.tensor([0.6, 0.8, 0.99]), "good_top": torch.ones(3),
         "isd": torch.tensor([0.1, 0.1, 0.1])}
    w = p.weights_from_scores(s)
    assert 0 < w[0] < w[1] < w[2] < 1
    assert abs(float(w[1]) - 0.5 * float(torch.sigmoid(torch.tensor(10.0)))) < 1e-5
    off = _picker(PickerConfig(use_iqa=False, use_isd=False), thr=0.2)
    assert off.weights_from_scores(s).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("channels", [1, 3])
def test_weights_are_per_sample_and_on_device(channels):
    """A sample's weight and scores do not depend on the rest of the batch (frozen BN); colour
    inputs go through the device colour spaces."""
    p = _picker(PickerConfig(p_good=0.0), channels=channels, thr=1e9)
    p.train()  # must stay in eval: the assessors are frozen judges
    assert not p.iqa.training
    g = torch.Generator().manual_seed(1)
    img = torch.rand(5, channels, 40, 48, generator=g) * 2 - 1
    logits = torch.randn(5, 1, 40, 48, generator=g)
    batch = p.scores(img, logits)
    for i in range(5):
        single = p.scores(img[i:i + 1], logits[i:i + 1])
        for k in ("p_good", "isd"):
            torch.testing.assert_close(single[k][0], batch[k][i], rtol=1e-4, atol=1e-5)
    w = p(img, logits)
    assert w.device == img.device and w.shape == (5,)
    assert not any(q.requires_grad for q in p.parameters())


def test_all_rejected_batch_gives_zero_loss_and_no_update():
    picker = _picker(PickerConfig(p_good=1.01), thr=0.5)  # nothing can pass
    torch.manual_seed(0)
    student = SAMENet(1, "lite", base=4, max_channels=8, levels=3)
    teacher = SAMENet(1, "lite", base=4, max_channels=8, levels=3)
    teacher.load_state_dict(student.state_dict())
    before = {k: v.clone() for k, v in student.state_dict().items()}
    step = AdaptStep(student, teacher, StepConfig(w_entropy=0.0), picker)
    out = step(torch.rand(3, 1, 16, 16) * 2 - 1)
    assert torch.isfinite(out["loss"]) and float(out["loss"]) == 0.0
    assert float(out["accepted"]) == 0.0 and out["weights"].tolist() == [0.0, 0.0, 0.0]
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_planted_implausible_structure_scores_higher_after_training():
    """A VAE trained on blob masks scores random noise maps as less plausible."""
    torch.manual_seed(0)
    isd = StructureVAE(size=16, latent=4, width=8, beta=0.01)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    g = torch.Generator().manual_seed(0)

    def blobs(n: int) -> torch.Tensor:
        c = torch.rand(n, 2, generator=g) * 8 + 4
        r = torch.rand(n, generator=g) * 2 + 2
        d = (yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2
        return (d < r[:, None, None] ** 2).float()[:, None]

    opt = torch.optim.Adam(isd.parameters(), lr=3e-3)
    for _ in range(80):
        loss = isd.loss(blobs(16), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    isd.eval()
    good = isd.score(blobs(32))
    noise = isd.score(torch.rand(32, 1, 16, 16, generator=g))
    assert float(noise.min()) > float(good.median())


def test_checkpoint_round_trip(tmp_path):
    p = _picker(thr=0.37)
    path = save_picker(tmp_path / "p.safetensors", p.iqa, p.isd, 0.37, "ultrasound")
    q = load_picker(path)
    assert q.isd_threshold == pytest.approx(0.37) and q.p_good == pytest.approx(0.6)
    img, logits = torch.rand(2, 1, 32, 32) * 2 - 1, torch.randn(2, 1, 32, 32)
    a, b = p.scores(img, logits), q.scores(img, logits)
    torch.testing.assert_close(a["p_good"], b["p_good"])
    torch.testing.assert_close(a["isd"], b["isd"])
    with pytest.raises(CheckpointError, match="no such picker"):
        load_picker(tmp_path / "missing.safetensors")


def test_enhancer_checkpoint_is_not_a_picker(tmp_path):
    from same_fast.models import save_model

    path = save_model(tmp_path / "m.safetensors", SAMENet(1, "lite", base=4, max_channels=8,
                                                          levels=3))
    with pytest.raises(CheckpointError, match="not a picker"):
        load_picker(path)


# --- the shipped pickers: the fused op gives the numbers their thresholds were calibrated on -----

def _calibrated_scores(p: Picker, image: torch.Tensor, logits: torch.Tensor) -> dict:
    """Picker.scores as it was when the shipped thresholds were calibrated (before it ran through
    ops.picker_weights), StructureVAE.score's formula written out."""
    x01 = ((image.float() + 1) * 0.5).clamp(0, 1)
    probs = p.iqa.probs(x01)
    p_good = probs[:, 0]
    good_top = (probs.argmax(1) == 0).float()
    vae = p.isd
    x = vae.prepare(torch.sigmoid(logits.float()))
    mu, logvar = vae.encode(x)
    q = torch.sigmoid(vae.decode(mu)).clamp(1e-6, 1 - 1e-6)
    xc = x.clamp(1e-6, 1 - 1e-6)
    rec = (xc * (xc / q).log() + (1 - xc) * ((1 - xc) / (1 - q)).log()).flatten(1).mean(1)
    isd = rec + vae.beta * (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(1))
    parts = []
    if p.config.use_iqa:
        parts.append(p_good / p.p_good)
    if p.config.use_isd:
        parts.append(p.isd_threshold / isd.clamp_min(1e-8))
    plaus = torch.stack(parts, 0).amin(0) if parts else torch.ones_like(p_good)
    return {"p_good": p_good, "good_top": good_top, "isd": isd, "plausibility": plaus}


def _calibrated_weights(p: Picker, s: dict) -> torch.Tensor:
    """Picker.weights_from_scores as it was (the rule the thresholds were calibrated for)."""
    cfg = p.config
    w = torch.ones_like(s["p_good"])
    if cfg.soft:
        t = max(cfg.temperature, 1e-6)
        if cfg.use_iqa:
            w = w * torch.sigmoid((s["p_good"] - p.p_good) / (t * p.p_good))
        if cfg.use_isd:
            w = w * torch.sigmoid((p.isd_threshold - s["isd"]) / (t * p.isd_threshold))
        return w
    if cfg.use_iqa:
        w = w * (s["p_good"] > p.p_good).float() * s["good_top"]
    if cfg.use_isd:
        w = w * (s["isd"] < p.isd_threshold).float()
    return w


def _shipped_inputs(name: str, retina, dicom_file, toy_bscan
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher outputs (image in [-1, 1], structure logits) of the shipped enhancer of the
    picker's modality on real scans, clean and degraded, plus planted bad ones."""
    import torch.nn.functional as F

    from same_fast import io
    from same_fast.degrade import degrade
    from same_fast.models import load_model
    from same_fast.nn import pad_to_multiple

    g = torch.Generator().manual_seed(0)
    if name == "fundus-picker":
        full = torch.from_numpy(retina).permute(2, 0, 1)[None].float() / 255
        half = F.interpolate(full, size=(384, 384), mode="area")
        clean = torch.cat([F.interpolate(full, size=(192, 192), mode="area"),
                           half[..., :192, :192], half[..., 192:, 192:], half[..., 96:288, 96:288]])
        preset, model_name = "fundus-shen2020", "fundus-lite"
    elif name == "oct-picker":
        # toy B-scans (no shared data needed): two bright layers over a dim retina, speckled
        rng = np.random.default_rng(0)
        clean = torch.stack([torch.from_numpy(toy_bscan(128, 192, rng, top=40, thick=10, gap=32,
                                                        phase=k, wave=6)[0]).float()[None]
                             for k in range(4)])
        preset, model_name = "oct", "oct-lite"
    else:
        frames = io.load(dicom_file("examples_ybr_color.dcm")).frames[::6]  # (5, 240, 320, 3)
        grey = torch.from_numpy(frames).float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255
        clean = F.interpolate(grey, size=(120, 160), mode="area")
        preset, model_name = "ultrasound-speckle", "ultrasound-lite"
    degraded = degrade(clean, preset, g)
    noise = (clean + 0.35 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    flat = torch.full_like(clean[:2], 0.5)
    model, _ = load_model(model_name)
    with torch.no_grad():
        xin = torch.cat([clean, degraded, noise, flat])
        xp, (h, w) = pad_to_multiple(xin * 2 - 1, int(getattr(model, "multiple", 1)))
        y, s = model(xp)
    y, s = y[..., :h, :w], s[..., :h, :w]
    # random structure maps (noise and smooth blobs) and saturated ones beside real images
    rand = torch.cat([4 * torch.randn(2, 1, h, w, generator=g),
                      8 * F.avg_pool2d(torch.randn(2, 1, h + 8, w + 8, generator=g), 9, 1),
                      torch.full((1, 1, h, w), -12.0), torch.full((1, 1, h, w), 12.0)])
    return torch.cat([y, y[: rand.shape[0]]]), torch.cat([s, rand])


@pytest.mark.parametrize("name", ["fundus-picker", "ultrasound-picker", "oct-picker"])
def test_shipped_pickers_keep_their_calibrated_decisions(name, retina, dicom_file, toy_bscan):
    """Scores through ops.picker_weights equal the formulas the shipped thresholds were
    calibrated on (bit for bit), and the weights are identical: hard, soft, either assessor
    alone, and at thresholds moved into the batch (so accept and reject both occur) including a
    threshold exactly on a sample's score (the strict rule rejects it)."""
    import dataclasses

    image, logits = _shipped_inputs(name, retina, dicom_file, toy_bscan)
    shipped = load_picker(name)
    ref = _calibrated_scores(shipped, image, logits)
    mid_p = float(ref["p_good"].median())
    on_a_score = float(ref["isd"].sort().values[len(ref["isd"]) // 2])
    configs = [PickerConfig(p_good=shipped.p_good)]
    configs += [PickerConfig(p_good=mid_p, isd_threshold=on_a_score)]
    configs = [dataclasses.replace(c, soft=soft, use_iqa=ui, use_isd=us)
               for c in configs for soft in (False, True)
               for ui, us in ((True, True), (True, False), (False, True), (False, False))]
    configs.append(PickerConfig(p_good=mid_p, isd_threshold=on_a_score, soft=True,
                                temperature=0.3))
    split = []
    for cfg in configs:
        p = load_picker(name, config=cfg)
        old = _calibrated_scores(p, image, logits)
        new = p.scores(image, logits)
        for k, v in old.items():
            assert torch.equal(new[k], v), (cfg, k, (new[k] - v).abs().max())
        w_old = _calibrated_weights(p, old)
        assert torch.equal(new["weights"], w_old), cfg
        assert torch.equal(p(image, logits), w_old), cfg
        assert torch.equal(p.weights_from_scores(old), w_old), cfg
        if not cfg.soft and cfg.use_isd and cfg.isd_threshold is not None:
            # the sample exactly on the threshold is rejected (isd < threshold)
            assert float(w_old[old["isd"] == on_a_score].sum()) == 0.0
        if not cfg.soft and cfg.p_good == mid_p and (cfg.use_iqa or cfg.use_isd):
            split.append(float(w_old.sum()))
    n = image.shape[0]
    assert all(0 < a < n for a in split), split  # the moved thresholds make real decisions


class _HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten call that reads a tensor's value on the host or depends on it for a
    shape (``.item()``, ``bool(t)``, ``nonzero``, boolean indexing, ``masked_select``) and every
    copy to another device: each would stall a CUDA stream."""

    SYNCING = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero",
               "aten::masked_select", "aten::equal", "aten::allclose", "aten::unique",
               "aten::_unique2", "aten::repeat_interleave"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in self.SYNCING:
            self.seen.append(name)
        if name.startswith("aten::index") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else [])):
            self.seen.append(name + " (boolean mask)")
        dev = kwargs.get("device")
        if dev is not None and isinstance(args[0], torch.Tensor) and \
                torch.device(dev) != args[0].device:
            self.seen.append(f"{name} to {dev}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("soft", [False, True])
def test_picker_hot_path_has_no_host_sync(soft):
    """forward (what AdaptStep calls) and scores never read a value back to the host."""
    p = _picker(PickerConfig(p_good=0.5, soft=soft), channels=3, thr=0.5)
    g = torch.Generator().manual_seed(0)
    img, logits = torch.rand(3, 3, 24, 20, generator=g) * 2 - 1, torch.randn(3, 1, 24, 20,
                                                                             generator=g)
    with _HostSyncs() as mode:
        w = p(img, logits)
        p.scores(img, logits)
    assert mode.seen == []
    assert w.shape == (3,)
    with _HostSyncs() as mode:  # the recorder itself sees the syncs it looks for
        float(w.sum())
        _ = w[w > 0]
    assert "aten::_local_scalar_dense" in mode.seen and any("boolean" in s or "nonzero" in s
                                                            for s in mode.seen)


def _plausibility_scores(values: list[float], p: Picker) -> dict[str, torch.Tensor]:
    """Scores whose plausibility is ``values`` (by P(good), the ISD far below its threshold)."""
    v = torch.tensor(values)
    return {"p_good": v * p.p_good, "good_top": torch.ones_like(v),
            "isd": torch.full_like(v, p.isd_threshold * 1e-3)}


def _judge(p: Picker, s: dict[str, torch.Tensor]) -> None:
    """Add scored pseudo-labels to the calibration window, as a training step does."""
    from same_fast import ops

    w, plaus = ops.picker_decision(s["isd"], s["p_good"], s["good_top"], **p.rule())
    z = torch.zeros_like(w)
    p._observe(ops.PickerScores(w, s["isd"], z, z, z, s["p_good"], s["good_top"], plaus))


def test_calibration_accepts_the_targets_best_share_and_keeps_the_absolute_rule():
    p = _picker(PickerConfig(p_good=0.8, calibrate=0.25, window=8), thr=0.2)
    low = _plausibility_scores([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], p)
    assert p.weights_from_scores(low).sum() == 0  # nothing judged yet: the absolute rule
    _judge(p, low)
    # the window's 0.75 quantile is 0.625: the best quarter passes, nothing else
    assert p.weights_from_scores(low).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    # a pseudo-label the absolute rule accepts passes whatever the window says
    good = _plausibility_scores([2.0], p)
    assert p.weights_from_scores(good).tolist() == [1.0]
    _judge(p, _plausibility_scores([3.0] * 8, p))  # the window rolls over: only the new ones
    assert p.weights_from_scores(low).sum() == 0 and p._seen == 16
    p.reset_calibration()
    assert p._seen == 0 and torch.isnan(p._window).all()


def test_soft_calibration_centres_on_the_targets_quantile():
    p = _picker(PickerConfig(p_good=0.8, soft=True, calibrate=0.5, window=4), thr=0.2)
    s = _plausibility_scores([0.2, 0.4, 0.6, 0.8], p)
    before = p.weights_from_scores(s)
    _judge(p, s)
    w = p.weights_from_scores(s)
    assert (w >= before).all() and 0 < w[0] < w[1] < w[2] < w[3] < 1
    assert abs(float(w[1] + w[2]) - 1.0) < 1e-5  # symmetric around the median, 0.5


@pytest.mark.parametrize("field, value", [("calibrate", 1.0), ("calibrate", -0.1),
                                          ("window", 0)])
def test_calibration_settings_are_checked(field, value):
    from same_fast.errors import InputError

    with pytest.raises(InputError, match="calibration"):
        _picker(PickerConfig(**{field: value}))


def test_calibrated_forward_observes_and_scoring_does_not():
    p = _picker(PickerConfig(p_good=0.99, calibrate=0.5, window=16), channels=3, thr=1e-6)
    g = torch.Generator().manual_seed(0)
    img, logits = torch.rand(4, 3, 24, 20, generator=g) * 2 - 1, torch.randn(4, 1, 24, 20,
                                                                             generator=g)
    assert p.scores(img, logits)["weights"].sum() == 0 and p._seen == 0
    with _HostSyncs() as mode:
        w = p(img, logits)
    assert mode.seen == []  # the window and its quantile stay on the device
    assert p._seen == 4 and w.sum() == 2  # the better half of a batch the absolute rule rejects
    assert torch.equal(p.scores(img, logits)["weights"], w) and p._seen == 4


def test_auto_calibrate_takes_a_batch_or_a_folder_of_mixed_sizes():
    from same_fast.picker import auto_calibrate

    torch.manual_seed(1)
    net = SAMENet(1, "lite", base=4, max_channels=8)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 64, 64, generator=g)
    fov = torch.ones(6, 1, 64, 64)
    fov[..., :8] = 0
    a, b, c = _picker(), _picker(), _picker()
    share = auto_calibrate(a, net, x, fov, batch=4)
    # the same images one by one: the same share
    assert auto_calibrate(b, net, list(x), list(fov)) == pytest.approx(share)
    assert 0.2 <= share <= 0.95 and a.config.calibrate == share
    # images of different sizes (a clinic's folder): each is scored at its own size
    mixed = [torch.rand(1, 64, 96, generator=g), torch.rand(1, 48, 64, generator=g), *x[:4]]
    assert 0.2 <= auto_calibrate(c, net, mixed, [None] * 6) <= 0.95
    assert c.config.calibrate > 0


def test_auto_picker_is_the_modality_s_or_a_mean_teacher_with_a_warning():
    from same_fast.picker import Picker, resolve_picker

    assert isinstance(resolve_picker("auto", "fundus"), Picker)
    oct_picker = resolve_picker("auto", "oct")
    assert isinstance(oct_picker, Picker) and oct_picker.modality == "oct"
    assert oct_picker.iqa.in_channels == 1 and oct_picker.p_good == 0.6
    assert resolve_picker("none", "fundus") is None
    with pytest.warns(UserWarning, match="no shipped picker for modality 'xray'"):
        assert resolve_picker("auto", "xray") is None


def test_oct_picker_keeps_its_absolute_thresholds_offline():
    # chosen on selection patients: oct-picker's thresholds were set on the scanner it adapts
    # to, so offline adaptation sets no calibration share from the target's scores for it
    from same_fast.adapt.config import AdaptConfig
    from same_fast.adapt.loop import _auto_share
    from same_fast.models import load_model
    from same_fast.picker import resolve_picker

    model, _ = load_model("oct-lite")
    g = torch.Generator().manual_seed(0)
    scans = [torch.rand(1, 64, 96, generator=g) for _ in range(4)]
    oct_picker = resolve_picker("auto", "oct")
    assert not oct_picker.share_auto
    assert _auto_share(model, scans, oct_picker, AdaptConfig(modality="oct"), None) is None
    assert oct_picker.config.calibrate == 0
    assert resolve_picker("auto", "fundus").share_auto  # the fundus picker still gets one
