"""int8 static quantisation of the exported graph with ONNX Runtime (QDQ format, CPU).

Activations are calibrated on real-looking frames (MinMax over the calibration set), weights
per channel. Costs accuracy: the benchmark reports the SSIM of the int8 output against fp32.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from same_fast.engine.onnx_export import INPUT
from same_fast.errors import missing_dependency


def default_calibration(channels: int, multiple: int, size: int = 128, count: int = 8,
                        seed: int = 0) -> torch.Tensor:
    """``(count, channels, S, S)`` in [0, 1]: random crops of scikit-image's CC0 retina photo.

    A real fundus photograph gives activation ranges close to deployment; random noise would
    not. ``S`` is ``size`` rounded up to ``multiple``.
    """
    from skimage import data, transform

    img = data.retina().astype(np.float32) / 255.0  # (1411, 1411, 3)
    img = transform.resize(img, (512, 512), anti_aliasing=True)
    if channels == 1:
        img = img.mean(-1, keepdims=True)
    s = -(-size // multiple) * multiple
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        y, x = rng.integers(0, 512 - s + 1, 2)
        out.append(img[y:y + s, x:x + s].transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(out), dtype=np.float32))


class _Reader:
    def __init__(self, frames: torch.Tensor) -> None:
        self._it = iter([{INPUT: f[None].numpy()} for f in frames])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


def quantize_int8(onnx_bytes: bytes, calibration: torch.Tensor) -> bytes:
    """Static QDQ int8 model bytes from fp32 ``onnx_bytes``, calibrated on ``(N, C, H, W)``."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError:
        raise missing_dependency("onnxruntime", "int8 quantisation", "onnx") from None
    import logging

    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        # Constant-fold first (ORT basic level): the exporter computes some conv biases with
        # small subgraphs, and the quantiser needs every weight and bias as an initializer.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(pre)
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        try:
            root.setLevel(logging.ERROR)  # the quantiser logs per-node notes at WARNING
            quantize_static(str(pre), str(dst), _Reader(calibration.float().cpu()),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return dst.read_bytes()
