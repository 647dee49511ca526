"""ONNX Runtime backend: CPU execution provider (CUDA where the GPU build is installed).

Weight refresh swaps sessions: the new weights are written into the cached graph's
initializers, a new session is built beside the serving one, and the two are swapped under the
lock, so frames keep flowing while the new session compiles.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from same_fast.engine.base import Backend, BackendConfig, check_frames, model_channels
from same_fast.engine.onnx_export import (
    FRAMES_IN,
    FRAMES_OUT,
    INPUT,
    OUTPUT,
    ExportConfig,
    cpu_eval_copy,
    export_onnx,
    frames_graph,
    initializer_map,
    replace_initializers,
    weightless_graph,
)
from same_fast.errors import DependencyError, InputError, missing_dependency

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise missing_dependency("onnxruntime", "the onnxruntime backend", "onnx") from None
    return onnxruntime


def graph_key(model: nn.Module, cfg: ExportConfig) -> str:
    """Cache key of the exported graph: architecture, config and shapes, not weight values."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    blob = json.dumps({"cls": type(model).__qualname__, "config": getattr(model, "config", None),
                       "shapes": shapes, "opset": cfg.opset, "dynamic": cfg.dynamic,
                       "structure": cfg.structure, "torch": torch.__version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_onnx(model: nn.Module, cfg: ExportConfig, cache_dir: str | Path | None) -> bytes:
    """Exported graph bytes, from ``cache_dir/onnx/<key>.onnx`` when present (weights not current)."""
    if cache_dir is None:
        return export_onnx(model, None, cfg)
    path = Path(cache_dir) / "onnx" / f"{graph_key(model, cfg)}.onnx"
    if path.is_file():
        return path.read_bytes()
    return export_onnx(model, path, cfg)


