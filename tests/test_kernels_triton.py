"""Triton kernels: run under the CPU interpreter against the torch references, and compile for a
CUDA target (no GPU needed) so code-generation errors show on CPU CI.

Triton 3.x decides interpreter vs compiler when a function is decorated, and that includes its
own ``triton.language`` helpers (``tl.zeros``, ``tl.sum``...), so TRITON_INTERPRET must be set
before ``triton`` itself is imported. This file therefore runs in two modes: in the normal test
process it runs itself once in a child process with TRITON_INTERPRET=1 (the interpreter cases),
and compiles every kernel for sm_90; in the child it runs the interpreter cases. The rest of the
suite never sees the variable.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

CHILD = os.environ.get("SAME_FAST_KERNEL_TESTS") == "interpret"
if CHILD:
    assert os.environ.get("TRITON_INTERPRET") == "1"

triton = pytest.importorskip("triton")  # an optional extra; CI installs it

import same_fast.ops as ops  # noqa: E402

# Cases are defined under private names and exported as tests only in the process they belong
# to (see the end of the file), so neither process collects, or skips, the other's cases.


@pytest.mark.slow
def _host_interpreter_cases_in_child_process() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", SAME_FAST_KERNEL_TESTS="interpret")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]


# --- interpreter: values against the references -----------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def _interp_ema_kernels(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (1,), (1500,), (3, 3, 3)]
    t = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    s = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    expect = [x.clone() for x in t]
    ops.ema_reference_(expect, s, 0.9)
    ops.ema_(t, s, 0.9, backend="triton")  # multi-tensor kernel over a pointer table
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    for a, b in zip(t, expect, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    flat_t, flat_s = torch.randn(2049, generator=g), torch.randn(2049, generator=g)
    expect = 0.7 * flat_t + 0.3 * flat_s
    ops.ema_(flat_t, flat_s, 0.7, backend="triton")  # flat kernel
    torch.testing.assert_close(flat_t, expect)


# Window 5 keeps the interpreter quick (it runs the unrolled taps in Python); one case uses 11.
@pytest.mark.parametrize("shape,window", [((1, 1, 11, 12), 11), ((2, 3, 9, 14), 5),
                                          ((1, 2, 5, 40), 5)])
def _interp_ssim_kernels_value_and_gradient(shape: tuple, window: int) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g, requires_grad=True)
    y = torch.rand(shape, generator=g, requires_grad=True)
    w = torch.rand(shape[0], generator=g)
    got = ops.ssim(x, y, window=window, sigma=1.5, backend="triton")
    ref = ops.ssim_reference(x, y, window=window, sigma=1.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad((got * w).sum(), (x, y))
    g_ref = torch.autograd.grad((ref * w).sum(), (x, y))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    (gx,) = torch.autograd.grad(ops.ssim(x, y.detach(), window=window, backend="triton").sum(),
                                (x,))
    (gx_ref,) = torch.autograd.grad(ops.ssim_reference(x, y.detach(), window=window).sum(), (x,))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-7)


def _interp_l1_ssim_fused(shape: tuple = (2, 2, 9, 13)) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g, requires_grad=True)
    y = torch.rand(shape, generator=g, requires_grad=True)
    y.data[0, 0, 0, :3] = x.data[0, 0, 0, :3]  # ties: sign(0) = 0 as in autograd of abs
    got = ops.l1_ssim_loss(x, y, w_l1=0.4, w_ssim=0.6, data_range=2.0, window=5,
                           reduction="none", backend="triton")
    ref = 0.4 * (x - y).abs().mean((1, 2, 3)) / 2.0 + 0.6 * (
        1 - ops.ssim_reference(x, y, data_range=2.0, window=5))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    w = torch.rand(shape[0], generator=g)
    g_got = torch.autograd.grad((got * w).sum(), (x, y))
    g_ref = torch.autograd.grad((ref * w).sum(), (x, y))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _midpoint(values: torch.Tensor, k: int) -> float:
    """A threshold halfway between two adjacent sorted values (never on one, so a rounding
    difference between kernel and torch cannot flip a hard decision)."""
    v = sorted(values.tolist())
    if len(v) == 1:
        return v[0] * (0.9 if k == 0 else 1.1)
    k = min(max(k, 0), len(v) - 2)
    return 0.5 * (v[k] + v[k + 1])


def _assert_picker_paths_agree(s, r, **kw) -> None:
    got = ops.picker_weights(s, r, backend="triton", **kw)
    ref = ops.picker_weights(s, r, backend="torch", **kw)
    for f, a, b in zip(ref._fields, got, ref, strict=True):
        tol = (dict(rtol=1e-4, atol=1e-5) if f == "weights" and kw.get("soft")
               else dict(rtol=1e-5, atol=1e-6))
        torch.testing.assert_close(a, b, **tol, msg=lambda m, f=f: f"{f} {kw}: {m}")


# (N, structure shape, latent D, IQA classes K): batch 1 and many, odd sizes, a map longer than
# BLOCK (the chunk loop runs twice), a latent longer than BLOCK_D, K not a power of two.
PICKER_CASES = [(1, (1, 5, 5), 3, 3), (6, (1, 33, 40), 5, 3), (13, (2, 7, 9), 1, 2),
                (4, (1, 1, 3), 33, 5), (2, (1, 4, 4), 1100, 3)]


@pytest.mark.parametrize("n,shape,d,k", PICKER_CASES)
def _interp_picker_kernel(n: int, shape: tuple, d: int, k: int) -> None:
    import itertools

    g = torch.Generator().manual_seed(n + d)
    s = torch.rand(n, *shape, generator=g)
    s.view(-1)[:3] = torch.tensor([0.0, 1.0, 1e-9])  # the clamps
    r = (s + 0.3 * torch.randn(s.shape, generator=g)).clamp(0, 1)
    mu, lv = torch.randn(n, d, generator=g), 0.4 * torch.randn(n, d, generator=g)
    q = 2 * torch.randn(n, k, generator=g)
    q[0, :2] = q[0, :2].max()  # a tie for the top class
    for re, cmp, soft in itertools.product(("mse", "bernoulli_kl"), ("<=", "<"), (False, True)):
        _assert_picker_paths_agree(s, r, recon_error=re)  # no gate: scores only
        base = ops.picker_weights(s, r, q, mu, lv, kl_weight=0.7, recon_error=re)
        kw = dict(iqa_logits=q, mu=mu, logvar=lv, kl_weight=0.7, recon_error=re,
                  isd_compare=cmp, soft=soft, temperature=0.05 if soft else 0.3,
                  isd_threshold=_midpoint(base.score, n // 2),
                  iqa_threshold=_midpoint(base.p_good, n // 3))
        for use_iqa, use_isd in ((True, True), (False, True), (True, False), (False, False)):
            _assert_picker_paths_agree(s, r, use_iqa=use_iqa, use_isd=use_isd, **kw)
        # no logits, no latent: the ISD gate alone on the reconstruction error
        _assert_picker_paths_agree(s, r, recon_error=re, isd_compare=cmp, soft=soft,
                                   isd_threshold=_midpoint(
                                       ops.picker_weights(s, r, recon_error=re).score, n // 2))


@pytest.mark.parametrize("recon_error", ["mse", "bernoulli_kl"])
def _interp_picker_kernel_threshold_tie(recon_error: str) -> None:
    s = torch.rand(3, 1, 9, 7, generator=torch.Generator().manual_seed(1))
    r = s.clone()
    r[2] = 1 - s[2]
    for cmp, expect in (("<=", [1.0, 1.0, 0.0]), ("<", [0.0, 0.0, 0.0])):
        got = ops.picker_weights(s, r, recon_error=recon_error, isd_threshold=0.0,
                                 isd_compare=cmp, backend="triton")
        assert got.score[:2].tolist() == [0.0, 0.0] and got.weights.tolist() == expect


@pytest.mark.parametrize("name", ["fundus-picker", "ultrasound-picker"])
def _interp_picker_kernel_on_shipped_assessors(name: str) -> None:
    """The shipped picker's own inputs (its VAE's reconstruction, its IQA logits) through the
    kernel: the same scores and decisions as the torch path, hard and soft."""
    from same_fast.picker import load_picker

    picker = load_picker(name)
    g = torch.Generator().manual_seed(2)
    c = picker.iqa.in_channels
    img = torch.rand(5, c, 64, 72, generator=g)
    maps = torch.sigmoid(4 * F.avg_pool2d(torch.randn(5, 1, 70, 78, generator=g), 7, 1))
    with torch.no_grad():
        logits = picker.iqa(img)
        x, recon, mu, lv = picker.isd.reconstruct_mean(maps)
    common = dict(kl_weight=picker.isd.beta, recon_error="bernoulli_kl", good_class=0)
    base = ops.picker_weights(x, recon, logits, mu, lv, **common, backend="torch")
    for soft in (False, True):
        rules = [picker.rule(), {**picker.rule(), "isd_threshold": _midpoint(base.score, 2),
                                 "iqa_threshold": _midpoint(base.p_good, 2)}]
        for rule in rules:
            rule = {**rule, "soft": soft}
            _assert_picker_paths_agree(x, recon, iqa_logits=logits, mu=mu, logvar=lv, **common,
                                       **rule)


def _interp_color_kernels() -> None:
    x = torch.rand(2, 3, 17, 31, generator=torch.Generator().manual_seed(4))
    x[0, :, 0, 0] = 0.0
    x[0, :, 0, 1] = 0.5
    x[1, 1, 2, 2] = x[1, 0, 2, 2]
    torch.testing.assert_close(ops.rgb_to_hsv(x, backend="triton"),
                               ops.rgb_to_hsv(x, backend="torch"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ops.rgb_to_lab(x, backend="triton"),
                               ops.rgb_to_lab(x, backend="torch"), rtol=1e-4, atol=1e-4)


def _host_explicit_triton_fails_without_interpreter() -> None:
    from same_fast.errors import DependencyError

    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with pytest.raises(DependencyError):
            ops.ssim(torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11), backend="triton")
        # The automatic choice falls back to torch quietly on CPU tensors.
        ops.ssim(torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11), backend="auto")
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


# --- code generation for a real GPU target -----------------------------------------------------

def _compile(fn, signature: dict, constexprs: dict, arch: int = 90):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def _cuda_backend_present() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.slow
@pytest.mark.skipif(not _cuda_backend_present(), reason="triton build without the NVIDIA backend")
def _host_kernels_compile_for_cuda(tmp_path, monkeypatch) -> None:
    # A fresh cache so the compiler really runs (a warm ~/.triton cache would hide errors).
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    from same_fast.kernels import color, ema, picker, ssim

    k = {"ema": ema, "ssim": ssim, "picker": picker, "color": color}
    f32, i32 = "*fp32", "i32"
    cases = [
        (k["ema"].ema_flat_kernel,
         {"t_ptr": f32, "s_ptr": f32, "n": i32, "weight": "fp32", "BLOCK": "constexpr"},
         {"BLOCK": 1024}),
        (k["ema"].ema_multi_kernel,
         {"t_addr_ptr": "*i64", "s_addr_ptr": "*i64", "numel_ptr": "*i64",
          "task_tensor_ptr": "*i64", "task_block_ptr": "*i64", "weight": "fp32",
          "DTYPE": "constexpr", "BLOCK": "constexpr"},
         {"DTYPE": triton.language.bfloat16, "BLOCK": 1024}),
        (k["ssim"].ssim_fwd_kernel,
         {"x_ptr": "*fp16", "y_ptr": "*fp16", "g_ptr": f32, "part_ptr": f32, "l1_ptr": f32,
          "d_ptr": f32,
          "H": i32, "W": i32, "HV": i32, "WV": i32, "C1": "fp32", "C2": "fp32",
          "NEED_GRAD": "constexpr", "WIN": "constexpr", "BH": "constexpr",
          "BW": "constexpr"},
         # WIN=3: the same code paths as 11, a fraction of the unrolled code to compile.
         {"NEED_GRAD": True, "WIN": 3, "BH": 16, "BW": 32}),
        (k["ssim"].ssim_bwd_kernel,
         {"x_ptr": f32, "y_ptr": f32, "g_ptr": f32, "d_ptr": f32, "scale_ptr": f32,
          "l1_scale_ptr": f32,
          "gx_ptr": f32, "gy_ptr": f32, "H": i32, "W": i32, "HV": i32, "WV": i32,
          "NEED_X": "constexpr", "NEED_Y": "constexpr", "WIN": "constexpr",
          "BH": "constexpr", "BW": "constexpr"},
         {"NEED_X": True, "NEED_Y": True, "WIN": 3, "BH": 16, "BW": 32}),
        # both reconstruction errors, both comparisons, hard and soft: every branch compiles
        *[(k["picker"].picker_kernel,
           {"s_ptr": f32, "r_ptr": f32, "mu_ptr": f32, "lv_ptr": f32, "q_ptr": "*fp16",
            "out_ptr": f32, "L": i32, "D": i32, "K": i32, "KL_W": "fp32", "GOOD": i32,
            "ISD_THR": "fp32", "ISD_WIDTH": "fp32", "IQA_THR": "fp32", "IQA_WIDTH": "fp32",
            "HAS_KL": "constexpr", "HAS_IQA": "constexpr", "BERNOULLI": "constexpr",
            "ISD_GATE": "constexpr", "STRICT": "constexpr", "IQA_GATE": "constexpr",
            "SOFT": "constexpr", "BLOCK": "constexpr", "BLOCK_D": "constexpr",
            "BLOCK_K": "constexpr"},
           {"HAS_KL": True, "HAS_IQA": True, "BERNOULLI": bern, "ISD_GATE": True,
            "STRICT": strict, "IQA_GATE": True, "SOFT": soft, "BLOCK": 1024, "BLOCK_D": 64,
            "BLOCK_K": 4})
          for bern, strict, soft in ((True, True, False), (False, False, True))],
        (k["color"].rgb_to_hsv_kernel,
         {"x_ptr": f32, "out_ptr": f32, "total": i32, "HW": i32, "BLOCK": "constexpr"},
         {"BLOCK": 1024}),
        (k["color"].rgb_to_lab_kernel,
         {"x_ptr": "*bf16", "out_ptr": f32, "total": i32, "HW": i32, "BLOCK": "constexpr"},
         {"BLOCK": 1024}),
    ]
    for fn, sig, const in cases:
        compiled = _compile(fn, sig, const)
        assert "ptx" in compiled.asm and fn.__name__ in compiled.asm["ptx"], fn.__name__


if CHILD:
    test_ema_kernels = _interp_ema_kernels
    test_ssim_kernels_value_and_gradient = _interp_ssim_kernels_value_and_gradient
    test_picker_kernel = _interp_picker_kernel
    test_picker_kernel_threshold_tie = _interp_picker_kernel_threshold_tie
    test_picker_kernel_on_shipped_assessors = _interp_picker_kernel_on_shipped_assessors
    test_l1_ssim_fused = _interp_l1_ssim_fused
    test_color_kernels = _interp_color_kernels
else:
    test_interpreter_cases_in_child_process = _host_interpreter_cases_in_child_process
    test_explicit_triton_fails_without_interpreter = _host_explicit_triton_fails_without_interpreter
    test_kernels_compile_for_cuda = _host_kernels_compile_for_cuda
