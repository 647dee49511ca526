#!/usr/bin/env python
"""GPU check: run every GPU path of same-fast against its reference and time it, on one machine.

    python benchmarks/gpu_check.py [--full] [--budget-s 480] [--out benchmarks/results]

The first thing to run whenever a GPU machine is lent: one command, within ``--budget-s``
(8 minutes by default, the quick grids; ``--full`` for the full ones), that writes its JSON for
committing. Exit status: 0 when every section is ok or skipped for a stated reason, 1 when a
section failed (its error is in the JSON), 2 without a CUDA device (nothing is run or written;
``--allow-cpu`` runs the CPU-safe sections anyway).

Writes ``benchmarks/results/<date>-<device>.json`` with, per section, ``status`` ("ok",
"skipped: <why>" or "error: <message>") and the measured numbers:

- ``backends``: torch eager, torchscript (fp32/fp16), torch.compile (CUDA graphs, mode
  reduce-overhead), ONNX Runtime
  (CUDA EP when the GPU build is installed), TensorRT fp32/fp16 (built with REFIT): max |diff|
  against torch fp32 before and after ``update_weights`` with changed weights, and for TensorRT
  the refit time against a full rebuild.
- ``decode``: DALI ``mixed`` (nvJPEG) and torchvision nvJPEG against the Pillow reference on a
  real fundus JPEG/PNG (GPU JPEG decoders may round differently: max and mean |diff| reported).
- ``ops``: the Triton kernels of ``same_fast.ops`` (backend="triton") against their torch
  references on CUDA tensors, with timings.
- ``bench``, ``bench_ops``, ``bench_stream``: ``same-fast bench --suite enhance|ops|stream`` on
  CUDA (the quick grids unless ``--full``).

A section that would start with less than its share of the budget left is skipped (``skipped:
time budget``); one that runs past the budget is interrupted where Python can be (a long call
inside a library, a TensorRT build, finishes first) and recorded as an error.

Every section degrades gracefully: a missing package or a failing piece is recorded and the
script goes on, so one run on a lent GPU gathers everything it can. With ``--allow-cpu`` on a
CPU-only machine it records why each GPU section was skipped and still runs the CPU-safe parts
(the ONNX graph, the TensorRT shape profile and refit mapping, DALI on the CPU).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def section(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a section; any exception becomes ``status: error`` with the last traceback line."""

    def wrapped(*a: Any, **k: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            out = fn(*a, **k)
            out.setdefault("status", "ok")
        except Skip as s:
            out = {"status": f"skipped: {s}"}
        except OverBudget:
            out = {"status": "error: ran past the time budget (--budget-s)"}
        except Exception as e:  # record and continue: one run should gather all it can
            out = {"status": f"error: {type(e).__name__}: {str(e)[:400]}",
                   "traceback": traceback.format_exc()[-2000:]}
        out["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[gpu_check] {fn.__name__}: {out['status']} ({out['seconds']} s)", flush=True)
        return out

    wrapped.__name__ = fn.__name__
    return wrapped


class Skip(Exception):
    pass


class OverBudget(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise OverBudget


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    return torch.device("cuda", 0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"median_ms": 1e3 * ts[len(ts) // 2], "min_ms": 1e3 * ts[0],
            "p99_ms": 1e3 * float(np.percentile(ts, 99))}


def _model(preset: str = "lite") -> torch.nn.Module:
    from same_fast.nn import SAMENet

    torch.manual_seed(0)
    return SAMENet(3, preset).eval()


def _frames(size: int, batch: int) -> torch.Tensor:
    from same_fast.benchsuites.enhance import frames

    return frames(3, size, batch)


# --- CPU-safe sections --------------------------------------------------------------------

@section
def onnx_graph() -> dict[str, Any]:
    """The graph TensorRT consumes: checker, dynamic dims, every parameter maps to an initializer."""
    import onnx

    from same_fast.engine.onnx_export import ExportConfig, export_onnx, initializer_map
    from same_fast.engine.tensorrt import shape_profile

    model = _model()
    proto = onnx.load_from_string(export_onnx(model, None, ExportConfig(structure=True)))
    onnx.checker.check_model(proto)
    mapping = initializer_map(model, proto)
    params = dict(model.named_parameters())
    unmapped = [k for k in params if k not in mapping]
    prof = shape_profile(3, model.multiple)
    return {"initializers": len(proto.graph.initializer), "parameters": len(params),
            "unmapped_parameters": unmapped, "profile": {"min": prof.min, "opt": prof.opt,
                                                         "max": prof.max},
            "status": "ok" if not unmapped else "error: unmapped parameters"}


@section
def decode_cpu() -> dict[str, Any]:
    from same_fast.engine.decode import decode

    data = _encoded()
    out = {}
    for name, b in data.items():
        ref = decode(b, path="reference")[0]
        got = decode(b, path="dali", device="cpu")[0]
        out[name] = {"equal": bool(torch.equal(ref, got))}
    return {"dali_cpu_vs_reference": out}


def _encoded() -> dict[str, bytes]:
    import io

    from PIL import Image
    from skimage import data

    img = data.retina()
    out = {}
    for fmt, kw in (("JPEG", {"quality": 90}), ("PNG", {})):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt, **kw)
        out[fmt.lower()] = buf.getvalue()
    return out


# --- GPU sections -------------------------------------------------------------------------

@section
def backends(quick: bool) -> dict[str, Any]:
    from same_fast.engine import create_backend
    from same_fast.engine.testing import perturbed_state

    dev = _cuda()
    model = _model()
    x = _frames(512, 4).to(dev)
    new_state = perturbed_state(model, 0.1, seed=1)
    ref_model = _model().to(dev)
    from same_fast.nn import enhance

    ref = enhance(ref_model, x)
    ref_model.load_state_dict(new_state)
    ref_new = enhance(ref_model, x)
    results: dict[str, Any] = {"input": list(x.shape)}
    variants = [("torch", {}), ("torch", {"dtype": "fp16"}), ("torchscript", {}),
                ("torchscript", {"dtype": "fp16"}), ("compile", {}),
                ("onnxruntime", {}), ("tensorrt", {}), ("tensorrt", {"dtype": "fp16"}),
                ("tensorrt", {"dtype": "bf16"})]
    for name, kw in variants:
        key = name + ("-" + kw["dtype"] if "dtype" in kw else "")
        r: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            b = create_backend(name, model, device="cuda", **kw)
            r["build_s"] = time.perf_counter() - t0
            r["max_abs_diff_vs_torch_fp32"] = float((b.enhance(x) - ref).abs().max())
            r["timing_batch4_512"] = _time(lambda b=b: b.enhance(x), repeats=10 if quick else 30)
            t0 = time.perf_counter()
            b.update_weights(new_state)
            _sync()
            r["update_weights_s"] = time.perf_counter() - t0
            r["max_abs_diff_after_update"] = float((b.enhance(x) - ref_new).abs().max())
            r["describe"] = b.describe()
            r["status"] = "ok"
        except Exception as e:
            r["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
        results[key] = r
    if results.get("tensorrt", {}).get("status") == "ok":
        results["tensorrt_rebuild_s"] = _rebuild_time(model)
    return results


def _rebuild_time(model: torch.nn.Module) -> float:
    from same_fast.engine.onnx_export import export_onnx
    from same_fast.engine.tensorrt import build_engine, shape_profile

    t0 = time.perf_counter()
    build_engine(export_onnx(model), shape_profile(3, model.multiple))
    return time.perf_counter() - t0


@section
def decode_gpu() -> dict[str, Any]:
    from same_fast.engine.decode import decode, to_batch

    dev = _cuda()
    data = _encoded()
    out: dict[str, Any] = {}
    for path in ("dali", "nvjpeg"):
        r: dict[str, Any] = {}
        try:
            for name, b in data.items():
                ref = decode(b, path="reference")[0].to(dev)
                got = decode(b, path=path, device="cuda")[0]
                d = (got.int() - ref.int()).abs()
                r[name] = {"device": str(got.device), "shape": list(got.shape),
                           "max_abs_diff": int(d.max()), "mean_abs_diff": float(d.float().mean())}
            batch = [data["jpeg"]] * 8
            r["timing_8_jpeg"] = _time(lambda p=path, b=batch: to_batch(
                decode(b, path=p, device="cuda")), repeats=10)
            r["status"] = "ok"
        except Exception as e:
            r["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
        out[path] = r
    out["reference_timing_8_jpeg"] = _time(
        lambda: to_batch(decode([data["jpeg"]] * 8, path="reference")).to(dev), repeats=5)
    return out


@section
def ops() -> dict[str, Any]:
    """Triton kernels of same_fast.ops against their torch references, on CUDA tensors."""
    import same_fast.ops as ops

    dev = _cuda()
    g = torch.Generator(device=dev).manual_seed(0)
    out: dict[str, Any] = {}

    def check(name: str, run: Callable[[str], Any], compare: Callable[[Any, Any], float]) -> None:
        r: dict[str, Any] = {}
        try:
            a = run("triton")
            b = run("torch")
            r["max_abs_diff"] = compare(a, b)
            r["triton"] = _time(lambda: run("triton"))
            r["torch"] = _time(lambda: run("torch"))
            r["speedup"] = r["torch"]["median_ms"] / r["triton"]["median_ms"]
            r["status"] = "ok"
        except Exception as e:
            r["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
        out[name] = r

    if hasattr(ops, "ema_"):
        shapes = [(1024, 1024), (4096,), (64, 3, 3, 3), (17,)]
        student = [torch.randn(s, device=dev, generator=g) for s in shapes]
        base = [torch.randn(s, device=dev, generator=g) for s in shapes]

        def ema(backend: str) -> list[torch.Tensor]:
            t = [p.clone() for p in base]
            ops.ema_(t, student, 0.995, backend=backend)
            return t

        check("ema_", ema, lambda a, b: max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)))
    if hasattr(ops, "ssim"):
        x = torch.rand(4, 3, 256, 256, device=dev, generator=g)
        y = (x + 0.05 * torch.randn(x.shape, device=dev, generator=g)).clamp(0, 1)
        check("ssim", lambda be: ops.ssim(x, y, backend=be),
              lambda a, b: float((a - b).abs().max()))
        xg = x.clone().requires_grad_(True)

        def ssim_grad(be: str) -> torch.Tensor:
            xg.grad = None
            ops.ssim_loss(xg, y, backend=be).backward()
            return xg.grad.clone()

        check("ssim_loss_backward", ssim_grad, lambda a, b: float((a - b).abs().max()))
    for name in ("rgb_to_hsv", "rgb_to_lab"):
        if hasattr(ops, name):
            img = torch.rand(4, 3, 256, 256, device=dev, generator=g)
            fn = getattr(ops, name)
            check(name, lambda be, fn=fn, img=img: fn(img, backend=be),
                  lambda a, b: float((a - b).abs().max()))
    if not out:
        raise Skip("same_fast.ops exposes no kernels yet")
    return out


def _suite(name: str, quick: bool, options: dict[str, str]) -> dict[str, Any]:
    import importlib

    _cuda()
    args = argparse.Namespace(quick=quick, repeats=None, device="cuda", json=None,
                              options=options)
    r = importlib.import_module(f"same_fast.benchsuites.{name}").run(args)
    return {k: v for k, v in r.items() if k != "environment"}


@section
def bench(quick: bool) -> dict[str, Any]:
    r = _suite("enhance", quick, {})
    return {"summary": r["summary"], "cases": r["cases"], "matmul_peak": r["matmul_peak"]}


@section
def bench_ops(quick: bool) -> dict[str, Any]:
    return _suite("ops", quick, {})


@section
def bench_stream(quick: bool) -> dict[str, Any]:
    # the serving loop with the model on the GPU: the lite network at a camera's frame size
    opts = {"device": "cuda", "size": "256", "channels": "3"}
    if quick:
        opts.update(frames="300", streams="1", adapt="off")
    return _suite("stream", quick, opts)


#: (name, share of the budget a section needs left before it starts)
SECTIONS = (("onnx_graph", 0.0), ("decode_cpu", 0.0), ("backends", 0.25), ("decode_gpu", 0.05),
            ("ops", 0.05), ("bench", 0.15), ("bench_ops", 0.1), ("bench_stream", 0.1))


def no_gpu_message() -> str:
    return ("gpu_check: error: no CUDA device here (torch.cuda.is_available() is false); run it "
            "on a GPU machine, or pass --allow-cpu for the CPU-safe sections only")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the full bench grids (past 8 minutes)")
    p.add_argument("--quick", action="store_true", help="(the default) the quick bench grids")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget, seconds")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without a GPU, run the CPU-safe sections instead of failing")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    a = p.parse_args(argv)
    if not torch.cuda.is_available() and not a.allow_cpu:
        print(no_gpu_message(), file=sys.stderr)
        return 2
    import signal

    from same_fast.benchsuites.common import environment

    quick = not a.full
    env = environment()
    skip = set(filter(None, a.skip.split(",")))
    result: dict[str, Any] = {"environment": env, "argv": sys.argv[1:], "budget_s": a.budget_s}
    fns = {"onnx_graph": (onnx_graph, {}), "decode_cpu": (decode_cpu, {}),
           "backends": (backends, {"quick": quick}), "decode_gpu": (decode_gpu, {}),
           "ops": (ops, {}), "bench": (bench, {"quick": quick}),
           "bench_ops": (bench_ops, {"quick": quick}),
           "bench_stream": (bench_stream, {"quick": quick})}
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    for name, share in SECTIONS:
        left = a.budget_s - (time.perf_counter() - t0)
        fn, kw = fns[name]
        if name in skip:
            result[name] = {"status": "skipped: --skip"}
        elif left < max(1.0, share * a.budget_s):
            result[name] = {"status": f"skipped: time budget ({left:.0f} s left)"}
        else:
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                result[name] = fn(**kw)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    device = re.sub(r"[^A-Za-z0-9]+", "-", env.get("device", "unknown")).strip("-").lower()
    path = Path(a.out) / f"{dt.date.today().isoformat()}-{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    failed = [k for k, v in result.items() if isinstance(v, dict)
              and str(v.get("status", "")).startswith("error")]
    print(f"[gpu_check] wrote {path} in {result['seconds']} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
