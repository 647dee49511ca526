"""SIGTERM on a real server process: every frame it received is answered before it exits."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    return b.getvalue()


def _assert_every_frame_answered(sent: list, replies: list, close_code: int | None) -> None:
    """Every frame sent came back as its image, in order, no error, then a 1001 close."""
    frames = [r for r in replies if isinstance(r, bytes)]
    texts = [json.loads(r) for r in replies if isinstance(r, str)]
    assert all("error" not in t for t in texts), texts
    assert len(frames) == len(sent)
    for a, f in zip(sent, frames, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(f))), a)
    assert close_code == 1001


def test_sigterm_drains_in_flight_frames():
    # A model that takes 40 ms per frame, one frame per batch: 15 frames take ~0.6 s, so the
    # signal arrives while most of them are still queued.
    proc = subprocess.Popen(
        [sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity:delay_ms=40",
         "--stream", "--port", "0", "--max-batch", "1", "--max-delay-ms", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(m.group(1))
        sent = []
        rng = np.random.default_rng(0)
        with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
            for i in range(15):
                a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                a[0, 0, 0] = i
                sent.append(a)
                ws.send(_png(a))
            replies = []
            while not replies or isinstance(replies[-1], str):
                replies.append(ws.recv(timeout=30))
            time.sleep(0.05)  # the server has read all 15 messages by now
            os.kill(proc.pid, signal.SIGTERM)
            code = None
            try:
                while True:
                    replies.append(ws.recv(timeout=30))
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
        assert len(sent) == 15
        _assert_every_frame_answered(sent, replies, code)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_to_the_process_group_keeps_the_audit_log_complete(tmp_path):
    # A service manager signals the whole group: the server drains and the adapter's child
    # process (which ignores SIGTERM) finishes its step, writes the log's "end" record and exits
    # when the server stops it.
    import torch

    from same_fast.adapt.audit import read_audit
    from same_fast.models import save_model
    from same_fast.nn import SAMENet

    torch.manual_seed(0)
    net = SAMENet(in_channels=1, preset="lite", base=4, max_channels=8, levels=2)
    model = save_model(tmp_path / "tiny.safetensors", net, modality="ultrasound")
    log = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "same_fast.cli", "serve", "-m", str(model), "--stream",
         "--port", "0", "--adapt", "online", "--adapt-every", "1", "--adapt-batch", "2",
         "--adapt-crop", "16", "--adapt-safety", "off", "--audit", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})  # a tiny model; threads only contend
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        rng = np.random.default_rng(0)
        with connect(f"ws://127.0.0.1:{m.group(1)}/v1/stream") as ws:
            version, deadline = 0, time.monotonic() + 60
            while version < 2 and time.monotonic() < deadline:  # the adapter published twice
                ws.send(_png(rng.integers(0, 256, (16, 16), dtype=np.uint8)))
                while isinstance(reply := ws.recv(timeout=30), str):
                    version = max(version, json.loads(reply).get("weights_version", 0))
            assert version >= 2
            print("streamed", time.monotonic() - deadline + 60)
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(ConnectionClosed):
                while True:
                    ws.recv(timeout=30)
            print("closed", time.monotonic() - deadline + 60)
        assert proc.wait(timeout=30) == 0
        print("exited", time.monotonic() - deadline + 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    recs = read_audit(log)
    steps = [r["step"] for r in recs if r["event"] == "step"]
    assert recs[0]["event"] == "serve" and recs[-1]["event"] == "end", recs[-1]
    assert recs[-1]["reason"] == "server stopped" and steps == list(range(1, len(steps) + 1))
    assert recs[-1]["step"] == steps[-1] >= 2


def test_sigterm_answers_frames_that_arrive_during_the_drain():
    # A scanner keeps sending for a while after the signal (it cannot know yet). Before: the
    # stream stopped reading at once (frames left unread got no reply) and frames read during
    # the drain were refused. Now every frame it sent comes back as an image.
    proc = subprocess.Popen(
        [sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity:delay_ms=20",
         "--stream", "--port", "0", "--max-batch", "1", "--max-delay-ms", "0",
         "--drain-quiet-s", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else ""
        rng = np.random.default_rng(1)
        sent: list[np.ndarray] = []
        replies: list = []
        code = None
        with connect(f"ws://127.0.0.1:{m.group(1)}/v1/stream") as ws:
            def send_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                    sent.append(a)
                    ws.send(_png(a))
                    time.sleep(0.01)

            import threading

            def read() -> None:
                nonlocal code
                try:
                    while True:
                        replies.append(ws.recv(timeout=30))
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None

            reader = threading.Thread(target=read)
            reader.start()
            send_for(0.3)
            os.kill(proc.pid, signal.SIGTERM)
            send_for(0.3)  # these arrive during the drain
            reader.join(60)
        assert len(sent) > 30
        _assert_every_frame_answered(sent, replies, code)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
