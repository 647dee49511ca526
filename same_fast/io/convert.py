"""numpy image arrays <-> float tensors."""
from __future__ import annotations

import numpy as np
import torch

from same_fast.errors import InputError

#: Full scale of each integer image dtype: ``value / scale`` is in [0, 1]. The one table for every
#: conversion (``to_tensor``, ``to_array``, the engine's ``enhance_frames`` and its ONNX graph,
#: ``engine.decode.to_batch`` through ``full_scale``).
SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def full_scale(dtype: np.dtype | torch.dtype | type) -> float:
    """``SCALES`` for a numpy or torch dtype (``torch.uint16`` -> 65535); InputError otherwise."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    try:
        return SCALES[np.dtype(name)]
    except (KeyError, TypeError):
        raise InputError(f"unsupported image dtype {dtype} (expected uint8 or uint16)") from None


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(F, H, W, C)`` uint8/uint16 -> float32 ``(C, H, W)``/``(F, C, H, W)`` in [0, 1]."""
    scale = 1.0 if arr.dtype == np.bool_ else SCALES.get(arr.dtype)
    if scale is None:
        raise InputError(f"to_tensor: unsupported dtype {arr.dtype} (expected uint8 or uint16)")
    if arr.ndim not in (3, 4):
        raise InputError(f"to_tensor: expected (H, W, C) or (F, H, W, C), got shape {arr.shape}")
    # Converted into fresh channels-first strides. ``.contiguous()`` would keep the permuted
    # strides of a 1-channel image (its size-1 axis makes them count as contiguous), and eager
    # convolutions read those as channels-last: a one-off timing of the 1-channel lite net at
    # 64 px gave 3.2 ms a frame against 2.1 ms.
    a = np.ascontiguousarray(arr)
    if not a.flags.writeable:  # torch warns on read-only memory (np.frombuffer, decoders)
        a = a.copy()
    t = torch.from_numpy(a).movedim(-1, -3)
    return t.to(torch.float32, memory_format=torch.contiguous_format).div_(scale)


def to_array(t: torch.Tensor, dtype: type = np.uint8) -> np.ndarray:
    """Float ``(C, H, W)``/``(F, C, H, W)`` in [0, 1] -> ``(H, W, C)``/``(F, H, W, C)`` uint8/uint16."""
    scale = SCALES.get(np.dtype(dtype))
    if scale is None:
        raise InputError(f"to_array: unsupported dtype {dtype}")
    x = t.detach().to("cpu", torch.float32).clamp(0, 1).movedim(-3, -1)
    return np.rint(x.numpy() * scale).astype(dtype)
