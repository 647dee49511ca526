"""``same-fast bench --suite stream``: streaming latency against a plain serial Python loop.

HoloHub-style: ``frames`` frames per run x ``runs`` runs, at a fixed frame rate and as fast as
possible, with 1 and 4 concurrent streams, online adaptation off and on. Each case runs twice
in the same process, interleaved run by run so machine drift hits both alike:

- ``loop``: the product path: producers submit to the C++ ``StreamLoop`` (bounded queue,
  dynamic batching, in-order release); the served model is a ``same_fast.engine`` backend;
  with adaptation on, ``serve.adaptation.OnlineAdaptation`` trains in a background thread and
  publishes weights between batches.
- ``serial``: what one would write without it: a Python loop that takes each frame when it
  arrives, enhances it alone, and (adaptation on) runs the same adaptation step inline every
  ``adapt_every`` frames.

Latency is arrival (submit) -> result available in order, as the loop measures it itself (C++,
steady clock); the serial loop measures the same interval in Python. At a fixed rate, frames
that arrive while the queue is full are dropped (``drop_oldest``) and counted: a scanner does
not wait. As fast as possible, producers block instead (nothing is dropped) and throughput is
the number to read.

Options (``--set KEY=VALUE``): model (``lite`` = random-init SAMENet lite, ``tiny``, ``identity``,
a shipped name or a checkpoint path; default lite), size (square frame side, default 64),
channels (default 1), fps (per stream, default 30), frames (default 1000; quick 200), runs
(default 3; quick 1), max_batch (4), max_delay_ms (0: like Triton's default, a batch forms
from what queued while the model was busy), capacity (16), adapt_every (8), adapt_batch (2),
threads (torch intra-op threads, default 1), switch_ms (Python's GIL switch interval, default
0.5 ms instead of 5: see ``same_fast.serve.service.tune_process``), gc_freeze (1: freeze the
heap once the model is warm, as ``serve`` does, see ``same_fast.serve.service.freeze_heap``;
0: leave the collector alone), backend (the serving backend: torch, torchscript, onnxruntime,
compile; default torch), device (cpu or cuda: where the backend runs; default cpu), adapt_in
(process or thread: where the loop's adapter runs; the serial
baseline always adapts inline), adapt_cpus (where the loop's adapter may run, as ``same-fast
serve --adapt-cpus``: auto, off or a CPU list; default auto), publish_every_s
(``--adapt-publish-every-s``: at most one weights swap per this many seconds; default serve's,
1.0),
streams ("1,4"), modes ("fixed,asap"), adapt ("off,on"), floor_frames (frames for the machine's
floor, see ``machine_floor``; default frames, 0 skips it).
Done-when (issue 7): adaptation on at a fixed rate: loop p99 <= 1.5 x p50 and 0 frames lost;
each fixed-rate case reports ``p99_over_p50`` and ``lost``. Each side also times its model step
alone (``step_p50_ms``, ``step_p99_ms``): on a shared or virtual machine the step's own p99/p50
(host speed drifting within a run) is the floor under the loop's, and ``loop_added_p50_ms`` is
what queueing, batching and in-order release add on top. ``tail_from_wait``, ``tail_from_step``
and ``tail_from_release`` say where the slowest 1 % of the loop's frames lost their time (see
``tail_breakdown``).
Before the cases, ``machine_floor`` times the model step alone at the densest fixed rate of the
run, on the serving CPUs, with nothing else of ours running: the spread the machine itself puts
under every case (``machine_floor.p99_over_p50``).
"""
from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np
import torch

from same_fast.benchsuites.common import environment


def _opts(args: Any) -> dict[str, Any]:
    o = dict(getattr(args, "options", {}) or {})
    quick = bool(getattr(args, "quick", False))
    d = {"model": "lite", "size": 64, "channels": 1, "fps": 30.0,
         "frames": 200 if quick else 1000,
         "runs": 1 if quick else 3, "max_batch": 4, "max_delay_ms": 0.0, "capacity": 16,
         "adapt_every": 8, "adapt_batch": 2, "threads": 1, "switch_ms": 0.5, "gc_freeze": 1,
         "backend": "torch", "device": "cpu",
         "adapt_in": "process", "adapt_cpus": "auto", "publish_every_s": 1.0,
         "streams": "1" if quick else "1,4", "modes": "fixed,asap", "adapt": "off,on",
         "floor_frames": -1}
    if getattr(args, "repeats", None):
        d["runs"] = int(args.repeats)
    for k, v in o.items():
        if k not in d:
            from same_fast.errors import InputError

            raise InputError(f"unknown stream bench option '{k}' (known: {', '.join(d)})")
        d[k] = type(d[k])(v)
    if d["floor_frames"] < 0:
        d["floor_frames"] = d["frames"]
    return d


