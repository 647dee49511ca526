"""The one interface every inference backend implements, and what they share.

A backend wraps one enhancer (``same_fast.nn.SAMENet`` or any module with its forward signature:
``(N, C, H, W)`` float in [-1, 1] -> ``(image in [-1, 1], structure_logits)``) and serves
``enhance(batch)``: ``(N, C, H, W)`` float32 in [0, 1] -> same shape in [0, 1]. The front pads H
and W up to the model's ``multiple`` (reflection, like ``same_fast.nn.enhance``), runs the
backend-specific ``_forward`` on the padded batch, crops back and applies the field-of-view mask.
``update_weights(state_dict)`` swaps in adapted weights while the backend keeps serving.
"""
from __future__ import annotations

import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from same_fast.errors import InputError


@dataclass
class BackendConfig:
    """Options shared by every backend; each field maps to one CLI flag of ``enhance``/``bench``.

    ``device``: "cpu" or "cuda[:i]". ``dtype``: "fp32" (the only choice on CPU), "fp16" or "bf16".
    ``threads``: CPU threads for ONNX Runtime (0 = its default, one per physical core).
    ``int8``: ONNX Runtime only, static QDQ int8 quantisation (costs accuracy; see describe()).
    ``cache_dir``: where exported ONNX files, TensorRT plans and the auto choice are cached.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int = 0
    int8: bool = False
    channels_last: bool = False
    cache_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` -> torch dtype (InputError otherwise)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype '{name}' (choose fp32, fp16 or bf16)") from None


def model_multiple(model: nn.Module) -> int:
    """The factor H and W must be multiples of (``model.multiple``; 1 when the model has none)."""
    return int(getattr(model, "multiple", 1) or 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(N, C, H, W)`` at the bottom/right to multiples of ``multiple``; returns (x, (H, W)).

    The same padding as ``same_fast.nn.enhance`` (reflect; replicate for tiny inputs), so every
    backend matches the library's reference inference.
    """
    from same_fast.nn import pad_to_multiple as nn_pad

    return nn_pad(x, multiple)


def check_batch(batch: torch.Tensor, channels: int | None) -> None:
    """Raise InputError unless ``batch`` is a float ``(N, C, H, W)`` tensor with ``channels``."""
    if not isinstance(batch, torch.Tensor):
        raise InputError(f"enhance expects a torch.Tensor, got {type(batch).__name__}")
    if batch.ndim != 4:
        raise InputError(f"enhance expects (N, C, H, W), got shape {tuple(batch.shape)}")
    if not batch.is_floating_point():
        raise InputError(f"enhance expects float values in [0, 1], got {batch.dtype}")
    if channels is not None and batch.shape[1] != channels:
        raise InputError(f"this model takes {channels} channel(s), got {batch.shape[1]}")
    if batch.shape[0] == 0 or batch.shape[2] == 0 or batch.shape[3] == 0:
        raise InputError(f"empty batch {tuple(batch.shape)}")


