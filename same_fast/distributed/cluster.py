"""Connecting to Ray: an existing cluster by address, the one this process already joined, or a
local one started for the run (and stopped after it). ``ray`` is the optional extra ``ray``."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from same_fast.errors import InputError, missing_dependency


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise missing_dependency("ray", "--ray", "ray") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module, connected.

    Already connected (a caller's ``ray.init``): used as it is, left running. ``address``
    (``auto``, ``ray://host:10001``, ``host:6379``): joined, and left when done. None: a local
    cluster with ``num_cpus`` CPUs is started, and stopped when done.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(f"--ray {address or '(local)'}: cannot start or reach a Ray cluster "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    """CPUs the connected cluster offers (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
