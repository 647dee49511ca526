"""Fused hot operations of SAME behind one front.

Every op has one reference semantics and two implementations: a vectorised torch path (any
device; the CPU default) and a Triton kernel from ``same_fast.kernels`` (CUDA; CPU tensors under
``TRITON_INTERPRET=1`` for tests). Pick with ``backend="auto"|"torch"|"triton"`` or the
environment variable ``SAME_FAST_OPS_BACKEND``.

- :func:`ema_`: in-place EMA over parameter lists or flat buffers (:func:`flatten_parameters_`);
- :func:`ssim`, :func:`ssim_loss`, :func:`l1_ssim_loss`: per-image SSIM (valid padding,
  Gaussian 11 / 1.5) with an analytic backward;
- :func:`picker_weights`: per-sample picker reductions to a weight vector (hard or soft), and
  :func:`picker_decision`, its decision stage alone;
- :func:`rgb_to_hsv`, :func:`rgb_to_lab`: colour spaces on the device.
"""
from same_fast.ops.color import rgb_to_hsv, rgb_to_lab
from same_fast.ops.ema import ema_, ema_reference_, flatten_parameters_
from same_fast.ops.picker import PickerScores, picker_decision, picker_weights
from same_fast.ops.ssim import SSIMLoss, l1_ssim_loss, ssim, ssim_loss, ssim_reference

__all__ = ["ema_", "ema_reference_", "flatten_parameters_", "ssim", "ssim_loss", "l1_ssim_loss",
           "ssim_reference", "SSIMLoss", "picker_weights", "picker_decision",
           "PickerScores", "rgb_to_hsv", "rgb_to_lab"]
