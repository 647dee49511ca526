"""A real uvicorn server on loopback, driven by a real WebSocket client and httpx."""
from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from same_fast.errors import InputError
from same_fast.serve.config import ServeConfig
from same_fast.serve.model import ServedModel
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service


def png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(b, format="PNG")
    return b.getvalue()


def unpng(data: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[..., None] if a.ndim == 2 else a


def frames(n: int, shape=(12, 16, 3), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        a[0, 0, 0], a[0, 1, 0] = i % 256, i // 256  # the frame's number, to check order
        out.append(a)
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from /metrics text (parsed by prometheus_client; 0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def recv_frames(ws, n: int, timeout: float = 30) -> tuple[list, list]:
    """Read until n replies (binary frames or error texts); version texts are collected apart."""
    replies, versions = [], []
    while len(replies) < n:
        m = ws.recv(timeout=timeout)
        if isinstance(m, str):
            d = json.loads(m)
            if "weights_version" in d:
                versions.append(d)
                continue
            replies.append(d)
        else:
            replies.append(unpng(m))
    return replies, versions


@pytest.fixture(scope="module")
def server():
    svc = Service(ServeConfig(stream=True, model="identity", max_message_bytes=200_000,
                              max_pixels=100_000, max_batch=4, max_delay_ms=1))
    with ServerThread(svc) as srv:
        yield srv


def test_500_frames_complete_and_in_order(server):
    sent = frames(500)
    with connect(server.ws_url) as ws:
        # Send from another thread while reading here, as a scanner would.
        t = threading.Thread(target=lambda: [ws.send(png(a)) for a in sent])
        t.start()
        replies, versions = recv_frames(ws, 500)
        t.join()
    assert len(replies) == 500
    for a, r in zip(sent, replies, strict=True):
        assert isinstance(r, np.ndarray) and r.shape == a.shape
        np.testing.assert_array_equal(r, a)  # identity model: byte-exact and in order
    assert versions == [{"weights_version": 0, "weights_hash": "none", "frame": 0}]


def test_bad_frames_get_errors_and_the_stream_goes_on(server):
    good = frames(6, shape=(10, 10, 1))
    big = np.zeros((400, 400, 1), np.uint8)  # 160,000 px > max_pixels (100,000)
    rng = np.random.default_rng(1)
    noise_png = png(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))  # > 200 kB message
    assert len(noise_png) > 200_000
    msgs = [png(good[0]), b"certainly not an image", png(good[1]), png(good[2])[:40],
            png(good[3]), noise_png, png(big), png(good[4]), "a text message", png(good[5])]
    with connect(server.ws_url) as ws:
        for m in msgs:
            ws.send(m)
        replies, _ = recv_frames(ws, len(msgs))
    kinds = ["ok" if isinstance(r, np.ndarray) else r for r in replies]
    ok_at = [0, 2, 4, 7, 9]
    for i, r in enumerate(replies):
        if i in ok_at:
            assert isinstance(r, np.ndarray), (i, kinds)
        else:
            assert isinstance(r, dict) and r["frame"] == i and r["error"], (i, kinds)
    np.testing.assert_array_equal(replies[9], good[5])
    assert "not a PNG" in replies[1]["error"]
    assert "truncated" in replies[3]["error"] or "cannot decode" in replies[3]["error"]
    assert "over the limit" in replies[5]["error"] and "bytes" in replies[5]["error"]
    assert "over the limit" in replies[6]["error"] and "pixels" in replies[6]["error"]
    assert "binary" in replies[8]["error"]
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "same_fast_errors_total", kind="limit") >= 1


def test_disconnecting_client_does_not_disturb_another(server):
    sent = frames(300, shape=(8, 8, 3), seed=3)
    result = {}

    def steady():
        with connect(server.ws_url) as ws:
            t = threading.Thread(target=lambda: [ws.send(png(a)) for a in sent])
            t.start()
            result["replies"], _ = recv_frames(ws, len(sent))
            t.join()

    th = threading.Thread(target=steady)
    th.start()
    for _ in range(3):  # rude clients: send a burst and vanish without reading or closing
        with connect(server.ws_url) as ws:
            for a in frames(50, shape=(8, 8, 3), seed=4):
                ws.send(png(a))
            ws.socket.shutdown(socket.SHUT_RDWR)
            ws.socket.close()
        time.sleep(0.02)
    th.join(60)
    replies = result["replies"]
    assert len(replies) == 300
    for a, r in zip(sent, replies, strict=True):
        np.testing.assert_array_equal(r, a)
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_http_enhance_png_16bit_and_errors(server):
    a = frames(1, shape=(20, 24, 3))[0]
    r = httpx.post(server.url + "/v1/enhance", content=png(a))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-same-fast-weights-version"] == "0"
    np.testing.assert_array_equal(unpng(r.content), a)
    g16 = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 97).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, format="PNG")
    r = httpx.post(server.url + "/v1/enhance", content=buf.getvalue())
    assert r.status_code == 200
    back = np.asarray(Image.open(io.BytesIO(r.content)))
    assert back.dtype in (np.uint16, np.int32) and np.array_equal(back.astype(np.uint16), g16)
    r = httpx.post(server.url + "/v1/enhance", content=b"\x89PNG\r\n\x1a\n broken")
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(server.url + "/v1/enhance", content=b"x" * 300_000)
    assert r.status_code == 413
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    assert httpx.post(server.url + "/v1/adaptation/freeze").status_code == 409


