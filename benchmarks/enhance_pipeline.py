#!/usr/bin/env python
"""The whole ``same-fast enhance`` command on a folder, against its parts measured one by one.

    python benchmarks/enhance_pipeline.py [--n 96] [--size 512] [--backends torch,auto]
        [--memory-n 1000] [--json benchmarks/results/<date>-cpu-enhance-pipeline.json]

In one run, on one machine:

1. makes ``--n`` PNG photographs (scikit-image's retina, resized to ``--size`` with small
   shifts, gains and noise) in a temporary folder (never kept);
2. per backend, in this process with the backend the command would build: decoding every file
   (``io.load``), the backend on every file (batches of ``--batch`` as the command forms them),
   encoding every output (``io.write_image``), each stage alone, one after another;
3. per backend, the command itself as a child process, twice (the first run of ``auto`` also
   times the candidates and caches its choice: reported apart); ``start-up`` is the wall time
   minus the file loop's time that ``summary.json`` reports (imports, model, backend);
4. peak memory (the child's maximum resident set) of the pipelined run on ``--memory-n`` small
   images and on a tenth of them: bounded means the two are close.

Reported: ``pipeline_over_parts`` = file-loop seconds / (decode + backend + encode seconds);
``auto_speedup`` = whole-command wall time with torch / with auto; ``auto_probes``: what
``auto`` times per frame for each candidate at the job's shape (the shape it now probes at) and
at its default probe (one 256 x 256 frame), in this process, and which it would pick at each.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from same_fast.benchsuites.common import environment, write_json  # noqa: E402

CLI = [sys.executable, "-m", "same_fast"]


def make_photos(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` PNG variations of the retina photograph at ``size`` x ``size``."""
    from skimage import data, transform

    from same_fast.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = transform.resize(data.retina(), (size + 16, size + 16), anti_aliasing=True)
    out = []
    for k in range(n):
        y, x = rng.integers(0, 17, 2)
        img = base[y:y + size, x:x + size] * rng.uniform(0.85, 1.1)
        img = img + rng.normal(0, 0.01, img.shape)
        p = folder / f"photo{k:04d}.png"
        write_image(p, (img.clip(0, 1) * 255).round().astype(np.uint8))
        out.append(p)
    return out


def parts(files: list[Path], model: str, backend: str, batch: int, out: Path,
          png_level: int = 6) -> dict[str, float]:
    """Decode, backend and encode seconds for ``files``, each stage alone, in this process."""
    from same_fast.batch import EnhanceConfig, ModelStep
    from same_fast.batch.enhance import auto_probe
    from same_fast.enhancer import enhance_array
    from same_fast.io import load, write_image

    cfg = EnhanceConfig(model=model, input=str(files[0].parent), output=str(out),
                        backend=backend, batch=batch, progress=False)
    e = ModelStep.load(cfg, auto_probe(cfg, files))  # auto: the probe (and choice) the command makes
    enhance_array(e.model, load(files[0]).frames, None, batch, "cpu", e.step)  # warm-up
    t0 = time.perf_counter()
    frames = [load(p).frames for p in files]
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = []
    for i in range(0, len(frames), batch):
        y = enhance_array(e.model, np.concatenate(frames[i:i + batch]), None, batch, "cpu",
                          e.step)
        outs += list(y)
    model_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p, y in zip(files, outs, strict=True):
        write_image(out / p.name, y, png_level=png_level)
    encode = time.perf_counter() - t0
    return {"decode_s": round(decode, 3), "backend_s": round(model_s, 3),
            "encode_s": round(encode, 3), "sum_s": round(decode + model_s + encode, 3),
            "engine": e.info}


def auto_probes(model: str, batch: int, size: int) -> dict[str, Any]:
    """``auto``'s candidates timed per frame (ms) at the job's shape and at its default probe."""
    from same_fast.engine.base import BackendConfig
    from same_fast.engine.select import _measure
    from same_fast.models import load_model

    net, meta = load_model(model)
    out: dict[str, Any] = {}
    for label, opts in (("job", {"auto_batch": batch, "auto_size": [size, size]}),
                        ("default", {})):
        winner, times, _ = _measure(net, meta, BackendConfig(device="cpu", options=opts))
        out[label] = {"probe": opts or "1 x 256 x 256", "winner": winner,
                      "ms_per_frame": {k: round(1000 * v / (batch if opts else 1), 2)
                                       for k, v in times.items()}}
    return out


