"""Checkpoints: safetensors tensors plus JSON metadata. Never pickle.

Metadata keys every model checkpoint carries: ``architecture`` (e.g. ``SAMENet``), ``config``
(the constructor's keyword arguments, JSON), ``preset``, ``channels``, ``modality``,
``value_range`` (``[-1, 1]`` for the enhancer's tensors) and ``provenance`` (data, command, date).
safetensors stores metadata as str -> str, so non-string values are JSON-encoded under the key.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from same_fast.errors import CheckpointError
from same_fast.files import atomic_path

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header limit; larger is not a checkpoint
#: Nesting of the decoded metadata we accept (our own is at most 4 deep).
MAX_JSON_DEPTH = 32
#: Per-tensor sanity: dimensions and the size of each.
MAX_DIMS, MAX_DIM = 8, 2**31 - 1
#: safetensors dtypes, and the floating ones a network's weights may have.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
DTYPES = FLOAT_DTYPES + ("F8_E4M3", "F8_E5M2", "BOOL", "U8", "I8", "U16", "I16", "U32", "I32",
                         "U64", "I64")


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


def read_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """``({tensor name: (dtype, shape)}, metadata)`` of a checkpoint, validated, without its tensors.

    Refused (``CheckpointError``): not safetensors, JSON nested deeper than ``MAX_JSON_DEPTH``,
    entries that are not tensors, unknown dtypes, more than ``MAX_DIMS`` dimensions or a
    dimension over ``MAX_DIM``.
    """
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
    except RecursionError:
        raise CheckpointError(f"{path}: checkpoint header nested too deeply") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({_short(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: checkpoint metadata is not an object")
    tensors = {name: _tensor_entry(path, name, entry) for name, entry in header.items()}
    decoded = _decode(meta, path)
    if _depth(decoded) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: checkpoint metadata nested deeper than {MAX_JSON_DEPTH}")
    return tensors, decoded


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a checkpoint without loading its tensors (JSON values decoded, validated)."""
    return read_header(path)[1]


def load(path: str | Path, device: str | torch.device = "cpu"
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(tensors, metadata)`` from a safetensors checkpoint; NaN or inf weights are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint tensors ({_short(e)})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor '{name[:80]}' holds NaN or infinite values")
    return tensors, meta


def _tensor_entry(path: Path, name: str, entry: Any) -> tuple[str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: header entry '{name[:80]}' is not a tensor")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor '{name[:80]}' has unknown dtype {str(dtype)[:20]!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        raise CheckpointError(f"{path}: tensor '{name[:80]}' has an invalid shape {str(shape)[:60]}")
    return dtype, tuple(shape)


def _depth(obj: Any) -> int:
    """Nesting depth of decoded JSON, counted without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                break
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _decode(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
        except RecursionError:
            raise CheckpointError(f"{path}: checkpoint metadata '{k[:40]}' nested too deeply") from None
    return out


def weights_hash(weights: torch.nn.Module | Mapping[str, torch.Tensor], digits: int = 64) -> str:
    """SHA-256 (hex) of a model's state: names, dtypes, shapes and bytes, in name order.

    The one weights hash: the audit log records all 64 digits (``weights_sha256``), a server
    announces the first 16 (``weights_hash``), so each is a prefix of the other.
    """
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:digits]
