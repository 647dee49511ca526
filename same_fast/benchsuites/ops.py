"""``same-fast bench --suite ops``: the fused ops and the adaptation step against their peers.

Three sections, each timed interleaved in one run (medians; ratios are ours / peer, so < 1 means
ours is faster):
- ``ssim``: SSIM loss forward + backward (gradient for x) of ours vs pytorch-msssim and kornia
  (and the plain torch reference) on 4x3x256x256 and 1x1x1024x1024;
- ``ema``: the teacher EMA on the ``lite`` and ``paper`` SAMENet parameters: ours (one pass over
  flat storage) vs the reference code's habit (clone every parameter, Python loop) vs
  ``torch._foreach_lerp_``; achieved GB/s counting three passes (read teacher, read student, write
  teacher) against this machine's copy bandwidth (``copy_`` of a buffer of the same size, two
  passes);
- ``step``: one whole adaptation step (ours with the shipped picker of the network's modality,
  ``fundus-picker`` for RGB, ours with only the picker's colour inputs of :func:`device_picker`,
  ours without a picker, optionally compiled; and a reference-style step) as a multiple of one
  plain inference of the same batch by the same network: both the served inference (image
  decoder only) and the forward with both decoders that the step runs.

Options (``--set KEY=VALUE``): ``sections=ssim,ema,step``; ``threads=N`` (torch intra-op
threads); ``step_preset=lite|paper``; ``step_batch=4``; ``step_size=256``; ``compile=0|1`` (add a
torch.compile'd step); ``ema_presets=lite,paper``; ``ssim_shapes=4x3x256x256,1x1x1024x1024``.
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from same_fast import ops
from same_fast.adapt.step import AdaptStep, StepConfig
from same_fast.benchsuites.common import environment, interleaved


def _device(args: argparse.Namespace) -> torch.device:
    want = getattr(args, "device", "auto") or "auto"
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def _sync(dev: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if dev.type == "cuda" else None


def _ms(r: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: round(v["median_s"] * 1e3, 3) for k, v in r.items()}


# --- SSIM ---------------------------------------------------------------------------------------

def ssim_cases(shape: tuple[int, int, int, int], dev: torch.device
               ) -> dict[str, Callable[[], Any]]:
    """Forward + backward of ``1 - SSIM`` (gradient for x) by each implementation."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(dev).requires_grad_()
    y = (x.detach() + 0.1 * torch.randn(shape, generator=g).to(dev)).clamp(0, 1)

    def run(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def fn() -> None:
            x.grad = None
            loss_fn().backward()
        return fn

    cases: dict[str, Callable[[], Any]] = {
        "ours": run(lambda: ops.ssim_loss(x, y)),
        "torch_reference": run(lambda: 1 - ops.ssim_reference(x, y).mean()),
    }
    try:
        from pytorch_msssim import ssim as pm_ssim

        cases["pytorch_msssim"] = run(lambda: 1 - pm_ssim(x, y, data_range=1.0))
    except ImportError:
        pass
    try:
        import kornia

        cases["kornia"] = run(lambda: kornia.losses.ssim_loss(x, y, 11, padding="valid"))
    except ImportError:
        pass
    return cases


def bench_ssim(shapes: list[tuple[int, int, int, int]], dev: torch.device, repeats: int
               ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in shapes:
        r = interleaved(ssim_cases(shape, dev), repeats=repeats, warmup=2, sync=_sync(dev))
        ms = _ms(r)
        entry: dict[str, Any] = {"median_ms": ms}
        for peer in ("pytorch_msssim", "kornia", "torch_reference"):
            if peer in ms:
                entry[f"ours_over_{peer}"] = round(ms["ours"] / ms[peer], 3)
        out["x".join(map(str, shape))] = entry
    return out


# --- EMA ----------------------------------------------------------------------------------------

def ema_reference_style(teacher: list[torch.Tensor], student: list[torch.Tensor],
                        decay: float) -> None:
    """The reference code's habit: clone every student parameter, loop in Python, new tensors."""
    with torch.no_grad():
        for t, s in zip(teacher, student, strict=True):
            s_copy = s.detach().clone()
            t.copy_(t.clone() * decay + s_copy * (1.0 - decay))


def _samenet(preset: str, dev: torch.device, seed: int = 0) -> nn.Module:
    from same_fast.nn import SAMENet

    torch.manual_seed(seed)
    return SAMENet(3, preset).to(dev)


def _foreach_ema(t_list: list[torch.Tensor], s_list: list[torch.Tensor], weight: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(t_list, s_list, weight)


def bench_ema_preset(preset: str, dev: torch.device, repeats: int) -> dict[str, Any]:
    """EMA implementations on one SAMENet preset's parameters (teacher and student)."""
    student, teacher = _samenet(preset, dev, 0), _samenet(preset, dev, 1)
    flat_s, flat_t = ops.flatten_parameters_(student), ops.flatten_parameters_(teacher)
    t_list, s_list = list(teacher.parameters()), list(student.parameters())
    numel = flat_t.numel()
    nbytes = numel * flat_t.element_size()
    src, dst = torch.empty_like(flat_t).normal_(), torch.empty_like(flat_t)
    cases = {
        "ours": lambda: ops.ema_(flat_t, flat_s, 0.995),
        "foreach_lerp": lambda: _foreach_ema(t_list, s_list, 0.005),
        "reference_loop": lambda: ema_reference_style(t_list, s_list, 0.995),
        "copy": lambda: dst.copy_(src),
    }
    r = interleaved(cases, repeats=repeats, warmup=2, sync=_sync(dev))
    ms = _ms(r)
    copy_gbs = 2 * nbytes / r["copy"]["median_s"] / 1e9
    gbs = {k: round(3 * nbytes / r[k]["median_s"] / 1e9, 2)
           for k in ("ours", "foreach_lerp", "reference_loop")}
    return {
        "parameters": numel, "tensors": len(t_list), "median_ms": ms,
        "gb_per_s": gbs, "copy_gb_per_s": round(copy_gbs, 2),
        "ours_fraction_of_copy_bandwidth": round(gbs["ours"] / copy_gbs, 3),
        "speedup_vs_reference_loop": round(ms["reference_loop"] / ms["ours"], 2),
        "speedup_vs_foreach_lerp": round(ms["foreach_lerp"] / ms["ours"], 2),
    }


def bench_ema(presets: list[str], dev: torch.device, repeats: int) -> dict[str, Any]:
    return {p: bench_ema_preset(p, dev, repeats) for p in presets}


# --- the adaptation step ------------------------------------------------------------------------

def device_picker(y_t: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
    """A picker's input work done on the device: colour spaces and per-sample scores.

    Without trained assessors it accepts every sample; it stands for the cost of the inputs.
    """
    x01 = (y_t + 1.0) * 0.5
    hsv, lab = ops.rgb_to_hsv(x01), ops.rgb_to_lab(x01)
    p = torch.sigmoid(s_t)
    scores = ops.picker_weights(p, p)
    return scores.weights * (hsv[:, 2].mean((1, 2)) >= 0).float() * (lab[:, 0].mean((1, 2)) > -1)


def reference_style_step(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer,
                         x: torch.Tensor, decay: float = 0.995) -> dict[str, float]:
    """One step the way the reference code does it, for comparison only.

    Teacher gradients computed and thrown away; picker inputs through the CPU and PIL per image;
    boolean indexing of accepted samples; ``.item()`` for logging; EMA cloning every parameter
    in a Python loop.
    """
    from PIL import Image
    from skimage.color import rgb2lab

    teacher.train()
    student.train()
    y_t, s_t = teacher(x)  # with autograd: the reference never wraps this in no_grad
    y_s, s_s = student(x)
    keep = []
    for img in y_t:  # picker inputs via the CPU and PIL, one image at a time
        arr = ((img.detach().cpu().permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
        pil = Image.fromarray(arr.astype(np.uint8))
        hsv = np.asarray(pil.convert("HSV"), dtype=np.float32) / 255.0
        lab = rgb2lab(np.asarray(pil))
        keep.append(bool(hsv[..., 2].mean() >= 0 and lab[..., 0].mean() > -1))
    mask = torch.tensor(keep, device=x.device)
    y_s_k, y_t_k = y_s[mask], y_t[mask]  # boolean indexing: a host sync, a copy
    l1 = F.l1_loss(y_s_k, y_t_k)
    p = torch.sigmoid(s_s)
    entropy = -(p * torch.log2(p + 1e-8) + (1 - p) * torch.log2(1 - p + 1e-8)).mean()
    loss = 0.9 * l1 + entropy
    optimizer.zero_grad()
    teacher.zero_grad()
    loss.backward()
    optimizer.step()
    ema_reference_style(list(teacher.parameters()), list(student.parameters()), decay)
    return {"loss": loss.item(), "l1": l1.item(), "entropy": entropy.item()}


def shipped_picker(channels: int, dev: torch.device) -> Callable:
    """The product's picker for this many channels (fundus-picker / ultrasound-picker)."""
    from same_fast.picker import load_picker

    return load_picker("fundus-picker" if channels == 3 else "ultrasound-picker", device=dev)


def bench_step(preset: str, batch: int, size: int, dev: torch.device, repeats: int,
               compiled: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(dev)
    base = _samenet(preset, dev)
    plain_model = copy.deepcopy(base).eval()

    def plain() -> None:  # what serving does: the image decoder only
        with torch.inference_mode():
            plain_model(x, structure=False)

    def forward_both() -> None:  # the same forward the step runs twice (both decoders)
        with torch.inference_mode():
            plain_model(x)

    picker = shipped_picker(x.shape[1], dev)
    s_ours, t_ours = copy.deepcopy(base), copy.deepcopy(base)
    step = AdaptStep(s_ours, t_ours, StepConfig(), picker=picker)
    s_in, t_in = copy.deepcopy(base), copy.deepcopy(base)
    step_in = AdaptStep(s_in, t_in, StepConfig(), picker=device_picker)
    s_np, t_np = copy.deepcopy(base), copy.deepcopy(base)
    step_np = AdaptStep(s_np, t_np, StepConfig(), picker=None)
    s_ref, t_ref = copy.deepcopy(base), copy.deepcopy(base)
    opt_ref = torch.optim.Adam(s_ref.parameters(), lr=2e-4, foreach=False)
    cases: dict[str, Callable[[], Any]] = {
        "plain_inference": plain,
        "inference_both_outputs": forward_both,
        "ours": lambda: step(x),
        "ours_picker_inputs_only": lambda: step_in(x),
        "ours_no_picker": lambda: step_np(x),
        "reference_style": lambda: reference_style_step(s_ref, t_ref, opt_ref, x),
    }
    if compiled:
        s_c, t_c = copy.deepcopy(base), copy.deepcopy(base)
        step_c = AdaptStep(s_c, t_c, StepConfig(compile=True), picker=picker)
        cases["ours_compiled"] = lambda: step_c(x)
    r = interleaved(cases, repeats=repeats, warmup=2, sync=_sync(dev))
    ms = _ms(r)
    steps = [k for k in ms if k not in ("plain_inference", "inference_both_outputs")]
    return {"preset": preset, "batch": batch, "size": size, "threads": torch.get_num_threads(),
            "median_ms": ms,
            "multiple_of_plain_inference": {
                k: round(ms[k] / ms["plain_inference"], 2) for k in steps},
            "multiple_of_inference_both_outputs": {
                k: round(ms[k] / ms["inference_both_outputs"], 2) for k in steps},
            "ours_speedup_vs_reference_style": round(ms["reference_style"] / ms["ours"], 2)}


# --- entry point --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, str] = dict(getattr(args, "options", {}) or {})
    quick = bool(getattr(args, "quick", False))
    if "threads" in opts:
        torch.set_num_threads(int(opts["threads"]))
    dev = _device(args)
    repeats = args.repeats or (3 if quick else 9)
    sections = opts.get("sections", "ssim,ema,step").split(",")
    result: dict[str, Any] = {"suite": "ops", "environment": environment(),
                              "device": str(dev), "repeats": repeats, "options": opts,
                              "note": "interleaved medians; ratios ours/peer (<1 = ours faster)"}
    summary: dict[str, Any] = {}
    if "ssim" in sections:
        if "ssim_shapes" in opts:
            shapes = [tuple(int(v) for v in sh.split("x")) for sh in opts["ssim_shapes"].split(",")]
        else:
            shapes = ([(2, 3, 128, 128), (1, 1, 256, 256)] if quick
                      else [(4, 3, 256, 256), (1, 1, 1024, 1024)])
        result["ssim"] = bench_ssim(shapes, dev, repeats)
        summary["ssim_ours_over_pytorch_msssim"] = {
            k: v.get("ours_over_pytorch_msssim") for k, v in result["ssim"].items()}
        summary["ssim_ours_over_kornia"] = {
            k: v.get("ours_over_kornia") for k, v in result["ssim"].items()}
    if "ema" in sections:
        presets = opts.get("ema_presets", "lite" if quick else "lite,paper").split(",")
        result["ema"] = bench_ema(presets, dev, repeats)
        summary["ema"] = {p: {k: v[k] for k in ("speedup_vs_reference_loop",
                                                "speedup_vs_foreach_lerp",
                                                "ours_fraction_of_copy_bandwidth")}
                          for p, v in result["ema"].items()}
    if "step" in sections:
        preset = opts.get("step_preset", "lite")
        batch = int(opts.get("step_batch", 2 if quick else 4))
        size = int(opts.get("step_size", 128 if quick else 256))
        compiled = opts.get("compile", "0") not in ("0", "", "false", "no")
        result["step"] = bench_step(preset, batch, size, dev, repeats, compiled)
        summary["step_multiple_of_plain_inference"] = result["step"][
            "multiple_of_plain_inference"]
        summary["step_multiple_of_inference_both_outputs"] = result["step"][
            "multiple_of_inference_both_outputs"]
        summary["step_ours_speedup_vs_reference_style"] = result["step"][
            "ours_speedup_vs_reference_style"]
    result["summary"] = summary
    return result
