"""same_fast.ops.ema_: every path equals the plain per-tensor EMA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from same_fast.errors import InputError
from same_fast.ops import ema_, ema_reference_, flatten_parameters_

SHAPES = [(5, 7), (1,), (3, 3, 3, 3), (1000,), (2, 1, 4)]


def fresh(seed: int, dtype: torch.dtype = torch.float32) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(s, generator=g).to(dtype) for s in SHAPES]
    s = [torch.randn(s, generator=g).to(dtype) for s in SHAPES]
    return t, s


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.995, 1.0])
def test_list_path_matches_reference(decay: float) -> None:
    t, s = fresh(0)
    t_ref = [x.clone() for x in t]
    ema_reference_(t_ref, s, decay)
    ema_(t, s, decay, backend="torch")
    for a, b in zip(t, t_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_single_tensor_and_float64() -> None:
    t, s = torch.randn(33, dtype=torch.float64), torch.randn(33, dtype=torch.float64)
    expect = 0.9 * t + 0.1 * s
    ema_(t, s, 0.9)
    torch.testing.assert_close(t, expect)


def test_flattened_modules_take_one_pass_and_keep_identity() -> None:
    torch.manual_seed(0)
    net_t = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 2, 1))
    net_s = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 2, 1))
    params_before = list(net_s.parameters())
    values = [p.detach().clone() for p in net_s.parameters()]
    flat_s = flatten_parameters_(net_s)
    assert flatten_parameters_(net_t) is not None
    assert flat_s is not None and flat_s.numel() == sum(p.numel() for p in net_s.parameters())
    # Same Parameter objects, same values, now views of the flat buffer.
    assert all(a is b for a, b in zip(params_before, net_s.parameters(), strict=True))
    for p, v in zip(net_s.parameters(), values, strict=True):
        assert torch.equal(p, v)
        assert p.untyped_storage().data_ptr() == flat_s.untyped_storage().data_ptr()
    assert flatten_parameters_(net_s).data_ptr() == flat_s.data_ptr()  # idempotent
    t_ref = [p.detach().clone() for p in net_t.parameters()]
    ema_reference_(t_ref, list(net_s.parameters()), 0.99)
    ema_(net_t.parameters(), net_s.parameters(), 0.99)  # lists that tile one buffer
    for a, b in zip(net_t.parameters(), t_ref, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-7)
    # A flattened model still trains: gradients flow and an optimizer step moves the buffer.
    opt = torch.optim.Adam(net_s.parameters(), lr=0.1)
    net_s(torch.rand(1, 3, 8, 8)).sum().backward()
    before = flat_s.clone()
    opt.step()
    assert not torch.equal(before, flat_s)


def test_flatten_refuses_mixed_dtypes() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    assert flatten_parameters_(net) is None


def test_errors() -> None:
    t, s = fresh(1)
    with pytest.raises(InputError):
        ema_(t, s[:-1], 0.9)
    with pytest.raises(InputError):
        ema_(t, s, 1.5)
    with pytest.raises(InputError):
        ema_(t, s, 0.9, backend="cuda-magic")
