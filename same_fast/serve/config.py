"""Serving configuration: one dataclass whose fields map 1:1 to ``same-fast serve`` flags."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from same_fast.errors import InputError

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeConfig:
    """How ``same-fast serve`` runs.

    model: a shipped name, a checkpoint path, or a synthetic model (``identity``,
    ``identity:delay_ms=N``) for tests and benchmarks.
    stream: also serve the WebSocket stream ``/v1/stream`` (HTTP endpoints are always on).
    backend: inference backend (``same_fast.engine``: auto, torch, compile, onnxruntime,
    tensorrt). device: cpu, cuda or auto. channels_last: NHWC weights and frames for the
    torch/compile backends.
    adapt: ``off`` or ``online`` (adapt the served weights to the incoming frames).
    Limits: max_message_bytes per WebSocket message or HTTP body; max_pixels per frame;
    max_inflight frames per connection (the client is back-pressured beyond it);
    max_connections concurrent WebSocket streams; idle_timeout_s without a message and
    send_timeout_s for one reply before a slow client is disconnected; drain_timeout_s is how
    long SIGTERM waits for in-flight frames.
    Loop: queue capacity, max_batch, max_delay_ms, policy (block | drop_oldest), workers.
    adapt_min_acceptance, adapt_max_drift: safety thresholds (None: the library defaults, 0.05
    and 0.15). audit: JSONL file that every adaptation step and event is appended to (needs
    ``adapt='online'``); audit_hash_every: steps between served-weights hashes in it.
    adapt_cpus: CPUs the adapter is confined to, the stream loop's workers keeping the others
    (``auto``: the highest-numbered usable CPU when there are two or more; ``off``; or a list
    like ``1,3,5-7``; see ``same_fast.serve.cpus``). adapt_publish_every_s: new weights reach
    the served model at most this often (seconds; 0 = after every step).
    """

    model: str = "identity"
    stream: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "torch"
    device: str = "cpu"
    channels_last: bool = False
    adapt: str = "off"
    token: str | None = None
    max_batch: int = 4
    max_delay_ms: float = 0.0
    capacity: int = 256
    policy: str = "block"
    workers: int = 1
    max_message_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_inflight: int = 32
    max_connections: int = 64
    idle_timeout_s: float = 300.0
    send_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    # online adaptation
    adapt_batch: int = 4
    adapt_every: int = 4
    adapt_buffer: int = 64
    adapt_crop: int = 256
    adapt_lr: float = 2e-4
    adapt_ema: float = 0.995
    adapt_serve: str = "student"
    adapt_safety: str = "freeze"
    adapt_in: str = "process"
    adapt_cpus: str = "auto"
    adapt_publish_every_s: float = 1.0
    adapt_min_acceptance: float | None = None
    adapt_max_drift: float | None = None
    audit: str | None = None
    audit_hash_every: int = 10
    picker: str | None = None
    seed: int = 0
    # pipe mode
    pipe: bool = False
    shape: str | None = None
    dtype: str = "uint8"

    def validate(self) -> ServeConfig:
        """Raise InputError for inconsistent settings (e.g. a public host without a token)."""
        if self.adapt not in ("off", "online"):
            raise InputError(f"--adapt must be off or online, got '{self.adapt}'")
        if self.adapt_serve not in ("student", "teacher"):
            raise InputError("--adapt-serve must be student or teacher")
        if self.adapt_in not in ("process", "thread"):
            raise InputError("--adapt-in must be process or thread")
        if self.adapt_safety not in ("freeze", "reset", "off"):
            raise InputError("--adapt-safety must be freeze, reset or off")
        if self.policy not in ("block", "drop_oldest"):
            raise InputError("--policy must be block or drop_oldest")
        for name in ("max_batch", "capacity", "workers", "max_inflight", "max_connections",
                     "max_message_bytes", "max_pixels", "adapt_batch", "adapt_every",
                     "adapt_buffer"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1")
        if self.adapt == "online" or self.adapt_cpus.strip().lower() not in ("auto", "off"):
            from same_fast.serve.cpus import plan_adapter_cpus

            plan_adapter_cpus(self.adapt_cpus)  # a bad list fails here, before any model loads
        if self.audit and self.adapt != "online":
            raise InputError("--audit logs online adaptation; add --adapt online")
        if self.audit_hash_every < 0:
            raise InputError("--audit-hash-every must be >= 0")
        if self.adapt_min_acceptance is not None and not 0 <= self.adapt_min_acceptance <= 1:
            raise InputError("--adapt-min-acceptance must be in [0, 1]")
        if self.adapt_max_drift is not None and not self.adapt_max_drift >= 0:
            raise InputError("--adapt-max-drift must be >= 0")
        if not self.adapt_publish_every_s >= 0:
            raise InputError("--adapt-publish-every-s must be >= 0")
        if self.max_delay_ms < 0:
            raise InputError("--max-delay-ms must be >= 0")
        if not self.pipe and not is_loopback(self.host) and not self.token:
            raise InputError(f"serving on non-loopback host '{self.host}' requires --token "
                             "(every endpoint but /healthz then needs 'Authorization: Bearer')")
        if self.pipe:
            parse_shape(self.shape)
            if self.dtype not in ("uint8", "uint16"):
                raise InputError("--dtype must be uint8 or uint16")
        return self


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_shape(text: str | None) -> tuple[int, int, int]:
    """``"HxWxC"`` (or ``"HxW"``, C = 1) -> (H, W, C); InputError when malformed."""
    if not text:
        raise InputError("--pipe needs --shape HxWxC (e.g. 480x640x3)")
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--shape must look like HxWxC, got '{text}'") from None
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3 or min(dims) < 1 or dims[2] not in (1, 3, 4):
        raise InputError(f"--shape must be HxWxC with C in 1, 3, 4, got '{text}'")
    return dims[0], dims[1], dims[2]
