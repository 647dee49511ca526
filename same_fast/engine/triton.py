"""NVIDIA Triton Inference Server model repository for the exported enhancer.

Layout (Triton's model-repository convention)::

    <repo>/<model_name>/config.pbtxt
    <repo>/<model_name>/1/model.onnx

``config.pbtxt`` declares platform ``onnxruntime_onnx``, the input ``input`` and output
``enhanced`` as ``TYPE_FP32`` with dims ``[C, -1, -1]`` (batch is implicit via
``max_batch_size``), dynamic batching with a maximum queue delay, and an instance group.
Clients send frames in [0, 1] padded to the model's multiple (see ``parameters``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from same_fast.engine.onnx_export import INPUT, OUTPUT, STRUCTURE
from same_fast.errors import InputError


@dataclass
class TritonConfig:
    """Fields of ``config.pbtxt``; each maps to one ``same-fast export --format triton`` flag."""

    model_name: str = "same_enhancer"
    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    instance_kind: str = "KIND_GPU"  # KIND_CPU for CPU-only servers
    structure: bool = False


def config_pbtxt(channels: int, multiple: int, cfg: TritonConfig) -> str:
    """The text of ``config.pbtxt`` (protobuf text format, as Triton reads it)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.model_name):
        raise InputError(f"Triton model name '{cfg.model_name}' may use letters, digits, _ . - only")
    if cfg.max_batch_size < 1:
        raise InputError("max_batch_size must be at least 1")
    if cfg.instance_kind not in ("KIND_GPU", "KIND_CPU"):
        raise InputError("instance kind must be KIND_GPU or KIND_CPU")
    prefs = sorted({b for b in cfg.preferred_batch_sizes if 1 <= b <= cfg.max_batch_size})
    outputs = [(OUTPUT, channels)] + ([(STRUCTURE, 1)] if cfg.structure else [])
    out_txt = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: TYPE_FP32\n    dims: [ {c}, -1, -1 ]\n  }}'
        for n, c in outputs)
    return (
        f'name: "{cfg.model_name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {cfg.max_batch_size}\n"
        "input [\n"
        f'  {{\n    name: "{INPUT}"\n    data_type: TYPE_FP32\n    dims: [ {channels}, -1, -1 ]\n  }}\n'
        "]\n"
        f"output [\n{out_txt}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in prefs)} ]\n"
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {cfg.instance_count}\n    kind: {cfg.instance_kind}\n  }}\n"
        "]\n"
        "parameters {\n"
        '  key: "same_fast.value_range"\n  value: { string_value: "[0, 1]" }\n'
        "}\n"
        "parameters {\n"
        f'  key: "same_fast.multiple"\n  value: {{ string_value: "{multiple}" }}\n'
        "}\n"
    )


def write_triton_repository(repo: str | Path, onnx_bytes: bytes, channels: int, multiple: int,
                            cfg: TritonConfig | None = None) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx``; returns the model dir."""
    cfg = cfg or TritonConfig()
    text = config_pbtxt(channels, multiple, cfg)
    model_dir = Path(repo) / cfg.model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.onnx").write_bytes(onnx_bytes)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse protobuf text format into dicts/lists (repeated fields become lists).

    Enough of the format for Triton configs (messages, lists, strings, numbers, enums), so tests
    and users can check a written repository without tritonclient or protobuf descriptors.
    """
    tokens = [m.group(2) or m.group(3) or m.group(4) for m in _TOKEN.finditer(text)
              if not m.group(1) and (m.group(2) or m.group(3) or m.group(4))]
    pos = 0

    def value(tok: str) -> Any:
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        for conv in (int, float):
            try:
                return conv(tok)
            except ValueError:
                pass
        return tok  # enum or identifier

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == end:
                pos += 1
                return out
            key = tok
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            v = item()
            if key in out:
                prev = out[key]
                out[key] = (prev if isinstance(prev, list) else [prev]) + \
                    (v if isinstance(v, list) else [v])
            else:
                out[key] = v
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        if end is not None:
            raise InputError("config.pbtxt: unbalanced braces")
        return out

    def item() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(item())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return value(tok)

    try:
        return message(None)
    except IndexError:
        raise InputError("config.pbtxt: truncated") from None
