"""Online adaptation in a child process: no GIL shared with serving.

In one process, the adapter's Python work (module calls, autograd, augmentation) takes the GIL
many times per step and the serving worker waits for it; measured on the stream benchmark that
raised serving p99 about threefold. Here the adapter runs in ``python -m
same_fast.serve.adapter_proc``; the server talks to it over its stdin/stdout with length-framed
messages (a JSON header and raw bytes: frames in, safetensors weights out). No pickle.

Message framing (both directions): 4-byte big-endian header length, the UTF-8 JSON header,
8-byte big-endian payload length, the payload.
Parent -> child: ``init`` (header: config, with ``adapt``: the adapter's ``AdaptConfig`` as a
dict, ``cpus``: the CPU list to confine the child to or null, and ``audit_context``: the audit
log's ``serve`` record; architecture metadata; payload: safetensors source weights), ``frames`` (header:
shape, and ``dtype`` uint8 or uint16 with ``layout`` NHWC for the served frames as they are;
without them, payload float16 (N, C, H, W) in [0, 1]), ``publish`` (send weights held back by
``publish_every_s`` now; no ack), ``freeze``, ``resume``, ``reset``, ``stop`` (each control
header carries an ``id`` echoed in an ``ack``).
Child -> parent: ``ready`` (after init), ``weights`` (header: version, hash, stats; payload:
safetensors state of the served model), ``ack`` (header: id, stats), ``stats`` (header:
stats; sent when the adapter starts or stops holding, since no weights go out then),
``error`` (header: message).

With ``audit`` in the init config the child appends the audit log itself (it runs the adapter:
``same_fast.serve.adapter_setup.ServeAudit``), flushing every record; it writes the ``end`` record
when told to stop or when its stdin closes. SIGINT and SIGTERM are ignored: the parent drains
on them and then stops the child, so no step record is cut short.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 1 << 20
_MAX_PAYLOAD = 1 << 32


def write_msg(f: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    h = json.dumps(header).encode()
    f.write(struct.pack(">I", len(h)) + h + struct.pack(">Q", len(payload)))
    if payload:
        f.write(payload)
    f.flush()


def _read_exact(f: BinaryIO, n: int) -> bytearray | None:
    """``n`` bytes read straight into one buffer (no joining of chunks), or None at the end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            return None
        got += k
    return buf


# safetensors dtype names -> torch dtype names
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}


def load_weights(payload: bytearray) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors payload as views of it (no copy).

    ``safetensors.torch.load`` copies every tensor with the GIL held (~1.4 ms for the 6.6 MB
    lite model), and the serving thread waits on that GIL; this parses the JSON header and
    wraps the bytes. The views share ``payload``: copy before changing either.
    """
    import torch

    if len(payload) < 8:
        raise ValueError("weights payload shorter than a safetensors header")
    n = int.from_bytes(payload[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(payload):
        raise ValueError(f"weights payload header of {n} bytes")
    header = json.loads(bytes(payload[8:8 + n]))
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _DTYPES.get(str(info.get("dtype")), ""), None)
        begin, end = (int(v) for v in info["data_offsets"])
        shape = [int(v) for v in info["shape"]]
        if dtype is None or not 0 <= begin <= end <= len(payload) - base:
            raise ValueError(f"weights payload: bad entry for '{name}'")
        count = (end - begin) // dtype.itemsize
        t = torch.frombuffer(payload, dtype=dtype, count=count, offset=base + begin) \
            if count else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(shape)
    return out


def read_msg(f: BinaryIO) -> tuple[dict[str, Any], bytearray] | None:
    """The next message, or None at end of stream. Sizes are bounded (a corrupt stream fails)."""
    raw = _read_exact(f, 4)
    if raw is None:
        return None
    (hl,) = struct.unpack(">I", raw)
    if hl > _MAX_HEADER:
        raise ValueError(f"adapter message header of {hl} bytes")
    h = _read_exact(f, hl)
    raw = _read_exact(f, 8)
    if h is None or raw is None:
        return None
    (pl,) = struct.unpack(">Q", raw)
    if pl > _MAX_PAYLOAD:
        raise ValueError(f"adapter message payload of {pl} bytes")
    payload = _read_exact(f, pl) if pl else bytearray()
    if payload is None:
        return None
    return json.loads(h), payload


def _frames01(header: dict[str, Any], payload: bytearray) -> Any:
    """A ``frames`` message's payload as float32 ``(N, C, H, W)`` in [0, 1]."""
    import numpy as np
    import torch

    from same_fast.io.convert import to_tensor

    shape = [int(d) for d in header["shape"]]
    dtype = header.get("dtype", "float16")
    if dtype == "float16":
        return torch.frombuffer(payload, dtype=torch.float16).reshape(shape).float()
    if dtype not in ("uint8", "uint16") or header.get("layout") != "NHWC" or len(shape) != 4:
        raise ValueError(f"frames of dtype {dtype}, layout {header.get('layout')}, "
                         f"shape {shape}: expected uint8/uint16 NHWC")
    return to_tensor(np.frombuffer(payload, dtype=dtype).reshape(shape))


