"""The model a server runs: a model step with a weights version that can change between batches.

A *model step* takes float32 ``(N, C, H, W)`` in [0, 1] (CPU tensors) and returns the same shape
in [0, 1]. ``ServedModel.frame_step`` is what the stream loop calls: it installs weights that
adaptation published (only here, between batches, so a batch never mixes weights), groups the
batch's frames by shape, runs them through the backend's ``enhance_frames`` (integer frames in
and out; ONNX Runtime does it in one GIL-free call) or, for models without a backend, the model
step, and returns ``(array, weights_version, weights_hash)`` per frame.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from same_fast.checkpoint import weights_hash
from same_fast.errors import InputError

ModelStep = Callable[[torch.Tensor], torch.Tensor]

SYNTHETIC = ("identity",)


# Hex digits of the weights hash the stream and HTTP replies announce: a prefix of the audit log's
# ``weights_sha256`` (``same_fast.checkpoint.weights_hash``).
SHORT_HASH = 16


def short_hash(state: Mapping[str, torch.Tensor]) -> str:
    """The announced weights hash of ``state``."""
    return weights_hash(state, SHORT_HASH)


class ServedModel:
    """A model step plus what the server reports about it.

    name: what ``-m`` named. backend: the inference backend's name. channels: input channels the
    model takes (None: any). module: the torch module behind it (None for synthetic models; online
    adaptation needs one). apply_weights: installs a state dict (applied by the serving worker,
    between batches). backend_factory: builds another instance of the serving backend; with it,
    new weights go into a standby backend in the publishing thread (an ONNX Runtime session
    rebuild takes ~100 ms and must not stall frames) and the worker swaps the two between
    batches, so the swap is instant and each batch's weights version is exact. The publishing
    thread also runs the standby once on a frame of the last served shape, so the first served
    batch after a swap does not pay the backend's first-run cost (measured on this 2-core CPU,
    ONNX Runtime, 64 px lite: 1.6x the steady step time cold, 1.3x warmed).
    With a backend that has ``enhance_frames`` (every ``same_fast.engine`` backend), frames are
    served and warmed through it; other backends (anything with ``enhance`` and
    ``update_weights``) through ``enhance``.
    """

    def __init__(self, step: ModelStep, name: str, backend: str = "none",
                 channels: int | None = None, module: torch.nn.Module | None = None,
                 apply_weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 backend_factory: Callable[[], Any] | None = None,
                 current_backend: Any = None) -> None:
        self.step = step
        self.name = name
        self.backend = backend
        self.channels = channels
        self.module = module
        self.metadata = dict(metadata or {})
        self._apply_weights = apply_weights
        self._factory = backend_factory
        self._current = current_backend
        self._standby: Any = None
        self._ready: tuple[Any, str] | None = None  # a standby backend holding new weights
        self._lock = threading.Lock()
        self._prep_lock = threading.Lock()
        self._pending: tuple[dict[str, torch.Tensor], str] | None = None
        self._warm: tuple[tuple[int, ...], np.dtype] | None = None  # last served frame, batch 1
        self.weights_version = 0
        # Pixels per model call (``serve.tiling``; None: no budget). The Service sets it.
        self.batch_pixels: int | None = None
        self.tile_margin = 64
        self.weights_hash = short_hash(module.state_dict()) if module is not None else "none"
        self.source_hash = self.weights_hash

    def publish(self, state: dict[str, torch.Tensor], digest: str | None = None) -> None:
        """Offer new weights; they serve from the next batch on (never during one).

        With a backend factory the expensive part (``update_weights`` on the standby backend)
        runs here, in the caller's thread; otherwise the worker applies them.
        """
        digest = digest or short_hash(state)
        if self._factory is not None and self._current is not None:
            with self._prep_lock:  # one publisher at a time
                with self._lock:
                    target = self._ready[0] if self._ready else self._standby
                    self._ready, self._standby = None, None
                if target is None:
                    target = self._factory()
                target.update_weights(state)
                warm = self._warm
                if warm is not None:
                    # only a speed-up: a standby that cannot run it still serves the next batch
                    shape, dtype = warm
                    with contextlib.suppress(Exception), torch.inference_mode():
                        if hasattr(target, "enhance_frames"):  # the call serving will make
                            target.enhance_frames(np.zeros(shape, dtype))
                        else:
                            n, h, w, c = shape
                            target.enhance(torch.zeros(n, c, h, w))
                with self._lock:
                    self._ready = (target, digest)
            return
        if self._apply_weights is None:
            raise InputError(f"model '{self.name}' cannot take new weights")
        with self._lock:
            self._pending = (state, digest)

    def _install_pending(self) -> None:
        """Called by the serving worker at the start of a batch."""
        with self._lock:
            ready, self._ready = self._ready, None
            pending, self._pending = self._pending, None
            if ready is not None:
                self._standby, self._current = self._current, ready[0]
                self.step = self._current.enhance
                self.weights_version += 1
                self.weights_hash = ready[1]
        if pending is not None and self._apply_weights is not None:
            self._apply_weights(pending[0])
            self.weights_version += 1
            self.weights_hash = pending[1]

    def frame_step(self, frames: list[np.ndarray],
                   observe: Callable[[np.ndarray], None] | None = None
                   ) -> list[tuple[np.ndarray, int, str]]:
        """Enhance ``(H, W, C)`` uint8/uint16 frames -> [(same shape and dtype, version, hash)].

        ``observe`` (online adaptation) receives each group's ``(N, H, W, C)`` input batch
        after it is served. With ``batch_pixels`` set, no model call gets more pixels than that
        (large frames go alone, or in tiles: ``same_fast.serve.tiling``).
        """
        from same_fast.serve.tiling import run_budgeted
        from same_fast.stream import run_grouped

        self._install_pending()
        version, digest = self.weights_version, self.weights_hash
        frames_step = getattr(self._current, "enhance_frames", None)

        def run(group: list[np.ndarray]) -> list[np.ndarray]:
            return run_grouped(group, self.step, observe, frames_step)

        out = (run(frames) if self.batch_pixels is None
               else run_budgeted(frames, run, self.batch_pixels, self.tile_margin))
        if frames and self._factory is not None:  # a shape the model has served: warm-up input
            self._warm = ((1, *frames[0].shape), frames[0].dtype)
        return [(y, version, digest) for y in out]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "backend": self.backend, "channels": self.channels,
                "weights_version": self.weights_version, "weights_hash": self.weights_hash,
                "source_weights_hash": self.source_hash,
                "architecture": self.metadata.get("architecture"),
                "preset": self.metadata.get("preset"), "modality": self.metadata.get("modality")}


def _synthetic(spec: str) -> ServedModel:
    name, _, opts = spec.partition(":")
    delay = 0.0
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        if k != "delay_ms":
            raise InputError(f"unknown option '{k}' for model '{name}' (known: delay_ms)")
        try:
            delay = float(v) / 1000.0
        except ValueError:
            raise InputError(f"delay_ms must be a number, got '{v}'") from None

    def step(x: torch.Tensor) -> torch.Tensor:
        if delay:
            time.sleep(delay)  # stands in for a model's compute time (benchmarks, drain tests)
        return x

    return ServedModel(step, spec, backend="identity", metadata={"architecture": "identity"})


def load_served_model(spec: str, backend: str = "torch", device: str = "cpu",
                      threads: int = 0, channels_last: bool = False) -> ServedModel:
    """Resolve ``-m``: ``identity[:delay_ms=N]``, a shipped model name, or a checkpoint path.

    Checkpoints run on ``same_fast.engine.create_backend(backend, ...)``; weights published by
    adaptation go through the backend's ``update_weights``.
    """
    if spec.split(":", 1)[0] in SYNTHETIC:
        return _synthetic(spec)
    from same_fast.models import load_model

    model, meta = load_model(spec, device="cpu")
    return served_from_module(model, spec, backend, device, meta, threads, channels_last)


def served_from_module(model: torch.nn.Module, name: str, backend: str = "torch",
                       device: str = "cpu", metadata: Mapping[str, Any] | None = None,
                       threads: int = 0, channels_last: bool = False) -> ServedModel:
    """Serve an in-memory enhancer (SAMENet forward) on ``same_fast.engine`` backend ``backend``.

    threads: CPU threads of the backend (ONNX Runtime; 0 = its default). channels_last: NHWC
    weights and frames (torch and compile backends).
    """
    meta = dict(metadata or {})
    try:
        from same_fast.engine import create_backend
    except ImportError:  # the engine is part of the package; this guards partial installs
        create_backend = None
    if create_backend is not None:
        def factory() -> Any:
            return create_backend(backend, model, device=device, metadata=meta, threads=threads,
                                  channels_last=channels_last)

        b = factory()
        return ServedModel(b.enhance, name, backend=getattr(b, "name", backend),
                           channels=b.channels, module=model, apply_weights=b.update_weights,
                           metadata=meta, backend_factory=factory, current_backend=b)
    from same_fast.nn import enhance

    dev = torch.device(device if device != "auto" else "cpu")
    served = model.to(dev).eval()

    def apply(state: dict[str, torch.Tensor]) -> None:
        served.load_state_dict(state, strict=False)

    channels = meta.get("channels") or getattr(model, "config", {}).get("in_channels")
    return ServedModel(lambda x: enhance(served, x.to(dev)), name, backend="torch",
                       channels=int(channels) if channels else None, module=model,
                       apply_weights=apply, metadata=meta)
