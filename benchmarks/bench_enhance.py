"""pytest-benchmark front over the enhance suite: torch eager vs the other CPU backends.

Run: ``pytest benchmarks/bench_enhance.py --benchmark-group-by=param:size`` (not collected by
the test suite). Each group compares backends on the same frames; ``same-fast bench --suite
enhance`` gives the full interleaved sweep with ratios, GFLOP/s and the matmul peak.
"""
from __future__ import annotations

import pytest
import torch

from same_fast.benchsuites.enhance import frames
from same_fast.engine import create_backend
from same_fast.nn import SAMENet

BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture(scope="module")
def lite() -> SAMENet:
    torch.manual_seed(0)
    return SAMENet(3, "lite").eval()


@pytest.fixture(scope="module")
def backends(lite, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("bench-cache"))
    out = {}
    for name in BACKENDS:
        try:
            out[name] = create_backend(name, lite, cache_dir=cache)
        except Exception as e:  # report, don't fail the whole group
            out[name] = e
    return out


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("backend", BACKENDS)
def test_enhance_lite(benchmark, backends, backend: str, size: int) -> None:
    b = backends[backend]
    if isinstance(b, Exception):
        pytest.skip(f"{backend} unavailable: {b}")
    x = frames(3, size, 1)
    benchmark.extra_info.update(backend=backend, size=size, batch=1)
    y = benchmark(b.enhance, x)
    assert y.shape == x.shape
