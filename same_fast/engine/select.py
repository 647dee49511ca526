"""``create_backend``: one front for every backend, and ``auto``, the measured choice.

``auto`` times each backend that loads on this machine once, on the model at the job's own
batch and frame size where the caller knows them (options ``auto_batch`` and ``auto_size``: a
side, or ``[height, width]``; ``same-fast enhance`` reads them off its first input) and else at
batch 1 and 256 x 256, and caches the winner in ``<cache_dir>/auto.json`` (default
``~/.cache/same-fast``), keyed by machine (CPU model, GPU name, core count, torch and onnxruntime
versions), model (architecture, config, parameter shapes) and that shape, since backends can
rank differently at different shapes. An automatic choice falls back quietly past a backend
that cannot load; an explicit choice that cannot load fails loudly.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from same_fast.engine.base import Backend, BackendConfig
from same_fast.errors import InputError, SameFastError

BACKENDS = ("torch", "torchscript", "compile", "onnxruntime", "tensorrt")


def default_cache_dir() -> Path:
    """``$SAME_FAST_CACHE`` or ``~/.cache/same-fast``."""
    return Path(os.environ.get("SAME_FAST_CACHE") or Path.home() / ".cache" / "same-fast")


def _cls(name: str) -> type[Backend]:
    if name == "torch":
        from same_fast.engine.torch_backends import TorchBackend
        return TorchBackend
    if name == "torchscript":
        from same_fast.engine.torch_backends import ScriptBackend
        return ScriptBackend
    if name == "compile":
        from same_fast.engine.torch_backends import CompileBackend
        return CompileBackend
    if name == "onnxruntime":
        from same_fast.engine.ort_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend
    if name == "tensorrt":
        from same_fast.engine.tensorrt import TensorRTBackend
        return TensorRTBackend
    raise InputError(f"unknown backend '{name}' (choose auto, {', '.join(BACKENDS)})")


def _resolve_model(model: nn.Module | str | os.PathLike, metadata: Mapping[str, Any] | None,
                   device: str) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(model, nn.Module):
        return model, dict(metadata or {})
    m, meta = load_any(model)
    return m, {**meta, **dict(metadata or {})}


def load_any(name_or_path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model in eval mode on the CPU from a shipped name or a checkpoint path.

    SAMENet checkpoints go through ``same_fast.models.load_model``; checkpoints of the engine's
    own stand-in (architecture ``TinyEnhancer``, used by tests and benchmarks) load here.
    """
    from same_fast import checkpoint

    path = Path(name_or_path)
    if path.is_file():
        meta = checkpoint.read_metadata(path)
        if meta.get("architecture") == "TinyEnhancer":
            from same_fast.engine.testing import TinyEnhancer

            tensors, meta = checkpoint.load(path)
            m = TinyEnhancer(**(meta.get("config") or {}))
            m.load_state_dict(tensors)
            return m.eval(), meta
    try:
        from same_fast.models import load_model  # the model registry (shipped names, paths)
    except ImportError:
        raise InputError(f"cannot load '{name_or_path}': same_fast.models is not available "
                         "in this build") from None
    m, meta = load_model(str(name_or_path), device="cpu")
    return m.eval(), dict(meta)