def _make_served(o: dict[str, Any]):
    from same_fast.serve.model import load_served_model, served_from_module

    name = o["model"]
    if name in ("lite", "tiny"):
        from same_fast.nn import SAMENet

        torch.manual_seed(0)
        kw = {} if name == "lite" else {"base": 8, "max_channels": 16, "levels": 3}
        net = SAMENet(o["channels"], "lite", **kw)
        return served_from_module(net, f"samenet-{name} (random init)", backend=o["backend"],
                                  device=o["device"], threads=o["threads"])
    return load_served_model(name, backend=o["backend"], device=o["device"],
                             threads=o["threads"])


def _frames(o: dict[str, Any], n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (o["size"], o["size"], o["channels"]), dtype=np.uint8)
            for _ in range(16)]
    return [pool[i % len(pool)] for i in range(n)]


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    q = np.asarray(xs) * 1000
    return {"p50_ms": float(np.percentile(q, 50)), "p99_ms": float(np.percentile(q, 99)),
            "p999_ms": float(np.percentile(q, 99.9)), "max_ms": float(q.max())}


def _schedule(n_frames: int, streams: int, fps: float) -> list[list[float]]:
    """Arrival offsets (s) per stream; streams are phase-shifted so arrivals interleave."""
    per = n_frames // streams
    return [[(i + s / streams) / fps for i in range(per)] for s in range(streams)]


def _sleep_until(t: float, spin: bool = True) -> None:
    """Wait until ``perf_counter() >= t``.

    spin: poll with ``sleep(0)`` for the last 0.5 ms (precise, for the serial loop, which
    measures latency from the scheduled arrival and has no other thread to disturb). The
    loop's producer threads pass False and only sleep (arrivals ~0.1 ms late; the loop measures
    latency from the submit): four spinning producers took the GIL from the serving thread
    often enough to double the torch backend's p99 at 4 streams (measured 2026-12-03:
    p99/p50 2.23-2.28 spinning, 1.33-1.52 not).
    """
    while True:
        d = t - time.perf_counter()
        if d <= 0:
            return
        if spin:
            time.sleep(min(d, 0.002) if d > 0.0005 else 0)
        else:
            time.sleep(d)


def tail_breakdown(submits: dict[int, float], latencies: dict[int, float],
                   steps: list[tuple[float, float]], q: float = 99.0) -> dict[str, float]:
    """Where the frames at or above the ``q``-th latency percentile lost their time.

    submits: ``perf_counter()`` just before each frame's submit, by sequence number; latencies:
    the loop's own submit -> in-order release time (s), by sequence number; steps: ``(start,
    end)`` of every model step call, in order. Each frame is matched to the step that served it
    (the last to end before the frame was released), which splits its latency into *wait*
    (submit -> that step's start: the worker was busy or not yet running), *step* (the model
    step itself) and *release* (step end -> in-order release). For the slow frames, each part's
    excess over its median across all frames is summed; ``tail_from_*`` are those sums as
    fractions of the three sums' total (they add up to 1; a part below its median gives a
    negative share). A tail that is mostly ``step`` is the model's own compute time varying
    (the machine); one that is mostly ``wait`` is frames queueing behind each other or a worker
    kept off the CPU.
    """
    import bisect

    empty = {"tail_frames": 0, "tail_wait_ms": 0.0, "tail_step_ms": 0.0, "tail_release_ms": 0.0,
             "tail_from_wait": 0.0, "tail_from_step": 0.0, "tail_from_release": 0.0}
    keys = [k for k in sorted(latencies) if k in submits]
    if not keys or not steps:
        return empty
    ends = [e for _, e in steps]
    parts = []
    for k in keys:
        release = submits[k] + latencies[k]
        j = max(0, bisect.bisect_right(ends, release + 2e-4) - 1)
        start, end = steps[j]
        parts.append((latencies[k], start - submits[k], end - start, release - end))
    a = np.asarray(parts) * 1000  # ms: latency, wait, step, release
    med = np.median(a, axis=0)
    slow = a[a[:, 0] >= np.percentile(a[:, 0], q)]
    if not len(slow):
        return empty
    out = {**empty, "tail_frames": len(slow), "tail_wait_ms": float(np.median(slow[:, 1])),
           "tail_step_ms": float(np.median(slow[:, 2])),
           "tail_release_ms": float(np.median(slow[:, 3]))}
    excess = (slow - med).sum(axis=0)
    total = float(excess[1:].sum())
    if total > 0:  # else the slowest frames are not slower than the median: nothing to split
        out.update(tail_from_wait=float(excess[1]) / total,
                   tail_from_step=float(excess[2]) / total,
                   tail_from_release=float(excess[3]) / total)
    return out


