"""Shared benchmark helpers: JSON output, loading a sibling benchmark script (the machine
description and interleaved timing are ``same_fast.engine.machine``'s, re-exported here)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from same_fast.engine.machine import environment, interleaved

__all__ = ["environment", "interleaved", "serving_settings", "sibling_script", "time_serving_step",
           "write_json"]


def sibling_script(anchor: str, name: str) -> ModuleType:
    """The benchmark script ``name``.py in the folder of ``anchor`` (a script's ``__file__``),
    loaded once as a module named ``name`` (the scripts are not a package; dataclasses in a
    script look their module up in ``sys.modules``)."""
    path = Path(anchor).resolve().parent / f"{name}.py"
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == path:
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no benchmark script at {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def write_json(path: str | os.PathLike | None, result: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


def time_serving_step(served: Any, frame: Any, seconds: float, beside: Callable[[], None] | None,
                      stop: Any, plan: Any, period_s: float = 0.004) -> dict[str, float]:
    """Time ``served.frame_step([frame])`` every ``period_s`` for ``seconds`` on the serving CPUs.

    beside: run in a thread for the whole measurement (it must return once ``stop``, a
    ``threading.Event``, is set); it is confined to ``plan.adapter``, as ``serve --adapt-cpus``
    places the adapter. The calling thread gets its CPUs back afterwards, so an in-process
    caller (the tests) is left as it was. Returns the step's p50/p99/p99.9/max (ms) and p99/p50.
    """
    import threading

    import numpy as np

    from same_fast.serve.cpus import confine_thread, usable_cpus

    def side() -> None:
        confine_thread(plan.adapter)
        beside()

    own = usable_cpus()
    confine_thread(plan.serving)
    th = threading.Thread(target=side, daemon=True) if beside is not None else None
    if th is not None:
        th.start()
    steps: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            served.frame_step([frame])
            steps.append((time.perf_counter() - t) * 1000)
            time.sleep(period_s)
    finally:
        stop.set()
        if th is not None:
            th.join()
        confine_thread(own)
    p50, p99, p999 = np.percentile(steps, [50, 99, 99.9])
    return {"steps": len(steps), "step_p50_ms": float(p50), "step_p99_ms": float(p99),
            "step_p999_ms": float(p999), "step_max_ms": float(max(steps)),
            "p99_over_p50": float(p99 / p50)}


@contextlib.contextmanager
def serving_settings() -> Iterator[None]:
    """As ``serve`` sets the process (``same_fast.serve.service.tune_process``): 1 torch thread
    and a 0.5 ms GIL switch interval; restored on exit for in-process callers."""
    import sys

    import torch

    saved = (torch.get_num_threads(), sys.getswitchinterval())
    torch.set_num_threads(1)
    sys.setswitchinterval(0.0005)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        sys.setswitchinterval(saved[1])
