"""Server limits against idle, slow and oversized clients: a real uvicorn server on loopback,
raw sockets for the misbehaving clients, every wait bounded."""
from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from same_fast.serve.config import ServeConfig
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    return b.getvalue()


def serve(**overrides) -> ServerThread:
    cfg = dict(model="identity", stream=True, token=TOKEN, max_batch=1, max_delay_ms=0)
    return ServerThread(Service(ServeConfig(**{**cfg, **overrides})))


def open_idle(srv: ServerThread, n: int) -> list[socket.socket]:
    return [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(n)]


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes ``s`` (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def enhance_ok(srv: ServerThread) -> None:
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    t0 = time.monotonic()
    assert httpx.get(srv.url + "/healthz", timeout=1).status_code == 200
    r = httpx.post(srv.url + "/v1/enhance", content=png(img), headers=AUTH, timeout=1)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), img)
    assert time.monotonic() - t0 < 2


def test_200_idle_connections_do_not_lock_out_requests():
    # Before: uvicorn's limit_concurrency (160) counted idle sockets and every request got 503.
    with serve() as srv:
        socks = open_idle(srv, 200)
        try:
            time.sleep(0.2)
            enhance_ok(srv)
        finally:
            for s in socks:
                s.close()


def test_slowloris_heads_are_closed_and_requests_still_served():
    with serve(header_timeout_s=1.0) as srv:
        socks = open_idle(srv, 200)
        stop = threading.Event()

        def trickle() -> None:  # a header line a byte at a time, never finished
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(0.2):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X")

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            time.sleep(0.3)
            enhance_ok(srv)
            t_closed = time.monotonic()
            assert all(closed_by_server(s, 3.0) for s in socks)
            assert time.monotonic() - t_closed < 3.0
        finally:
            stop.set()
            t.join(5)
            for s in socks:
                s.close()


def test_silent_connection_is_closed_after_the_first_byte_timeout():
    with serve(first_byte_timeout_s=0.5) as srv:
        (s,) = open_idle(srv, 1)
        t0 = time.monotonic()
        assert closed_by_server(s, 3.0)
        assert 0.3 < time.monotonic() - t0 < 2.0
        s.close()


def test_per_client_cap_closes_the_oldest_idle_connection_then_refuses_with_json():
    with serve(max_client_connections=4, body_timeout_s=5.0) as srv:
        idle = open_idle(srv, 4)
        time.sleep(0.1)
        enhance_ok(srv)  # room is made by closing idle ones
        assert closed_by_server(idle[0], 1.0)
        for s in idle:
            s.close()
        # Four connections each mid-body (busy): a fifth is refused with a JSON 503.
        busy = open_idle(srv, 4)
        for s in busy:
            s.sendall(b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n12345")
        time.sleep(0.2)
        r = httpx.get(srv.url + "/healthz", timeout=2)
        assert r.status_code == 503 and "too many open connections" in r.json()["error"]
        for s in busy:
            s.close()


def test_stalled_body_gets_408_json_quickly():
    # Before: the body deadline was the 300 s idle timeout.
    with serve(body_timeout_s=0.5) as srv:
        (s,) = open_idle(srv, 1)
        s.sendall(b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n0123456789")
        s.settimeout(3.0)
        t0 = time.monotonic()
        reply = b""
        with contextlib.suppress(TimeoutError, socket.timeout, ConnectionResetError):
            while chunk := s.recv(65536):
                reply += chunk
        assert time.monotonic() - t0 < 2.5
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply
        assert b"application/json" in head and b"request body too slow" in body
        s.close()


class Held:
    """Wraps a codec function so that each call waits until the test lets it go: while held, a
    call made on the event loop would stall every connection, one made on a codec thread none."""

    def __init__(self, fn) -> None:
        self.fn, self.entered, self.go, self.threads = fn, threading.Event(), threading.Event(), []

    def __call__(self, *args):
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.go.wait(30), "the test never let the codec call go"
        return self.fn(*args)


@pytest.mark.parametrize("route", ["ws", "http"])
@pytest.mark.parametrize("stage", ["decode_frames", "encode_png"])
def test_a_huge_frame_is_coded_off_the_event_loop(monkeypatch, route, stage):
    # A 16-bit 4000x4000 PNG of one value is ~60 KB on the wire; its decode (and the reply's
    # encode) once took ~1-2 s, and on the event loop stalled /healthz and every other stream
    # that long. Held mid-call, the server must still answer: no timing threshold to flake.
    import same_fast.serve.http_v1 as http_v1
    import same_fast.serve.ws as ws_mod

    held = Held(getattr(ws_mod, stage))
    monkeypatch.setattr(ws_mod if route == "ws" else http_v1, stage, held)
    big = Image.fromarray(np.full((4000, 4000), 1000, np.uint16))
    b = io.BytesIO()
    big.save(b, format="PNG")
    with serve(token=None) as srv, contextlib.ExitStack() as stack:
        assert httpx.get(srv.url + "/healthz", timeout=2).status_code == 200  # warm
        replies: list = []
        if route == "ws":
            client = stack.enter_context(connect(srv.ws_url, max_size=None))
            client.send(b.getvalue())
        else:
            t = threading.Thread(target=lambda: replies.append(httpx.post(
                srv.url + "/v1/enhance", content=b.getvalue(), timeout=60)))
            t.start()
        try:
            assert held.entered.wait(30), f"{stage} was never called"
            assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
            assert not held.go.is_set()  # answered while the frame was still being coded
        finally:
            held.go.set()
        if route == "ws":
            reply = client.recv(timeout=60)
            if isinstance(reply, str):  # the weights announcement
                reply = client.recv(timeout=60)
        else:
            t.join(60)
            assert replies and replies[0].status_code == 200, replies
            reply = replies[0].content
        assert np.asarray(Image.open(io.BytesIO(reply))).shape == (4000, 4000)
    assert held.threads and all(n.startswith("same-fast-codec") for n in held.threads), held.threads


def test_malformed_request_and_unknown_routes_answer_json():
    with serve() as srv:
        (s,) = open_idle(srv, 1)
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        s.settimeout(3)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 400") and b"application/json" in reply
        s.close()
        r = httpx.get(srv.url + "/nowhere", headers=AUTH, timeout=2)
        assert r.status_code == 404 and "error" in r.json()
        r = httpx.get(srv.url + "/v1/enhance", headers=AUTH, timeout=2)
        assert r.status_code == 405 and "error" in r.json()


def test_big_endian_dicom_over_http_answers_json():
    # Before: a plain-text 500 and a traceback.
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("MR_small_bigendian.dcm"), "rb").read()
    with serve() as srv:
        r = httpx.post(srv.url + "/v1/enhance", content=data, headers=AUTH, timeout=30)
        if r.status_code == 200:  # written as a derived DICOM (the io layer may learn it)
            assert r.headers["content-type"] == "application/dicom"
        else:
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]
        assert httpx.get(srv.url + "/healthz", timeout=2).status_code == 200


