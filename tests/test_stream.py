"""The C++ stream loop through its Python front: order, back-pressure, shutdown, threads, errors."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from same_fast.stream import (
    CANCELLED,
    DROPPED,
    OK,
    FrameCancelled,
    FrameDropped,
    FrameFailed,
    LoopClosed,
    QueueFull,
    StreamLoop,
    tensor_step,
)


def _double(frames):
    return [f * 2 for f in frames]


def test_results_in_submission_order_with_reordering_workers():
    # Three workers and random step times make batches finish out of order; the loop must
    # still release results in submission order.
    rng = random.Random(0)
    seen = []

    def step(frames):
        time.sleep(rng.random() * 0.004)
        return [f + 1000 for f in frames]

    with StreamLoop(step, capacity=16, max_batch=3, max_delay_ms=1, workers=3,
                    on_result=lambda o: seen.append(o.seq)) as loop:
        futs = [loop.submit(i) for i in range(300)]
        assert [f.result(10) for f in futs] == [i + 1000 for i in range(300)]
    assert seen == [f.seq for f in futs] == list(range(300))
    s = loop.stats()
    assert s["ok"] == 300 and s["errors"] == 0 and s["batches"] >= 100
    assert s["p50_s"] <= s["p99_s"] <= s["p999_s"] <= s["max_latency_s"]


def test_dynamic_batching_by_size_and_delay():
    sizes = []

    def step(frames):
        sizes.append(len(frames))
        return frames

    gate = threading.Event()
    with StreamLoop(lambda fr: (gate.wait(5), step(fr))[1], capacity=64, max_batch=8,
                    max_delay_ms=10_000) as loop:
        futs = [loop.submit(i) for i in range(8)]  # a full batch goes at once, not after 10 s
        t0 = time.perf_counter()
        gate.set()
        [f.result(15) for f in futs]
        assert time.perf_counter() - t0 < 5  # wide: a loaded CI machine may pause a second
    assert sizes == [8]
    sizes.clear()
    with StreamLoop(step, max_batch=8, max_delay_ms=30) as loop:
        t0 = time.perf_counter()
        loop.submit(1).result(5)  # a lone frame waits about max_delay, then goes alone
        waited = time.perf_counter() - t0
    assert sizes == [1] and 0.02 <= waited < 1.0


def test_block_policy_back_pressure_and_timeout():
    gate = threading.Event()
    with StreamLoop(lambda fr: (gate.wait(5), fr)[1], capacity=2, max_batch=1,
                    max_delay_ms=0) as loop:
        first = loop.submit(0)
        deadline = time.time() + 5
        while loop.stats()["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.001)
        loop.submit(1)
        loop.submit(2)  # the queue (capacity 2) is now full
        t0 = time.perf_counter()
        with pytest.raises(QueueFull):
            loop.submit(3, timeout=0.05)
        assert time.perf_counter() - t0 >= 0.04
        # A blocked producer proceeds as soon as the worker frees a slot.
        threading.Timer(0.05, gate.set).start()
        late = loop.submit(4, timeout=5)
        assert late.result(5) == 4 and first.result(5) == 0
    s = loop.stats()
    assert s["rejected"] == 1 and s["dropped"] == 0 and s["ok"] == 4


def test_drop_oldest_policy_counts_and_reports_drops():
    gate = threading.Event()
    outcomes = []
    with StreamLoop(lambda fr: (gate.wait(5), fr)[1], capacity=3, max_batch=1, max_delay_ms=0,
                    policy="drop_oldest", on_result=outcomes.append) as loop:
        futs = [loop.submit(0)]
        while loop.stats()["in_flight"] == 0:
            time.sleep(0.001)
        futs += [loop.submit(i, timeout=0) for i in range(1, 8)]  # never blocks
        gate.set()
    # Frame 0 was computing; of 1..7 only the newest 3 fit, so 1..4 were dropped.
    for i in range(1, 5):
        with pytest.raises(FrameDropped):
            futs[i].result(5)
    assert [f.result(5) for f in futs[5:]] == [5, 6, 7]
    assert [o.status for o in outcomes] == [OK] + [DROPPED] * 4 + [OK] * 3
    assert [o.seq for o in outcomes] == list(range(8))
    assert loop.stats()["dropped"] == 4


def test_close_drains_every_accepted_frame():
    with StreamLoop(lambda fr: (time.sleep(0.002), fr)[1], capacity=500, max_batch=4,
                    max_delay_ms=1) as loop:
        futs = [loop.submit(i) for i in range(200)]
    # __exit__ closed with drain=True: everything is done, nothing was lost.
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(200))
    with pytest.raises(LoopClosed):
        loop.submit(1)


def test_close_without_drain_cancels_waiting_frames():
    gate = threading.Event()
    outcomes = []
    loop = StreamLoop(lambda fr: (gate.wait(5), fr)[1], capacity=50, max_batch=1,
                      max_delay_ms=0, on_result=outcomes.append)
    futs = [loop.submit(i) for i in range(10)]
    while loop.stats()["in_flight"] == 0:
        time.sleep(0.001)
    threading.Timer(0.05, gate.set).start()
    loop.close(drain=False)
    assert all(f.done() for f in futs)
    assert futs[0].result() == 0
    for f in futs[1:]:
        with pytest.raises(FrameCancelled):
            f.result()
    assert [o.status for o in outcomes] == [OK] + [CANCELLED] * 9


def test_many_producer_threads():
    # Each producer checks its own frames come back to it; the loop's global order is the
    # order in which submit() returned.
    n_threads, per_thread = 6, 150
    errors = []
    order = []

    with StreamLoop(_double, capacity=8, max_batch=5, max_delay_ms=0.5, workers=2,
                    on_result=lambda o: order.append(o.seq)) as loop:
        def produce(t):
            try:
                futs = [(i, loop.submit((t, i))) for i in range(per_thread)]
                for i, f in futs:
                    if f.result(10) != (t, i, t, i):
                        errors.append((t, i))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []
    assert order == list(range(n_threads * per_thread))
    assert loop.stats()["ok"] == n_threads * per_thread


def test_exception_fails_only_its_batch():
    def step(frames):
        if 13 in frames:
            raise ValueError("unlucky frame")
        return frames

    with StreamLoop(step, capacity=64, max_batch=1, max_delay_ms=0) as loop:
        futs = [loop.submit(i) for i in range(30)]
        for i, f in enumerate(futs):
            if i == 13:
                with pytest.raises(FrameFailed, match="ValueError: unlucky frame"):
                    f.result(5)
            else:
                assert f.result(5) == i
    s = loop.stats()
    assert s["errors"] == 1 and s["failed_batches"] == 1 and s["ok"] == 29


def test_wrong_output_count_is_a_batch_error():
    with StreamLoop(lambda fr: fr[:-1], max_batch=2, max_delay_ms=50) as loop:
        a, b = loop.submit(1), loop.submit(2)
        with pytest.raises(FrameFailed, match="returned 1 outputs for 2 frames"):
            a.result(5)
        with pytest.raises(FrameFailed):
            b.result(5)


def test_bad_config_is_a_clear_error():
    from same_fast.errors import SameFastError

    with pytest.raises(SameFastError, match="policy"):
        StreamLoop(_double, policy="sometimes")
    with pytest.raises(SameFastError, match="max_batch"):
        StreamLoop(_double, max_batch=0)


def test_tensor_step_keeps_shape_dtype_and_groups_sizes():
    calls = []

    def model(x):
        calls.append(tuple(x.shape))
        return 1 - x

    step = tensor_step(model)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    b = rng.integers(0, 65536, (4, 5, 1), dtype=np.uint16)
    c = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    out = step([a, b, c])
    assert sorted(calls) == [(1, 1, 4, 5), (2, 3, 8, 6)]
    np.testing.assert_array_equal(out[0], 255 - a)
    np.testing.assert_array_equal(out[1], 65535 - b)
    np.testing.assert_array_equal(out[2], 255 - c)
    assert out[1].dtype == np.uint16
    ident = tensor_step(lambda x: x)([b])[0]
    np.testing.assert_array_equal(ident, b)  # the float round trip is exact for 16-bit


def test_step_runs_without_blocking_producers():
    # While a long step runs in the worker (GIL released around waits), another Python thread
    # keeps running: the GIL is not held across the step's blocking sleep or the queue waits.
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    with StreamLoop(lambda fr: (time.sleep(0.1), fr)[1], max_batch=1, max_delay_ms=0) as loop:
        loop.submit(torch.zeros(1)).result(5)
    stop.set()
    th.join()
    assert len(ticks) > 10  # ~100 when nothing else runs; the GIL-bound failure gives ~1


def test_cancelled_futures_do_not_stop_delivery():
    """A client that goes away cancels its futures; every other frame must still come back."""
    gate = threading.Event()
    seen = []
    with StreamLoop(lambda fr: (gate.wait(5), fr)[1], capacity=64, max_batch=4, max_delay_ms=0,
                    on_result=lambda o: seen.append(o.seq)) as loop:
        first = [loop.submit(np.full((2, 2), i)) for i in range(8)]
        assert all(f.cancel() for f in first[::2])  # still queued: cancellable
        gate.set()
        for i, f in enumerate(first[1::2]):
            assert int(f.result(timeout=10)[0, 0]) == 2 * i + 1
        later = [loop.submit(np.full((2, 2), 100 + i)) for i in range(4)]
        assert [int(f.result(timeout=10)[0, 0]) for f in later] == [100, 101, 102, 103]
    assert seen == sorted(seen) and len(seen) == 12  # the in-order callback still sees all