def _stats(adapter: Any) -> dict[str, Any]:
    s = adapter.stats()
    s["last_drift"] = adapter.safety.last_drift
    return s


def main() -> int:
    import signal

    from same_fast.adapt.config import AdaptConfig
    from same_fast.serve.cpus import confine_process

    # The parent owns our lifetime (stdin closes when it goes); a Ctrl+C at the terminal, or a
    # service manager's SIGTERM to the whole group, must not kill training mid-message: the
    # parent drains, then sends "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but framed messages may reach the parent's pipe
    first = read_msg(inp)
    if first is None or first[0].get("type") != "init":
        return 2
    header, payload = first
    init = header["config"]
    cfg = AdaptConfig.from_dict(init["adapt"])
    # Priority and CPUs before torch starts any thread: threads inherit both.
    try:
        os.nice(int(cfg.nice))
    except OSError:
        pass
    confine_process(init.get("cpus"))
    import torch
    from safetensors.torch import save as st_save

    from same_fast.adapt.online import OnlineAdapter
    from same_fast.adapt.safety import SafetyConfig
    from same_fast.models import build_from_metadata
    from same_fast.serve.adapter_setup import load_serving_picker, open_audit
    from same_fast.serve.model import short_hash

    torch.set_num_threads(max(1, int(cfg.threads)))
    model = build_from_metadata(header["metadata"], "adapter")
    model.load_state_dict(load_weights(payload))
    picker = load_serving_picker(cfg, cfg.modality)
    audit = None
    if cfg.audit:
        audit = open_audit(cfg.audit, cfg.hash_every, init.get("audit_context") or {})
    adapter = OnlineAdapter(model, picker, cfg, SafetyConfig.of(cfg), audit=audit)
    write_msg(out, {"type": "ready", "stats": _stats(adapter)})
    end = "adapter process ended"
    try:
        end = _serve(adapter, inp, out, short_hash, st_save, float(cfg.publish_every_s))
        return 0
    finally:
        if audit is not None:
            try:
                audit.event("end", adapter.steps, served=adapter.served, version=adapter.version,
                            reason=end)
            finally:
                audit.close()


def _serve(adapter: Any, inp: BinaryIO, out: BinaryIO, short_hash: Any, st_save: Any,
           publish_every_s: float = 0.0) -> str:
    """Answer the parent's messages until "stop" or end of input; returns why it ended.

    New weights go out at most every ``publish_every_s`` seconds (controls, the ``publish``
    message and safety actions publish at once); held-back weights go out with the first
    message after the interval.
    """
    import time

    published = adapter.version
    holding = adapter.holding
    last = float("-inf")
    history_cap = 1024

    def publish(force: bool = False) -> None:
        nonlocal published, last
        if adapter.version == published:
            return
        now = time.monotonic()
        if not force and now - last < publish_every_s:
            return
        last = now
        state, version = adapter.snapshot()
        state = {k: v.contiguous() for k, v in state.items()}
        write_msg(out, {"type": "weights", "version": version, "hash": short_hash(state),
                        "stats": _stats(adapter)}, st_save(state))
        published = version

    while True:
        msg = read_msg(inp)
        if msg is None:
            return "the server closed the adapter's input"
        header, payload = msg
        kind = header.get("type")
        try:
            if kind == "frames":
                safety = (adapter.frozen, adapter.resets)
                x = _frames01(header, payload)
                for f in x:
                    if adapter.frozen:
                        break
                    adapter.observe(f[None])
                if len(adapter.history) > 2 * history_cap:
                    del adapter.history[:-history_cap]
                # A safety freeze or reset is served (and reported) at once.
                publish(force=(adapter.frozen, adapter.resets) != safety)
                if adapter.holding != holding:  # a hold publishes nothing: say so
                    holding = adapter.holding
                    write_msg(out, {"type": "stats", "stats": _stats(adapter)})
            elif kind == "publish":
                publish(force=True)
            elif kind in ("freeze", "resume", "reset"):
                if kind == "freeze":
                    adapter.freeze("requested over HTTP")
                elif kind == "resume":
                    adapter.resume()
                else:
                    adapter.reset("requested over HTTP")
                publish(force=True)
                write_msg(out, {"type": "ack", "id": header.get("id"), "stats": _stats(adapter)})
            elif kind == "stop":
                write_msg(out, {"type": "ack", "id": header.get("id"), "stats": _stats(adapter)})
                return "server stopped"
        except Exception as e:  # reported to the parent, which keeps serving
            write_msg(out, {"type": "error", "message": f"{type(e).__name__}: {e}"[:300],
                            "id": header.get("id"), "stats": _stats(adapter)})


if __name__ == "__main__":
    sys.exit(main())
