"""same_fast.ops.picker_weights: per-sample scores against a loop written from the definition."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from same_fast.errors import InputError
from same_fast.ops import picker_decision, picker_weights

FIELDS = ("weights", "score", "recon_error", "kl", "entropy", "p_good", "good_top",
          "plausibility")


def loop_reference(s, r, q=None, mu=None, lv=None, *, isd_threshold=None, iqa_threshold=0.8,
                   kl_weight=1.0, good_class=0, recon_error="mse", isd_compare="<=", soft=False,
                   temperature=0.05, use_iqa=True, use_isd=True) -> dict[str, torch.Tensor]:
    """The module doc's formulas, one sample at a time in double precision."""
    rows = []
    for i in range(s.shape[0]):
        si, ri = s[i].flatten().double(), r[i].flatten().double()
        if recon_error == "mse":
            rec = ((si - ri) ** 2).mean().item()
        else:
            # clamped in float32, as the op's inputs are: 1 - 1e-6 rounds to 1 - 1.013e-6
            x = s[i].flatten().clamp(1e-6, 1 - 1e-6).double()
            p = r[i].flatten().clamp(1e-6, 1 - 1e-6).double()
            rec = (x * (x / p).log() + (1 - x) * ((1 - x) / (1 - p)).log()).mean().item()
        pe = si.clamp(1e-7, 1 - 1e-7)
        ent = (-(pe * pe.log2() + (1 - pe) * (1 - pe).log2())).mean().item()
        kl = 0.0
        if mu is not None:
            kl = sum(0.5 * (a * a + math.exp(b) - 1 - b)
                     for a, b in zip(mu[i].tolist(), lv[i].tolist(), strict=True)) / mu.shape[1]
        score = rec + kl_weight * kl
        pg, top = 1.0, 1.0
        if q is not None:
            pg = torch.softmax(q[i].double(), 0)[good_class].item()
            top = float(int(torch.argmax(q[i])) == good_class)
        t = max(temperature, 1e-6)
        w, parts = 1.0, []
        if use_iqa and q is not None:
            if soft:
                w *= 1 / (1 + math.exp(-(pg - iqa_threshold) / (t * iqa_threshold)))
            else:
                w *= float(pg > iqa_threshold and top == 1.0)
            parts.append(pg / iqa_threshold)
        if use_isd and isd_threshold is not None:
            if soft:
                w *= 1 / (1 + math.exp(-(isd_threshold - score) / (t * isd_threshold)))
            else:
                w *= float(score < isd_threshold if isd_compare == "<" else score <= isd_threshold)
            parts.append(isd_threshold / max(score, 1e-8))
        rows.append((w, score, rec, kl, ent, pg, top, min(parts) if parts else 1.0))
    return {f: torch.tensor(c, dtype=torch.float32)
            for f, c in zip(FIELDS, zip(*rows, strict=True), strict=True)}


def between(values: torch.Tensor, k: int) -> float:
    """A threshold halfway between the k-th and (k+1)-th smallest values (never on a value, so
    float32 and double agree on every decision); one value: 10% below or above it."""
    v = sorted(values.tolist())
    if len(v) == 1:
        return v[0] * (0.9 if k == 0 else 1.1)
    k = min(max(k, 0), len(v) - 2)
    return 0.5 * (v[k] + v[k + 1])


