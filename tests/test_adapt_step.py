"""The SAME adaptation step: EMA arithmetic, no teacher gradients, per-sample weights, an
all-rejected batch, determinism, compiled == eager."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from same_fast.adapt.step import AdaptStep, StepConfig, distillation_losses
from same_fast.errors import InputError


class TinyNet(nn.Module):
    """A two-output stand-in for SAMENet: forward(x in [-1, 1]) -> (image, structure logits)."""

    def __init__(self, c: int = 3, width: int = 8, dropout: float = 0.5) -> None:
        super().__init__()
        self.enc = nn.Conv2d(c, width, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.img = nn.Conv2d(width, c, 3, padding=1)
        self.struct = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(F.leaky_relu(self.enc(x), 0.2))
        return torch.tanh(self.img(h)), self.struct(h)


def make_pair(seed: int = 0, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = TinyNet(**kw)
    return student, copy.deepcopy(student)


def batch(n: int = 4, seed: int = 1, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_ema_arithmetic_after_one_step() -> None:
    student, teacher = make_pair()
    t0 = [p.detach().clone() for p in teacher.parameters()]
    step = AdaptStep(student, teacher, StepConfig(ema=0.9))
    step(batch())
    for t_new, t_old, s in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s.detach(), rtol=1e-6, atol=1e-7)
    # The student did move (Adam step), so the EMA is not trivially a copy.
    assert any(not torch.equal(a, b) for a, b in zip(t0, student.parameters(), strict=True))


def test_ema_survives_parameter_storage_being_replaced() -> None:
    """``model.to(...)`` swaps parameter storage; the EMA must follow the live parameters."""
    student, teacher = make_pair()
    step = AdaptStep(student, teacher, StepConfig(ema=0.5))
    student.double().float()  # new storage for every parameter, same values
    teacher.double().float()
    t0 = [p.detach().clone() for p in teacher.parameters()]
    step(batch())
    for t_new, t_old, s in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        torch.testing.assert_close(t_new, 0.5 * t_old + 0.5 * s.detach(), rtol=1e-6, atol=1e-7)


def test_teacher_gets_no_gradients() -> None:
    student, teacher = make_pair()
    step = AdaptStep(student, teacher)
    out = step(batch())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert out["weights"].shape == (4,)
    assert {"loss", "l1", "struct", "entropy", "ssim", "accepted"} <= set(out)


def test_weights_apply_per_sample() -> None:
    """Loss equals the hand-computed weighted mean, the entropy term included (it is taken on
    accepted samples only); a rejected sample's image and structure get no gradient."""
    torch.manual_seed(0)
    n = 3
    y_s = (torch.rand(n, 3, 8, 8) * 2 - 1).requires_grad_()
    s_s = torch.randn(n, 1, 8, 8, requires_grad=True)
    y_t, s_t = torch.rand(n, 3, 8, 8) * 2 - 1, torch.randn(n, 1, 8, 8)
    w = torch.tensor([1.0, 0.0, 0.5])
    cfg = StepConfig()
    out = distillation_losses(y_s, s_s, y_t, s_t, w, cfg)
    l1 = (y_s - y_t).abs().mean((1, 2, 3))
    p_t = torch.sigmoid(s_t)
    bce = -(p_t * F.logsigmoid(s_s) + (1 - p_t) * F.logsigmoid(-s_s)).mean((1, 2, 3))
    p = torch.sigmoid(s_s)
    ent = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p)).mean((1, 2, 3))
    expect = (w * (0.9 * l1 + 0.1 * bce + ent)).sum() / 1.5
    torch.testing.assert_close(out["loss"], expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["entropy"], (w * ent).sum() / 1.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["accepted"], torch.tensor(1.5))
    out["loss"].backward()
    assert torch.count_nonzero(y_s.grad[1]) == 0 and torch.count_nonzero(s_s.grad[1]) == 0
    assert torch.count_nonzero(y_s.grad[0]) > 0 and torch.count_nonzero(y_s.grad[2]) > 0


