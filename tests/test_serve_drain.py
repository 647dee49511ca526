"""SIGTERM on a real server process: every frame it received is answered before it exits."""
from __future__ import annotations

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
        frames = [r for r in replies if isinstance(r, bytes)]
        texts = [json.loads(r) for r in replies if isinstance(r, str)]
        assert all("error" not in t for t in texts), texts
        assert len(frames) == 15
        for a, f in zip(sent, frames, strict=True):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(f))), a)
        assert code == 1001
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