def command(src: Path, out: Path, model: str, backend: str, extra: list[str],
            env: dict[str, str]) -> dict[str, Any]:
    """Run ``same-fast enhance`` as a child; wall seconds, the file loop's, peak RSS (MiB)."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    child = subprocess.Popen([*CLI, "enhance", "-m", model, "-i", str(src), "-o", str(out),
                              "--backend", backend, "--no-progress", *extra], env=env,
                             stdout=subprocess.DEVNULL)
    peak = _watch_peak(child)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"same-fast enhance --backend {backend} failed ({child.returncode})")
    s = json.loads((out / "summary.json").read_text())
    assert s["n_files"] == len(list(src.iterdir())) and s["n_failed"] == 0
    return {"wall_s": round(wall, 3), "files_s": s["seconds"],
            "startup_s": round(wall - s["seconds"], 3), "pipeline": s.get("pipeline"),
            "workers": s.get("workers"), "engine": s["engine"].get("backend"),
            "peak_rss_mib": round(peak / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "output_mib": round(sum(p.stat().st_size for p in out.glob("*.png")) / 2**20, 3)}


def _watch_peak(child: subprocess.Popen) -> int:
    """The child's resident-set high-water mark (KiB), read from /proc every 20 ms until it
    exits. (``wait4``'s ``ru_maxrss`` would not do: Linux carries the parent's high-water mark
    into a child across fork and exec, so every child looks as large as this process.)"""
    peak = 0
    path = Path(f"/proc/{child.pid}/status")
    while True:
        try:
            for line in path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return peak
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--model", default="fundus-lite")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backends", default="torch,auto")
    p.add_argument("--memory-n", type=int, default=1000, help="0: skip the memory run")
    p.add_argument("--memory-size", type=int, default=96)
    p.add_argument("--png-level", type=int, default=6, help="enhance --png-level of every run")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="same-fast-pipeline-"))
    env = {**os.environ, "SAME_FAST_CACHE": str(tmp / "cache")}
    os.environ["SAME_FAST_CACHE"] = env["SAME_FAST_CACHE"]
    from same_fast.eval import provenance

    # one timed run per arm: no interval (ratios of single runs on a shared machine; the load
    # averages beside them say how busy it was)
    result: dict[str, Any] = {"environment": environment(), "argv": sys.argv[1:],
                              "provenance": provenance({"photos": 0}),
                              "intervals": None, "repeats": 1,
                              "load_average_start": os.getloadavg()}
    try:
        files = make_photos(tmp / "in", a.n, a.size)
        runs: dict[str, Any] = {}
        png = ["--png-level", str(a.png_level)]
        for backend in a.backends.split(","):
            r: dict[str, Any] = {}
            if backend == "auto":  # the first run also measures the candidates; cached after
                r["first_run"] = command(tmp / "in", tmp / "out", a.model, backend, png, env)
            r["parts"] = parts(files, a.model, backend, a.batch, tmp / "parts", a.png_level)
            r["command"] = command(tmp / "in", tmp / "out", a.model, backend, png, env)
            r["command_sequential"] = command(tmp / "in", tmp / "out", a.model, backend,
                                              ["--workers", "0", *png], env)
            r["pipeline_over_parts"] = round(r["command"]["files_s"] / r["parts"]["sum_s"], 3)
            runs[backend] = r
            print(f"[pipeline] {backend}: {json.dumps(r)}", flush=True)
        result["runs"] = runs
        if "auto" in runs:
            result["auto_probes"] = auto_probes(a.model, a.batch, a.size)
        if "torch" in runs and "auto" in runs:
            result["auto_speedup"] = round(runs["torch"]["command"]["wall_s"]
                                           / runs["auto"]["command"]["wall_s"], 3)
        if a.memory_n:
            result["memory"] = memory(tmp, a.model, a.memory_n, a.memory_size, env)
        result["load_average_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    write_json(a.json, result)
    return 0


def memory(tmp: Path, model: str, n: int, size: int, env: dict[str, str]) -> dict[str, Any]:
    """Peak RSS of the pipelined command on ``n // 10`` and on ``n`` small images."""
    out: dict[str, Any] = {"size": size}
    for k in (n // 10, n):
        src = tmp / f"mem{k}"
        make_photos(src, k, size, seed=1)
        r = command(src, tmp / "memout", model, "onnxruntime", [], env)
        out[str(k)] = {"peak_rss_mib": r["peak_rss_mib"], "wall_s": r["wall_s"],
                       "peak_pixels_held": (r["pipeline"] or {}).get("peak_pixels")}
        shutil.rmtree(src, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