def test_l1_is_taken_inside_the_field_of_view() -> None:
    """With a mask, what the models do outside the FOV costs nothing, and the L1 is the mean
    inside it."""
    torch.manual_seed(1)
    y_s = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_()
    y_t = torch.rand(2, 3, 8, 8) * 2 - 1
    s = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    cfg = StepConfig(w_struct=0.0, w_entropy=0.0, w_l1=1.0)
    out = distillation_losses(y_s, s, y_t, s, torch.ones(2), cfg, mask)
    inside = (y_s - y_t).abs()[..., 2:6, 2:6].mean()
    torch.testing.assert_close(out["l1"], inside)
    out["loss"].backward()
    assert torch.count_nonzero(y_s.grad[..., :2, :]) == 0
    assert torch.count_nonzero(y_s.grad[..., 2:6, 2:6]) > 0


def test_all_rejected_gives_zero_distillation_not_nan() -> None:
    student, teacher = make_pair()
    step = AdaptStep(student, teacher, StepConfig(w_entropy=0.0),
                     picker=lambda y, s: torch.zeros(y.shape[0]))
    out = step(batch())
    assert out["loss"].item() == 0.0 and out["accepted"].item() == 0.0
    assert all(torch.isfinite(p).all() for p in student.parameters())
    # With the entropy term on, nothing is learnt either: the entropy is taken on accepted
    # samples only, so a fully rejected batch has zero loss, not NaN.
    student, teacher = make_pair()
    step = AdaptStep(student, teacher, picker=lambda y, s: torch.zeros(y.shape[0]))
    out = step(batch())
    assert not math.isnan(out["loss"].item())
    assert out["loss"].item() == 0.0 and out["entropy"].item() == 0.0


def test_picker_sees_teacher_outputs() -> None:
    seen = {}

    def picker(y_t: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        seen["shapes"] = (tuple(y_t.shape), tuple(s_t.shape), y_t.requires_grad)
        return torch.tensor([1.0, 0.0, 1.0, 0.0])

    student, teacher = make_pair()
    out = AdaptStep(student, teacher, picker=picker)(batch())
    assert seen["shapes"] == ((4, 3, 16, 16), (4, 1, 16, 16), False)
    assert out["accepted"].item() == 2.0


def test_deterministic_with_a_seed() -> None:
    def run() -> list[torch.Tensor]:
        student, teacher = make_pair(seed=3)
        step = AdaptStep(student, teacher, StepConfig(w_ssim=0.5))
        torch.manual_seed(11)
        losses = [step(batch(seed=s))["loss"] for s in range(3)]
        return losses + [p.detach().clone() for p in teacher.parameters()]

    a, b = run(), run()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_student_view_and_errors() -> None:
    student, teacher = make_pair()
    step = AdaptStep(student, teacher)
    x = batch()
    out = step(x, x.flip(-1))
    assert torch.isfinite(out["loss"])
    with pytest.raises(InputError):
        step(x, x[:2])
    with pytest.raises(InputError):
        step(x[0])
    with pytest.raises(InputError):
        AdaptStep(TinyNet(width=8), TinyNet(width=4))


@pytest.mark.slow
def test_compiled_step_matches_eager() -> None:
    """torch.compile (inductor on CPU) gives the same step as eager (dropout off to compare)."""
    cfg = dict(teacher_dropout=False, w_ssim=0.2)
    results = []
    for compiled in (False, True):
        student, teacher = make_pair(seed=5, dropout=0.0)
        step = AdaptStep(student, teacher, StepConfig(compile=compiled, **cfg))
        outs = [step(batch(seed=s, n=2)) for s in range(2)]
        results.append((outs, [p.detach().clone() for p in teacher.parameters()]))
    (eo, et), (co, ct) = results
    for a, b in zip(eo, co, strict=True):
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-4, atol=1e-5)
    for a, b in zip(et, ct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
