"""What every results JSON carries: bootstrap 95 % intervals and where the numbers came from.

``bootstrap_ci(values)`` resamples images (the unit of a test set) with replacement and returns
the mean with its percentile interval; ``provenance()`` records the git commit (and whether the
tree had uncommitted changes), the command, the date and the host, so each number can be traced
to the code that made it.
"""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bootstrap_ci(values: Sequence[float] | np.ndarray, n: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n"}``: the mean of ``values`` and its bootstrap percentile
    interval at ``level`` (``n`` resamples from a seeded generator; one value: lo = hi = mean)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n, v.size))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout holding this package (None outside git)."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def provenance(seeds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Git commit, command line, UTC date, host and the seeds a results JSON was made with."""
    return {"git": git_commit(), "command": " ".join(sys.argv),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "python": platform.python_version(),
                     "processor": platform.processor() or None},
            "seeds": seeds or {}}
