"""The Python API: ``load_model(name)`` -> an ``Enhancer`` that enhances numpy images and adapts.

>>> import numpy as np
>>> import same_fast
>>> model = same_fast.load_model("fundus-lite")
>>> image = np.zeros((64, 64, 3), np.uint8)
>>> out = model.enhance(image)
>>> out.shape, out.dtype
((64, 64, 3), dtype('uint8'))

``enhance_array`` is the frames-level function behind it (and behind ``same-fast enhance``):
integer ``(F, H, W, C)`` frames with an optional field-of-view mask, through the torch model, an
engine backend or an online adapter.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from same_fast.errors import InputError

__all__ = ["Enhancer", "Step", "enhance_array", "load_model"]

# What enhances one float batch ``(N, C, H, W)`` in [0, 1] with its mask ``(N, 1, H, W)`` or None.
Step = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def to_model_channels(frames: np.ndarray, channels: int) -> tuple[np.ndarray, bool]:
    """``(F, H, W, C)`` -> frames the model takes, and whether channels were folded.

    A grey model runs each colour channel as its own grey frame (identical channels of a grey
    scan stored as RGB give identical outputs); a colour model sees grey replicated to RGB.
    """
    frames = frames[..., :3]
    c = frames.shape[-1]
    if channels == c:
        return frames, False
    if channels == 1:
        f, h, w, _ = frames.shape
        return frames.transpose(0, 3, 1, 2).reshape(f * c, h, w, 1), True
    if channels == 3 and c == 1:
        return np.repeat(frames, 3, -1), False
    raise InputError(f"model takes {channels} channel(s); image has {c}")


def enhance_array(model: torch.nn.Module, frames: np.ndarray, fov: np.ndarray | None = None,
                  batch: int = 4, device: str | torch.device = "cpu",
                  step: Step | None = None) -> np.ndarray:
    """Enhance ``(F, H, W, C)`` uint8/uint16 frames; returns the same shape and dtype.

    ``fov``: optional bool mask, ``(H, W)`` for every frame or ``(F, H, W)`` one per frame
    (frames of several files batched together); outside it the output is black. ``step``: what
    enhances one float batch ``(N, C, H, W)`` in [0, 1] with its ``(N, 1, H, W)`` mask (default:
    the torch model through ``same_fast.nn.enhance``; an engine backend's ``enhance``; an online
    adapter).
    """
    from same_fast.io import to_array, to_tensor
    from same_fast.nn import enhance

    if step is None:
        def step(t: torch.Tensor, mm: torch.Tensor | None) -> torch.Tensor:
            return enhance(model, t, mm)

    channels = int(getattr(model, "config", {}).get("in_channels", 3))
    orig_c = frames.shape[-1]
    x, folded = to_model_channels(frames, channels)
    m = None
    if fov is not None:
        # a writable copy (torch tensors need one), one mask per frame
        fov = np.broadcast_to(np.asarray(fov), (frames.shape[0], *np.shape(fov)[-2:])).copy()
        if folded:  # one mask per grey frame folded out of a colour frame
            fov = np.repeat(fov, x.shape[0] // frames.shape[0], axis=0)
        m = torch.from_numpy(fov)[:, None]
    outs = []
    for i in range(0, x.shape[0], max(1, batch)):
        t = to_tensor(x[i:i + batch]).to(device)
        mm = None if m is None else m[i:i + batch].to(device)
        outs.append(to_array(step(t, mm), frames.dtype.type))
    y = np.concatenate(outs)
    if folded:  # back from per-channel grey frames to colour frames
        f, h, w = frames.shape[:3]
        c = min(orig_c, 3)
        y = y.reshape(f, c, h, w).transpose(0, 2, 3, 1)
    elif channels == 3 and orig_c == 1:
        y = np.rint(y.astype(np.float64).mean(-1, keepdims=True)).astype(frames.dtype)
    return np.ascontiguousarray(y)


def _frames(image: np.ndarray) -> np.ndarray:
    """An ``H x W`` or ``H x W x C`` integer image as ``(1, H, W, C)`` frames (checked)."""
    a = np.asarray(image)
    if a.dtype not in (np.uint8, np.uint16):
        raise InputError(f"enhance takes uint8 or uint16 images, got {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"enhance takes an H x W or H x W x C image (C = 1, 3 or 4), "
                         f"got shape {np.shape(image)}")
    return a[None]


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape[:2]):
        raise InputError(f"mask shape {m.shape} != image size {tuple(shape[:2])}")
    return m > 0


class Enhancer:
    """A trained enhancer, ready to use from Python: ``load_model(name)`` returns one.

    network: the ``SAMENet`` (eval mode); metadata: its checkpoint's (modality, provenance,
    ...); name: what it was loaded from. ``enhance`` works on numpy images, ``adapt`` returns a
    new Enhancer adapted to a clinic's unlabeled images (the original is left as it is).
    """

    def __init__(self, network: torch.nn.Module, metadata: dict[str, Any], name: str = "",
                 device: str | torch.device = "cpu") -> None:
        self.network = network.to(device).eval()
        self.metadata = metadata
        self.name = name
        self.device = torch.device(device)

    @property
    def modality(self) -> str:
        return str(self.metadata.get("modality", "fundus"))

    def __repr__(self) -> str:
        return f"Enhancer({self.name!r}, modality={self.modality!r}, device={str(self.device)!r})"

    def enhance(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Enhance one image: ``H x W`` or ``H x W x C`` (C = 1, 3 or 4), uint8 or uint16;
        returns the same shape and dtype. ``mask``: optional ``H x W`` field of view (non-zero
        inside); outside it the output is black. An alpha channel is passed through.

        >>> import numpy as np, same_fast
        >>> grey = np.full((5, 7), 1000, np.uint16)
        >>> same_fast.load_model("fundus-lite").enhance(grey).shape
        (5, 7)
        """
        frames = _frames(image)
        fov = _mask(mask, frames.shape[1:])
        y = enhance_array(self.network, frames[..., :3], fov, 1, self.device)[0]
        if frames.shape[-1] == 4:
            y = np.concatenate([y, frames[0, ..., 3:]], -1)
        return y.reshape(np.shape(image))

    def adapt(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
              config: Any = None, picker: str | None = "auto", **settings: Any) -> Enhancer:
        """A copy adapted to ``images`` (a clinic's unlabeled images, numpy as ``enhance``
        takes them) by SAME offline: teacher-student with the picker (``auto``: the shipped one
        of this model's modality; ``none``: a mean teacher). ``config``: an
        ``same_fast.adapt.config.AdaptConfig``; ``settings``: fields of it to change.

        >>> import numpy as np, same_fast
        >>> model = same_fast.load_model("fundus-lite")
        >>> scans = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)
        ...          for i in range(2)]
        >>> adapted = model.adapt(scans, steps=1, batch=2, size=64)
        >>> adapted.enhance(scans[0]).shape
        (64, 64, 3)
        """
        import dataclasses

        from same_fast.adapt.config import AdaptConfig
        from same_fast.adapt.loop import adapt_offline
        from same_fast.io import to_tensor
        from same_fast.picker import resolve_picker

        if not images:
            raise InputError("adapt needs at least one image")
        cfg = dataclasses.replace(config or AdaptConfig(), modality=self.modality, **settings)
        cfg = cfg.check().resolved()  # the metadata records the rate and view strength used
        channels = int(getattr(self.network, "config", {}).get("in_channels", 3))
        xs, fovs = [], []
        for k, image in enumerate(images):
            frames, _ = to_model_channels(_frames(image)[..., :3], channels)
            xs.append(to_tensor(frames[0]).to(self.device))
            m = _mask(None if masks is None else masks[k], frames.shape[1:])
            fovs.append(None if m is None else torch.from_numpy(m)[None].float().to(self.device))
        pick = resolve_picker(picker, self.modality, self.device)
        result = adapt_offline(self.network, xs, pick, cfg,
                               None if all(f is None for f in fovs) else fovs)
        net = result.student if cfg.serve == "student" else result.teacher
        if result.skipped:
            warnings.warn(result.skipped, stacklevel=2)
        meta = {**self.metadata, "adaptation": {
            "config": cfg.to_dict(), "picker": picker, "skipped": result.skipped,
            "student_view": result.view,
            "acceptance": None if result.skipped else result.acceptance}}
        return Enhancer(net, meta, f"{self.name} (adapted)", self.device)

    def save(self, path: str | Path) -> Path:
        """Write the network and its metadata as a safetensors checkpoint ``load_model``
        reads back."""
        from same_fast.models import save_model

        keep = {k: v for k, v in self.metadata.items()
                if k not in ("architecture", "config", "preset", "channels", "multiple",
                             "value_range")}
        return save_model(path, self.network, **keep)


def load_model(name: str | Path, device: str | torch.device = "cpu") -> Enhancer:
    """A shipped model (``fundus-lite``, ``ultrasound-lite``) or a checkpoint path, as an
    ``Enhancer`` on ``device``. ``same_fast.models.load_model`` gives the bare network and
    metadata instead."""
    from same_fast.models import load_model as load_network

    network, meta = load_network(name, device)
    return Enhancer(network, meta, str(name), device)