def create_backend(name: str, model: nn.Module | str | os.PathLike,
                   device: str = "cpu", dtype: str = "fp32", cache_dir: str | None = None,
                   metadata: Mapping[str, Any] | None = None, threads: int = 0,
                   int8: bool = False, channels_last: bool = False,
                   options: Mapping[str, Any] | None = None) -> Backend:
    """Create backend ``name`` ("auto" | "torch" | "torchscript" | "compile" | "onnxruntime" |
    "tensorrt").

    ``model``: an ``nn.Module`` with SAMENet's forward, a shipped model name or a checkpoint
    path. ``device``: "cpu" or "cuda[:i]". ``dtype``: "fp32" on CPU; "fp16"/"bf16" on GPU.
    Returns a ``Backend`` whose ``enhance`` takes ``(N, C, H, W)`` float in [0, 1].
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda requested but no CUDA device is available")
    m, meta = _resolve_model(model, metadata, device)
    cfg = BackendConfig(device=device, dtype=dtype, threads=threads, int8=int8,
                        channels_last=channels_last,
                        cache_dir=str(cache_dir or default_cache_dir()),
                        options=dict(options or {}))
    if name == "auto":
        return _auto(m, meta, cfg)
    return _cls(name)(m, meta, cfg)


def machine_key() -> dict[str, Any]:
    """What makes a timing comparable: CPU/GPU model, cores, library versions."""
    from same_fast.engine.machine import environment

    env = environment()
    key = {k: env.get(k) for k in ("processor", "machine", "cpus", "torch_threads", "device")}
    key["torch"] = torch.__version__
    from importlib.metadata import PackageNotFoundError, version

    key["onnxruntime"] = None  # the installed version, read without importing it (0.1 s)
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            key["onnxruntime"] = version(dist)
            break
        except PackageNotFoundError:
            pass
    key["python"] = platform.python_version()
    return key


def model_key(model: nn.Module) -> dict[str, Any]:
    return {"cls": type(model).__qualname__, "config": getattr(model, "config", None),
            "params": sum(p.numel() for p in model.parameters())}


def _auto(model: nn.Module, meta: dict[str, Any], cfg: BackendConfig) -> Backend:
    cache = Path(cfg.cache_dir or default_cache_dir()) / "auto.json"
    probe = _probe(cfg)
    key = hashlib.sha256(json.dumps([machine_key(), model_key(model), cfg.device, cfg.dtype,
                                     *probe], sort_keys=True, default=str).encode()
                         ).hexdigest()[:16]
    table = _read(cache)
    entry = table.get(key, {})
    choice = entry.get("backend")
    if choice:
        try:
            return _cls(choice)(model, meta, _variant(cfg, bool(entry.get("channels_last"))))
        except SameFastError:
            pass  # the cached winner no longer loads (dependency removed): measure again
    winner, timings, backend = _measure(model, meta, cfg)
    table[key] = {"backend": backend.name, "channels_last": backend.config.channels_last,
                  "label": winner, "seconds_per_batch": timings,
                  "probe": dict(zip(("batch", "height", "width"), probe, strict=True)),
                  "machine": machine_key(), "model": model_key(model),
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write(cache, table)
    return backend


def _variant(cfg: BackendConfig, channels_last: bool) -> BackendConfig:
    import dataclasses

    return dataclasses.replace(cfg, channels_last=channels_last)


def _candidates(cfg: BackendConfig) -> list[tuple[str, bool]]:
    """(backend, channels_last) pairs ``auto`` times, in order.

    Channels-last eager torch is its own candidate: on the 2-core development CPU it ran the
    ``lite`` network 1.9x faster than NCHW at batch 1 (oneDNN's NHWC convolutions), ahead of
    ONNX Runtime.
    """
    if cfg.device.startswith("cuda"):
        names = list(BACKENDS)
    else:
        names = ["torch", "torchscript", "onnxruntime"]
        # torch.compile on CPU takes tens of seconds to compile per shape; measured on request.
        if cfg.options.get("auto_compile") in ("1", "true", True):
            names.append("compile")
    out = [(n, False) for n in names]
    out.insert(1, ("torch", True))
    return out


def _probe(cfg: BackendConfig) -> tuple[int, int, int]:
    """``(batch, height, width)`` that ``auto`` times the candidates at."""
    size = cfg.options.get("auto_size", 256)
    h, w = (size, size) if isinstance(size, (int, str)) else size
    batch, h, w = int(cfg.options.get("auto_batch", 1)), int(h), int(w)
    if min(batch, h, w) < 1:
        raise InputError(f"auto: probe batch and size must be >= 1, got {batch}x{h}x{w}")
    return batch, h, w


def _measure(model: nn.Module, meta: dict[str, Any], cfg: BackendConfig, repeats: int = 7
             ) -> tuple[str, dict[str, float], Backend]:
    """Time every candidate that loads and runs, round-robin (``interleaved``: a moment of drift
    on a shared machine hits every candidate alike, not whichever was being timed), and return
    the winner's label, every candidate's median seconds per batch, and the winner."""
    from same_fast.engine.machine import interleaved

    batch, h, w = _probe(cfg)
    loaded: dict[str, tuple[Backend, torch.Tensor]] = {}
    for name, cl in _candidates(cfg):
        label = f"{name}+channels_last" if cl else name
        try:
            b = _cls(name)(model, meta, _variant(cfg, cl))
        except (SameFastError, ImportError):
            continue
        x = torch.rand(batch, b.channels or 3, h, w, generator=torch.Generator().manual_seed(0))
        try:
            b.enhance(x)  # loads and runs this model (its first call also warms it up)
        except Exception:  # a backend that loads but cannot run this model is not a candidate
            continue
        loaded[label] = (b, x)
    if not loaded:
        raise InputError("no inference backend could run this model")
    cuda = [b.device for b, _ in loaded.values() if b.device.type == "cuda"]

    def sync() -> None:
        for d in cuda:
            torch.cuda.synchronize(d)

    timing = interleaved({k: (lambda b=b, x=x: b.enhance(x)) for k, (b, x) in loaded.items()},
                         repeats=repeats, warmup=1, sync=sync)
    timings = {k: t["median_s"] for k, t in timing.items()}
    winner = min(timings, key=timings.get)
    return winner, timings, loaded[winner][0]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, table: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still serves; it only measures again next time
