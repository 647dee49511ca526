"""TensorRT backend: an engine built from our ONNX graph with refit enabled (NVIDIA GPUs only).

Written against TensorRT 10's documented Python API (``trt.Builder``, ``trt.OnnxParser``,
``BuilderFlag.REFIT``, optimisation profiles, ``execute_async_v3``, ``trt.Refitter`` with
``set_named_weights``). TensorRT cannot be installed on our CI machines; everything around it
(the ONNX graph it parses, ``shape_profile``, ``refit_weights``' name mapping) is tested there,
and ``benchmarks/gpu_check.py`` exercises the rest on a GPU.

Refit: the ONNX parser names every weight after its ONNX initializer, and
``onnx_export.initializer_map`` maps our ``state_dict`` names onto those initializers, so adapted
weights refit the engine in place (TensorRT re-applies its own fusions, e.g. BatchNorm into
convolution, during refit) instead of a rebuild that takes minutes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from same_fast.engine.base import Backend, BackendConfig, model_channels, model_multiple
from same_fast.engine.onnx_export import INPUT, OUTPUT, ExportConfig, cpu_eval_copy, initializer_map
from same_fast.engine.ort_backend import cached_onnx
from same_fast.errors import DependencyError, InputError, missing_dependency


def require_tensorrt(feature: str = "the tensorrt backend") -> Any:
    """The ``tensorrt`` module, or a DependencyError naming ``feature`` when it is absent or
    PyPI's placeholder."""
    try:
        import tensorrt as trt
    except ImportError:
        raise missing_dependency("tensorrt", feature, "tensorrt") from None
    if not hasattr(trt, "Builder"):  # PyPI's placeholder package has no API
        raise DependencyError(f"{feature} needs a real TensorRT install "
                              "(the 'tensorrt' package found is a placeholder)")
    return trt


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile for ``input``: min/opt/max ``(N, C, H, W)``."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in
                                       zip(self.min, shape, self.max, strict=True))


