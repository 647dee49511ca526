"""The stream benchmark suite runs end to end on a tiny configuration and reports what it must."""
from __future__ import annotations

import gc
import time
from types import SimpleNamespace

from same_fast.benchsuites import stream


def test_stream_suite_smoke():
    args = SimpleNamespace(quick=True, repeats=None, device="cpu", json=None, options={
        "model": "tiny", "size": "16", "frames": "24", "fps": "200", "streams": "1,4",
        "modes": "fixed,asap", "adapt": "off,on", "adapt_every": "4",
        "adapt_in": "thread"})  # the process adapter is covered by test_serve_adapt
    r = stream.run(args)
    assert len(r["cases"]) == 8 and len(r["summary"]) == 1 + 8
    floor = r["machine_floor"]  # the step alone, at the densest rate: 200 fps x 4 streams
    assert floor["frames"] == 24 and abs(floor["period_ms"] - 1.25) < 1e-9
    assert 0 < floor["p50_ms"] <= floor["p99_ms"] and floor["p99_over_p50"] >= 1
    assert r["summary"][0]["machine floor p99/p50"] == round(floor["p99_over_p50"], 2)
    # each loop run froze the warm heap as serve does; this process has its collector back
    assert all(c["loop"]["gc_frozen_objects"] > 1000 for c in r["cases"])
    assert gc.get_freeze_count() == 0
    for c in r["cases"]:
        for side in ("loop", "serial"):
            m = c[side]
            assert m["frames"] == 24 and m["ok"] + m["lost"] == 24
            assert 0 < m["p50_ms"] <= m["p99_ms"] <= m["p999_ms"] <= m["max_ms"] + 1e-9
            assert m["throughput_fps"] > 0
        assert c["loop_throughput_over_serial"] > 0
        if c["adapt"] == "on":
            assert c["serial"]["adapt_steps"] == 24 // 4
        if c["mode"] == "fixed" and c["adapt"] == "on":
            assert isinstance(c["done_when_met"], bool)
        m = c["loop"]
        assert m["tail_frames"] >= 1 and m["tail_step_ms"] > 0
        parts = m["tail_from_wait"] + m["tail_from_step"] + m["tail_from_release"]
        assert abs(parts - 1) < 1e-9 or parts == 0  # shares of the slow frames' excess
    assert r["environment"]["python"]


def test_machine_floor_paces_the_step_alone_and_can_be_skipped():
    calls = []

    class Served:
        def frame_step(self, frames, observe=None):
            assert observe is None and len(frames) == 1
            calls.append((time.perf_counter(), frames[0].shape))
            return frames

    o = stream._opts(SimpleNamespace(quick=True, repeats=None, options={
        "frames": "20", "fps": "100", "streams": "1,4", "size": "8", "gc_freeze": "0"}))
    f = stream.machine_floor(o, Served())
    assert f["frames"] == len(calls) == 20 and abs(f["period_ms"] - 2.5) < 1e-9
    assert {shape for _, shape in calls} == {(8, 8, 1)}
    assert calls[-1][0] - calls[0][0] >= 19 * 0.0025 * 0.9  # paced at the rate, not back to back
    assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"]
    o["floor_frames"] = 0
    assert stream.machine_floor(o, Served()) == {}


def _timeline(slow_steps: set[int], busy_before: set[int]):
    """100 frames 10 ms apart, each served alone by a 1 ms step (3 ms where slow_steps says);
    a frame in busy_before waits 2 ms for the worker first. Release is 0.05 ms after the step."""
    submits, lat, steps = {}, {}, []
    for i in range(100):
        t = i * 0.01
        start = t + (0.002 if i in busy_before else 0.0001)
        end = start + (0.003 if i in slow_steps else 0.001)
        steps.append((start, end))
        submits[i], lat[i] = t, end + 0.00005 - t
    return submits, lat, steps


def test_tail_breakdown_blames_slow_steps():
    r = stream.tail_breakdown(*_timeline(slow_steps={10, 50}, busy_before=set()))
    assert r["tail_frames"] == 2  # the frames at or above the 99th percentile of 100
    assert abs(r["tail_step_ms"] - 3.0) < 1e-6
    assert r["tail_from_step"] > 0.99 and abs(r["tail_from_wait"]) < 0.01


def test_tail_breakdown_blames_waiting():
    r = stream.tail_breakdown(*_timeline(slow_steps=set(), busy_before={7, 70}))
    assert r["tail_frames"] == 2
    assert abs(r["tail_wait_ms"] - 2.0) < 1e-6 and abs(r["tail_step_ms"] - 1.0) < 1e-6
    assert r["tail_from_wait"] > 0.99 and abs(r["tail_from_step"]) < 0.01


def test_tail_breakdown_of_nothing():
    assert stream.tail_breakdown({}, {}, [])["tail_frames"] == 0


def test_freeze_heap_exempts_what_is_alive_and_still_collects_later_garbage():
    """``serve`` freezes its warm heap: a full collection then walks only newer objects (a
    ~300,000-object torch heap took 80-150 ms a pass, every Python thread waiting)."""
    import weakref

    from same_fast.serve.service import freeze_heap

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    old = Node()
    try:
        frozen = freeze_heap()
        # a frozen object without a cycle is still freed when its last reference goes, so
        # other threads left by earlier tests may lower the count a little (CI saw 2)
        assert gc.get_freeze_count() > 1000
        assert 0 <= frozen - gc.get_freeze_count() < 1000
        assert not any(o is old for o in gc.get_objects())  # frozen: no collection walks it
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle made after the freeze
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        assert ref() is None  # is collected as before
    finally:
        gc.unfreeze()


def test_serve_pipe_freezes_its_heap_and_library_callers_do_not(monkeypatch):
    import argparse
    import io

    from same_fast.commands import serve as serve_cmd
    from same_fast.serve import pipe, service
    from same_fast.serve.config import ServeConfig

    frozen: list[int] = []
    monkeypatch.setattr(service, "freeze_heap", lambda: frozen.append(1) or 1)
    cfg = ServeConfig(model="identity", shape="2x2x1")
    assert pipe.run_pipe(cfg, io.BytesIO(bytes(8)), io.BytesIO()) == 0
    assert frozen == []  # a library caller's process is its own business
    out = io.BytesIO()
    assert pipe.run_pipe(cfg, io.BytesIO(bytes(8)), out, freeze=True) == 0
    assert frozen == [1] and out.getvalue() == bytes(8)
    calls: list[dict] = []
    monkeypatch.setattr(pipe, "run_pipe", lambda c, **kw: calls.append(kw) or 0)
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    args = parser.parse_args(["-m", "identity", "--pipe", "--shape", "2x2x1"])
    assert serve_cmd.run(args) == 0 and calls == [{"freeze": True}]  # `same-fast serve --pipe`
