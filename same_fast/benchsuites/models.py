"""``same-fast bench --suite models``: ms per 512x512 frame of each SAMENet shape, interleaved.

Cases per network: torch eager with the image decoder only (inference), torch eager with both
decoders (what training and adaptation run), and ONNX Runtime CPU (image only, through
``same_fast.engine``). Reported: median ms per frame, parameters, and ratios to ``lite`` eager
(image only) and to ``paper`` eager measured in the same rounds. Networks: the ``paper`` preset,
the shipped ``lite`` preset, ``lite`` with whole-image context, and the other ``lite``
candidates that were tried when choosing it.

Options (``--set KEY=VALUE``): ``size=512``, ``batch=1``, ``threads=N`` (torch and ORT threads;
default: torch's current setting), ``candidates=a,b`` (subset by name), ``onnx=0`` (skip ORT),
``quality=STEPS`` (also train every lite candidate for STEPS steps on HRF+FIVES at 128 px,
same seed and data, and report held-out SSIM/PSNR against the degraded input; needs the data
folder; default 0 = off). ``--quick``: 3 repeats, no ORT for ``paper``.
Weights are random for speed (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch

from same_fast.benchsuites.common import environment, interleaved

# name -> SAMENet kwargs. "lite" is the preset as shipped; the others are the shapes tried.
CANDIDATES: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper"},
    "lite": {"preset": "lite"},
    "lite-context": {"preset": "lite", "context": True},
    "pix2pix-16-instance": {"preset": "lite", "stem": 1, "base": 16, "levels": 5,
                            "norm": "instance"},
    "s2d-16-group": {"preset": "lite", "norm": "group"},
    "s2d-24": {"preset": "lite", "base": 24, "max_channels": 192},
    "s2d4-32-l4": {"preset": "lite", "stem": 4, "base": 32, "levels": 4},
}


def _build(channels: int, kw: dict[str, Any]) -> torch.nn.Module:
    from same_fast.nn import SAMENet

    kw = dict(kw)
    return SAMENet(channels, kw.pop("preset"), **kw).eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from same_fast.nn import count_parameters

    opts = getattr(args, "options", {}) or {}
    size = int(opts.get("size", 512))
    batch = int(opts.get("batch", 1))
    threads = int(opts.get("threads", 0))
    if threads:
        torch.set_num_threads(threads)
    use_onnx = opts.get("onnx", "1") not in ("0", "false", "no")
    names = [n for n in opts.get("candidates", ",".join(CANDIDATES)).split(",") if n]
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        from same_fast.errors import InputError

        raise InputError(f"unknown candidate(s) {sorted(unknown)} (known: {', '.join(CANDIDATES)})")
    repeats = args.repeats or (3 if args.quick else 7)
    x01 = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x01 * 2 - 1
    cases = {}
    params = {}
    cache = tempfile.mkdtemp(prefix="same-fast-bench-models-")
    for name in names:
        m = _build(3, CANDIDATES[name])
        params[name] = count_parameters(m)

        def eager_img(m=m):
            with torch.no_grad():
                return m(x, structure=False)

        def eager_full(m=m):
            with torch.no_grad():
                return m(x)

        cases[f"{name}/eager-image"] = eager_img
        cases[f"{name}/eager-both"] = eager_full
        if use_onnx and not (args.quick and name == "paper"):
            from same_fast.engine import create_backend

            be = create_backend("onnxruntime", m, cache_dir=cache, threads=threads)
            cases[f"{name}/onnxruntime-image"] = (lambda be=be: be.enhance(x01))
    timings = interleaved(cases, repeats=repeats, warmup=1)
    ms = {k: 1000 * v["median_s"] / batch for k, v in timings.items()}
    base_lite = ms.get("lite/eager-image")
    base_paper = ms.get("paper/eager-image")
    rows = []
    for name in names:
        row: dict[str, Any] = {"network": name, "params": params[name], **CANDIDATES[name]}
        for kind in ("eager-image", "eager-both", "onnxruntime-image"):
            v = ms.get(f"{name}/{kind}")
            if v is None:
                continue
            row[f"{kind}_ms"] = round(v, 2)
            if base_lite:
                row[f"{kind}_vs_lite_eager"] = round(v / base_lite, 3)
            if base_paper:
                row[f"{kind}_vs_paper_eager"] = round(v / base_paper, 3)
        rows.append(row)
    result: dict[str, Any] = {
        "suite": "models", "environment": environment(), "frame": f"{size}x{size} RGB",
        "batch": batch, "repeats": repeats, "rows": rows,
        "timings": {k: {kk: vv for kk, vv in v.items() if kk != "samples_s"}
                    for k, v in timings.items()},
    }
    steps = int(opts.get("quality", 0))
    if steps:
        result["quality"] = _quality([n for n in names if n != "paper"], steps)
    result["summary"] = {"frame": result["frame"], "batch": batch, "rows": [
        {k: v for k, v in r.items() if k.endswith("_ms") or k in ("network", "params")
         or k.endswith("vs_lite_eager")} for r in rows]}
    if "quality" in result:
        result["summary"]["quality"] = result["quality"]
    return result


def _quality(names: list[str], steps: int) -> dict[str, Any]:
    """Equal-budget source training of each candidate; held-out SSIM/PSNR (paper protocol)."""
    import json
    from pathlib import Path

    from same_fast.train import source

    out: dict[str, Any] = {"steps": steps, "data": "HRF,FIVES", "size": 128, "batch": 4}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            kw = dict(CANDIDATES[name])
            preset = kw.pop("preset")
            cfg = source.SourceConfig(data="HRF,FIVES", out=str(Path(tmp) / f"{name}.safetensors"),
                                      modality="fundus", preset=preset, net=kw, steps=steps,
                                      batch=4, size=128, load_size=280, lr=1e-3, holdout=0.1,
                                      val_every=steps, progress=False)
            source.train_source(cfg)
            rec = json.loads((Path(tmp) / f"{name}.log.jsonl").read_text().splitlines()[-1])
            out[name] = {k: round(v, 4) for k, v in rec.items() if k.startswith("val_")}
    return out