def shape_profile(channels: int, multiple: int, opt_hw: tuple[int, int] = (512, 512),
                  max_hw: tuple[int, int] = (1024, 1024), min_hw: tuple[int, int] | None = None,
                  opt_batch: int = 4, max_batch: int = 16) -> ShapeProfile:
    """A dynamic-shape profile whose H and W bounds are multiples of ``multiple``.

    ``min`` H/W default to one ``multiple`` (the smallest legal input); ``opt`` is where
    TensorRT tunes its tactics (the serving resolution); values are rounded up to multiples
    and ordered min <= opt <= max, as TensorRT requires.
    """
    if channels <= 0 or multiple <= 0 or max_batch < 1:
        raise InputError("shape_profile: channels, multiple and max_batch must be positive")

    def up(v: int) -> int:
        return max(multiple, -(-int(v) // multiple) * multiple)

    mn = tuple(up(v) for v in (min_hw or (multiple, multiple)))
    mx = tuple(up(v) for v in max_hw)
    op = tuple(min(max(up(v), lo), hi) for v, lo, hi in zip(opt_hw, mn, mx, strict=True))
    if any(a > b for a, b in zip(mn, mx, strict=True)):
        raise InputError(f"shape_profile: min {mn} exceeds max {mx}")
    ob = min(max(1, opt_batch), max_batch)
    return ShapeProfile((1, channels, mn[0], mn[1]), (ob, channels, op[0], op[1]),
                        (max_batch, channels, mx[0], mx[1]))


def build_engine(onnx_bytes: bytes, profile: ShapeProfile, dtype: str = "fp32",
                 workspace_gib: float = 2.0, refit: bool = True) -> bytes:
    """Serialized TensorRT plan from ONNX bytes, with REFIT and the optional fp16/bf16 flag."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse the ONNX graph: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if dtype == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif dtype == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif dtype != "fp32":
        raise InputError(f"unknown dtype '{dtype}' (fp32, fp16 or bf16)")
    prof = builder.create_optimization_profile()
    prof.set_shape(INPUT, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(prof)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError("TensorRT failed to build the engine (see the TensorRT log above)")
    return bytes(plan)


def refit_weights(mapping: Mapping[str, str], state: Mapping[str, torch.Tensor]
                  ) -> dict[str, np.ndarray]:
    """``{onnx initializer name: fp32 array}`` for the refitter, from our named tensors.

    Tensors the graph does not use are skipped; the arrays are contiguous host copies (the
    refitter copies them during ``refit_cuda_engine``).
    """
    out = {}
    for ours, v in state.items():
        name = mapping.get(ours)
        if name is not None:
            out[name] = np.ascontiguousarray(v.detach().to("cpu", torch.float32).numpy())
    return out


class TensorRTBackend(Backend):
    """TensorRT engine on one CUDA device; ``update_weights`` refits in place.

    Options: ``trt_max_hw`` (e.g. "1024x1024"), ``trt_opt_hw``, ``trt_max_batch`` (16),
    ``trt_opt_batch`` (4). ``config.dtype``: fp32 (default), fp16 or bf16 (tolerance against
    torch fp32 stated in benchmarks/gpu_check.py's JSON). Plans are cached in ``cache_dir``.
    """

    name = "tensorrt"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None) -> None:
        super().__init__(model, metadata, config)
        trt = require_tensorrt()
        if self.device.type != "cuda":
            raise InputError("the tensorrt backend runs on CUDA devices only (--device cuda)")
        self._model = cpu_eval_copy(model)
        onnx = __import__("onnx")
        data = cached_onnx(self._model, ExportConfig(), self.config.cache_dir)
        graph = onnx.load_from_string(data)
        self._map = initializer_map(self._model, graph)
        opts = self.config.options
        self.profile = shape_profile(
            model_channels(self._model) or 3, model_multiple(self._model),
            opt_hw=parse_hw(opts.get("trt_opt_hw", "512x512")),
            max_hw=parse_hw(opts.get("trt_max_hw", "1024x1024")),
            opt_batch=int(opts.get("trt_opt_batch", 4)),
            max_batch=int(opts.get("trt_max_batch", 16)))
        plan = self._cached_plan(data)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise InputError("TensorRT could not deserialize the engine plan")
        self.context = self.engine.create_execution_context()
        # The ONNX carries the initial (export-time) weights; refit to the current ones now.
        self._refit(self._model.state_dict())

    def _cached_plan(self, onnx_bytes: bytes) -> bytes:
        import hashlib

        key = hashlib.sha256(onnx_bytes + repr((self.profile, self.config.dtype,
                                                torch.cuda.get_device_name(self.device)))
                             .encode()).hexdigest()[:16]
        path = Path(self.config.cache_dir) / "tensorrt" / f"{key}.plan" \
            if self.config.cache_dir else None
        if path is not None and path.is_file():
            return path.read_bytes()
        plan = build_engine(onnx_bytes, self.profile, self.config.dtype)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plan)
        return plan

    def _reference_module(self) -> nn.Module:
        return self._model

    def _forward(self, x01: torch.Tensor) -> torch.Tensor:
        shape = tuple(x01.shape)
        if not self.profile.contains(shape):
            raise InputError(f"batch {shape} is outside the TensorRT profile "
                             f"{self.profile.min}..{self.profile.max} (set trt_max_hw/batch)")
        x01 = x01.contiguous()
        y = torch.empty_like(x01)
        ctx = self.context
        ctx.set_input_shape(INPUT, shape)
        ctx.set_tensor_address(INPUT, x01.data_ptr())
        ctx.set_tensor_address(OUTPUT, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise InputError("TensorRT execution failed (see the TensorRT log)")
        return y

    def _refit(self, state: Mapping[str, torch.Tensor]) -> None:
        trt = require_tensorrt()
        refitter = trt.Refitter(self.engine, self._logger)
        arrays = refit_weights(self._map, state)
        for name, arr in arrays.items():
            if not refitter.set_named_weights(name, trt.Weights(arr)):
                raise InputError(f"TensorRT refit rejected weights '{name}' {arr.shape}")
        missing = refitter.get_missing_weights()
        if missing:
            raise InputError(f"TensorRT refit is missing weights {list(missing)[:3]}")
        torch.cuda.current_stream(self.device).synchronize()  # no refit under a running batch
        if not refitter.refit_cuda_engine():
            raise InputError("TensorRT refit failed (see the TensorRT log)")

    def _apply_weights(self, state: dict[str, torch.Tensor]) -> None:
        own = self._model.state_dict()
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to("cpu", own[k].dtype))
        with self._lock:
            # Weights fused with others (conv + BatchNorm) must be supplied together: give all.
            self._refit(own)

    def describe(self) -> dict[str, Any]:
        trt = require_tensorrt()
        return {**super().describe(), "tensorrt": trt.__version__,
                "profile": {"min": self.profile.min, "opt": self.profile.opt,
                            "max": self.profile.max}, "refittable": True}


def parse_hw(v: Any) -> tuple[int, int]:
    """``"512x768"``, ``"512"`` or ``(512, 768)`` -> ``(512, 768)``; InputError otherwise."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    s = str(v).lower()
    try:
        h, w = (s.split("x", 1) if "x" in s else (s, s))
        return int(h), int(w)
    except ValueError:
        raise InputError(f"expected HxW such as 512x512, got '{v}'") from None