def make_inputs(n: int, shape: tuple, d: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, *shape, generator=g)
    s.view(-1)[:3] = torch.tensor([0.0, 1.0, 1e-9])  # the clamps
    r = (s + 0.3 * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    mu, lv = torch.randn(n, d, generator=g), 0.5 * torch.randn(n, d, generator=g)
    q = 3 * torch.randn(n, k, generator=g)
    return s, r, q, mu, lv


SHAPES = [(1, (1, 5, 5), 3, 3), (7, (1, 17, 9), 16, 3), (4, (2, 8, 8), 1, 2),
          (13, (1, 3, 1), 5, 4)]
# (recon_error, isd_compare, soft, temperature, use_iqa, use_isd)
OPTIONS = [(re, cmp, soft, temp, ui, us)
           for re, cmp, (soft, temp), (ui, us) in itertools.product(
               ("mse", "bernoulli_kl"), ("<=", "<"), ((False, 0.05), (True, 0.05), (True, 0.3)),
               ((True, True), (False, True), (True, False), (False, False)))]


def option_kwargs(s, r, q, mu, lv, option, with_kl=True, with_iqa=True) -> dict:
    re, cmp, soft, temp, ui, us = option
    ref = loop_reference(s, r, q if with_iqa else None, mu if with_kl else None,
                         lv if with_kl else None, recon_error=re)
    n = s.shape[0]
    kw = dict(recon_error=re, isd_compare=cmp, soft=soft, temperature=temp, use_iqa=ui,
              use_isd=us, kl_weight=0.5 if with_kl else 1.0,
              isd_threshold=between(loop_reference(
                  s, r, None, mu if with_kl else None, lv if with_kl else None, recon_error=re,
                  kl_weight=0.5 if with_kl else 1.0)["score"], n // 2))
    if with_iqa:
        kw.update(iqa_logits=q, iqa_threshold=between(ref["p_good"], n // 3))
    if with_kl:
        kw.update(mu=mu, logvar=lv)
    return kw


def assert_matches(got, exp: dict, soft: bool) -> None:
    for f in FIELDS:
        tol = dict(rtol=1e-4, atol=1e-5) if soft and f == "weights" else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(getattr(got, f), exp[f], **tol, msg=f)
        assert getattr(got, f).dtype == torch.float32 and getattr(got, f).shape == exp[f].shape


@pytest.mark.parametrize("n,shape,d,k", SHAPES)
def test_matches_loop_defaults(n: int, shape: tuple, d: int, k: int) -> None:
    s, r, q, mu, lv = make_inputs(n, shape, d, k, seed=n)
    for kw in (dict(), dict(iqa_logits=q, mu=mu, logvar=lv, isd_threshold=0.6,
                            iqa_threshold=0.4, kl_weight=0.5)):
        got = picker_weights(s, r, backend="torch", **kw)
        exp = loop_reference(s, r, kw.get("iqa_logits"), kw.get("mu"), kw.get("logvar"),
                             **{a: kw[a] for a in ("isd_threshold", "iqa_threshold", "kl_weight")
                                if a in kw})
        assert_matches(got, exp, soft=False)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(map(str, o)))
@pytest.mark.parametrize("n,shape,d,k", SHAPES)
def test_every_option_matches_loop(n: int, shape: tuple, d: int, k: int, option: tuple) -> None:
    s, r, q, mu, lv = make_inputs(n, shape, d, k, seed=7 * n + d)
    for with_kl, with_iqa in ((True, True), (False, False), (True, False)):
        kw = option_kwargs(s, r, q, mu, lv, option, with_kl, with_iqa)
        got = picker_weights(s, r, backend="torch", **kw)
        exp = loop_reference(s, r, kw.get("iqa_logits"), kw.get("mu"), kw.get("logvar"),
                             **{a: v for a, v in kw.items()
                                if a not in ("iqa_logits", "mu", "logvar")})
        assert_matches(got, exp, soft=option[2])
        # the decision stage alone gives the same weights and plausibility from the scores
        w, plaus = picker_decision(got.score, got.p_good, got.good_top,
                                   use_iqa=kw["use_iqa"] and with_iqa,
                                   **{a: kw[a] for a in ("isd_threshold", "isd_compare", "soft",
                                                         "temperature", "use_isd")},
                                   **({"iqa_threshold": kw["iqa_threshold"]} if with_iqa else {}))
        assert torch.equal(w, got.weights) and torch.equal(plaus, got.plausibility)


def test_thresholds_split_the_batch() -> None:
    """The thresholds option_kwargs picks accept some samples and reject others (hard mode), so
    the option tests compare real decisions."""
    s, r, q, mu, lv = make_inputs(7, (1, 17, 9), 16, 3, seed=1)
    for re in ("mse", "bernoulli_kl"):
        w = picker_weights(s, r, **option_kwargs(s, r, q, mu, lv, (re, "<", False, 0.05,
                                                                     False, True))).weights
        assert 0 < float(w.sum()) < 7
        w = picker_weights(s, r, **option_kwargs(s, r, q, mu, lv, (re, "<", False, 0.05,
                                                                     True, False))).weights
        assert 0 < float(w.sum()) < 7


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
    # Switched off, an assessor neither decides nor ranks.
    assert picker_weights(s, r, q, isd_threshold=0.1, use_isd=False).weights.tolist() == [1, 1, 0]
    assert picker_weights(s, r, q, isd_threshold=0.1, use_iqa=False).weights.tolist() == [1, 0, 1]
    off = picker_weights(s, r, q, isd_threshold=0.1, use_iqa=False, use_isd=False, soft=True)
    assert off.weights.tolist() == [1.0] * 3 and off.plausibility.tolist() == [1.0] * 3


@pytest.mark.parametrize("recon_error", ["mse", "bernoulli_kl"])
def test_isd_comparison_at_the_threshold(recon_error: str) -> None:
    """A score exactly on the threshold: kept by "<=", rejected by "<" (the picker's rule)."""
    s = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    r = s.clone()
    r[1] = 1.0 - s[1]
    got = picker_weights(s, r, recon_error=recon_error, isd_threshold=0.0)
    assert got.score[0] == 0.0 and got.score[1] > 0  # a perfect reconstruction scores exactly 0
    assert got.weights.tolist() == [1.0, 0.0]
    assert picker_weights(s, r, recon_error=recon_error, isd_threshold=0.0,
                          isd_compare="<").weights.tolist() == [0.0, 0.0]


def test_soft_weight_at_both_thresholds_is_a_quarter() -> None:
    s = torch.full((1, 1, 4, 4), 0.5)
    r = torch.full((1, 1, 4, 4), 0.25)  # mse 0.0625
    q = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # p_good 0.6
    got = picker_weights(s, r, q, isd_threshold=0.0625, iqa_threshold=0.6, soft=True)
    torch.testing.assert_close(got.weights, torch.tensor([0.25]))
    torch.testing.assert_close(got.plausibility, torch.tensor([1.0]))


def test_errors() -> None:
    s = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError):
        picker_weights(s, s[:1])
    with pytest.raises(InputError):
        picker_weights(s, s, mu=torch.zeros(2, 3))
    with pytest.raises(InputError):
        picker_weights(s, s, iqa_logits=torch.zeros(2, 3), good_class=3)
    with pytest.raises(InputError, match="recon_error"):
        picker_weights(s, s, recon_error="bce")
    with pytest.raises(InputError, match="isd_compare"):
        picker_weights(s, s, isd_compare=">")
    with pytest.raises(InputError, match="isd_compare"):
        picker_decision(s[:, 0, 0, 0], s[:, 0, 0, 0], s[:, 0, 0, 0], isd_compare="lt")
