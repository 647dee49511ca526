"""Online adaptation while serving: weights change between batches, are announced, and can be
frozen and reset; serving never waits for a training step."""
from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from websockets.sync.client import connect

from same_fast.models import save_model
from same_fast.nn import SAMENet
from same_fast.serve.config import AdaptConfig, ServeConfig
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a[..., 0]).save(b, format="PNG")
    return b.getvalue()


def _online_service(model: str, adapt_in: str = "process", **overrides) -> Service:
    """A streaming service adapting online with tiny settings (a step every 2 frames of batch
    2, 16 px crops, batches of 2 frames within 1 ms), its adapter ready; overrides are
    AdaptConfig fields."""
    adaptation = AdaptConfig.serving(**{**dict(every=2, batch=2, size=16), **overrides})
    svc = Service(ServeConfig(stream=True, model=model, adapt="online", max_batch=2,
                              max_delay_ms=1, adapt_in=adapt_in, adaptation=adaptation))
    if adapt_in == "process":
        assert svc.adaptation.ready.wait(120), svc.adaptation.last_error
    return svc


@pytest.fixture()
def tiny_model(tmp_path):
    torch.manual_seed(0)
    net = SAMENet(in_channels=1, preset="lite", base=4, max_channels=8, levels=2)
    return str(save_model(tmp_path / "tiny.safetensors", net, modality="ultrasound"))


def _stream(ws, n, rng):
    """Send n frames, return (images, version messages)."""
    for _ in range(n):
        ws.send(_png(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)))
    images, versions = [], []
    while len(images) < n:
        m = ws.recv(timeout=30)
        if isinstance(m, str):
            d = json.loads(m)
            assert "error" not in d, d
            versions.append(d)
        else:
            images.append(m)
    return images, versions


def _wait_steps_settle(url):
    last = -1
    for _ in range(100):
        steps = httpx.get(url + "/v1/model").json()["adaptation"]["steps"]
        if steps == last:
            return steps
        last = steps
        time.sleep(0.1)
    raise AssertionError("adaptation did not settle")


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_a_stream_with_nothing_to_undo_holds_the_adapter_and_says_so(tiny_model, adapt_in):
    # smooth frames: no noise above the estimator's floor, no JPEG lattice, no coarse speckle
    svc = _online_service(tiny_model, adapt_in, buffer=4)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = (60 + 2 * yy + 3 * xx).astype(np.uint8)[..., None]
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        for _ in range(24):
            ws.send(_png(smooth))
        got = 0
        while got < 24:
            m = ws.recv(timeout=30)
            got += not isinstance(m, str)
        for _ in range(100):
            a = httpx.get(srv.url + "/v1/model").json()["adaptation"]
            if a["state"] == "holding":
                break
            time.sleep(0.1)
        assert a["state"] == "holding" and a["steps"] == 0, a
        assert "nothing the automatic re-degradation models" in a["holding"]
        assert httpx.get(srv.url + "/v1/model").json()["weights_version"] == 0


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_online_adaptation_publishes_freezes_and_resets(tiny_model, adapt_in):
    # Every step publishes (no --adapt-publish-every-s interval): the loop below waits for two.
    svc = _online_service(tiny_model, adapt_in, safety="off", publish_every_s=0)
    rng = np.random.default_rng(0)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        source = httpx.get(srv.url + "/v1/model").json()
        assert source["weights_version"] == 0 and source["adaptation"]["state"] == "adapting"
        versions = []
        for _ in range(30):  # keep streaming until the adapter has published twice
            _, v = _stream(ws, 4, rng)
            versions += v
            if versions and versions[-1]["weights_version"] >= 2:
                break
        assert versions[0]["weights_version"] == 0 and versions[0]["frame"] == 0
        assert versions[-1]["weights_version"] >= 2
        assert versions[-1]["weights_hash"] != source["weights_hash"]
        frames_seen = [v["frame"] for v in versions]
        assert frames_seen == sorted(frames_seen)
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(metrics, "same_fast_adaptation_steps_total") > 0
        assert _metric(metrics, "same_fast_adaptation_acceptance") == 1.0

        r = httpx.post(srv.url + "/v1/adaptation/freeze")
        assert r.status_code == 200 and r.json()["state"] == "frozen"
        _wait_steps_settle(srv.url)
        _stream(ws, 2, rng)  # installs anything published just before the freeze
        frozen_v = httpx.get(srv.url + "/v1/model").json()["weights_version"]
        _, v = _stream(ws, 12, rng)
        assert v == [] and httpx.get(srv.url + "/v1/model").json()["weights_version"] == frozen_v

        r = httpx.post(srv.url + "/v1/adaptation/reset")
        assert r.status_code == 200
        _, v = _stream(ws, 1, rng)
        assert v and v[-1]["weights_hash"] == source["weights_hash"]
        assert v[-1]["weights_version"] == frozen_v + 1
        assert httpx.post(srv.url + "/v1/adaptation/resume").json()["state"] == "adapting"
        # HTTP replies carry the version too.
        r = httpx.post(srv.url + "/v1/enhance", content=_png(np.zeros((16, 16, 1), np.uint8)))
        assert int(r.headers["x-same-fast-weights-version"]) >= frozen_v + 1
    assert svc.adaptation.errors == 0, svc.adaptation.last_error


