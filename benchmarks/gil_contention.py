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
import sys
import threading
import time

import numpy as np
import torch

BACKENDS = ("torch", "torchscript", "onnxruntime")


def measure(backend: str, seconds: float, size: int, busy_ms: float, idle_ms: float,
            contended: bool) -> dict[str, float]:
    from same_fast.benchsuites.common import time_serving_step
    from same_fast.nn import SAMENet
    from same_fast.serve.cpus import plan_adapter_cpus
    from same_fast.serve.model import served_from_module

    torch.manual_seed(0)
    served = served_from_module(SAMENet(1, "lite"), "lite", backend=backend, threads=1)
    plan = plan_adapter_cpus("auto", 1)
    frame = np.random.default_rng(0).integers(0, 256, (size, size, 1), dtype=np.uint8)
    for _ in range(30):
        served.frame_step([frame])
    stop = threading.Event()
    spins = [0]

    def hungry() -> None:  # holds the GIL for busy_ms, then lets go for idle_ms
        n = 0
        while not stop.is_set():
            end = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < end:
                n += 1
            time.sleep(idle_ms / 1000)
        spins[0] = n

    r = time_serving_step(served, frame, seconds, hungry if contended else None, stop, plan)
    return {**r, "hungry_iterations": spins[0]}


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import environment, serving_settings, write_json

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
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        b: {"alone": [], "contended": []} for b in a.backends}
    with serving_settings():  # as serve sets the process; restored for in-process callers
        for _ in range(max(1, a.repeats)):  # interleaved: machine drift hits every case alike
            for b in a.backends:
                for cond in ("alone", "contended"):
                    r = measure(b, a.seconds, a.size, a.busy_ms, a.idle_ms, cond == "contended")
                    runs[b][cond].append(r)
                    print(f"{b:12s} {cond:9s} step p50 {r['step_p50_ms']:.2f} ms, p99 "
                          f"{r['step_p99_ms']:.2f}, p99/p50 {r['p99_over_p50']:.2f}", flush=True)
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
    write_json(a.json, {"what": __doc__.splitlines()[0], "environment": environment(),
                        "options": vars(a), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