def machine_floor(o: dict[str, Any], served) -> dict[str, Any]:
    """The model step alone, as the machine runs it: the floor under every case's p99/p50.

    One thread, confined to the serving CPUs as the loop's worker is when it adapts, calls the
    model step on one frame at a time at the densest fixed rate of the run (fps x the most
    streams), sleeping in between as an idle worker does. No loop, producers or adapter run
    meanwhile. On a shared or virtual machine this spread alone can exceed 1.5x; then a
    fixed-rate case near it says more about the machine than about the loop or the adapter.
    """
    from same_fast.serve.cpus import plan_adapter_cpus, serving_step

    n = o["floor_frames"]
    if n <= 0:
        return {}
    if o["gc_freeze"]:  # as each loop run does
        from same_fast.serve.service import freeze_heap

        freeze_heap()
    frames = _frames(o, min(n, o["frames"]))
    period = 1.0 / (o["fps"] * max(int(s) for s in o["streams"].split(",")))
    step = serving_step(served.frame_step, plan_adapter_cpus(o["adapt_cpus"]))
    times: list[float] = []

    def worker() -> None:
        due = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            step([frames[i % len(frames)]])
            times.append(time.perf_counter() - t)
            due += period
            _sleep_until(due, spin=False)

    th = threading.Thread(target=worker, name="same-fast-floor")
    th.start()
    th.join()
    m = _pct(times)
    return {"frames": n, "period_ms": period * 1000, **m,
            "p99_over_p50": m["p99_ms"] / max(m["p50_ms"], 1e-9)}


def _restore_source(served, frame: np.ndarray) -> None:
    """Serve the source weights again, so every case starts from the same model."""
    served.publish({k: v.detach().clone() for k, v in served.module.state_dict().items()},
                   served.source_hash)
    served.frame_step([frame])


