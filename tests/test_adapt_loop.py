"""Offline and online adaptation: seeds, reset, safety, audit log, views, schedule."""
from __future__ import annotations

import threading

import pytest
import torch

from same_fast.adapt.audit import AuditLog, read_audit, weights_hash
from same_fast.adapt.augment import AugmentConfig, random_views
from same_fast.adapt.loop import AdaptConfig, adapt_offline, lr_factor
from same_fast.adapt.online import OnlineAdapter, enhance_adaptive
from same_fast.adapt.safety import SafetyConfig
from same_fast.errors import InputError
from same_fast.nn import SAMENet


def _model(seed: int = 0) -> SAMENet:
    torch.manual_seed(seed)
    return SAMENet(1, "lite", base=4, max_channels=8, levels=3)  # multiple 8


def _frames(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 20 + i, 24, generator=g) for i in range(n)]


def _accept_first(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(y.shape[0], device=y.device)
    w[0] = 1.0
    return w


def _reject_all(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.zeros(y.shape[0], device=y.device)


def _same(a: torch.nn.Module, b: torch.nn.Module | dict) -> bool:
    sb = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


CFG = dict(steps=4, batch=3, size=16)


def test_offline_reproducible_with_seed_and_leaves_source_alone():
    m = _model()
    src = {k: v.clone() for k, v in m.state_dict().items()}
    a = adapt_offline(m, _frames(), _accept_first, AdaptConfig(seed=3, **CFG))
    b = adapt_offline(m, _frames(), _accept_first, AdaptConfig(seed=3, **CFG))
    c = adapt_offline(m, _frames(), _accept_first, AdaptConfig(seed=4, **CFG))
    assert _same(a.student, b.student) and _same(a.teacher, b.teacher)
    assert a.history == [{**h, "lr": h["lr"]} for h in b.history]
    assert not _same(a.student, c.student)
    assert not _same(a.student, src)  # it did learn something
    assert _same(m, src)  # the source model is untouched
    assert [h["accepted"] for h in a.history] == [1.0] * 4
    assert a.acceptance == pytest.approx(1 / 3)


def test_entropy_gated_by_acceptance():
    """A fully rejected batch has zero loss (the entropy is taken on accepted samples only); with
    the gate it moves nothing, without it Adam's momentum from an earlier batch still moves
    the weights; an accepted batch keeps its entropy term."""
    from same_fast.adapt.loop import make_pair, make_step

    m = _model()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    s, t = make_pair(m)
    step = make_step(s, t, AdaptConfig(), _reject_all)
    out = step(x)
    assert float(out["loss"]) == 0.0 and float(out["entropy"]) == 0.0
    assert _same(s, m)
    s2, t2 = make_pair(m)
    out2 = make_step(s2, t2, AdaptConfig(), _accept_first)(x)
    assert float(out2["loss"]) > float(out2["entropy"]) > 0
    # after an accepted batch, a rejected one must not move the weights (Adam momentum skipped)
    calls = iter([_accept_first, _reject_all])
    s4, t4 = make_pair(m)
    step4 = make_step(s4, t4, AdaptConfig(), lambda y, s: next(calls)(y, s))
    step4(x)
    after_first = {k: v.clone() for k, v in s4.state_dict().items()}
    assert not _same(s4, m)
    step4(x)
    assert _same(s4, after_first)
    calls = iter([_accept_first, _reject_all])
    s3, t3 = make_pair(m)
    step3 = make_step(s3, t3, AdaptConfig(gate_entropy=False), lambda y, s: next(calls)(y, s))
    step3(x)
    after_first = {k: v.clone() for k, v in s3.state_dict().items()}
    out3 = step3(x)
    assert float(out3["loss"]) == 0.0 and not _same(s3, after_first)


def test_offline_epochs_and_redegrade_view():
    cfg = AdaptConfig(epochs=2, batch=4, size=16, redegrade=True, modality="ultrasound")
    r = adapt_offline(_model(), _frames(6), None, cfg)
    assert len(r.history) == 4  # 2 epochs x ceil(6 / 4)


def test_paper_schedule_constant_then_linear_to_zero():
    f = [lr_factor("paper", i, 200) for i in range(200)]
    assert f[:150] == [1.0] * 150
    assert f[-1] == 0.0 and all(a > b for a, b in zip(f[150:], f[151:], strict=False))
    assert lr_factor("constant", 199, 200) == 1.0


def test_bad_config_is_a_clear_error():
    with pytest.raises(InputError, match="multiple"):
        adapt_offline(_model(), _frames(), None, AdaptConfig(steps=1, size=12))
    with pytest.raises(InputError, match="schedule"):
        AdaptConfig(schedule="cosine").check()


def test_views_flip_independently():
    x = torch.arange(16.0).view(1, 4, 4) / 16
    v_only = random_views([x], AugmentConfig(size=4, scale=(1.0, 1.0), hflip=0.0, vflip=1.0),
                          torch.Generator().manual_seed(0))
    torch.testing.assert_close(v_only[0], x.flip(-2))
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(size=4, scale=(1.0, 1.0))
    kinds = set()
    for _ in range(64):
        v = random_views([x], cfg, g)[0]
        kinds.add(next(k for k, t in {"id": x, "h": x.flip(-1), "v": x.flip(-2),
                                      "hv": x.flip(-1, -2)}.items() if torch.allclose(v, t)))
    assert kinds == {"id", "h", "v", "hv"}


def test_online_reproducible_and_cadence():
    def run(seed: int):
        ad = OnlineAdapter(_model(), _accept_first,
                           AdaptConfig(mode="online", every=2, buffer=4, seed=seed, **CFG))
        recs = [ad.observe(f) for f in _frames(7)]
        return ad, recs

    a, ra = run(1)
    b, rb = run(1)
    assert [len(r) for r in ra] == [0, 1, 0, 1, 0, 1, 0]
    assert a.steps == 3 and a.version == 3 and a.frames_seen == 7
    assert _same(a.student, b.student) and ra == rb
    c, _ = run(2)
    assert not _same(a.student, c.student)


def test_reset_restores_source_weights_exactly():
    m = _model()
    ad = OnlineAdapter(m, None, AdaptConfig(mode="online", every=1, **CFG))
    for f in _frames(4):
        ad.observe(f)
    assert not _same(ad.student, m) and not _same(ad.teacher, m)
    v = ad.version
    ad.reset()
    assert _same(ad.student, m) and _same(ad.teacher, m)
    assert ad.version == v + 1 and not ad._step.optimizer.state
    ad.observe(_frames(1)[0])  # still adapts after a reset, through the same EMA buffers
    assert not _same(ad.student, m)


def test_reset_clears_the_pickers_calibration_window():
    from same_fast.nn.iqa import IQANet
    from same_fast.nn.isd import StructureVAE
    from same_fast.picker import Picker, PickerConfig

    torch.manual_seed(0)
    picker = Picker(IQANet(1, width=4, depth=2, size=32), StructureVAE(size=16, latent=4, width=4),
                    0.5, "ultrasound", PickerConfig(calibrate=0.5, window=32))
    ad = OnlineAdapter(_model(), picker, AdaptConfig(mode="online", every=1, **CFG))
    for f in _frames(3):
        ad.observe(f)
    assert picker._seen == sum(h["batch"] for h in ad.history) > 0
    ad.reset()  # the window judged the adapted teacher; the source teacher starts it afresh
    assert picker._seen == 0 and torch.isnan(picker._window).all()


def test_acceptance_collapse_freezes_and_resume():
    safety = SafetyConfig(min_acceptance=0.5, window=3, max_drift=0.0, action="freeze")
    ad = OnlineAdapter(_model(), _reject_all, AdaptConfig(mode="online", every=1, **CFG), safety)
    for f in _frames(6):
        ad.observe(f)
    assert ad.frozen and ad.steps == 3
    frozen = {k: v.clone() for k, v in ad.student.state_dict().items()}
    ad.observe(_frames(1)[0])
    assert ad.steps == 3 and _same(ad.student, frozen)
    ad.resume()
    ad.observe(_frames(1)[0])
    assert ad.steps == 4


def test_drift_bound_resets_to_source():
    m = _model()
    safety = SafetyConfig(min_acceptance=0.0, max_drift=1e-9, drift_every=2, action="reset")
    ad = OnlineAdapter(m, None, AdaptConfig(mode="online", every=1, lr=1e-2, **CFG), safety)
    for f in _frames(2):
        ad.observe(f)
    assert ad.resets == 1 and not ad.frozen
    assert _same(ad.student, m)
    assert ad.history[-1]["drift"] > 1e-9


def test_audit_log_complete(tmp_path):
    path = tmp_path / "audit.jsonl"
    safety = SafetyConfig(min_acceptance=0.0, max_drift=0.0)
    with AuditLog(path, hash_every=2) as audit:
        ad = OnlineAdapter(_model(), _accept_first,
                           AdaptConfig(mode="online", every=1, **CFG), safety, audit)
        for f in _frames(5):
            ad.observe(f)
        ad.freeze("test")
        state, version = ad.snapshot()
    recs = read_audit(path)
    assert recs == audit.records
    steps = [r for r in recs if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r in steps:
        assert {"loss", "l1", "struct", "entropy", "accepted", "batch", "version"} <= set(r)
        assert ("weights_sha256" in r) == (r["step"] % 2 == 0)
    assert [r["event"] for r in recs if r["event"] != "step"] == ["start", "view", "freeze",
                                                                   "snapshot"]
    assert recs[-1]["weights_sha256"] == weights_hash(state) == weights_hash(ad.served)
    assert version == 5
    # the hash changes with the weights
    assert steps[1]["weights_sha256"] != steps[3]["weights_sha256"]


def test_offline_audit_every_step(tmp_path):
    with AuditLog(tmp_path / "a.jsonl", hash_every=1) as audit:
        r = adapt_offline(_model(), _frames(), None, AdaptConfig(**CFG), audit=audit)
    recs = read_audit(tmp_path / "a.jsonl")
    assert [x["event"] for x in recs] == ["start"] + ["step"] * 4 + ["end"]
    assert recs[-1]["weights_sha256"] == weights_hash(r.student)


def test_offline_serving_the_teacher_hashes_and_probes_the_teacher(tmp_path):
    probed = []
    with AuditLog(tmp_path / "a.jsonl", hash_every=1) as audit:
        r = adapt_offline(_model(), _frames(), _accept_first,
                          AdaptConfig(serve="teacher", **CFG), audit=audit,
                          callback=lambda i, n, rec, served: probed.append(served))
    recs = read_audit(tmp_path / "a.jsonl")
    assert all(m is r.teacher for m in probed) and len(probed) == 4
    assert recs[-1]["weights_sha256"] == weights_hash(r.teacher) != weights_hash(r.student)
    assert recs[0]["picker"] == {"callable": "_accept_first"}


def test_enhance_adaptive_stream_and_threads():
    m = _model()
    ad = OnlineAdapter(m, None, AdaptConfig(mode="online", every=2, **CFG))
    frames = [torch.rand(1, 16, 24) for _ in range(5)]
    outs = list(enhance_adaptive(m, frames, adapter=ad))
    assert [o.shape for o in outs] == [f.shape for f in frames]
    assert all(0 <= float(o.min()) and float(o.max()) <= 1 for o in outs)
    assert ad.steps == 2
    # a server thread enhancing while another observes: no errors, consistent versions
    errors: list[BaseException] = []

    def serve():
        try:
            for _ in range(10):
                ad.enhance(frames[0])
                ad.snapshot()
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    for f in frames:
        ad.observe(f)
    t.join()
    assert not errors and ad.steps == 5