def test_adapting_an_untrainable_model_is_a_clear_error():
    from same_fast.errors import InputError

    with pytest.raises(InputError, match="trainable"):
        Service(ServeConfig(model="identity", adapt="online"))


def _stream_until(ws, url, rng, done, limit=60):
    """Stream 2 frames at a time until ``done(/v1/model json)``; returns the version messages."""
    versions = []
    for _ in range(limit):
        _, v = _stream(ws, 2, rng)
        versions += v
        info = httpx.get(url + "/v1/model").json()
        if done(info):
            return versions, info
    raise AssertionError(f"condition not reached: {info['adaptation']}")


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_audit_log_records_every_step_and_event(tiny_model, tmp_path, adapt_in):
    from same_fast.adapt.audit import read_audit

    log = tmp_path / "logs" / "audit.jsonl"
    svc = _online_service(tiny_model, adapt_in, safety="off", audit=str(log),
                          hash_every=3)
    rng = np.random.default_rng(1)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        source = httpx.get(srv.url + "/v1/model").json()
        assert source["adaptation"]["audit"] == str(log)
        announced, _ = _stream_until(ws, srv.url, rng,
                                     lambda m: m["adaptation"]["steps"] >= 4)
        for action in ("freeze", "resume", "reset"):
            assert httpx.post(f"{srv.url}/v1/adaptation/{action}").status_code == 200
        v, _ = _stream_until(ws, srv.url, rng, lambda m: m["adaptation"]["steps"] >= 7)
        announced += v
    steps = svc.adaptation.steps  # final: the server has stopped
    recs = read_audit(log)
    kinds = [r["event"] for r in recs]
    assert kinds[:2] == ["serve", "start"] and kinds[-1] == "end", kinds
    assert recs[0]["model"] == tiny_model and recs[0]["runs_in"] == adapt_in
    assert recs[0]["source_weights_hash"] == source["weights_hash"]
    assert recs[-1]["reason"] == "server stopped" and recs[-1]["step"] == steps
    assert "weights_sha256" in recs[1] and "weights_sha256" in recs[-1]
    # Every step, once, in order, complete; the weights hash every third step.
    step_recs = [r for r in recs if r["event"] == "step"]
    assert [r["step"] for r in step_recs] == list(range(1, steps + 1))
    for r in step_recs:
        assert {"loss", "l1", "struct", "entropy", "accepted", "batch", "version"} <= set(r)
        assert r["acceptance"] == pytest.approx(r["accepted"] / r["batch"])
        assert ("weights_sha256" in r) == (r["step"] % 3 == 0)
    assert [r["step"] for r in recs] == sorted(r["step"] for r in recs)
    assert [r["time"] for r in recs] == sorted(r["time"] for r in recs)
    # The controls, in order, each with the weights it left serving and why.
    controls = [r for r in recs if r["event"] in ("freeze", "resume", "reset")]
    assert [r["event"] for r in controls] == ["freeze", "resume", "reset"]
    assert all("weights_sha256" in r for r in controls)
    assert controls[0]["reason"] == controls[2]["reason"] == "requested over HTTP"
    # Every weights hash the stream announced was published (and audited), or is the source's.
    published = [r for r in recs if r["event"] == "publish"]
    assert published and all("weights_sha256" in r and "version" in r for r in published)
    # one weights hash: the announced one is a prefix of the audit log's SHA-256
    assert all(r["weights_sha256"].startswith(r["weights_hash"]) for r in published)
    hashes = {r["weights_hash"] for r in published} | {source["weights_hash"]}
    assert {a["weights_hash"] for a in announced} <= hashes
    assert len({a["weights_hash"] for a in announced}) >= 2
    assert svc.adaptation.errors == 0, svc.adaptation.last_error


