"""pytest-benchmark front over the ops suite: each group compares ours with its peers.

Run: ``pytest benchmarks/bench_ops.py --benchmark-group-by=group`` (not collected by the test
suite). ``same-fast bench --suite ops`` gives the full interleaved run with ratios, GB/s against
the copy bandwidth and the step as a multiple of plain inference.
"""
from __future__ import annotations

import copy

import pytest
import torch

from same_fast import ops
from same_fast.adapt.step import AdaptStep, StepConfig
from same_fast.benchsuites import ops as suite

DEV = torch.device("cpu")


@pytest.mark.parametrize("shape", [(4, 3, 256, 256), (1, 1, 1024, 1024)],
                         ids=["4x3x256x256", "1x1x1024x1024"])
@pytest.mark.parametrize("impl", ["ours", "pytorch_msssim", "kornia", "torch_reference"])
def test_ssim_loss_fwd_bwd(benchmark, impl: str, shape: tuple) -> None:
    cases = suite.ssim_cases(shape, DEV)
    if impl not in cases:
        pytest.skip(f"{impl} is not installed")
    benchmark.group = f"ssim fwd+bwd {'x'.join(map(str, shape))}"
    benchmark(cases[impl])


@pytest.fixture(scope="module", params=["lite", "paper"])
def ema_pair(request):
    student, teacher = suite._samenet(request.param, DEV, 0), suite._samenet(request.param, DEV, 1)
    flat_s, flat_t = ops.flatten_parameters_(student), ops.flatten_parameters_(teacher)
    return request.param, teacher, student, flat_t, flat_s


@pytest.mark.parametrize("impl", ["ours", "foreach_lerp", "reference_loop", "copy"])
def test_ema(benchmark, ema_pair, impl: str) -> None:
    preset, teacher, student, flat_t, flat_s = ema_pair
    t_list, s_list = list(teacher.parameters()), list(student.parameters())
    dst = torch.empty_like(flat_t)
    fn = {"ours": lambda: ops.ema_(flat_t, flat_s, 0.995),
          "foreach_lerp": lambda: suite._foreach_ema(t_list, s_list, 0.005),
          "reference_loop": lambda: suite.ema_reference_style(t_list, s_list, 0.995),
          "copy": lambda: dst.copy_(flat_s)}[impl]
    benchmark.group = f"ema {preset} ({flat_t.numel()} params)"
    benchmark.extra_info["bytes_3_passes"] = 3 * flat_t.numel() * flat_t.element_size()
    benchmark(fn)


@pytest.mark.parametrize("impl", ["plain_inference", "ours", "reference_style"])
def test_adaptation_step(benchmark, impl: str) -> None:
    torch.manual_seed(0)
    base = suite._samenet("lite", DEV)
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    if impl == "plain_inference":
        model = base.eval()

        def fn() -> None:
            with torch.inference_mode():
                model(x, structure=False)
    elif impl == "ours":
        step = AdaptStep(copy.deepcopy(base), copy.deepcopy(base), StepConfig(),
                         picker=suite.device_picker)

        def fn() -> None:
            step(x)
    else:
        s, t = copy.deepcopy(base), copy.deepcopy(base)
        opt = torch.optim.Adam(s.parameters(), lr=2e-4, foreach=False)

        def fn() -> None:
            suite.reference_style_step(s, t, opt, x)
    benchmark.group = "adaptation step, lite 4x3x128x128"
    benchmark(fn)
