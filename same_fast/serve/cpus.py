"""CPU placement of online adaptation beside serving (``same-fast serve --adapt-cpus``).

On a small CPU box the adapter (its child process or thread, the threads that feed it frames
and receive its weights, and the loading of new weights into a standby backend) competes with
the serving thread for cores. Measured with ``perf sched`` on a 2-CPU VM, the serving thread's
run-queue waits came from exactly those threads; the writer woken by each served batch even
preempted it. Splitting the CPUs (Linux ``sched_setaffinity``) removes that: the adapter's
threads run only on the adapter CPUs, the stream loop's workers only on the others.

Specs: ``auto`` (with two or more usable CPUs the adapter gets as many of the highest-numbered
ones as it has threads, at least one, and serving keeps the rest; otherwise nothing is placed),
``off`` (nothing is placed), or a CPU list such as ``1``, ``2-3`` or ``1,3,5-7`` for the
adapter (CPUs this process may use, leaving at least one for serving).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from same_fast.errors import InputError

SUPPORTED = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


@dataclass(frozen=True)
class CpuPlan:
    """Where the adapter and the serving workers run.

    adapter: CPUs the adapter is confined to (None: not placed; nothing is pinned).
    serving: CPUs the stream loop's workers are confined to (the usable ones minus the adapter's).
    usable: the CPUs this process could use when the plan was made. note: one line for logs.
    """

    adapter: frozenset[int] | None
    serving: frozenset[int]
    usable: frozenset[int]
    note: str

    def describe(self) -> dict[str, Any]:
        return {"cpus": sorted(self.adapter) if self.adapter else None,
                "serving_cpus": sorted(self.serving) if self.adapter else None,
                "cpus_note": self.note}


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"1,3,5-7"`` -> {1, 3, 5, 6, 7}; InputError when malformed."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--adapt-cpus must be auto, off or a CPU list like 1,3,5-7; got "
                             f"'{text}'") from None
        if b < a:
            raise InputError(f"--adapt-cpus: bad CPU range '{part}' in '{text}'")
        cpus.update(range(a, b + 1))
    return frozenset(cpus)


def usable_cpus() -> frozenset[int]:
    """CPUs the calling thread may run on (all of ``os.cpu_count()`` without affinity)."""
    if SUPPORTED:
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def plan_adapter_cpus(spec: str, threads: int = 1, usable: Iterable[int] | None = None
                      ) -> CpuPlan:
    """Resolve ``--adapt-cpus`` against the CPUs this process may use (InputError if bad).

    threads: the adapter's intra-op threads (``auto`` gives it that many CPUs).
    """
    spec = (spec or "").strip().lower()
    avail = frozenset(usable) if usable is not None else usable_cpus()
    if spec == "off":
        return CpuPlan(None, avail, avail, "not placed (--adapt-cpus off)")
    if spec == "auto":
        if not SUPPORTED:
            return CpuPlan(None, avail, avail, "not placed: no CPU affinity on this platform "
                                               "(os.sched_setaffinity)")
        if len(avail) < 2:
            return CpuPlan(None, avail, avail, "not placed: only 1 usable CPU")
        n = min(max(1, int(threads)), len(avail) - 1)
        cpus = frozenset(sorted(avail)[-n:])
    else:
        cpus = parse_cpu_list(spec)
        if not SUPPORTED:
            raise InputError("--adapt-cpus LIST needs CPU affinity (Linux os.sched_setaffinity);"
                             " use auto or off on this platform")
        if cpus - avail:
            raise InputError(f"--adapt-cpus: CPU {format_cpus(cpus - avail)} is not usable by "
                             f"this process (usable: {format_cpus(avail)})")
        if cpus >= avail:
            raise InputError(f"--adapt-cpus {spec} leaves no CPU for serving (usable: "
                             f"{format_cpus(avail)}); name fewer CPUs, or use off")
    return CpuPlan(cpus, avail - cpus, avail, f"adapter on {_named(cpus)}, serving on "
                                              f"{_named(avail - cpus)}")


def format_cpus(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> ``"0-2,5"``."""
    xs = sorted(cpus)
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def _named(cpus: frozenset[int]) -> str:
    return f"CPU{'s' if len(cpus) > 1 else ''} {format_cpus(cpus)}"


def confine_thread(cpus: Iterable[int] | None) -> None:
    """Run the calling thread (and threads it starts later) on ``cpus`` only; None: no-op."""
    if cpus is not None and SUPPORTED:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpus))


def confine_process(cpus: Iterable[int] | None) -> None:
    """Confine every thread of this process (Linux: each task in /proc/self/task)."""
    if cpus is None or not SUPPORTED:
        return
    for tid in _tasks() or {0}:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, set(cpus))


def _tasks() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


@contextlib.contextmanager
def adapter_work(plan: CpuPlan | None) -> Iterator[None]:
    """Run the block (loading weights into a standby backend) on the adapter's CPUs.

    Threads the block starts (ONNX Runtime starts a session's intra-op pool when it builds it,
    and that session then serves) get the process's CPUs back; the calling thread's own CPUs
    are restored on exit.
    """
    if plan is None or plan.adapter is None or not SUPPORTED:
        yield
        return
    before = _tasks()
    try:
        own = os.sched_getaffinity(0)
    except OSError:
        own = set(plan.usable)
    confine_thread(plan.adapter)
    try:
        yield
    finally:
        for tid in _tasks() - before:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, set(plan.usable))
        confine_thread(own)


def serving_step(step: Callable[[list], Any], plan: CpuPlan | None) -> Callable[[list], Any]:
    """Wrap a stream loop's frame step: each worker thread that calls it is confined to the
    serving CPUs on its first call (so the scheduler never queues it behind the adapter).

    A torch worker's intra-op threads are capped at the number of serving CPUs: OpenMP starts
    its team from the worker, and a team larger than its CPUs spins against itself.
    """
    if plan is None or plan.adapter is None or not SUPPORTED:
        return step
    placed = threading.local()

    def run(frames: list) -> Any:
        if not getattr(placed, "done", False):
            placed.done = True
            confine_thread(plan.serving)
            torch = sys.modules.get("torch")
            if torch is not None and torch.get_num_threads() > len(plan.serving):
                torch.set_num_threads(len(plan.serving))
        return step(frames)

    return run
