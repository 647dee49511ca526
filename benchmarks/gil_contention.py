"""What other Python threads of the process cost each backend's serving step.

    python benchmarks/gil_contention.py [--seconds 5] [--size 64] [--busy-ms 0.2] [--idle-ms 1]
        [--backends torch torchscript onnxruntime] [--repeats 1] [--json FILE]

A server process is never alone with its model: the event loop decodes and answers frames,
the stream's producers submit them, the dispatcher resolves futures, and an adapter thread may
train. Each needs the GIL. This runs the lite SAMENet's frame step (one ``size`` px frame every
4 ms, ``ServedModel.frame_step``, as the stream loop does) on the serving CPUs, first alone and
then beside one "GIL-hungry" thread on the adapter's CPUs that loops in pure Python for
``busy-ms`` and sleeps ``idle-ms``, over and over (``same_fast.serve.cpus`` placement, as
``serve --adapt-cpus auto``).

A backend whose call releases the GIL for the whole network (ONNX Runtime's ``run``,
TorchScript's interpreter) barely notices; eager torch takes the GIL back between operators and
waits for it each time. Prints one line per backend and condition and writes the numbers as
JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
import torch

BACKENDS = ("torch", "torchscript", "onnxruntime")


def measure(backend: str, seconds: float, size: int, busy_ms: float, idle_ms: float,
            contended: bool) -> dict[str, float]:
    from same_fast.nn import SAMENet
    from same_fast.serve.cpus import confine_thread, plan_adapter_cpus, usable_cpus
    from same_fast.serve.model import served_from_module

    torch.manual_seed(0)
    served = served_from_module(SAMENet(1, "lite"), "lite", backend=backend, threads=1)
    plan = plan_adapter_cpus("auto", 1)
    frame = [np.random.default_rng(0).integers(0, 256, (size, size, 1), dtype=np.uint8)]
    stop = threading.Event()
    spins = [0]

    def hungry() -> None:  # holds the GIL for busy_ms, then lets go for idle_ms
        confine_thread(plan.adapter)
        n = 0
        while not stop.is_set():
            end = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < end:
                n += 1
            time.sleep(idle_ms / 1000)
        spins[0] = n

    own = usable_cpus()
    confine_thread(plan.serving)
    for _ in range(30):
        served.frame_step(frame)
    th = threading.Thread(target=hungry, daemon=True)
    if contended:
        th.start()
    steps: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            served.frame_step(frame)
            steps.append((time.perf_counter() - t) * 1000)
            time.sleep(0.004)
    finally:
        stop.set()
        if contended:
            th.join()
        confine_thread(own)  # a caller in the same process (the tests) gets its CPUs back
    p50, p99 = np.percentile(steps, [50, 99])
    return {"steps": len(steps), "step_p50_ms": float(p50), "step_p99_ms": float(p99),
            "step_max_ms": float(max(steps)), "p99_over_p50": float(p99 / p50),
            "hungry_iterations": spins[0]}


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per backend and condition")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--busy-ms", type=float, default=0.2)
    p.add_argument("--idle-ms", type=float, default=1.0)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--repeats", type=int, default=1,
                   help="passes, interleaved (the median is reported)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    # as serve sets them (same_fast.serve.service.tune_process); restored for in-process callers
    threads, switch = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(1)
    sys.setswitchinterval(0.0005)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        b: {"alone": [], "contended": []} for b in a.backends}
    try:
        for _ in range(max(1, a.repeats)):  # interleaved: machine drift hits every case alike
            for b in a.backends:
                for cond in ("alone", "contended"):
                    r = measure(b, a.seconds, a.size, a.busy_ms, a.idle_ms, cond == "contended")
                    runs[b][cond].append(r)
                    print(f"{b:12s} {cond:9s} step p50 {r['step_p50_ms']:.2f} ms, p99 "
                          f"{r['step_p99_ms']:.2f}, p99/p50 {r['p99_over_p50']:.2f}", flush=True)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(switch)
    results = {}
    for b, conds in runs.items():
        med = {c: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
               for c, rs in conds.items()}
        results[b] = {**med, "runs": conds,
                      "p50_contended_over_alone": med["contended"]["step_p50_ms"]
                      / med["alone"]["step_p50_ms"],
                      "p99_contended_over_alone": med["contended"]["step_p99_ms"]
                      / med["alone"]["step_p99_ms"]}
        print(f"{b:12s} contended/alone: p50 x{results[b]['p50_contended_over_alone']:.2f}, "
              f"p99 x{results[b]['p99_contended_over_alone']:.2f}", flush=True)
    if a.json:
        out = {"what": __doc__.splitlines()[0], "environment": environment(),
               "options": vars(a), "results": results}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
