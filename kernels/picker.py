"""Triton kernel for the picker: every per-sample reduction and the decision in one launch, one
program per sample (semantics: ``same_fast.ops.picker``).

The program streams the sample's structure map and its reconstruction in BLOCK chunks
(reconstruction error, squared or Bernoulli KL, and binary entropy), then its latent
mean/log-variance (KL), then its IQA logits (softmax probability of the good class and whether it
is the arg-max), applies the enabled gates (hard or soft) and writes eight numbers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
N_OUT = 8  # weights, score, recon_error, kl, entropy, p_good, good_top, plausibility


@triton.jit
def picker_kernel(s_ptr, r_ptr, mu_ptr, lv_ptr, q_ptr, out_ptr, L, D, K, KL_W, GOOD,
                  ISD_THR, ISD_WIDTH, IQA_THR, IQA_WIDTH,
                  HAS_KL: tl.constexpr, HAS_IQA: tl.constexpr, BERNOULLI: tl.constexpr,
                  ISD_GATE: tl.constexpr, STRICT: tl.constexpr, IQA_GATE: tl.constexpr,
                  SOFT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    n = tl.num_programs(0).to(tl.int64)

    # 1. the structure map against its reconstruction
    err = tl.zeros((BLOCK,), dtype=tl.float32)
    ent = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, L, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < L
        s = tl.load(s_ptr + i * L + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + i * L + offs, mask=m, other=0.0).to(tl.float32)
        if BERNOULLI:  # KL(Bernoulli(x) || Bernoulli(p)), both clamped as StructureVAE.score
            x = tl.minimum(tl.maximum(s, 1e-6), 1.0 - 1e-6)
            p = tl.minimum(tl.maximum(r, 1e-6), 1.0 - 1e-6)
            e = x * tl.log(x / p) + (1.0 - x) * tl.log((1.0 - x) / (1.0 - p))
        else:
            e = (s - r) * (s - r)
        err += tl.where(m, e, 0.0)
        pe = tl.minimum(tl.maximum(s, 1e-7), 1.0 - 1e-7)
        ent += tl.where(m, -(pe * tl.log(pe) + (1.0 - pe) * tl.log(1.0 - pe)), 0.0)
    recon = tl.sum(err) / L
    entropy = tl.sum(ent) / L / 0.6931471805599453

    # 2. the latent Gaussian against N(0, 1)
    kl = 0.0
    if HAS_KL:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            offs = start + tl.arange(0, BLOCK_D)
            m = offs < D
            mu = tl.load(mu_ptr + i * D + offs, mask=m, other=0.0).to(tl.float32)
            lv = tl.load(lv_ptr + i * D + offs, mask=m, other=0.0).to(tl.float32)
            acc += tl.where(m, 0.5 * (mu * mu + tl.exp(lv) - 1.0 - lv), 0.0)
        kl = tl.sum(acc) / D
    score = recon + KL_W * kl

    # 3. the IQA logits
    p_good = 1.0
    good_top = 1.0
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
        good_top = tl.where(tl.sum(beats) == 0, 1.0, 0.0)

    # 4. the decision: the product over the gates that are on (widths = temperature x threshold)
    weight = 1.0
    plaus = 1.0
    if IQA_GATE:
        if SOFT:
            weight = weight * tl.sigmoid((p_good - IQA_THR) / IQA_WIDTH)
        else:
            weight = weight * tl.where(p_good > IQA_THR, 1.0, 0.0) * good_top
        plaus = p_good / IQA_THR
    if ISD_GATE:
        if SOFT:
            weight = weight * tl.sigmoid((ISD_THR - score) / ISD_WIDTH)
        else:
            if STRICT:
                weight = weight * tl.where(score < ISD_THR, 1.0, 0.0)
            else:
                weight = weight * tl.where(score <= ISD_THR, 1.0, 0.0)
        isd_plaus = ISD_THR / tl.maximum(score, 1e-8)
        if IQA_GATE:
            plaus = tl.minimum(plaus, isd_plaus)
        else:
            plaus = isd_plaus

    tl.store(out_ptr + i, weight)
    tl.store(out_ptr + n + i, score)
    tl.store(out_ptr + 2 * n + i, recon)
    tl.store(out_ptr + 3 * n + i, kl)
    tl.store(out_ptr + 4 * n + i, entropy)
    tl.store(out_ptr + 5 * n + i, p_good)
    tl.store(out_ptr + 6 * n + i, good_top)
    tl.store(out_ptr + 7 * n + i, plaus)


def picker_scores(structure: torch.Tensor, recon: torch.Tensor, iqa_logits: torch.Tensor | None,
                  mu: torch.Tensor | None, logvar: torch.Tensor | None, *, kl_weight: float,
                  good: int, bernoulli: bool, isd_gate: bool, isd_thr: float, isd_width: float,
                  strict: bool, iqa_gate: bool, iqa_thr: float, iqa_width: float, soft: bool
                  ) -> tuple[torch.Tensor, ...]:
    """Launch the kernel; returns the eight (N,) fields of ``ops.PickerScores`` in order.

    ``iqa_gate`` needs ``iqa_logits``; the widths are temperature x threshold, computed by the
    caller in double precision as the torch path does.
    """
    n = structure.shape[0]
    s = structure.reshape(n, -1).contiguous()
    r = recon.reshape(n, -1).contiguous()
    out = torch.empty(N_OUT, n, dtype=torch.float32, device=s.device)
    has_kl, has_iqa = mu is not None, iqa_logits is not None
    mu_t = mu.contiguous() if has_kl else s
    lv_t = logvar.contiguous() if has_kl else s
    q_t = iqa_logits.contiguous() if has_iqa else s
    d = mu.shape[1] if has_kl else 1
    k = iqa_logits.shape[1] if has_iqa else 1
    picker_kernel[(n,)](s, r, mu_t, lv_t, q_t, out, s.shape[1], d, k, kl_weight, good,
                        isd_thr, isd_width, iqa_thr, iqa_width,
                        HAS_KL=has_kl, HAS_IQA=has_iqa, BERNOULLI=bernoulli,
                        ISD_GATE=isd_gate, STRICT=strict, IQA_GATE=iqa_gate and has_iqa,
                        SOFT=soft, BLOCK=BLOCK, BLOCK_D=min(1024, triton.next_power_of_2(d)),
                        BLOCK_K=triton.next_power_of_2(max(k, 2)))
    return tuple(out.unbind(0))