def test_queued_pixel_budget_refuses_as_busy_not_out_of_memory():
    cfg = ServeConfig(model="identity:delay_ms=300", max_batch=1, max_delay_ms=0,
                      max_queued_pixels=3 * 64 * 64)
    svc = Service(cfg)
    try:
        frame = np.zeros((64, 64, 1), np.uint8)
        futs = [svc.accept(frame) for _ in range(3)]
        from same_fast.serve.service import Busy

        with pytest.raises(Busy, match="pixels already queued"):
            svc.accept(frame)
        for f in futs:
            f.result(timeout=10)
        svc.accept(frame).result(timeout=10)  # room again once answered
    finally:
        svc.close()


def test_pixel_budget_bounds_each_model_call_and_tiles_exactly():
    from same_fast.serve.model import ServedModel

    calls = []

    def step(x):
        calls.append(x.shape[0] * x.shape[2] * x.shape[3])
        return x

    model = ServedModel(step, "probe")
    model.batch_pixels = 100_000
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, s, dtype=np.uint8)
              for s in [(600, 700, 3), (100, 100, 3), (100, 100, 3), (37, 5000, 3)]]
    out = model.frame_step(frames)
    assert max(calls) <= 100_000 and len(calls) > 6
    for f, (y, _, _) in zip(frames, out, strict=True):
        np.testing.assert_array_equal(y, f)  # the cores of an identity's tiles rebuild it


def _peak_growth_gb(tmp_path, *server_args: str) -> float:
    """Four 2000x2000 frames at once through a small SAMENet in a server process: how much its
    peak RSS grows over the idle server's (GB)."""
    import os
    import re
    import subprocess
    import sys

    import torch

    from same_fast.models import save_model
    from same_fast.nn import SAMENet

    torch.manual_seed(0)
    net = SAMENet(in_channels=3, preset="lite", base=4, max_channels=8, levels=2)
    path = save_model(tmp_path / "tiny.safetensors", net, modality="fundus")
    proc = subprocess.Popen(
        [sys.executable, "-m", "same_fast.cli", "serve", "-m", str(path), "--stream",
         "--port", "0", "--max-batch", "4", "--max-delay-ms", "50", *server_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else ""

        def hwm() -> float:
            with open(f"/proc/{proc.pid}/status") as f:
                return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1e6

        idle = hwm()
        img = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
        data = png(img)
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(connect(f"ws://127.0.0.1:{m.group(1)}/v1/stream",
                                                 max_size=None)) for _ in range(4)]
            for ws in socks:
                ws.send(data)
            for ws in socks:
                while isinstance(reply := ws.recv(timeout=300), str):
                    pass
                assert np.asarray(Image.open(io.BytesIO(reply))).shape == img.shape
        return hwm() - idle
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.slow
def test_four_large_frames_in_flight_stay_within_the_batch_budget(tmp_path):
    # Without a budget the four frames went to the model as one 16 Mpx batch.
    grew = _peak_growth_gb(tmp_path, "--max-batch-pixels", str(1 << 20))
    print(f"peak grew {grew:.2f} GB")
    assert grew < 0.6, grew
