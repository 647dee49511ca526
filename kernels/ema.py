"""Triton kernels for the in-place EMA ``teacher <- decay * teacher + (1 - decay) * student``.

Two kernels: one over a single flat buffer (the fast path when parameters were flattened with
``same_fast.ops.flatten_parameters_``), and a multi-tensor kernel that walks a table of raw
pointers, so any list of tensors is updated in one launch. Arithmetic is done in float32 and
stored back in the teacher's dtype. Launch them through ``same_fast.ops.ema_``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def ema_flat_kernel(t_ptr, s_ptr, n, weight, BLOCK: tl.constexpr):
    """``t[i] += weight * (s[i] - t[i])`` for i < n; one program per BLOCK elements."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(t_ptr + offs, mask=mask)
    s = tl.load(s_ptr + offs, mask=mask)
    tf = t.to(tl.float32)
    out = tf + weight * (s.to(tl.float32) - tf)
    tl.store(t_ptr + offs, out.to(t.dtype), mask=mask)


@triton.jit
def ema_multi_kernel(t_addr_ptr, s_addr_ptr, numel_ptr, task_tensor_ptr, task_block_ptr, weight,
                     DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (tensor, block) task from a precomputed task table.

    ``t_addr_ptr``/``s_addr_ptr`` hold the tensors' addresses as int64; every tensor has dtype
    ``DTYPE`` (the front groups tensors by dtype).
    """
    pid = tl.program_id(0)
    k = tl.load(task_tensor_ptr + pid)
    b = tl.load(task_block_ptr + pid)
    n = tl.load(numel_ptr + k)
    t_ptr = tl.load(t_addr_ptr + k).to(tl.pointer_type(DTYPE))
    s_ptr = tl.load(s_addr_ptr + k).to(tl.pointer_type(DTYPE))
    offs = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(t_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + offs, mask=mask).to(tl.float32)
    out = t + weight * (s - t)
    tl.store(t_ptr + offs, out.to(DTYPE), mask=mask)


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def ema_flat(teacher: torch.Tensor, student: torch.Tensor, weight: float) -> None:
    """Launch the flat kernel on two contiguous tensors of equal numel (in place on teacher)."""
    n = teacher.numel()
    grid = (triton.cdiv(n, BLOCK),)
    ema_flat_kernel[grid](teacher, student, n, float(weight), BLOCK=BLOCK)


# Task tables keyed by the tensors' addresses and sizes: rebuilding them is per-parameter Python
# work, so a training loop that updates the same parameters every step pays it once.
_TABLES: dict[tuple, tuple[torch.Tensor, ...]] = {}


def clear_cache() -> None:
    """Forget the cached task tables (e.g. after parameters were reallocated)."""
    _TABLES.clear()


def ema_multi(teacher: list[torch.Tensor], student: list[torch.Tensor], weight: float) -> None:
    """Launch the multi-tensor kernel over same-dtype contiguous tensors (in place on teacher)."""
    dtype = teacher[0].dtype
    key = (tuple(t.data_ptr() for t in teacher), tuple(s.data_ptr() for s in student),
           tuple(t.numel() for t in teacher))
    tables = _TABLES.get(key)
    if tables is None:
        dev = teacher[0].device
        numels = torch.tensor(key[2], dtype=torch.int64)
        blocks = (numels + BLOCK - 1) // BLOCK
        task_tensor = torch.repeat_interleave(torch.arange(len(teacher)), blocks)
        starts = torch.cumsum(blocks, 0) - blocks
        task_block = torch.arange(int(blocks.sum())) - torch.repeat_interleave(starts, blocks)
        tables = tuple(x.to(dev) for x in (
            torch.tensor(key[0], dtype=torch.int64), torch.tensor(key[1], dtype=torch.int64),
            numels, task_tensor, task_block))
        if len(_TABLES) >= 64:  # bounded: a long-lived process may see many models
            _TABLES.clear()
        _TABLES[key] = tables
    t_addr, s_addr, numels, task_tensor, task_block = tables
    grid = (task_tensor.numel(),)
    ema_multi_kernel[grid](t_addr, s_addr, numels, task_tensor, task_block, float(weight),
                           DTYPE=_TL_DTYPES[dtype], BLOCK=BLOCK)
