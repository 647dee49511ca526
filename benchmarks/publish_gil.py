"""What publishing new weights costs the serving thread: its step-time spread while another
thread of the same process does one piece of the publish path, a few times a second.

    python benchmarks/publish_gil.py [--seconds 8] [--rate 4] [--size 64] [--json FILE]
        [--only NAME ...]

Serving runs a 64 px frame through the lite SAMENet every 4 ms on the serving CPUs; the other
thread runs on the adapter CPUs (``same_fast.serve.cpus``, as ``serve --adapt-cpus auto``) and
repeats one piece every 1/rate s. Each piece either holds the GIL (the serving thread then
waits at its next Python line) or releases it; only the first shows in the serving step's
p99/p50. Pieces:

- ``idle``: nothing (the floor this machine sets);
- ``ort-publish`` / ``torch-publish``: ``ServedModel.publish`` into a standby backend, as the
  server does it (weights copied in, session built, warmed on the last frame shape);
- ``ort-publish-protobuf``: the same with the earlier ONNX Runtime rebuild (graph edited with
  ``replace_initializers`` and re-serialised for every build, instead of external
  initializers);
- ``ort-session``: building an ONNX Runtime session from serialised bytes alone;
- ``safetensors-load``: ``safetensors.torch.load`` of the 6.6 MB weights message (the old
  reader); ``views-load``: ``serve.adapter_proc.load_weights`` (the reader now).

Prints one line per piece and writes the numbers as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

PIECES = ("idle", "ort-publish", "ort-publish-protobuf", "torch-publish", "ort-session",
          "safetensors-load", "views-load")


def _pieces(size: int) -> dict[str, tuple[str, Callable[[object], Callable[[], object]]]]:
    """name -> (serving backend, factory: served model -> the repeated piece)."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from same_fast.engine.onnx_export import replace_initializers
    from same_fast.serve.adapter_proc import load_weights

    def state(served):
        return {k: v.detach().clone() for k, v in served.module.state_dict().items()}

    def session(served):
        import onnxruntime as ort

        b = served._current
        data = replace_initializers(b._graph, b._map, state(served)).SerializeToString()
        return lambda: ort.InferenceSession(data, sess_options=b._session_options(),
                                            providers=["CPUExecutionProvider"])

    def publish(served):
        st = state(served)
        return lambda: served.publish(st, "bench")

    def st_loader(served):
        payload = st_save(state(served))
        return lambda: st_load(payload)

    def views(served):
        payload = bytearray(st_save(state(served)))
        return lambda: load_weights(payload)

    return {"idle": ("onnxruntime", lambda s: None), "ort-session": ("onnxruntime", session),
            "ort-publish": ("onnxruntime", publish), "torch-publish": ("torch", publish),
            "ort-publish-protobuf": ("onnxruntime", publish),
            "safetensors-load": ("onnxruntime", st_loader), "views-load": ("onnxruntime", views)}


def _protobuf_build(self, state):
    """``OnnxRuntimeBackend._build`` as it was before external initializers."""
    import onnxruntime as ort

    from same_fast.engine.onnx_export import replace_initializers

    data = replace_initializers(self._graph, self._map, state).SerializeToString()
    return ort.InferenceSession(data, sess_options=self._session_options(),
                                providers=self._providers)


def measure(name: str, seconds: float, rate: float, size: int) -> dict[str, float]:
    if name == "ort-publish-protobuf":
        from same_fast.engine.ort_backend import OnnxRuntimeBackend

        build = OnnxRuntimeBackend._build
        OnnxRuntimeBackend._build = _protobuf_build
        try:
            return _measure("ort-publish-protobuf", seconds, rate, size)
        finally:
            OnnxRuntimeBackend._build = build
    return _measure(name, seconds, rate, size)


def _measure(name: str, seconds: float, rate: float, size: int) -> dict[str, float]:
    from same_fast.benchsuites.common import time_serving_step
    from same_fast.nn import SAMENet
    from same_fast.serve.cpus import adapter_work, plan_adapter_cpus
    from same_fast.serve.model import served_from_module

    backend, make = _pieces(size)[name]
    torch.manual_seed(0)
    served = served_from_module(SAMENet(1, "lite"), "lite", backend=backend, threads=1)
    plan = plan_adapter_cpus("auto", 1)
    frame = [np.random.default_rng(0).integers(0, 256, (size, size, 1), dtype=np.uint8)]
    for _ in range(50):
        served.frame_step(frame)
    piece = make(served)
    stop = threading.Event()
    piece_s: list[float] = []

    def other() -> None:
        while not stop.wait(1.0 / rate):
            t = time.perf_counter()
            with adapter_work(plan):
                piece()
            piece_s.append(time.perf_counter() - t)

    r = time_serving_step(served, frame[0], seconds, other if piece is not None else None, stop,
                          plan)
    return {**r, "pieces": len(piece_s),
            "piece_ms": float(np.mean(piece_s) * 1000) if piece_s else 0.0}


def main(argv: list[str] | None = None) -> int:
    from same_fast.benchsuites.common import environment, serving_settings, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=4.0, help="pieces per second")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--only", nargs="+", choices=PIECES)
    p.add_argument("--repeats", type=int, default=1,
                   help="passes over the pieces, interleaved (the median is reported)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in a.only or PIECES}
    with serving_settings():  # as serve sets the process; restored for in-process callers
        for _ in range(max(1, a.repeats)):  # interleaved: machine drift hits every piece alike
            for name in runs:
                r = measure(name, a.seconds, a.rate, a.size)
                runs[name].append(r)
                print(f"{name:20s} step p50 {r['step_p50_ms']:.2f} ms, p99 "
                      f"{r['step_p99_ms']:.2f}, p99.9 {r['step_p999_ms']:.2f}, max "
                      f"{r['step_max_ms']:.2f}, p99/p50 {r['p99_over_p50']:.2f}; piece "
                      f"{r['piece_ms']:.1f} ms x {r['pieces']}", flush=True)
    results = {n: {**{k: float(np.median([r[k] for r in rs])) for k in rs[0]}, "runs": rs}
               for n, rs in runs.items()}
    write_json(a.json, {"what": __doc__.splitlines()[0], "environment": environment(),
                        "options": vars(a), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
