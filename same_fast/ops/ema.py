"""EMA of parameters: ``teacher <- decay * teacher + (1 - decay) * student``, in place.

The reference code clones every student parameter and loops over them in Python each step. Here
the update is one pass over memory: on the CPU a single ``lerp_`` over flat storage (when both
sides were flattened with :func:`flatten_parameters_`) or one ``torch._foreach_lerp_`` call; on
CUDA a Triton kernel (flat, or multi-tensor over a pointer table).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from same_fast.errors import InputError
from same_fast.ops._backend import resolve

TensorList = Sequence[torch.Tensor] | Iterable[torch.Tensor] | torch.Tensor


def ema_reference_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                   decay: float) -> None:
    """The plain semantics, one tensor at a time (float32 maths, stored in the teacher's dtype)."""
    with torch.no_grad():
        for t, s in zip(teacher, student, strict=True):
            t.copy_(decay * t.float() + (1.0 - decay) * s.float())


def ema_(teacher: TensorList, student: TensorList, decay: float, *,
         backend: str | None = None) -> None:
    """Update ``teacher`` in place towards ``student``: ``t <- decay * t + (1 - decay) * s``.

    Args:
        teacher: a tensor or a list of tensors (any device, float dtypes), updated in place.
            Parameters of a module are fine: no autograd history is recorded.
        student: tensors of the same shapes, dtypes and device (read only).
        decay: in [0, 1]; 0.995 in SAME.
        backend: ``auto`` | ``torch`` | ``triton`` (see ``same_fast.ops._backend``).

    Pass the flat buffers returned by :func:`flatten_parameters_` (or ``model.parameters()`` of
    two flattened models) for the single-pass path.
    """
    if not 0.0 <= decay <= 1.0:
        raise InputError(f"EMA decay must be in [0, 1], got {decay}")
    t_list = [teacher] if isinstance(teacher, torch.Tensor) else list(teacher)
    s_list = [student] if isinstance(student, torch.Tensor) else list(student)
    if len(t_list) != len(s_list):
        raise InputError(f"EMA needs as many teacher tensors ({len(t_list)}) as student "
                         f"tensors ({len(s_list)})")
    if not t_list:
        return
    t_list, s_list = _flat_views(t_list), _flat_views(s_list)
    weight = 1.0 - decay
    with torch.no_grad():
        if resolve(backend, t_list[0]) == "triton":
            _ema_triton(t_list, s_list, weight)
        elif len(t_list) == 1:
            t_list[0].lerp_(s_list[0], weight)
        else:
            torch._foreach_lerp_(t_list, s_list, weight)


def _ema_triton(t_list: list[torch.Tensor], s_list: list[torch.Tensor], weight: float) -> None:
    from same_fast.kernels import ema as k  # imported late: triton is optional

    if len(t_list) == 1 and t_list[0].is_contiguous() and s_list[0].is_contiguous():
        k.ema_flat(t_list[0].detach(), s_list[0].detach(), weight)
        return
    by_dtype: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for t, s in zip(t_list, s_list, strict=True):
        if not (t.is_contiguous() and s.is_contiguous()):
            # Rare (channels-last weights): the generic path keeps semantics.
            t.lerp_(s, weight)
            continue
        ts, ss = by_dtype.setdefault(t.dtype, ([], []))
        ts.append(t.detach())
        ss.append(s.detach())
    for ts, ss in by_dtype.values():
        k.ema_multi(ts, ss, weight)


# --- flat parameter storage -------------------------------------------------------------------

def flatten_parameters_(module: nn.Module) -> torch.Tensor | None:
    """Move all parameters of ``module`` into one contiguous buffer, in ``parameters()`` order.

    Each parameter keeps its identity (optimizers holding it still work); its ``.data`` becomes a
    view into the returned 1-D buffer. Returns None (and changes nothing) when the parameters do
    not share one dtype and device. Idempotent: a module already flat returns its buffer.
    """
    params = list(module.parameters())
    if not params:
        return None
    dtype, device = params[0].dtype, params[0].device
    if any(p.dtype != dtype or p.device != device for p in params):
        return None
    existing = _common_flat(params)
    if existing is not None:
        return existing
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=dtype, device=device)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            flat[offset:offset + n].copy_(p.reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            offset += n
    return flat


def _common_flat(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D buffer that ``params`` tile exactly, in order, or None."""
    first = params[0]
    storage = first.untyped_storage()
    offset = first.storage_offset()
    if offset != 0:
        return None
    for p in params:
        if (not p.is_contiguous() or p.untyped_storage().data_ptr() != storage.data_ptr()
                or p.storage_offset() != offset):
            return None
        offset += p.numel()
    if offset * first.element_size() != storage.nbytes():
        return None
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(
        storage, 0, (offset,), (1,))


def _flat_views(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Collapse a list that tiles one flat buffer into that buffer (one pass instead of many)."""
    if len(tensors) > 1:
        flat = _common_flat(tensors)
        if flat is not None:
            return [flat]
    return tensors
