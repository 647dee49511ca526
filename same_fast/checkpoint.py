"""Checkpoints: safetensors tensors plus JSON metadata. Never pickle.

Metadata keys every model checkpoint carries: ``architecture`` (e.g. ``SAMENet``), ``config``
(the constructor's keyword arguments, JSON), ``preset``, ``channels``, ``modality``,
``value_range`` (``[-1, 1]`` for the enhancer's tensors) and ``provenance`` (data, command, date).
safetensors stores metadata as str -> str, so non-string values are JSON-encoded under the key.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from same_fast.errors import CheckpointError
from same_fast.io.atomic import atomic_path

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header limit; larger is not a checkpoint


def save(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (contiguous CPU copies) and ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # safetensors creates files owner-only (0600); atomic_path gives a checkpoint the mode of the
    # one it replaces, else the umask's default, as open() would
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint without loading its tensors (JSON values decoded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: not a safetensors checkpoint (too short)")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > _MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors checkpoint (bad header length)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not an object)")
    return _decode(header.get("__metadata__") or {})


def load(path: str | Path, device: str | torch.device = "cpu"
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(tensors, metadata)`` from a safetensors checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint tensors ({e})") from None
    return tensors, meta


def _decode(meta: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out
