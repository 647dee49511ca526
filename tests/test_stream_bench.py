"""The stream benchmark suite runs end to end on a tiny configuration and reports what it must."""
from __future__ import annotations

from types import SimpleNamespace

from same_fast.benchsuites import stream


def test_stream_suite_smoke():
    args = SimpleNamespace(quick=True, repeats=None, device="cpu", json=None, options={
        "model": "tiny", "size": "16", "frames": "24", "fps": "200", "streams": "1,4",
        "modes": "fixed,asap", "adapt": "off,on", "adapt_every": "4",
        "adapt_in": "thread"})  # the process adapter is covered by test_serve_adapt
    r = stream.run(args)
    assert len(r["cases"]) == 8 and len(r["summary"]) == 8
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
    assert r["environment"]["python"]
