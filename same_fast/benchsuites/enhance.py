"""``same-fast bench --suite enhance``: every available inference backend, interleaved in one run.

For each network preset (``lite``, ``paper``), frame size (256/512/1024 px) and batch (1/4/16):
frames/s and per-frame latency (median and p99 of the batch time; a frame waits for its whole
batch) per backend, as ratios to torch eager measured in the same rounds, plus achieved GFLOP/s
(FLOPs of the network counted once with ``torch.utils.flop_counter.FlopCounterMode``) against
this machine's fp32 matmul peak (the fastest square ``torch.mm`` of 512/1024/2048, then that
size as a peer in every case's interleaved rounds, so both see the same share of a shared
machine). On CPU an ONNX Runtime MatMul of the same size is a peer too: its GEMM (MLAS) can beat
torch.mm (MKL), e.g. on AMD CPUs, so ``fraction_of_best_matmul`` uses the faster of the two. The int8 ONNX
Runtime variant also reports its SSIM against the fp32 output. Inputs are crops of a real fundus
photograph (scikit-image's CC0 ``retina``); weights are random (speed does not depend on them).

Options (``--set KEY=VALUE``): ``presets=lite,paper``, ``sizes=256,512,1024``,
``batches=1,4,16``, ``backends=torch,torch-cl,onnxruntime,onnxruntime-int8,compile``,
``paper_max_size=512``, ``paper_max_batch=4`` (the 89M-parameter paper network is skipped
above these on CPU: one 512 px batch of 16 takes minutes in eager),
``threads=N`` (torch and ONNX Runtime threads for the whole run, so every peer gets the same
cores; default: each library's own default), ``ort_spin=0`` (no spinning ORT threads),
``mm=512,1024,2048`` (matmul sizes; the fastest is the peak),
``budget_s=20`` (rough seconds per case; fewer repeats for slow cases).
``--quick``: lite and paper at 256 px batch 1, lite at 512 px batch 1 and 4; no compile.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from same_fast.benchsuites.common import environment, interleaved, write_json
from same_fast.engine.base import Backend, DeployModule

CPU_BACKENDS = ("torch", "torch-cl", "torchscript", "onnxruntime", "onnxruntime-int8", "compile")
GPU_BACKENDS = ("torch", "torch-cl", "torchscript", "compile", "onnxruntime", "tensorrt",
                "tensorrt-fp16")


def _dynamo() -> Any:
    import torch._dynamo as dynamo

    return dynamo


def _list(opts: dict[str, str], key: str, default: list[Any], cast=str) -> list[Any]:
    v = opts.get(key)
    return [cast(x) for x in v.split(",") if x.strip()] if v else default


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = (512, 1024, 2048),
                repeats: int = 5) -> dict[str, Any]:
    """fp32 GFLOP/s of square ``torch.mm`` on ``device``: the best median over ``sizes``.

    The best size is kept as the peak (on some CPUs a cache-resident 512 matmul runs twice as
    fast as a 2048 one), so "fraction of peak" errs low rather than high.
    """
    g = torch.Generator().manual_seed(0)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(device)
        b = torch.randn(n, n, generator=g).to(device)
        r = interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, repeats=repeats, warmup=2,
                        sync=sync)["mm"]
        per_size[n] = 2.0 * n ** 3 / r["median_s"] / 1e9
    best = max(per_size, key=per_size.get)
    return {"n": best, "median_gflops": per_size[best], "per_size_gflops": per_size}


def count_flops(model: torch.nn.Module, channels: int, size: int) -> float:
    """FLOPs of one ``size x size`` frame through the inference graph (image decoder only)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = DeployModule(model).eval()
    x = torch.rand(1, channels, size, size)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        module(x)
    return float(fc.get_total_flops())


def frames(channels: int, size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """``(batch, channels, size, size)`` in [0, 1]: crops of the retina photo, resized."""
    from skimage import data, transform

    img = data.retina().astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        y, x = rng.integers(0, 300, 2)
        crop = img[y:y + 1100, x:x + 1100]
        crop = transform.resize(crop, (size, size), anti_aliasing=False, order=1)
        if channels == 1:
            crop = crop.mean(-1, keepdims=True)
        out.append(crop.transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out), dtype=np.float32))