def physical_cores() -> int:
    """Physical cores among the CPUs this thread may run on (Linux sysfs topology; elsewhere, or
    when it cannot be read, the logical count). At least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        top = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((top / "physical_package_id").read_text().strip(),
                       (top / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime session over the exported ``DeployModule`` graph.

    Options (``config.options``): ``ort_opt`` = disable|basic|extended|all (graph optimisation
    level, default all: folds BatchNorm into convolutions, fuses activations), ``ort_layout``
    = 1 to let the CPU EP convert convolutions to NCHWc blocked layout (part of level all),
    ``ort_spin`` = 0 to stop idle intra-op threads from spinning (helps on loaded machines).
    ``config.threads``: intra-op threads (0 = one per physical core this process may use, ORT's
    own default count, but set explicitly: left at 0, ORT pins each intra-op thread to one CPU,
    and on a 2-CPU machine that is the CPU ``serve --adapt-cpus auto`` gives the adapter; a pool
    started by a standby build pinned itself back onto the adapter's CPUs after ``adapter_work``
    had widened it). ``config.int8``: static QDQ int8
    quantisation calibrated on ``calibration`` frames (``(N, C, H, W)`` in [0, 1]).
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None,
                 calibration: torch.Tensor | None = None) -> None:
        super().__init__(model, metadata, config)
        ort = _ort()
        if self.config.dtype != "fp32":
            raise InputError("the onnxruntime backend runs fp32 (use tensorrt for fp16/bf16)")
        self._model = cpu_eval_copy(model)
        # counted once, here: a standby build runs confined to the adapter's CPUs
        self._threads = int(self.config.threads) or physical_cores()
        onnx = __import__("onnx")
        self._graph = onnx.load_from_string(cached_onnx(self._model, ExportConfig(),
                                                        self.config.cache_dir))
        self._map = initializer_map(self._model, self._graph)
        self._weightless = weightless_graph(self._graph, set(self._map.values()))
        from onnx import helper

        self._dtypes = {i.name: helper.tensor_dtype_to_np_dtype(i.data_type)
                        for i in self._graph.graph.initializer}
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DependencyError("the onnxruntime backend on CUDA needs the GPU build "
                                      "(pip install onnxruntime-gpu)")
            self._providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}),
                               "CPUExecutionProvider"]
        else:
            self._providers = ["CPUExecutionProvider"]
        self._calibration = calibration
        # Sessions by kind: "float" (``enhance``) and "uint8"/"uint16" (``enhance_frames``: the
        # graph of ``frames_graph``). Float is built now, so a bad graph fails here; the frame
        # kinds when first used. A weight update rebuilds only the kinds used so far (a serving
        # standby then builds one session per publish, not two) and drops the others.
        self._weightless_by_kind: dict[str, bytes] = {"float": self._weightless}
        self._used: set[str] = set()
        self._frames_graph_ok = (not self.config.int8 and self.device.type == "cpu"
                                 and hasattr(ort.SessionOptions, "add_external_initializers"))
        self._build_lock = threading.Lock()
        self._sessions: dict[str, Any] = {"float": self._build(self._model.state_dict())}

    def _reference_module(self) -> nn.Module:
        return self._model

    def _session_options(self) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        level = str(self.config.options.get("ort_opt", "all"))
        if level not in _LEVELS:
            raise InputError(f"ort_opt must be one of {sorted(_LEVELS)}, got '{level}'")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        so.intra_op_num_threads = self._threads
        if str(self.config.options.get("ort_spin", "1")) == "0":
            # On an oversubscribed machine spinning worker threads steal cores from each other.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        return so

    def _build(self, state: Mapping[str, torch.Tensor], kind: str = "float") -> Any:
        """A session of ``kind`` (see ``__init__``) running ``state``.

        fp32: the weightless graph (``weightless_graph``, serialised once) with the weights
        handed over as ``OrtValue`` external initializers, which ORT loads before it optimises
        the graph. Editing and re-serialising the protobuf for every build instead holds the
        GIL for ~7 ms (measured: beside a thread publishing at 4 Hz, the serving step's p99 went
        from 1.2x to 6.7x its p50); ORT builds the session with the GIL released. int8
        quantises a rewritten graph (calibration needs one), as do ORT builds without
        ``add_external_initializers``.
        """
        ort = _ort()
        if self.config.int8 or not hasattr(ort.SessionOptions, "add_external_initializers"):
            data = replace_initializers(self._graph, self._map, state).SerializeToString()
            if self.config.int8:
                from same_fast.engine.quantize import quantize_int8

                data = quantize_int8(data, self._calibration_frames())
            return ort.InferenceSession(data, sess_options=self._session_options(),
                                        providers=self._providers)
        so = self._session_options()
        names, arrays, values = [], [], []
        for ours, name in self._map.items():
            # A private copy: the model's own tensors change at the next update.
            arr = np.array(state[ours].detach().to("cpu").numpy(), dtype=self._dtypes[name])
            names.append(name)
            arrays.append(arr)
            values.append(ort.OrtValue.ortvalue_from_numpy(arr))
        so.add_external_initializers(names, values)
        sess = ort.InferenceSession(self._weightless_of(kind), sess_options=so,
                                    providers=self._providers)
        sess._same_fast_initializers = (arrays, values)  # alive as long as the session
        return sess

    def _weightless_of(self, kind: str) -> bytes:
        data = self._weightless_by_kind.get(kind)
        if data is None:
            wrapped = frames_graph(self._graph, np.dtype(kind), self.multiple)
            data = weightless_graph(wrapped, set(self._map.values()))
            self._weightless_by_kind[kind] = data
        return data

    def _session(self, kind: str) -> Any:
        """The current session of ``kind``, built with the current weights when missing."""
        self._used.add(kind)
        sess = self._sessions.get(kind)
        if sess is None:
            with self._build_lock:
                sess = self._sessions.get(kind)
                if sess is None:
                    sess = self._build(self._model.state_dict(), kind)
                    with self._lock:
                        self._sessions = {**self._sessions, kind: sess}
        return sess

    def _frames_in_graph(self, frames: np.ndarray) -> bool:
        """Whether ``frames`` can take the integer-frame graph: fp32 on the CPU, and pads that
        reflect (each at most the side minus one, as the reference padding requires)."""
        if not self._frames_graph_ok:
            return False
        h, w = frames.shape[1:3]
        m = self.multiple
        return (-h) % m < h and (-w) % m < w

    def enhance_frames(self, frames: np.ndarray) -> np.ndarray:
        """As ``Backend.enhance_frames``; on the CPU the conversions, padding and rounding run
        inside the ONNX graph (``frames_graph``), so the whole call is one ``run`` that releases
        the GIL. Elsewhere (int8, CUDA, frames too small to reflect-pad) the float path."""
        check_frames(frames, self.channels)
        if not self._frames_in_graph(frames):
            return super().enhance_frames(frames)
        sess = self._session(frames.dtype.name)
        return sess.run([FRAMES_OUT], {FRAMES_IN: np.ascontiguousarray(frames)})[0]

    def _calibration_frames(self) -> torch.Tensor:
        if self._calibration is not None:
            return self._calibration
        from same_fast.engine.quantize import default_calibration

        return default_calibration(model_channels(self._model) or 3, self.multiple)

    def _forward(self, x01: torch.Tensor) -> torch.Tensor:
        sess = self._session("float")
        if self.device.type == "cuda":
            return self._forward_cuda(sess, x01)
        out = sess.run([OUTPUT], {INPUT: x01.contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def _forward_cuda(self, sess: Any, x01: torch.Tensor) -> torch.Tensor:
        # IOBinding on device pointers: frames and results stay on the GPU, no host copies.
        x01 = x01.contiguous()
        y = torch.empty_like(x01)
        idx = self.device.index or 0
        b = sess.io_binding()
        b.bind_input(INPUT, "cuda", idx, np.float32, list(x01.shape), x01.data_ptr())
        b.bind_output(OUTPUT, "cuda", idx, np.float32, list(y.shape), y.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        sess.run_with_iobinding(b)
        return y

    def _apply_weights(self, state: dict[str, torch.Tensor]) -> None:
        own = self._model.state_dict()
        with self._build_lock:  # a lazy build never reads half-copied weights
            with torch.no_grad():
                for k, v in state.items():
                    own[k].copy_(v.to("cpu", own[k].dtype))
            # built while the old sessions keep serving; kinds not used so far are dropped
            new = {kind: self._build(own, kind) for kind in sorted(self._used or {"float"})}
            with self._lock:
                self._sessions = new

    def describe(self) -> dict[str, Any]:
        ort = _ort()
        d = {**super().describe(), "onnxruntime": ort.__version__,
             "providers": next(iter(self._sessions.values())).get_providers(),
             "ort_opt": self.config.options.get("ort_opt", "all"),
             "threads": self._threads, "int8": self.config.int8,
             "initializers_mapped": len(self._map)}
        return d