def test_audit_needs_online_adaptation_and_a_writable_file(tmp_path):
    from same_fast.errors import InputError

    with pytest.raises(InputError, match="--adapt online"):
        ServeConfig(adaptation=AdaptConfig.serving(audit=str(tmp_path / "a.jsonl"))).validate()
    blocker = tmp_path / "file"
    blocker.write_text("")
    from same_fast.serve.adapter_setup import check_audit_path

    with pytest.raises(InputError, match="cannot write the audit log"):
        check_audit_path(str(blocker / "audit.jsonl"))
    import argparse

    from same_fast.commands.serve import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--adapt", "online", "--audit", "x.jsonl",
                                         "--audit-hash-every", "5", "--adapt-max-drift", "0.1",
                                         "--adapt-min-acceptance", "0.2"]))
    a = cfg.adaptation
    assert (a.audit, a.hash_every, a.max_drift, a.min_acceptance) == ("x.jsonl", 5, 0.1, 0.2)


def test_every_adaptation_flag_sets_its_adaptconfig_field_and_names_it_in_errors():
    import argparse

    from same_fast.commands.serve import add_arguments, config_from_args
    from same_fast.errors import InputError
    from same_fast.serve.config import ADAPT_FLAGS

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert config_from_args(p.parse_args([])) == ServeConfig()  # the defaults are AdaptConfig's
    given = {"batch": 3, "every": 5, "buffer": 7, "size": 32, "lr": 0.5, "ema": 0.25,
             "serve": "teacher", "cpus": "off", "publish_every_s": 2.5, "safety": "reset",
             "min_acceptance": 0.125, "max_drift": 0.375, "audit": "a.jsonl",
             "hash_every": 4, "picker": "p.safetensors", "seed": 9,
             "redegrade_preset": "sensor-noise", "redegrade_strength": 0.5,
             "picker_calibrate": 0.25}
    assert set(given) | {"redegrade", "skip_unmeasured"} == set(ADAPT_FLAGS)  # the switches
    off = config_from_args(p.parse_args(["--adapt", "online", "--adapt-no-redegrade"]))
    assert off.adaptation.redegrade is False and ServeConfig().adaptation.redegrade is True
    always = config_from_args(p.parse_args(["--adapt", "online", "--adapt-always"]))
    assert always.adaptation.skip_unmeasured is False
    assert ServeConfig().adaptation.skip_unmeasured is True
    argv = ["--adapt", "online", "--adapt-in", "thread"]
    for name, value in given.items():
        argv += [ADAPT_FLAGS[name], str(value)]
    cfg = config_from_args(p.parse_args(argv)).validate()
    assert cfg.adapt_in == "thread" and cfg.adaptation == AdaptConfig.serving(**given)
    for name, bad in (("batch", 0), ("every", 0), ("buffer", 0), ("hash_every", -1),
                      ("min_acceptance", 2.0), ("max_drift", -1.0), ("publish_every_s", -1.0),
                      ("serve", "both"), ("safety", "panic"), ("redegrade_strength", -1.0),
                      ("picker_calibrate", 1.0), ("picker_calibrate", -0.5)):
        with pytest.raises(InputError, match=ADAPT_FLAGS[name] + " must be"):
            ServeConfig(adaptation=AdaptConfig.serving(**{name: bad})).validate()
    with pytest.raises(InputError, match="--adapt-redegrade: unknown degradation preset 'fog'"):
        ServeConfig(adaptation=AdaptConfig.serving(redegrade_preset="fog")).validate()


def _metric(text, name):
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def test_drift_freezes_adaptation_visibly(tiny_model, tmp_path):
    # The adapter in its child process measures drift every 4 steps; a bound of 1e-7 is crossed
    # at the first check, so it freezes itself at step 4. /v1/model, /metrics and the audit log
    # say so, and the served weights stop changing.
    log = tmp_path / "audit.jsonl"
    svc = _online_service(tiny_model, "process", every=1, lr=1e-2, safety="freeze",
                          max_drift=1e-7, audit=str(log))
    rng = np.random.default_rng(2)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        _, info = _stream_until(ws, srv.url, rng, lambda m: m["adaptation"]["state"] == "frozen")
        a = info["adaptation"]
        assert a["steps"] == 4 and a["reason"].startswith("drift ") and a["last_drift"] > 1e-7
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(metrics, "same_fast_adaptation_frozen") == 1
        assert _metric(metrics, "same_fast_adaptation_steps_total") == 4
        _stream(ws, 2, rng)  # installs what was published with the freeze
        frozen_v = httpx.get(srv.url + "/v1/model").json()["weights_version"]
        _, v = _stream(ws, 8, rng)
        assert v == [] and httpx.get(srv.url + "/v1/model").json()["weights_version"] == frozen_v
        assert httpx.get(srv.url + "/v1/model").json()["adaptation"]["steps"] == 4
    from same_fast.adapt.audit import read_audit

    freezes = [r for r in read_audit(log) if r["event"] == "freeze"]
    assert len(freezes) == 1 and freezes[0]["step"] == 4 and freezes[0]["reason"] == a["reason"]


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_a_calibrated_picker_adapts_on_the_scanners_best_share(tiny_model, tmp_path, adapt_in,
                                                               reject_all_picker):
    # --adapt-picker-calibrate reaches the picker where the adapter runs: with a picker that
    # rejects everything on its own, the scanner's better half of pseudo-labels is learnt from.
    from same_fast.adapt.audit import read_audit

    log = tmp_path / "audit.jsonl"
    svc = _online_service(tiny_model, adapt_in, every=1, safety="off", picker_calibrate=0.5,
                          picker=reject_all_picker, audit=str(log))
    rng = np.random.default_rng(5)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        _, info = _stream_until(ws, srv.url, rng, lambda m: m["adaptation"]["steps"] >= 4)
        # about half: a batch ranks against the recent window, which its betters may have left
        assert 0.2 <= info["adaptation"]["acceptance"] <= 0.9
        # what the first frames read, and the student's view it gave, where it adapts
        view = info["adaptation"]["student_view"]
        assert view.startswith("noise ") and "the student's view gets noise" in view
    recs = read_audit(log)
    assert next(r for r in recs if r["event"] == "view")["student_view"] == view
    start = next(r for r in recs if r["event"] == "start")
    assert start["picker"]["calibrate"] == 0.5 and start["picker"]["isd_threshold"] == -1e9
    assert next(r for r in recs if r["event"] == "serve")["settings"]["picker_calibrate"] == 0.5


