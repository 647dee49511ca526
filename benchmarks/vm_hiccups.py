"""How often this machine stalls a waiting thread, with nothing else of ours running.

    python benchmarks/vm_hiccups.py [--seconds 120] [--period-ms 1] [--json FILE]

One thread wakes every ``--period-ms`` at absolute deadlines (as the stream bench's producers
do) and records how late each wake-up was. On a quiet machine lateness stays well under a
millisecond; a virtual machine whose host deschedules it shows stalls of tens of milliseconds.
Those stalls land in any latency benchmark run at the same time and no change of ours can
remove them, so this gives the floor to read `same-fast bench --suite stream` against: how many
stalls over 2, 5, 20 and 50 ms a minute, and the largest.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

THRESHOLDS_MS = (2.0, 5.0, 20.0, 50.0)


def measure(seconds: float, period_ms: float) -> dict[str, object]:
    """Wake every ``period_ms`` for ``seconds``; returns lateness statistics (ms)."""
    period = period_ms / 1000.0
    late: list[float] = []
    start = time.perf_counter()
    due = start + period
    end = start + seconds
    while due < end:
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        now = time.perf_counter()
        late.append((now - due) * 1000.0)
        due += period
        if now > due:  # a stall longer than a period: count it once, then resume the grid
            due = now + period
    arr = np.asarray(late)
    minutes = seconds / 60.0
    return {
        "seconds": seconds, "period_ms": period_ms, "wakeups": int(arr.size),
        "late_p50_ms": float(np.percentile(arr, 50)), "late_p99_ms": float(np.percentile(arr, 99)),
        "late_p999_ms": float(np.percentile(arr, 99.9)), "late_max_ms": float(arr.max()),
        "stalls_per_minute": {f">{t:g}ms": float((arr > t).sum() / minutes)
                              for t in THRESHOLDS_MS},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--period-ms", type=float, default=1.0)
    p.add_argument("--json", default="", metavar="FILE")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.period_ms <= 0:
        p.error("--seconds and --period-ms must be > 0")
    r = measure(a.seconds, a.period_ms)
    r["environment"] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "machine": platform.machine(), "processor": platform.processor(),
                        "python": platform.python_version()}
    per = r["stalls_per_minute"]
    print(f"{r['wakeups']} wake-ups over {a.seconds:g} s: late p50 {r['late_p50_ms']:.3f} ms, "
          f"p99 {r['late_p99_ms']:.3f}, p99.9 {r['late_p999_ms']:.3f}, "
          f"max {r['late_max_ms']:.1f} ms")
    print("stalls per minute: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