def _us_dicom(tmp_path):
    """A grey 24 x 32 ultrasound DICOM file: (dataset, bytes)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "us.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "P1", "US"
    px = np.random.default_rng(5).integers(0, 256, (24, 32), dtype=np.uint8)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 24, 32, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = px.tobytes()
    ds.save_as(str(tmp_path / "us.dcm"), enforce_file_format=True)
    return ds, (tmp_path / "us.dcm").read_bytes()


def test_http_enhance_dicom_returns_derived_dicom(server, tmp_path):
    import pydicom

    ds, src = _us_dicom(tmp_path)
    px = ds.pixel_array
    r = httpx.post(server.url + "/v1/enhance", content=src)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    out = pydicom.dcmread(io.BytesIO(r.content))
    assert out.PatientID == "P1" and out.SeriesInstanceUID != ds.SeriesInstanceUID
    np.testing.assert_array_equal(out.pixel_array, px)
    with connect(server.ws_url) as ws:  # DICOM frames over the stream, too
        ws.send(src)
        np.testing.assert_array_equal(recv_frames(ws, 1)[0][0][..., 0], px)


def test_model_exception_fails_only_that_frame():
    def step(x):
        if bool((x[:, :, 0, 0] == 13 / 255).any()):
            raise RuntimeError("the model fell over")
        return 1 - x

    model = ServedModel(step, "flaky")
    svc = Service(ServeConfig(stream=True, max_batch=1, max_delay_ms=0), model=model)
    sent = frames(40, shape=(6, 6, 1), seed=7)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        for a in sent:
            ws.send(png(a))
        replies, _ = recv_frames(ws, 40)
        text = httpx.get(srv.url + "/metrics").text
    for i, (a, r) in enumerate(zip(sent, replies, strict=True)):
        if i == 13:
            assert r == {"error": "RuntimeError: the model fell over", "frame": 13}
        else:
            np.testing.assert_array_equal(r, 255 - a)
    assert metric(text, "same_fast_errors_total", kind="model") == 1
    assert metric(text, "same_fast_loop_failed_batches_total", model="flaky") == 1


def test_token_required_off_loopback_and_enforced():
    with pytest.raises(InputError, match="requires --token"):
        ServeConfig(host="0.0.0.0").validate()
    svc = Service(ServeConfig(stream=True, token="s3cret"))
    with ServerThread(svc) as srv:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/v1/model",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(srv.url + "/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["model"] == "identity"
        with pytest.raises(InvalidStatus) as refused:  # the handshake is refused
            connect(srv.ws_url)
        assert refused.value.response.status_code == 403
        a = frames(1)[0]
        with connect(srv.ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send(png(a))
            np.testing.assert_array_equal(recv_frames(ws, 1)[0][0], a)


def test_inflight_limit_back_pressures_without_loss():
    # A slow model and max_inflight 4: the server stops reading, the client's sends wait,
    # and every frame still comes back.
    svc = Service(ServeConfig(stream=True, model="identity:delay_ms=5", max_inflight=4,
                              max_batch=1, max_delay_ms=0))
    sent = frames(40, shape=(8, 8, 1), seed=9)
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        t = threading.Thread(target=lambda: [ws.send(png(a)) for a in sent])
        t.start()
        time.sleep(0.15)
        depth = svc.loop.stats()["queue_depth"] + svc.loop.stats()["in_flight"]
        replies, _ = recv_frames(ws, 40)
        t.join()
    assert depth <= 4
    for a, r in zip(sent, replies, strict=True):
        np.testing.assert_array_equal(r, a)


def test_idle_client_is_disconnected():
    svc = Service(ServeConfig(stream=True, idle_timeout_s=0.3))
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        t0 = time.perf_counter()
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert time.perf_counter() - t0 < 5
        assert e.value.rcvd is not None and e.value.rcvd.code == 1001


def test_stream_endpoint_only_with_stream_flag():
    svc = Service(ServeConfig())  # the CLI default: HTTP only
    with ServerThread(svc) as srv:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        with pytest.raises(InvalidStatus):
            connect(srv.ws_url)


def test_multiframe_dicom_http_gives_a_cine_and_the_stream_refuses_it(dicom_file):
    # pydicom's 30-frame echo cine (JPEG baseline, YBR_FULL_422). A queue of 8 frames is
    # smaller than the file: HTTP must still enhance all 30 (a window of max_inflight frames).
    import pydicom

    from same_fast.io.dicom import dataset_frames

    src = dicom_file("examples_ybr_color.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(src))
    expected = dataset_frames(ds)
    assert expected.shape == (30, 240, 320, 3)
    svc = Service(ServeConfig(stream=True, capacity=8, max_inflight=4, max_batch=4))
    with ServerThread(svc) as srv:
        r = httpx.post(srv.url + "/v1/enhance", content=src, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
        out = pydicom.dcmread(io.BytesIO(r.content))
        assert int(out.NumberOfFrames) == 30 and out.SeriesInstanceUID != ds.SeriesInstanceUID
        assert out.SOPInstanceUID != ds.SOPInstanceUID and out.PatientID == ds.PatientID
        np.testing.assert_array_equal(dataset_frames(out), expected)  # identity model
        # On the stream a message is one frame: the cine gets one error in its place, and the
        # stream goes on.
        single = frames(1, shape=(8, 8, 3), seed=11)[0]
        with connect(srv.ws_url) as ws:
            ws.send(png(single))
            ws.send(src)
            ws.send(png(single))
            replies, _ = recv_frames(ws, 3)
        assert replies[1]["frame"] == 1 and "multi-frame DICOM (30 frames)" in replies[1]["error"]
        assert "one frame per message" in replies[1]["error"]
        np.testing.assert_array_equal(replies[0], single)
        np.testing.assert_array_equal(replies[2], single)
        assert metric(httpx.get(srv.url + "/metrics").text, "same_fast_errors_total",
                      kind="decode") == 1


def _raw_ws(host: str, port: int) -> socket.socket:
    """A WebSocket client socket that never reads after the handshake (small receive buffer)."""
    import base64
    import os

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _ws_frame(payload: bytes) -> bytes:
    """One masked binary WebSocket frame (client to server)."""
    import struct

    n = len(payload)
    head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else
                            bytes([0xFE]) + struct.pack(">H", n) if n < 65536 else
                            bytes([0xFF]) + struct.pack(">Q", n))
    mask = bytes([1, 2, 3, 4])
    body = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return head + mask + body.tobytes()


def test_client_that_never_reads_is_dropped_while_another_is_served():
    # Incompressible 256x256 RGB frames (~200 kB replies): the replies fill the socket buffers
    # within a few frames, a reply then waits longer than send_timeout_s and the server aborts
    # that connection; a steady client on the same server gets every frame meanwhile.
    svc = Service(ServeConfig(stream=True, send_timeout_s=0.5, max_inflight=4, max_batch=2))
    noise = np.random.default_rng(12).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    msg = _ws_frame(png(noise))
    sent = frames(100, shape=(8, 8, 3), seed=13)
    with ServerThread(svc) as srv:
        rude = _raw_ws(srv.host, srv.port)
        rude.settimeout(20)

        def flood():
            with contextlib.suppress(OSError):
                for _ in range(40):
                    rude.sendall(msg)

        threading.Thread(target=flood, daemon=True).start()
        t0 = time.perf_counter()
        replies = []
        with connect(srv.ws_url) as ws:
            while True:  # keep a steady stream going until the rude client is gone
                for a in sent[:10]:
                    ws.send(png(a))
                replies += recv_frames(ws, 10)[0]
                metrics = httpx.get(srv.url + "/metrics").text
                if 'kind="disconnect"' in metrics or time.perf_counter() - t0 > 30:
                    break
            for a in sent[10:]:
                ws.send(png(a))
            replies += recv_frames(ws, 90)[0]
            # The rude connection is gone from the server (aborted, not left half-closed);
            # only the steady one is open.
            deadline = time.monotonic() + 5
            while len(srv.server.server_state.connections) > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(srv.server.server_state.connections) == 1
            assert metric(httpx.get(srv.url + "/metrics").text,
                          "same_fast_stream_connections") == 1
        rude.close()
    assert metric(metrics, "same_fast_errors_total", kind="disconnect") == 1
    assert len(replies) == 10 * (len(replies) // 10) and len(replies) >= 100
    for i, r in enumerate(replies[:-90]):
        np.testing.assert_array_equal(r, sent[i % 10])
    for a, r in zip(sent[10:], replies[-90:], strict=True):
        np.testing.assert_array_equal(r, a)


def test_a_dicom_of_another_modality_is_refused_unless_forced(tmp_path):
    # as `same-fast enhance`: an OCT model is not run on an ultrasound DICOM by mistake
    from same_fast.models import save_model
    from same_fast.nn import SAMENet

    ckpt = save_model(tmp_path / "oct.safetensors", SAMENet(1, "lite", base=4, levels=3),
                      modality="oct")
    _, src = _us_dicom(tmp_path)
    for force in (False, True):
        with ServerThread(Service(ServeConfig(model=str(ckpt), force_modality=force))) as srv:
            r = httpx.post(srv.url + "/v1/enhance", content=src)
            if force:
                assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
            else:
                assert r.status_code == 400
                assert "DICOM Modality US is not what this oct model was trained for" in \
                    r.json()["error"]
                assert httpx.get(srv.url + "/readyz").json()["status"] == "ready"  # still serving
        with ServerThread(Service(ServeConfig(model=str(ckpt), stream=True,
                                              force_modality=force))) as srv, \
                connect(srv.ws_url) as ws:  # the stream: an error message, and it goes on
            ws.send(src)
            reply = recv_frames(ws, 1)[0][0]
            if force:
                assert isinstance(reply, np.ndarray)
            else:
                assert "DICOM Modality US" in reply["error"]
                ws.send(png(np.zeros((8, 8, 1), np.uint8)))
                assert isinstance(recv_frames(ws, 1)[0][0], np.ndarray)