def test_collapsed_acceptance_resets_adaptation_visibly(tiny_model, tmp_path, reject_all_picker):
    # A picker that rejects every sample (no structure score is below -1e9): after the safety
    # window of 8 steps acceptance is 0, and with --adapt-safety reset the adapter goes back to
    # the source weights by itself and keeps adapting.
    svc = _online_service(tiny_model, "thread", every=1, safety="reset",
                          picker=reject_all_picker, audit=str(tmp_path / "audit.jsonl"))
    rng = np.random.default_rng(3)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        source = httpx.get(srv.url + "/v1/model").json()
        _, info = _stream_until(ws, srv.url, rng, lambda m: m["adaptation"]["resets"] >= 1)
        a = info["adaptation"]
        assert a["state"] == "adapting" and a["acceptance"] == 0.0
        assert a["reason"] == "acceptance 0.000 < 0.05 over 8 steps"
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(metrics, "same_fast_adaptation_resets_total") >= 1
        assert _metric(metrics, "same_fast_adaptation_acceptance") == 0.0
        assert _metric(metrics, "same_fast_adaptation_frozen") == 0
    from same_fast.adapt.audit import read_audit

    recs = read_audit(tmp_path / "audit.jsonl")
    resets = [r for r in recs if r["event"] == "reset"]
    assert resets[0]["step"] == 8 and resets[0]["reason"] == a["reason"]
    assert all(r["acceptance"] == 0.0 for r in recs if r["event"] == "step")
    # The reset left the source weights serving, exactly.
    assert recs[1]["event"] == "start" and resets[0]["weights_sha256"] == recs[1]["weights_sha256"]
    assert recs[0]["source_weights_hash"] == source["weights_hash"]


@pytest.mark.parametrize("adapt_in", ["process", "thread"])
def test_the_adapter_trains_on_the_re_degraded_view_it_was_given(tiny_model, tmp_path, adapt_in):
    # --adapt-redegrade reaches the library adapter in the child process and in the thread: its
    # own "start" record (written where it runs) carries the configuration it trains with.
    from same_fast.adapt.audit import read_audit

    log = tmp_path / "audit.jsonl"
    svc = _online_service(tiny_model, adapt_in, audit=str(log), redegrade_preset="sensor-noise",
                          redegrade_strength=0.75)
    try:
        start = next(r for r in read_audit(log) if r["event"] == "start")
        c = start["config"]
        assert (c["mode"], c["redegrade"], c["redegrade_preset"], c["redegrade_strength"]) == \
            ("online", True, "sensor-noise", 0.75)
        serve = next(r for r in read_audit(log) if r["event"] == "serve")
        assert serve["settings"]["redegrade_preset"] == "sensor-noise"
    finally:
        svc.close()
    for name, overrides, view in (("plain", {}, True), ("off", {"redegrade": False}, False)):
        log = tmp_path / f"{name}.jsonl"
        svc = _online_service(tiny_model, adapt_in, audit=str(log), **overrides)
        try:  # by default the server's student sees the automatic re-degraded view, as adapt's
            c = next(r for r in read_audit(log) if r["event"] == "start")["config"]
            assert (c["redegrade"], c["redegrade_preset"]) == (view, "")
        finally:
            svc.close()
