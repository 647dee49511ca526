"""The ops benchmark suite runs end to end on tiny inputs and reports its comparisons."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch

from same_fast.benchsuites import ops as suite
from same_fast.benchsuites.ops import ema_reference_style, reference_style_step
from same_fast.nn import SAMENet


def test_reference_style_helpers_do_what_they_mimic() -> None:
    """The slow peers compute the same EMA, and the reference-style step trains the student."""
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    s = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    expect = [0.9 * a + 0.1 * b for a, b in zip(t, s, strict=True)]
    ema_reference_style(t, s, 0.9)
    for a, b in zip(t, expect, strict=True):
        torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    net = SAMENet(3, "lite", base=4, levels=2)
    student, teacher = copy.deepcopy(net), copy.deepcopy(net)
    before = [p.detach().clone() for p in student.parameters()]
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    out = reference_style_step(student, teacher, opt, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert set(out) == {"loss", "l1", "entropy"} and all(isinstance(v, float) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


@pytest.mark.slow
def test_suite_runs_quick_and_reports_ratios() -> None:
    args = argparse.Namespace(quick=True, repeats=1, device="cpu", json=None,
                              options={"sections": "ssim,ema,step", "step_size": "64",
                                       "step_batch": "1", "ema_presets": "lite",
                                       "ssim_shapes": "1x3x32x32,1x1x40x40"})
    r = suite.run(args)
    s = r["summary"]
    assert set(s["ssim_ours_over_pytorch_msssim"]) == {"1x3x32x32", "1x1x40x40"}
    assert all(v > 0 for v in s["ssim_ours_over_pytorch_msssim"].values())
    lite = r["ema"]["lite"]
    assert lite["parameters"] == sum(p.numel() for p in SAMENet(3, "lite").parameters())
    assert lite["copy_gb_per_s"] > 0 and lite["speedup_vs_reference_loop"] > 0
    assert set(s["step_multiple_of_plain_inference"]) == {
        "ours", "ours_picker_inputs_only", "ours_no_picker", "reference_style"}
    assert r["environment"]["torch"] == torch.__version__


def test_models_suite_times_each_candidate_against_lite(tmp_path) -> None:
    """``bench --suite models``: a row per candidate with its size and ratios to lite eager."""
    import json

    from same_fast.cli import main

    out = tmp_path / "m.json"
    assert main(["bench", "--suite", "models", "--set", "size=64", "--set",
                 "candidates=lite,lite-context", "--set", "onnx=0", "--quick",
                 "--json", str(out)]) == 0
    rows = {r["network"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"lite", "lite-context"}
    assert rows["lite"]["eager-image_vs_lite_eager"] == 1.0
    # the context block: two Linear layers on the 128 innermost channels, (256 + 1) * 128 +
    # (128 + 1) * 128 parameters
    assert rows["lite-context"]["params"] - rows["lite"]["params"] == 257 * 128 + 129 * 128
    assert rows["lite-context"]["eager-image_ms"] > 0
