"""Soak: 10,000 small frames through a real server; memory must stay flat."""
from __future__ import annotations

import gc
import io
import threading

import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from same_fast.serve.config import ServeConfig
from same_fast.serve.server import ServerThread
from same_fast.serve.service import Service

# The bound: after a 1,000-frame warm-up, 9,000 more frames may grow this process's resident
# memory (client + server + loop) by at most 16 MiB, i.e. < 1.9 kB per frame. A leak of one
# 8x8 frame's arrays, futures or PNG bytes per frame would exceed it.
BOUND_BYTES = 16 * 1024 * 1024


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _run(ws, payloads):
    t = threading.Thread(target=lambda: [ws.send(p) for p in payloads])
    t.start()
    got = 0
    while got < len(payloads):
        if isinstance(ws.recv(timeout=60), bytes):
            got += 1
    t.join()
    return got


@pytest.mark.slow
def test_soak_10000_frames_memory_is_flat():
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(50):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(b, format="PNG")
        payloads.append(b.getvalue())
    svc = Service(ServeConfig(stream=True, model="identity", max_batch=8, max_delay_ms=1,
                              max_inflight=64))
    with ServerThread(svc) as srv, connect(srv.ws_url) as ws:
        assert _run(ws, payloads * 20) == 1000  # warm-up: allocator pools, caches
        gc.collect()
        before = _rss()
        assert _run(ws, payloads * 180) == 9000
        gc.collect()
        after = _rss()
    s = svc.loop.stats()
    assert s["ok"] == 10000 and s["errors"] == 0 and s["dropped"] == 0
    print(f"RSS growth over 9,000 frames: {(after - before) / 2**20:.2f} MiB")
    assert after - before < BOUND_BYTES, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
