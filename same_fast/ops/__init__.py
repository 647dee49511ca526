"""Fused hot operations of SAME behind one front.

Every op has one reference semantics and two implementations: a vectorised torch path (any
device; the CPU default) and a Triton kernel from ``same_fast.kernels`` (CUDA; CPU tensors under
``TRITON_INTERPRET=1`` for tests). Pick with ``backend="auto"|"torch"|"triton"`` or the
environment variable ``SAME_FAST_OPS_BACKEND``.
"""
from same_fast.ops.ema import ema_, ema_reference_, flatten_parameters_
from same_fast.ops.ssim import l1_ssim_loss, ssim, ssim_loss, ssim_reference

__all__ = ["ema_", "ema_reference_", "flatten_parameters_", "ssim_reference", "ssim", "ssim_loss",
           "l1_ssim_loss"]
