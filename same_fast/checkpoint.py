"""Checkpoints: safetensors tensors plus JSON metadata. Never pickle.

Metadata keys every model checkpoint carries: ``architecture`` (e.g. ``SAMENet``), ``config``
(the constructor's keyword arguments, JSON), ``preset``, ``channels``, ``modality``,
``value_range`` (``[-1, 1]`` for the enhancer's tensors) and ``provenance`` (data, command, date).
safetensors stores metadata as str -> str, so non-string values are JSON-encoded under the key.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from same_fast.errors import CheckpointError

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header limit; larger is not a checkpoint


def save(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (contiguous CPU copies) and ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata=meta)
    # safetensors creates the file owner-only (0600); a checkpoint is an ordinary file: keep the
    # mode of the one it replaces, else the umask's default, as open() would
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o666 & ~_umask()
    os.chmod(tmp, mode)
    tmp.replace(path)
    return path


def _umask() -> int:
    """The process umask, read without changing it (Linux /proc); 0o022 where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


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