def _make(name: str, model: torch.nn.Module, device: str, cache: str, threads: int,
          calib: torch.Tensor, opts: dict[str, str]) -> Backend:
    from same_fast.engine.ort_backend import OnnxRuntimeBackend
    from same_fast.engine.select import create_backend

    if name == "torch-cl":
        return create_backend("torch", model, device=device, cache_dir=cache, channels_last=True)
    if name == "onnxruntime-int8":
        from same_fast.engine.base import BackendConfig

        cfg = BackendConfig(device=device, threads=threads, int8=True, cache_dir=cache,
                            options=dict(opts))
        return OnnxRuntimeBackend(model, None, cfg, calibration=calib)
    if name == "tensorrt-fp16":
        return create_backend("tensorrt", model, device=device, dtype="fp16", cache_dir=cache)
    return create_backend(name, model, device=device, cache_dir=cache, threads=threads,
                          options=dict(opts))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    opts = dict(getattr(args, "options", {}) or {})
    dev = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available())
                       else ("cpu" if args.device == "auto" else args.device))
    quick = bool(args.quick)
    presets = _list(opts, "presets", ["lite", "paper"])
    default_backends = list(GPU_BACKENDS if dev.type == "cuda" else CPU_BACKENDS)
    if quick:
        default_backends = [b for b in default_backends if b != "compile"]
    wanted = _list(opts, "backends", default_backends)
    sizes = _list(opts, "sizes", [256, 512, 1024], int)
    batches = _list(opts, "batches", [1, 4, 16], int)
    paper_max = int(opts.get("paper_max_size", 512 if dev.type == "cpu" else 1024))
    threads = int(opts.get("threads", 0))
    budget = float(opts.get("budget_s", 20))
    cache = opts.get("cache_dir") or tempfile.mkdtemp(prefix="same-fast-bench-")
    torch_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, dev, quick, presets, wanted, sizes, batches, paper_max, threads, budget,
                    cache, opts)
    finally:
        torch.set_num_threads(torch_threads)


def _run(args: argparse.Namespace, dev: torch.device, quick: bool, presets: list[str],
         wanted: list[str], sizes: list[int], batches: list[int], paper_max: int, threads: int,
         budget: float, cache: str, opts: dict[str, str]) -> dict[str, Any]:
    from same_fast.nn import SAMENet

    paper_batch = int(opts.get("paper_max_batch", 4 if dev.type == "cpu" else 16))

    if quick:
        grid = [("lite", 256, 1), ("lite", 512, 1), ("lite", 512, 4), ("paper", 256, 1)]
        grid = [g for g in grid if g[0] in presets]
    else:
        grid = [(p, s, b) for p in presets for s in sizes for b in batches
                if not (p == "paper" and (s > paper_max or b > paper_batch))]
    if "compile" in wanted:
        # One compiled graph per (preset, size, batch): raise the recompile limit for the sweep.
        _dynamo().config.recompile_limit = 64
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None

    mm_sizes = tuple(_list(opts, "mm", [512, 1024, 2048], int))
    peak = matmul_peak(dev, mm_sizes)
    result: dict[str, Any] = {"suite": "enhance", "environment": environment(),
                              "device": str(dev), "matmul_peak": peak, "cases": [],
                              "skipped": {}, "options": opts, "quick": quick,
                              "threads": {"torch": torch.get_num_threads(),
                                          "onnxruntime": threads or "default"}}
    for preset in dict.fromkeys(p for p, _, _ in grid):
        torch.manual_seed(0)
        model = SAMENet(3, preset).eval()
        calib = frames(3, 256, 4, seed=1)  # int8 calibration: real fundus crops
        backends: dict[str, Backend] = {}
        for name in wanted:
            t0 = time.perf_counter()
            try:
                backends[name] = _make(name, model, str(dev), cache, threads, calib, opts)
            except Exception as e:  # a backend missing here is reported, not fatal
                result["skipped"][f"{preset}/{name}"] = f"{type(e).__name__}: {e}"[:300]
                continue
            result.setdefault("build_s", {})[f"{preset}/{name}"] = time.perf_counter() - t0
        if "torch" not in backends:
            continue
        for p, size, batch in grid:
            if p != preset:
                continue
            result["cases"].append(_case(preset, model, backends, size, batch, peak, budget,
                                         sync, args.repeats, threads))
            c = result["cases"][-1]
            if getattr(args, "json", None):  # partial results survive an interrupted sweep
                write_json(args.json, {**result, "summary": _summary(result), "partial": True})
            # Progress on stderr: a full CPU sweep takes many minutes.
            print(f"[enhance] {preset} {size}px b{batch}: " + ", ".join(
                f"{k} {v['speedup_vs_torch']:.2f}x" for k, v in c["backends"].items()),
                file=sys.stderr, flush=True)
        del backends
        if "compile" in wanted:
            _dynamo().reset()
    result["summary"] = _summary(result)
    return result


