"""Backend choice for the fused ops: ``torch`` (any device) or ``triton`` (CUDA, or CPU tensors
under ``TRITON_INTERPRET=1``).

One switch, Liger-Kernel style: ``backend="auto"`` (the default, or ``$SAME_FAST_OPS_BACKEND``)
picks Triton for CUDA tensors when it imports and falls back quietly to torch otherwise; an
explicit ``backend="triton"`` that cannot run fails loudly with a typed error.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from same_fast.errors import DependencyError, InputError, missing_dependency

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is an optional GPU extra)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (set before kernels are imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend: str | None, *tensors: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for an op on ``tensors``.

    Args:
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or None (then ``$SAME_FAST_OPS_BACKEND``,
            else ``"auto"``).
        tensors: the op's inputs; their device decides the automatic choice.
    """
    choice = backend or os.environ.get("SAME_FAST_OPS_BACKEND", "auto")
    if choice not in BACKENDS:
        raise InputError(f"unknown ops backend '{choice}' (choose one of {', '.join(BACKENDS)})")
    on_cuda = bool(tensors) and all(t.is_cuda for t in tensors)
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    # Explicit triton: fail loudly when it cannot run.
    if not triton_available():
        raise missing_dependency("triton", "the triton ops backend", "gpu")
    if not on_cuda and not interpreting():
        raise DependencyError(
            "the triton ops backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            "same_fast.kernels is imported, for testing on the CPU)")
    return "triton"
