"""same_fast.ops.picker_weights: per-sample scores against a loop written from the definition."""
from __future__ import annotations

import math

import pytest
import torch

from same_fast.errors import InputError
from same_fast.ops import picker_weights


def loop_reference(s, r, q, mu, lv, thr, iqa_thr, kl_w, good):
    out = []
    for i in range(s.shape[0]):
        si, ri = s[i].flatten().double(), r[i].flatten().double()
        rec = ((si - ri) ** 2).mean().item()
        p = si.clamp(1e-7, 1 - 1e-7)
        ent = (-(p * p.log2() + (1 - p) * (1 - p).log2())).mean().item()
        kl = 0.0
        if mu is not None:
            kl = sum(-0.5 * (1 + b - a * a - math.exp(b))
                     for a, b in zip(mu[i].tolist(), lv[i].tolist(), strict=True)) / mu.shape[1]
        score = rec + kl_w * kl
        ok = score <= thr
        pg = 1.0
        if q is not None:
            probs = torch.softmax(q[i].double(), 0)
            pg = probs[good].item()
            ok = ok and pg > iqa_thr and int(torch.argmax(q[i])) == good
        out.append((float(ok), score, rec, kl, ent, pg))
    return [torch.tensor(c, dtype=torch.float32) for c in zip(*out, strict=True)]


@pytest.mark.parametrize("n,shape,d,k", [(1, (1, 5, 5), 3, 3), (7, (1, 17, 9), 16, 3),
                                         (4, (2, 8, 8), 1, 2)])
def test_matches_loop(n: int, shape: tuple, d: int, k: int) -> None:
    g = torch.Generator().manual_seed(n)
    s = torch.rand(n, *shape, generator=g)
    r = (s + 0.3 * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    mu, lv = torch.randn(n, d, generator=g), 0.5 * torch.randn(n, d, generator=g)
    q = 3 * torch.randn(n, k, generator=g)
    for kw in (dict(), dict(iqa_logits=q, mu=mu, logvar=lv, isd_threshold=0.6,
                            iqa_threshold=0.4, kl_weight=0.5)):
        got = picker_weights(s, r, backend="torch", **kw)
        exp = loop_reference(s, r, kw.get("iqa_logits"), kw.get("mu"), kw.get("logvar"),
                             kw.get("isd_threshold", math.inf), kw.get("iqa_threshold", 0.8),
                             kw.get("kl_weight", 1.0), 0)
        for a, b in zip(got, exp, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert got.weights.shape == (n,) and got.weights.dtype == torch.float32


def test_decisions() -> None:
    s = torch.full((3, 1, 4, 4), 0.5)
    r = s.clone()
    r[1] = 0.0  # reconstruction error 0.25 for sample 1
    q = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    w = picker_weights(s, r, q, isd_threshold=0.1).weights
    assert w.tolist() == [1.0, 0.0, 0.0]
    # A tie for the top class counts as good only when good comes first (torch.argmax rule).
    tie = torch.tensor([[1.0, 1.0, -9.0]] * 3)
    assert picker_weights(s, s, tie, iqa_threshold=0.4).weights.tolist() == [1.0] * 3
    assert picker_weights(s, s, tie, iqa_threshold=0.4, good_class=1).weights.tolist() == [0.0] * 3


def test_errors() -> None:
    s = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError):
        picker_weights(s, s[:1])
    with pytest.raises(InputError):
        picker_weights(s, s, mu=torch.zeros(2, 3))
    with pytest.raises(InputError):
        picker_weights(s, s, iqa_logits=torch.zeros(2, 3), good_class=3)
