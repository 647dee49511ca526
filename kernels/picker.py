"""Triton kernel for the picker: every per-sample reduction and the accept decision in one
launch, one program per sample (semantics: ``same_fast.ops.picker``).

The program streams the sample's structure map and its reconstruction in BLOCK chunks
(squared error and binary entropy), then its latent mean/log-variance (KL), then its IQA logits
(softmax probability of the good class and whether it is the arg-max), and writes six numbers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
LN2 = 0.6931471805599453


@triton.jit
def picker_kernel(s_ptr, r_ptr, mu_ptr, lv_ptr, q_ptr, out_ptr, L, D, K, THR, IQA_THR, KL_W,
                  GOOD, HAS_KL: tl.constexpr, HAS_IQA: tl.constexpr, BLOCK: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(0).to(tl.int64)
    sq = tl.zeros((BLOCK,), dtype=tl.float32)
    ent = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < L
        s = tl.load(s_ptr + i * L + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + i * L + offs, mask=m, other=0.0).to(tl.float32)
        sq += tl.where(m, (s - r) * (s - r), 0.0)
        p = tl.minimum(tl.maximum(s, 1e-7), 1.0 - 1e-7)
        ent += tl.where(m, -(p * tl.log(p) + (1.0 - p) * tl.log(1.0 - p)), 0.0)
    recon = tl.sum(sq) / L
    entropy = tl.sum(ent) / L / 0.6931471805599453
    kl = 0.0
    if HAS_KL:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            offs = start + tl.arange(0, BLOCK_D)
            m = offs < D
            mu = tl.load(mu_ptr + i * D + offs, mask=m, other=0.0).to(tl.float32)
            lv = tl.load(lv_ptr + i * D + offs, mask=m, other=0.0).to(tl.float32)
            acc += tl.where(m, -0.5 * (1.0 + lv - mu * mu - tl.exp(lv)), 0.0)
        kl = tl.sum(acc) / D
    score = recon + KL_W * kl
    accept = score <= THR
    p_good = 1.0
    if HAS_IQA:
        offs = tl.arange(0, BLOCK_K)
        m = offs < K
        q = tl.load(q_ptr + i * K + offs, mask=m, other=-float("inf")).to(tl.float32)
        qmax = tl.max(q)
        e = tl.where(m, tl.exp(q - qmax), 0.0)
        q_good = tl.load(q_ptr + i * K + GOOD).to(tl.float32)
        p_good = tl.exp(q_good - qmax) / tl.sum(e)
        # good is the arg-max when no class before it reaches the max and none after exceeds it
        # (torch.argmax returns the first maximal index).
        beats = tl.where(m & (((offs < GOOD) & (q >= q_good)) | ((offs > GOOD) & (q > q_good))),
                         1, 0)
        accept = accept & (p_good > IQA_THR) & (tl.sum(beats) == 0)
    tl.store(out_ptr + i, tl.where(accept, 1.0, 0.0))
    tl.store(out_ptr + n + i, score)
    tl.store(out_ptr + 2 * n + i, recon)
    tl.store(out_ptr + 3 * n + i, kl)
    tl.store(out_ptr + 4 * n + i, entropy)
    tl.store(out_ptr + 5 * n + i, p_good)


def picker_scores(structure: torch.Tensor, recon: torch.Tensor, iqa_logits: torch.Tensor | None,
                  mu: torch.Tensor | None, logvar: torch.Tensor | None, thr: float,
                  iqa_thr: float, kl_weight: float, good: int) -> tuple[torch.Tensor, ...]:
    """Launch the kernel; returns (weights, score, recon_error, kl, entropy, p_good), each (N,)."""
    n = structure.shape[0]
    s = structure.reshape(n, -1).contiguous()
    r = recon.reshape(n, -1).contiguous()
    out = torch.empty(6, n, dtype=torch.float32, device=s.device)
    has_kl, has_iqa = mu is not None, iqa_logits is not None
    mu_t = mu.contiguous() if has_kl else s
    lv_t = logvar.contiguous() if has_kl else s
    q_t = iqa_logits.contiguous() if has_iqa else s
    d = mu.shape[1] if has_kl else 1
    k = iqa_logits.shape[1] if has_iqa else 1
    picker_kernel[(n,)](s, r, mu_t, lv_t, q_t, out, s.shape[1], d, k, thr, iqa_thr, kl_weight,
                        good, HAS_KL=has_kl, HAS_IQA=has_iqa, BLOCK=BLOCK,
                        BLOCK_D=min(1024, triton.next_power_of_2(d)),
                        BLOCK_K=triton.next_power_of_2(max(k, 2)))
    return tuple(out.unbind(0))
