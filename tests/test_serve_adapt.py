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
from same_fast.serve.config import ServeConfig
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a[..., 0]).save(b, format="PNG")
    return b.getvalue()


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
def test_online_adaptation_publishes_freezes_and_resets(tiny_model, adapt_in):
    cfg = ServeConfig(stream=True, model=tiny_model, adapt="online", adapt_every=2,
                      adapt_batch=2, adapt_crop=16, adapt_safety="off", max_batch=2,
                      max_delay_ms=1, adapt_in=adapt_in)
    svc = Service(cfg)
    if adapt_in == "process":
        assert svc.adaptation.ready.wait(120), svc.adaptation.last_error
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
        assert "same_fast_adaptation_steps_total 0" not in metrics
        assert "same_fast_adaptation_acceptance 1.0" in metrics

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
