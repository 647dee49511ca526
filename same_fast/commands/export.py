"""``same-fast export -m MODEL --format onnx|tensorrt|triton -o PATH``."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from same_fast.errors import InputError

HELP = "export a model (ONNX, TensorRT plan, Triton Inference Server repository)"


@dataclass
class ExportArgs:
    """One field per flag of ``same-fast export``."""

    model: str
    format: str
    output: str
    opset: int = 18
    dynamic: bool = True
    structure: bool = False
    check: bool = True
    dtype: str = "fp32"
    max_hw: str = "1024x1024"
    opt_hw: str = "512x512"
    max_batch: int = 16
    model_name: str = "same_enhancer"
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "gpu"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="shipped model name or checkpoint path")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt", "triton"])
    p.add_argument("-o", "--output", required=True,
                   help="file (onnx, tensorrt) or model repository folder (triton)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch/height/width (default on)")
    p.add_argument("--structure", action="store_true",
                   help="also output the structure logits (larger graph)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the ONNX Runtime vs torch comparison")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="TensorRT precision")
    p.add_argument("--max-hw", default="1024x1024", help="TensorRT profile maximum HxW")
    p.add_argument("--opt-hw", default="512x512", help="TensorRT profile optimum HxW")
    p.add_argument("--max-batch", type=int, default=16, help="TensorRT/Triton maximum batch")
    p.add_argument("--model-name", default="same_enhancer", help="Triton model name")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="Triton dynamic batching maximum queue delay (microseconds)")
    p.add_argument("--instances", type=int, default=1, help="Triton instance count")
    p.add_argument("--kind", choices=["gpu", "cpu"], default="gpu", help="Triton instance kind")


def run(args: argparse.Namespace) -> int:
    a = ExportArgs(**{k: getattr(args, k) for k in ExportArgs.__dataclass_fields__})
    summary = export(a)
    print(json.dumps(summary, indent=2))
    return 0


def export(a: ExportArgs) -> dict:
    """Do the export described by ``a``; returns a JSON-able summary (paths, checks)."""
    from same_fast.engine.base import model_channels, model_multiple
    from same_fast.engine.onnx_export import ExportConfig, check_against_torch, export_onnx
    from same_fast.engine.select import load_any

    if a.opset < 13:
        raise InputError("--opset must be 13 or newer")
    model, meta = load_any(a.model)
    channels, multiple = model_channels(model, meta) or 3, model_multiple(model)
    out = Path(a.output)
    cfg = ExportConfig(opset=a.opset, dynamic=a.dynamic, structure=a.structure)
    summary: dict = {"model": a.model, "format": a.format, "channels": channels,
                     "multiple": multiple, "opset": a.opset, "dynamic": a.dynamic}
    if a.format == "tensorrt":
        from same_fast.engine.tensorrt import build_engine, parse_hw, require_tensorrt, shape_profile

        require_tensorrt("a TensorRT plan export")  # fail before the export work when TensorRT is absent
        data = export_onnx(model, None, cfg)
        prof = shape_profile(channels, multiple, opt_hw=parse_hw(a.opt_hw), max_hw=parse_hw(a.max_hw),
                             max_batch=a.max_batch)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(build_engine(data, prof, a.dtype))
        summary.update(path=str(out), profile={"min": prof.min, "opt": prof.opt, "max": prof.max},
                       dtype=a.dtype, refit=True)
        return summary
    if a.format == "onnx":
        data = export_onnx(model, out, cfg)
        summary["path"] = str(out)
    else:
        from same_fast.engine.triton import TritonConfig, write_triton_repository

        data = export_onnx(model, None, cfg)
        tcfg = TritonConfig(model_name=a.model_name, max_batch_size=a.max_batch,
                            max_queue_delay_us=a.max_queue_delay_us,
                            instance_count=a.instances,
                            instance_kind="KIND_GPU" if a.kind == "gpu" else "KIND_CPU",
                            structure=a.structure)
        model_dir = write_triton_repository(out, data, channels, multiple, tcfg)
        summary.update(path=str(model_dir), config=str(model_dir / "config.pbtxt"))
    summary["bytes"] = len(data)
    if a.check:
        summary["max_abs_diff_vs_torch"] = check_against_torch(model, data)
    return summary