def _case(preset: str, model: torch.nn.Module, backends: dict[str, Backend], size: int,
          batch: int, peak: dict[str, float], budget: float, sync: Any,
          repeats: int | None, threads: int = 0) -> dict[str, Any]:
    x = frames(3, size, batch, seed=size + batch)
    flops = count_flops(model, 3, size) * batch
    ref = backends["torch"].enhance(x)
    # One untimed call per backend first: compile/graph builds, allocator warm-up, and the
    # agreement check against eager.
    diffs, ssim = {}, {}
    t_one = {}
    for name, b in backends.items():
        t0 = time.perf_counter()
        y = b.enhance(x)
        if sync:
            sync()
        t_one[name] = time.perf_counter() - t0
        diffs[name] = float((y.float().cpu() - ref.float().cpu()).abs().max())
        if name.endswith("int8") or name.endswith("fp16"):
            ssim[name] = _ssim(ref, y)
    per_round = sum(t_one.values())
    n = repeats or max(3, min(10, int(budget / max(per_round, 1e-3))))
    cases = {name: (lambda b=b: b.enhance(x)) for name, b in backends.items()}
    # The matmul peak is a peer in the same rounds: on a shared machine the cores available
    # drift, and a peak taken once at the start would flatter or punish later cases.
    mm_n = int(peak["n"])
    dev = next(iter(backends.values())).device
    ga = torch.Generator().manual_seed(1)
    a = torch.randn(mm_n, mm_n, generator=ga).to(dev)
    bm = torch.randn(mm_n, mm_n, generator=ga).to(dev)
    cases["_matmul"] = lambda: torch.mm(a, bm)
    ort_mm = _ort_matmul(mm_n, threads) if dev.type == "cpu" else None
    if ort_mm is not None:
        cases["_matmul_ort"] = ort_mm
    timing = interleaved(cases, repeats=n, warmup=1, sync=sync)
    mm = timing.pop("_matmul")
    case_peak = 2.0 * mm_n ** 3 / mm["median_s"] / 1e9
    mm_ort = timing.pop("_matmul_ort", None)
    # ONNX Runtime's own GEMM (MLAS) can outrun torch.mm (MKL), e.g. on AMD CPUs: the best of
    # the two is the fairer ceiling, reported beside the torch.mm one the issue asks for.
    best_peak = max(case_peak, 2.0 * mm_n ** 3 / mm_ort["median_s"] / 1e9) if mm_ort else case_peak
    base = timing["torch"]["median_s"]
    out: dict[str, Any] = {"preset": preset, "size": size, "batch": batch, "repeats": n,
                           "gflop_per_batch": flops / 1e9, "matmul_peak_gflops": case_peak,
                           "best_matmul_gflops": best_peak,
                           "backends": {}}
    for name, t in timing.items():
        med = t["median_s"]
        p99 = float(np.percentile(t["samples_s"], 99))
        gflops = flops / med / 1e9
        out["backends"][name] = {
            "batch_ms_median": 1e3 * med, "batch_ms_p99": 1e3 * p99,
            "frames_per_s": batch / med, "speedup_vs_torch": base / med,
            "gflops": gflops, "fraction_of_matmul_peak": gflops / case_peak,
            "fraction_of_best_matmul": gflops / best_peak,
            "max_abs_diff_vs_torch": diffs[name]}
        if name in ssim:
            out["backends"][name]["ssim_vs_fp32"] = ssim[name]
    return out


def _ort_matmul(n: int, threads: int) -> Any:
    """A callable timing one ``n x n`` fp32 MatMul in ONNX Runtime (None without onnxruntime)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [vi("a", TensorProto.FLOAT, [n, n]), vi("b", TensorProto.FLOAT, [n, n])],
                              [vi("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)}
    return lambda: sess.run(None, feeds)


def _ssim(ref: torch.Tensor, y: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = ref.float().cpu().numpy()
    b = y.float().cpu().numpy()
    return float(np.mean([structural_similarity(a[i], b[i], channel_axis=0, data_range=1.0)
                          for i in range(a.shape[0])]))


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    peak = result["matmul_peak"]["median_gflops"]
    rows = []
    for c in result["cases"]:
        best = max(c["backends"].items(), key=lambda kv: kv[1]["frames_per_s"])
        rows.append({"case": f"{c['preset']} {c['size']}px b{c['batch']}",
                     "best": best[0], "speedup_vs_torch": round(best[1]["speedup_vs_torch"], 2),
                     "frames_per_s": round(best[1]["frames_per_s"], 2),
                     "gflops": round(best[1]["gflops"], 1),
                     "fraction_of_peak": round(best[1]["fraction_of_matmul_peak"], 3),
                     "fraction_of_best_matmul": round(best[1]["fraction_of_best_matmul"], 3),
                     "all_speedups": {k: round(v["speedup_vs_torch"], 2)
                                      for k, v in c["backends"].items()}})
    target = [c for c in result["cases"] if c["preset"] == "lite" and c["size"] == 512]
    done = None
    if target:
        best = max(((c, n, v) for c in target for n, v in c["backends"].items()
                    if not n.endswith("int8")), key=lambda t: t[2]["frames_per_s"])
        c, n, v = best
        done = {"case": f"lite 512px b{c['batch']}", "backend": n,
                "speedup_vs_torch": round(v["speedup_vs_torch"], 2),
                "fraction_of_peak": round(v["fraction_of_matmul_peak"], 3),
                "fraction_of_best_matmul": round(v["fraction_of_best_matmul"], 3),
                "meets_1.5x": v["speedup_vs_torch"] >= 1.5,
                "meets_third_of_peak": v["fraction_of_matmul_peak"] >= 1 / 3,
                "meets_third_of_best_matmul": v["fraction_of_best_matmul"] >= 1 / 3}
    return {"device": result["environment"]["device"], "matmul_peak_gflops_at_start": round(peak, 1),
            "cases": rows, "done_when_fp32": done, "skipped": result["skipped"]}
