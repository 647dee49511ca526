"""Torch backends: ``torch`` (eager), ``torchscript`` (traced; runs without the GIL) and
``compile`` (torch.compile; CUDA graphs on GPU)."""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from same_fast.engine.base import Backend, BackendConfig, DeployModule, torch_dtype
from same_fast.errors import InputError


class TorchBackend(Backend):
    """Eager PyTorch: the reference every other backend is compared with.

    fp32 on CPU; on CUDA ``dtype`` fp16/bf16 runs under autocast. ``channels_last`` converts
    the weights and inputs to NHWC, which oneDNN/cuDNN convolutions often prefer.
    """

    name = "torch"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None) -> None:
        super().__init__(model, metadata, config)
        if self.device.type == "cpu" and self.config.dtype != "fp32":
            raise InputError(f"dtype {self.config.dtype} is for GPUs; use fp32 on the CPU")
        self._dtype = torch_dtype(self.config.dtype)
        # A private copy: the caller may keep training its own model (adaptation) meanwhile.
        self.model = copy.deepcopy(model).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.module = DeployModule(self.model)
        if self.config.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def _reference_module(self) -> nn.Module:
        return self.model

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _forward(self, x01: torch.Tensor) -> torch.Tensor:
        x01 = self._prepare(x01)
        with torch.inference_mode():
            if self._dtype != torch.float32:
                with torch.autocast(self.device.type, dtype=self._dtype):
                    return self._run(x01).float()
            return self._run(x01)

    def _run(self, x01: torch.Tensor) -> torch.Tensor:
        """The network on a prepared batch (inside inference mode and any autocast)."""
        return self.module(x01)

    def _apply_weights(self, state: dict[str, torch.Tensor]) -> None:
        # In-place copy under the lock: parameter storage stays put, which torch.compile
        # guards and CUDA graphs (static addresses) rely on; a copy takes microseconds.
        own = self.model.state_dict()
        with self._lock, torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].device, own[k].dtype))


class ScriptBackend(TorchBackend):
    """TorchScript: the eager module traced once per input shape, run by TorchScript's C++
    interpreter.

    The interpreter releases the GIL for the whole call. Eager torch releases it inside each
    operator but must take it back between them, so in a process whose other Python threads
    take the GIL often (a server's event loop, stream producers and dispatcher, an adapter
    thread) the eager step waits at every operator boundary: ``benchmarks/gil_contention.py``
    measures both. The traced graphs share the eager module's parameters, so a weight update
    (an in-place copy) reaches them without tracing again; they are not frozen, which would
    inline the weights as constants. A new input shape is traced on first use (about 0.1 s for
    ``lite``); the last ``max_shapes`` shapes are kept.

    torch 2.13 marks ``torch.jit.trace`` deprecated. It is used here for a whole network call
    without the GIL, which eager torch does not give, nor ``torch.compile`` on the CPU (its
    Inductor wrapper is Python between kernels); AOTInductor was not tried. If a later torch
    drops tracing, this backend goes with it; ``torch`` and ``onnxruntime`` stay.
    """

    name = "torchscript"
    max_shapes = 8

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None) -> None:
        super().__init__(model, metadata, config)
        self._traced: OrderedDict[tuple, torch.jit.ScriptModule] = OrderedDict()

    def _run(self, x01: torch.Tensor) -> torch.Tensor:
        # Called under the backend's lock (Backend.enhance), so the cache needs no lock of its own.
        key = (tuple(x01.shape), x01.dtype, x01.is_contiguous(),
               torch.is_autocast_enabled(self.device.type))
        fn = self._traced.get(key)
        if fn is None:
            with warnings.catch_warnings():
                # SAMENet's input checks read shapes; the trace keeps this shape's outcome,
                # which is why each shape gets its own trace.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # torch 2.13 marks tracing deprecated (see the class docstring for why it
                # is used all the same).
                warnings.simplefilter("ignore", DeprecationWarning)
                fn = torch.jit.trace(self.module, x01, check_trace=False)
            self._traced[key] = fn
            while len(self._traced) > self.max_shapes:
                self._traced.popitem(last=False)
        else:
            self._traced.move_to_end(key)
        return fn(x01)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "traced_shapes": len(self._traced)}


class CompileBackend(TorchBackend):
    """``torch.compile`` of the eager module: Inductor on CPU, CUDA graphs on GPU.

    ``mode`` defaults to "reduce-overhead" on CUDA (CUDA graphs: one launch per batch shape)
    and "default" on the CPU (CUDA graphs do not exist there). Each new input shape compiles
    once (dynamic=False keeps the fastest specialised kernels; serving sees few shapes).
    """

    name = "compile"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None) -> None:
        super().__init__(model, metadata, config)
        default = "reduce-overhead" if self.device.type == "cuda" else "default"
        self.mode = str(self.config.options.get("compile_mode", default))
        self.compiled = torch.compile(self.module, mode=self.mode, dynamic=False)

    def _forward(self, x01: torch.Tensor) -> torch.Tensor:
        x01 = self._prepare(x01)
        with torch.inference_mode():
            if self._dtype != torch.float32:
                with torch.autocast(self.device.type, dtype=self._dtype):
                    y = self.compiled(x01).float()
            else:
                y = self.compiled(x01)
        # CUDA graphs reuse their output buffer on the next replay: hand out a copy.
        return y.clone() if self.mode == "reduce-overhead" else y

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compile_mode": self.mode}
