"""The ecosystem's conventions on a real loopback server: KServe v2 routes, Prometheus metrics
(parsed by prometheus_client), /openapi.json, ``serve --config`` and the token's sources."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from same_fast.errors import InputError
from same_fast.serve.config import ServeConfig
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.retina()).resize((128, 96)))


@pytest.fixture(scope="module")
def server():
    with ServerThread(Service(ServeConfig(model="fundus-lite", stream=True))) as srv:
        yield srv


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    return b.getvalue()


def _v1(server, img: np.ndarray) -> np.ndarray:
    r = httpx.post(server.url + "/v1/enhance", content=_png(img), timeout=60)
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_v2_health_and_model_metadata(server):
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    r = httpx.get(server.url + "/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    r = httpx.get(server.url + "/v2/models/fundus-lite/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    meta = httpx.get(server.url + "/v2/models/fundus-lite").json()
    assert meta["name"] == "fundus-lite" and meta["versions"] == ["0"]
    assert meta["inputs"][0]["shape"] == [-1, -1, -1, 3]
    assert meta["outputs"][0]["name"] == "enhanced"
    assert "binary_tensor_data" in httpx.get(server.url + "/v2").json()["extensions"]
    r = httpx.get(server.url + "/v2/models/other")
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


def test_v2_infer_json_tensor_on_a_real_image(server, retina):
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "UINT8",
                                    "shape": [1, *retina.shape],
                                    "data": retina.ravel().tolist()}]}
    r = httpx.post(server.url + "/v2/models/fundus-lite/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "fundus-lite" and out["id"] == "r1"
    assert out["model_version"] == "0"
    (o,) = out["outputs"]
    assert o["name"] == "enhanced" and o["datatype"] == "UINT8"
    assert o["shape"] == [1, 96, 128, 3]
    y = np.asarray(o["data"], np.uint8).reshape(o["shape"])[0]
    np.testing.assert_array_equal(y, _v1(server, retina))  # the same model as /v1
    assert np.abs(y.astype(int) - retina).mean() > 0.5  # it did enhance


def test_v2_infer_binary_extension_both_ways(server, retina):
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": list(retina.shape),
                    "parameters": {"binary_data_size": retina.nbytes}}],
        "outputs": [{"name": "enhanced", "parameters": {"binary_data": True}}]}).encode()
    r = httpx.post(server.url + "/v2/models/fundus-lite/versions/0/infer",
                   content=header + retina.tobytes(), timeout=60,
                   headers={"Inference-Header-Content-Length": str(len(header)),
                            "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    (o,) = head["outputs"]
    assert o["shape"] == list(retina.shape) and "data" not in o
    assert o["parameters"]["binary_data_size"] == len(r.content) - n == retina.nbytes
    y = np.frombuffer(r.content[n:], np.uint8).reshape(retina.shape)
    np.testing.assert_array_equal(y, _v1(server, retina))

    # BYTES: one encoded PNG, 4-byte little-endian length first
    png = _png(retina)
    blob = struct.pack("<I", len(png)) + png
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    r = httpx.post(server.url + "/v2/models/fundus-lite/infer", content=header + blob,
                   headers={"Inference-Header-Content-Length": str(len(header))}, timeout=60)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    np.testing.assert_array_equal(
        np.frombuffer(r.content[n:], np.uint8).reshape(retina.shape), y)


@pytest.mark.parametrize("body, message", [
    ({"inputs": []}, "exactly one input"),
    ({"inputs": [{"name": "i", "datatype": "FP64", "shape": [2, 2, 3], "data": [0] * 12}]},
     "datatype"),
    ({"inputs": [{"name": "i", "datatype": "UINT8", "shape": [2, 2, 3], "data": [0] * 5}]},
     "must hold 12 values"),
    ({"inputs": [{"name": "i", "datatype": "UINT8", "shape": [2, 2, 3], "data": [300] * 12}]},
     "range"),
    ({"inputs": [{"name": "i", "datatype": "UINT8", "shape": [2, 2, 3],
                  "parameters": {"binary_data_size": 99}}]}, "does not fit"),
    ({"inputs": [{"name": "i", "datatype": "UINT8", "shape": [2, 2, 1], "data": [0] * 4}]},
     "3-channel"),
    ({"inputs": [{"name": "i", "datatype": "UINT8", "shape": [2, 2, 3], "data": [0] * 12}],
      "outputs": [{"name": "nope"}]}, "only output"),
])
def test_v2_bad_requests_are_400_json(server, body, message):
    r = httpx.post(server.url + "/v2/models/fundus-lite/infer", json=body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_metrics_parse_with_prometheus_client(server, retina):
    from prometheus_client.parser import text_string_to_metric_families

    _v1(server, retina)
    fams = {f.name: f for f in text_string_to_metric_families(
        httpx.get(server.url + "/metrics").text)}
    for name in ("same_fast_inference_queue_duration_seconds",
                 "same_fast_inference_compute_infer_duration_seconds",
                 "same_fast_request_duration_seconds"):
        assert fams[name].type == "histogram" and fams[name].documentation
        count = [s for s in fams[name].samples if s.name == name + "_count"]
        assert count[0].labels == {"model": "fundus-lite"} and count[0].value >= 1
    assert fams["same_fast_frames"].type == "counter"
    assert fams["same_fast_loop_batches"].samples[0].value >= 1  # it moves
    assert fams["process_resident_memory_bytes"].samples[0].value > 0
    assert all(f.documentation for f in fams.values())
    assert not any("quantile" in s.labels for f in fams.values() for s in f.samples)


def test_openapi_lists_every_route(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/enhance", "/v1/stream", "/healthz", "/metrics", "/v2/health/ready",
                 "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        assert path in doc["paths"], path
    assert "post" in doc["paths"]["/v1/enhance"]


def _args(*argv: str) -> argparse.Namespace:
    from same_fast.commands.serve import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("name, text", [
    ("s.toml", 'max-batch = 8\nmax_delay_ms = 2.5\nadapt-lr = 0.001\nstream = true\n'),
    ("s.json", '{"max-batch": 8, "max-delay-ms": 2.5, "adapt-lr": 0.001, "stream": true}'),
    ("s.yaml", "serve:\n  max-batch: 8\n  max-delay-ms: 2.5\n  adapt-lr: 0.001\n"
               "  stream: true\n"),
])
def test_config_file_keys_are_the_flags_and_flags_win(tmp_path, name, text):
    from same_fast.commands.serve import config_from_args

    (tmp_path / name).write_text(text)
    cfg = config_from_args(_args("--config", str(tmp_path / name), "--max-delay-ms", "7"))
    assert cfg.max_batch == 8 and cfg.stream is True
    assert cfg.adaptation.lr == 0.001
    assert cfg.max_delay_ms == 7.0  # the command line wins


def test_config_file_errors_are_input_errors(tmp_path):
    from same_fast.commands.serve import config_from_args

    (tmp_path / "bad.toml").write_text("max-bach = 8\n")
    with pytest.raises(InputError, match="unknown setting 'max-bach'"):
        config_from_args(_args("--config", str(tmp_path / "bad.toml")))
    (tmp_path / "broken.toml").write_text("max-batch = \n")
    with pytest.raises(InputError, match="cannot parse"):
        config_from_args(_args("--config", str(tmp_path / "broken.toml")))
    with pytest.raises(InputError, match="cannot read"):
        config_from_args(_args("--config", str(tmp_path / "none.toml")))


def test_token_from_file_or_environment(tmp_path, monkeypatch):
    from same_fast.commands.serve import config_from_args

    (tmp_path / "t").write_text("from-file\n")
    monkeypatch.setenv("SAME_FAST_TOKEN", "from-env")
    assert config_from_args(_args()).validate().token == "from-env"
    assert config_from_args(_args("--token-file", str(tmp_path / "t"))).validate().token \
        == "from-file"
    assert config_from_args(_args("--token", "flag")).validate().token == "flag"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="no token"):
        config_from_args(_args("--token-file", str(tmp_path / "empty"))).validate()


def test_token_never_reaches_the_access_log(tmp_path):
    from websockets.sync.client import connect

    secret = "tok-7f3a9c"
    (tmp_path / "t").write_text(secret + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity", "--stream",
         "--port", "0", "--token-file", str(tmp_path / "t")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "SAME_FAST_TOKEN"})
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else ""
        url = f"127.0.0.1:{m.group(1)}"
        with connect(f"ws://{url}/v1/stream?token={secret}") as ws:
            ws.send(_png(np.zeros((4, 4, 3), np.uint8)))
            while isinstance(ws.recv(timeout=30), str):
                pass
        assert httpx.get(f"http://{url}/readyz?token={secret}").status_code == 401
        assert httpx.get(f"http://{url}/readyz",
                         headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "token=***" in out + err  # the access log did log the requests
    assert secret not in out + err