def check_frames(frames: np.ndarray, channels: int | None) -> None:
    """Raise InputError unless ``frames`` is a ``(N, H, W, C)`` uint8/uint16 array with ``channels``."""
    if not isinstance(frames, np.ndarray):
        raise InputError(f"enhance_frames expects a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4:
        raise InputError(f"enhance_frames expects (N, H, W, C), got shape {frames.shape}")
    from same_fast.io.convert import SCALES

    if frames.dtype not in SCALES:
        raise InputError(f"enhance_frames expects uint8 or uint16 frames, got {frames.dtype}")
    if channels is not None and frames.shape[3] != channels:
        raise InputError(f"this model takes {channels} channel(s), got {frames.shape[3]}")
    if 0 in frames.shape:
        raise InputError(f"empty batch {frames.shape}")


def model_channels(model: nn.Module, metadata: Mapping[str, Any] | None = None) -> int | None:
    """Input channels from metadata or the model's config (None if unknown)."""
    if metadata and metadata.get("channels"):
        return int(metadata["channels"])
    cfg = getattr(model, "config", None) or {}
    if "in_channels" in cfg:
        return int(cfg["in_channels"])
    return None


class DeployModule(nn.Module):
    """What deployment formats run: [0, 1] in -> enhanced [0, 1] (and optionally structure) out.

    The [0, 1] <-> [-1, 1] conversions live inside the graph so exported models and every backend
    see the value range of the files they come from. ``structure=False`` drops the structure
    decoder from the exported graph (inference does not need it; exporters prune it).
    """

    def __init__(self, model: nn.Module, structure: bool = False) -> None:
        super().__init__()
        self.model = model
        self.structure = structure
        # SAMENet can skip its structure decoder (it does not feed the image); stand-ins cannot.
        self._switch = "structure" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self._switch:
            image, logits = self.model(x * 2 - 1, structure=self.structure)
        else:
            image, logits = self.model(x * 2 - 1)
        out = ((image + 1) * 0.5).clamp(0, 1)
        return (out, logits) if self.structure else out


def validate_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check that every entry of ``state`` names a tensor of ``model`` with the same shape.

    A partial state (e.g. parameters only, from an EMA teacher) is allowed; unknown names or
    changed shapes are an InputError, so a wrong checkpoint never half-loads.
    """
    own = model.state_dict()
    bad = [k for k in state if k not in own]
    if bad:
        raise InputError(f"update_weights: unknown tensor name(s) {bad[:3]} (not in this model)")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise InputError(f"update_weights: '{k}' has shape {tuple(state[k].shape)}, "
                         f"model has {tuple(own[k].shape)}")
    return {k: v.detach() for k, v in state.items()}


class Backend(ABC):
    """One inference backend. Subclasses implement ``_forward`` and ``_apply_weights``.

    ``enhance`` and ``update_weights`` are safe to call from different threads: a weight update
    never runs in the middle of a forward (the old weights serve until the new ones are ready).
    """

    name: str = "base"

    def __init__(self, model: nn.Module, metadata: Mapping[str, Any] | None = None,
                 config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self.metadata = dict(metadata or {})
        self.multiple = model_multiple(model)
        self.channels = model_channels(model, metadata)
        self.device = torch.device(self.config.device)
        self.weights_version = 0
        self._lock = threading.RLock()
        self._arch = type(model).__name__
        self._preset = (getattr(model, "config", None) or {}).get("preset")

    @abstractmethod
    def _forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Padded ``(N, C, H, W)`` float32 in [0, 1] on ``self.device`` -> enhanced, same shape."""

    @abstractmethod
    def _apply_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Install validated weights (called under the lock, or with its own swap)."""

    def enhance(self, batch: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, H, W)`` float in [0, 1] -> enhanced ``(N, C, H, W)`` float32 in [0, 1].

        ``fov``: optional ``(N, 1, H, W)``, ``(N, H, W)`` or ``(H, W)`` mask (bool or {0, 1});
        outside it the output is black. The result lives on the backend's device.
        """
        check_batch(batch, self.channels)
        x = batch.to(self.device, torch.float32, non_blocking=True)
        x, (h, w) = pad_to_multiple(x, self.multiple)
        with self._lock:
            y = self._forward(x)
        y = y[..., :h, :w]
        if fov is not None:
            m = fov.to(y.device)
            m = m[None, None] if m.ndim == 2 else m[:, None] if m.ndim == 3 else m
            if tuple(m.shape[-2:]) != (h, w):
                raise InputError(f"FOV mask size {tuple(m.shape[-2:])} != image size {(h, w)}")
            # Same rule as same_fast.nn.enhance: inside where the mask is > 0.5, black outside.
            y = y * (m.float() > 0.5).to(y.dtype)
        return y

    def enhance_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` uint8/uint16 frames -> enhanced frames, same shape and dtype (CPU).

        What a stream serves: decoded frames in, frames to encode out. The result equals
        ``same_fast.io.to_array(enhance(to_tensor(frames)), dtype)``; backends may do the
        conversions inside their own graph (ONNX Runtime does, so that a frame costs one call
        that runs without the GIL).
        """
        from same_fast.io.convert import to_array, to_tensor

        check_frames(frames, self.channels)
        with torch.inference_mode():
            return to_array(self.enhance(to_tensor(frames)), frames.dtype)

    def update_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the served weights with ``state`` (names of the model's ``state_dict``)."""
        self._apply_weights(validate_state(self._reference_module(), state))
        self.weights_version += 1

    @abstractmethod
    def _reference_module(self) -> nn.Module:
        """The torch module whose state_dict names ``update_weights`` accepts."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description: backend name, device, dtype, weights version, options."""
        return {"backend": self.name, "device": str(self.device), "dtype": self.config.dtype,
                "multiple": self.multiple, "channels": self.channels,
                "channels_last": self.config.channels_last,
                "weights_version": self.weights_version,
                "architecture": self.metadata.get("architecture") or self._arch,
                "preset": self.metadata.get("preset") or self._preset}
