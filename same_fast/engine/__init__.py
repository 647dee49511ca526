"""Inference engine: backends behind one front, export for deployment, decoding, weight refresh.

- ``create_backend(name, model, device, dtype, cache_dir)`` -> ``Backend`` with
  ``enhance(batch (N, C, H, W) in [0, 1]) -> (N, C, H, W) in [0, 1]``,
  ``enhance_frames(uint8/uint16 (N, H, W, C)) -> same`` (what a stream serves; ONNX Runtime
  runs it as one graph call), ``update_weights(state_dict)`` and ``describe()``; names: auto,
  torch, compile, onnxruntime, tensorrt (``engine.select``).
- ``export_onnx`` (``engine.onnx_export``), ``write_triton_repository`` (``engine.triton``),
  TensorRT plans (``engine.tensorrt``).
- ``decode(data, path=...)`` (``engine.decode``): PIL/pydicom reference, NVIDIA DALI, nvJPEG.

Submodules import their optional dependencies only when used.
"""
from same_fast.engine.base import Backend, BackendConfig
from same_fast.engine.select import BACKENDS, create_backend, default_cache_dir

__all__ = ["BACKENDS", "Backend", "BackendConfig", "create_backend", "default_cache_dir"]