def run_loop(o: dict[str, Any], served, adapt: bool, mode: str, streams: int) -> dict[str, Any]:
    """The product path: StreamLoop + engine backend (+ background adaptation)."""
    from same_fast.adapt.config import AdaptConfig
    from same_fast.serve.adaptation import OnlineAdaptation, ProcessAdaptation
    from same_fast.serve.cpus import serving_step
    from same_fast.stream import LoopConfig, StreamLoop

    n = o["frames"]
    frames = _frames(o, n)
    adaptation = None
    if adapt:
        # no re-degraded view: the stored stream numbers (docs/PERFORMANCE.md) measure the
        # loop without it, as the server's default was until 2026-12-06
        acfg = AdaptConfig.serving(batch=o["adapt_batch"], every=o["adapt_every"], size=o["size"],
                                   buffer=64, cpus=o["adapt_cpus"], redegrade=False,
                                   publish_every_s=o["publish_every_s"])
        if o["adapt_in"] == "process":
            adaptation = ProcessAdaptation(served, acfg)
            adaptation.ready.wait(300)  # child start-up (imports) is not part of the stream
        else:
            adaptation = OnlineAdaptation(served, acfg)
    observe = adaptation.observe if adaptation else None
    frozen = 0
    if o["gc_freeze"]:
        # As `serve` does once it is loaded. Each loop run stands for a freshly started server:
        # without this, the objects the serial baseline's inline adapter left (~130,000 in a
        # one-off probe) were walked by every full collection in the next loop run, ~30 ms with
        # every thread waiting.
        from same_fast.serve.service import freeze_heap

        frozen = freeze_heap()
    fixed = mode == "fixed"
    step_t: list[tuple[float, float]] = []
    submitted_at: dict[int, float] = {}
    latency: dict[int, float] = {}

    def step(fr: list) -> list:  # the model step alone, timed: the floor under the loop's latency
        t = time.perf_counter()
        out = served.frame_step(fr, observe)
        step_t.append((t, time.perf_counter()))
        return out

    def on_result(r) -> None:
        if r.ok:
            latency[r.seq] = r.latency_s

    # As `same-fast serve` does: the loop's workers keep off the adapter's CPUs.
    loop = StreamLoop(serving_step(step, adaptation.cpus if adaptation else None), LoopConfig(
        capacity=o["capacity"], max_batch=o["max_batch"], max_delay_ms=o["max_delay_ms"],
        policy="drop_oldest" if fixed else "block"), on_result=on_result)
    futures: list[list] = [[] for _ in range(streams)]
    sched = _schedule(n, streams, o["fps"])
    v0 = served.weights_version
    t0 = time.perf_counter() + 0.05

    def produce(s: int) -> None:
        for i, off in enumerate(sched[s]):
            if fixed:
                _sleep_until(t0 + off, spin=False)
            t = time.perf_counter()
            fut = loop.submit(frames[(i * streams + s) % n])
            submitted_at[fut.seq] = t
            futures[s].append(fut)

    threads = [threading.Thread(target=produce, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.close(drain=True)
    t_end = time.perf_counter()
    stats = loop.stats()
    steps = 0
    updates = served.weights_version - v0  # weights installed while the stream ran
    if adaptation is not None:
        steps = adaptation.steps  # steps the background adapter finished during the stream
        adaptation.close()
        _restore_source(served, frames[0])
    submitted = sum(len(f) for f in futures)
    ok = stats["ok"]
    return {
        "frames": submitted, "ok": ok, "dropped": stats["dropped"], "errors": stats["errors"],
        "lost": submitted - ok,
        "p50_ms": stats["p50_s"] * 1000, "p99_ms": stats["p99_s"] * 1000,
        "p999_ms": stats["p999_s"] * 1000, "max_ms": stats["max_latency_s"] * 1000,
        "throughput_fps": ok / max(t_end - t0, 1e-9), "mean_batch": stats["mean_batch"],
        "adapt_steps": steps, "weights_updates": updates, "gc_frozen_objects": frozen,
        **{f"step_{k}": v for k, v in _pct([e - b for b, e in step_t]).items()},
        **tail_breakdown(submitted_at, latency, step_t),
    }


def run_serial(o: dict[str, Any], served, adapt: bool, mode: str, streams: int
               ) -> dict[str, Any]:
    """The baseline: one Python loop, one frame at a time, adaptation inline."""
    from same_fast.adapt.config import AdaptConfig
    from same_fast.serve.adaptation import OnlineAdaptation

    n = o["frames"]
    frames = _frames(o, n)
    sched = sorted((off, s, i) for s, offs in enumerate(_schedule(n, streams, o["fps"]))
                   for i, off in enumerate(offs))
    adaptation = None
    if adapt:
        # No thread: the same adaptation steps run inline, in this loop.
        adaptation = OnlineAdaptation(served, AdaptConfig.serving(
            batch=o["adapt_batch"], every=o["adapt_every"], size=o["size"], buffer=64,
            redegrade=False, publish_every_s=o["publish_every_s"]), start=False)
    lat: list[float] = []
    step_s: list[float] = []
    fixed = mode == "fixed"
    t0 = time.perf_counter() + 0.05
    for off, s, i in sched:
        arrival = t0 + off if fixed else time.perf_counter()
        if fixed:
            _sleep_until(arrival)
        f = frames[(i * streams + s) % n]
        ts = time.perf_counter()
        served.frame_step([f])
        step_s.append(time.perf_counter() - ts)
        lat.append(time.perf_counter() - arrival)
        if adaptation is not None:
            adaptation.feed([f])  # served integer frame; the adapter converts it
            served._install_pending()
    steps = adaptation.steps if adaptation is not None else 0
    t_end = time.perf_counter()
    if adaptation is not None:
        adaptation.close()
        _restore_source(served, frames[0])
    return {"frames": len(sched), "ok": len(sched), "dropped": 0, "errors": 0, "lost": 0,
            **_pct(lat), "throughput_fps": len(sched) / max(t_end - t0, 1e-9),
            "mean_batch": 1.0, "adapt_steps": steps,
            **{f"step_{k}": v for k, v in _pct(step_s).items()}}


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        out[k] = statistics.median(vals) if isinstance(vals[0], (int, float)) else vals[0]
    # Frames lost or dropped anywhere count, not their median.
    for k in ("lost", "dropped", "errors"):
        out[k] = sum(r[k] for r in runs)
    return out


def run(args: Any) -> dict[str, Any]:
    import sys

    o = _opts(args)
    torch.set_num_threads(max(1, o["threads"]))
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(o["switch_ms"] / 1000)
    try:
        return _run(o)
    finally:
        sys.setswitchinterval(old_switch)


def _run(o: dict[str, Any]) -> dict[str, Any]:
    import gc

    served = _make_served(o)
    served.frame_step(_frames(o, 2))  # warm-up (allocators, oneDNN primitive caches)
    try:
        return _cases(o, served)
    finally:
        if o["gc_freeze"]:
            gc.unfreeze()  # an in-process caller (the tests) gets its collector back


def _cases(o: dict[str, Any], served) -> dict[str, Any]:
    floor = machine_floor(o, served)
    cases = []
    for mode in o["modes"].split(","):
        for streams in (int(s) for s in o["streams"].split(",")):
            for adapt in (a == "on" for a in o["adapt"].split(",")):
                cases.append((mode, streams, adapt))
    results: list[dict[str, Any]] = []
    for mode, streams, adapt in cases:
        per: dict[str, list[dict[str, Any]]] = {"loop": [], "serial": []}
        for _ in range(o["runs"]):
            per["loop"].append(run_loop(o, served, adapt, mode, streams))
            per["serial"].append(run_serial(o, served, adapt, mode, streams))
        loop_m, serial_m = _median_runs(per["loop"]), _median_runs(per["serial"])
        case = {"mode": mode, "streams": streams, "adapt": "on" if adapt else "off",
                "fps_per_stream": o["fps"] if mode == "fixed" else None,
                "loop": loop_m, "serial": serial_m, "runs": per,
                "loop_p99_over_p50": loop_m["p99_ms"] / max(loop_m["p50_ms"], 1e-9),
                # The same ratio for the model step alone, timed inside the loop's run: the
                # machine's own jitter, below which no scheduling can bring the loop.
                "step_p99_over_p50": loop_m["step_p99_ms"] / max(loop_m["step_p50_ms"], 1e-9),
                "loop_added_p50_ms": loop_m["p50_ms"] - loop_m["step_p50_ms"],
                "serial_p99_over_loop_p99": serial_m["p99_ms"] / max(loop_m["p99_ms"], 1e-9),
                "loop_throughput_over_serial": loop_m["throughput_fps"]
                / max(serial_m["throughput_fps"], 1e-9)}
        if mode == "fixed" and adapt:
            case["done_when_met"] = bool(case["loop_p99_over_p50"] <= 1.5
                                         and loop_m["lost"] == 0)
        results.append(case)
    summary = []
    for c in results:
        lm, sm = c["loop"], c["serial"]
        summary.append({
            "case": f"{c['mode']} streams={c['streams']} adapt={c['adapt']}",
            "loop p50/p99/p99.9/max ms": [round(lm[k], 2) for k in
                                          ("p50_ms", "p99_ms", "p999_ms", "max_ms")],
            "serial p50/p99/p99.9/max ms": [round(sm[k], 2) for k in
                                            ("p50_ms", "p99_ms", "p999_ms", "max_ms")],
            "loop fps": round(lm["throughput_fps"], 1),
            "serial fps": round(sm["throughput_fps"], 1),
            "loop lost": lm["lost"], "loop p99/p50": round(c["loop_p99_over_p50"], 2),
            "model step p50/p99 ms": [round(lm["step_p50_ms"], 2), round(lm["step_p99_ms"], 2)],
            "model step p99/p50": round(c["step_p99_over_p50"], 2),
            "serial p99 / loop p99": round(c["serial_p99_over_loop_p99"], 2),
            # the slowest 1 % of frames: their time above the median, by where it went
            "loop tail from wait/step/release": [round(lm[f"tail_from_{k}"], 2)
                                                 for k in ("wait", "step", "release")],
            "adapt steps loop/serial": [lm["adapt_steps"], sm["adapt_steps"]],
            **({"done_when_met": c["done_when_met"]} if "done_when_met" in c else {}),
        })
    from same_fast.serve.cpus import plan_adapter_cpus

    return {"suite": "stream", "environment": environment(), "options": o,
            "adapt_cpus": plan_adapter_cpus(o["adapt_cpus"]).describe(),
            "model": served.describe(), "machine_floor": floor,
            "cases": results, "summary": ([{
                "machine floor: model step alone p50/p99 ms": [round(floor["p50_ms"], 2),
                                                               round(floor["p99_ms"], 2)],
                "machine floor p99/p50": round(floor["p99_over_p50"], 2)}] if floor else [])
            + summary}
