"""The machine a timing was taken on: what makes two measurements comparable.

Used by ``--backend auto`` (its timing cache key, and ``interleaved`` to time its candidates),
by ``same-fast bench`` and by the lab, which record it beside every number.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """The machine a number was measured on: date (UTC), Python, torch, CPU model and count,
    torch threads, CUDA and the device name."""
    import torch

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    else:
        env["device"] = f"cpu ({env['processor']})"
    return env


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2,
                sync: Callable[[], None] | None = None, gap_s: float = 0.02
                ) -> dict[str, dict[str, float]]:
    """Time each case ``repeats`` times, round-robin so drift hits all cases alike.

    ``gap_s``: idle time before each timed call. Thread pools keep spinning for a while after
    a call returns (ONNX Runtime's intra-op threads do by default); without the gap that spin
    steals cores from whichever case runs next, which measured eager torch at 2x its real time
    right after ONNX Runtime on this 2-core machine.

    Returns per case: median, p10, p90, min (seconds) and the raw samples.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    if sync:
        sync()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            if gap_s > 0:
                time.sleep(gap_s)
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            samples[name].append(time.perf_counter() - t0)
    out = {}
    for name, s in samples.items():
        q = sorted(s)
        out[name] = {"median_s": statistics.median(q), "min_s": q[0],
                     "p10_s": q[max(0, int(0.1 * (len(q) - 1)))],
                     "p90_s": q[int(0.9 * (len(q) - 1))], "samples_s": s}
    return out
