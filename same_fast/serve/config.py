"""Serving configuration: ``ServeConfig``, whose fields map 1:1 to ``same-fast serve`` flags but
for ``adaptation``, the online-adaptation settings nested in it (the library's
``same_fast.adapt.config.AdaptConfig``, ``AdaptConfig.serving()`` defaults; its flags are named in
``ADAPT_FLAGS``). Torch-free, so the CLI parses and validates before anything loads."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from same_fast.adapt.config import AdaptConfig
from same_fast.errors import InputError

__all__ = ["ADAPT_FLAGS", "ADAPT_IN", "AdaptConfig", "ServeConfig", "is_loopback", "parse_shape",
           "read_token_file"]

LOOPBACK_NAMES = ("localhost",)
ADAPT_IN = ("process", "thread")

# The ``same-fast serve`` flag of each AdaptConfig field it exposes: commands/serve.py declares
# them from it (``same_fast.adapt.config.add_flags``), and validation errors name them.
ADAPT_FLAGS = {
    "batch": "--adapt-batch", "every": "--adapt-every", "buffer": "--adapt-buffer",
    "size": "--adapt-crop", "lr": "--adapt-lr", "ema": "--adapt-ema", "serve": "--adapt-serve",
    "cpus": "--adapt-cpus", "publish_every_s": "--adapt-publish-every-s",
    "safety": "--adapt-safety", "min_acceptance": "--adapt-min-acceptance",
    "max_drift": "--adapt-max-drift", "audit": "--audit", "hash_every": "--audit-hash-every",
    "picker": "--picker", "seed": "--seed", "redegrade_preset": "--adapt-redegrade",
    "redegrade_strength": "--adapt-redegrade-strength", "redegrade": "--adapt-no-redegrade",
    "picker_calibrate": "--adapt-picker-calibrate", "skip_unmeasured": "--adapt-always",
}


@dataclass
class ServeConfig:
    """How ``same-fast serve`` runs.

    model: a shipped name, a checkpoint path, or a synthetic model (``identity``,
    ``identity:delay_ms=N``) for tests and benchmarks.
    stream: also serve the WebSocket stream ``/v1/stream`` (HTTP endpoints are always on).
    backend: inference backend (``same_fast.engine``: auto, torch, torchscript, compile,
    onnxruntime, tensorrt). device: cpu, cuda or auto. channels_last: NHWC weights and frames
    for the torch/torchscript/compile backends. force_modality: enhance DICOM requests whose
    Modality the model was not trained for (refused with 400 otherwise, as ``enhance`` does).
    adapt: ``off`` or ``online`` (adapt the served weights to the incoming frames);
    adapt_in: where the adapter runs, ``process`` (a child process, no GIL shared with serving)
    or ``thread``; adaptation: its settings (``AdaptConfig``, from the ``--adapt-*``,
    ``--audit*``, ``--picker`` and ``--seed`` flags; an audit log needs ``adapt='online'``).
    token: the bearer token (``same-fast serve`` also takes it from ``--token-file`` or the
    ``SAME_FAST_TOKEN`` environment variable, which keep it out of the process list);
    token_file: a file whose first line is the token (read by ``validate`` when token is None).
    Limits (docs/SERVING.md): max_message_bytes per WebSocket message or HTTP body; max_pixels
    per frame; max_inflight frames per connection (the client is back-pressured beyond it);
    max_connections concurrent WebSocket streams; idle_timeout_s without a message and
    send_timeout_s for one reply before a slow client is disconnected; drain_timeout_s is how
    long SIGTERM waits for in-flight frames, drain_quiet_s how long a stream must stay silent
    before the drain closes it. Connections (``serve.limits``): first_byte_timeout_s and
    header_timeout_s for a request head, body_timeout_s between pieces of a body and
    request_timeout_s for a whole body (408 past either), max_client_connections per client
    address and max_open_connections in all (idle ones are closed first to make room).
    Memory: max_batch_pixels per model call (larger frames are tiled, ``serve.tiling``),
    max_queued_pixels of decoded frames waiting or in the model (busy beyond it),
    codec_threads decode and encode frames off the event loop.
    Loop: queue capacity, max_batch, max_delay_ms, policy (block | drop_oldest), workers.
    Pipe mode: pipe, shape (``HxWxC``), dtype (uint8 | uint16).
    """

    model: str = "identity"
    stream: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "torch"
    device: str = "cpu"
    channels_last: bool = False
    force_modality: bool = False
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
    drain_quiet_s: float = 0.5
    token_file: str | None = None
    first_byte_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 5.0
    request_timeout_s: float = 60.0
    max_client_connections: int = 128
    max_open_connections: int = 1024
    max_batch_pixels: int = 4 * 1024 * 1024
    max_queued_pixels: int = 64 * 1024 * 1024
    codec_threads: int = 2
    # online adaptation
    adapt_in: str = "process"
    adaptation: AdaptConfig = field(default_factory=AdaptConfig.serving)
    # pipe mode
    pipe: bool = False
    shape: str | None = None
    dtype: str = "uint8"

    def validate(self) -> ServeConfig:
        """Raise InputError for inconsistent settings (e.g. a public host without a token)."""
        if self.adapt not in ("off", "online"):
            raise InputError(f"--adapt must be off or online, got '{self.adapt}'")
        if self.adapt_in not in ADAPT_IN:
            raise InputError("--adapt-in must be process or thread")
        self.adaptation.check(ADAPT_FLAGS)
        a = self.adaptation
        if self.adapt == "online" or a.cpus.strip().lower() not in ("auto", "off"):
            # a bad CPU list fails here, before any model loads; a server that does not adapt
            # only checks a list, not auto or off
            from same_fast.serve.cpus import plan_adapter_cpus

            plan_adapter_cpus(a.cpus)
        if self.adaptation.audit and self.adapt != "online":
            raise InputError("--audit logs online adaptation; add --adapt online")
        if self.policy not in ("block", "drop_oldest"):
            raise InputError("--policy must be block or drop_oldest")
        for name in ("max_batch", "capacity", "workers", "max_inflight", "max_connections",
                     "max_message_bytes", "max_pixels", "max_client_connections",
                     "max_open_connections", "max_batch_pixels", "max_queued_pixels",
                     "codec_threads"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("idle_timeout_s", "send_timeout_s", "drain_timeout_s", "drain_quiet_s",
                     "first_byte_timeout_s", "header_timeout_s", "body_timeout_s",
                     "request_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0")
        if self.max_batch_pixels < 64 * 64:
            raise InputError("--max-batch-pixels must be >= 4096 (a 64x64 tile)")
        if self.token is None and self.token_file:
            self.token = read_token_file(self.token_file)
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


def read_token_file(path: str) -> str:
    """The first line of ``path``, stripped; InputError when unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--token-file: cannot read '{path}' ({getattr(e, 'strerror', None) or e})"
                         ) from None
    if not token:
        raise InputError(f"--token-file: '{path}' holds no token on its first line")
    return token


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
