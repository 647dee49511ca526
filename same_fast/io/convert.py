"""numpy image arrays <-> float tensors."""
from __future__ import annotations

import numpy as np
import torch

from same_fast.errors import InputError


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(F, H, W, C)`` uint8/uint16 -> float32 ``(C, H, W)``/``(F, C, H, W)`` in [0, 1]."""
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype == np.bool_:
        scale = 1.0
    else:
        raise InputError(f"to_tensor: unsupported dtype {arr.dtype} (expected uint8 or uint16)")
    if arr.ndim not in (3, 4):
        raise InputError(f"to_tensor: expected (H, W, C) or (F, H, W, C), got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32) / scale)
    return t.movedim(-1, -3).contiguous()


def to_array(t: torch.Tensor, dtype: type = np.uint8) -> np.ndarray:
    """Float ``(C, H, W)``/``(F, C, H, W)`` in [0, 1] -> ``(H, W, C)``/``(F, H, W, C)`` uint8/uint16."""
    scale = {np.uint8: 255.0, np.uint16: 65535.0}.get(np.dtype(dtype).type)
    if scale is None:
        raise InputError(f"to_array: unsupported dtype {dtype}")
    x = t.detach().to("cpu", torch.float32).clamp(0, 1).movedim(-3, -1)
    return np.rint(x.numpy() * scale).astype(dtype)
