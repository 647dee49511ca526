"""``same-fast serve``: enhancement over HTTP and WebSocket, or as a raw-frame pipe.

Examples::

    same-fast serve -m fundus-lite --stream                       # http://127.0.0.1:8000
    same-fast serve -m fundus-lite --adapt online --max-batch 4 --max-delay-ms 5
    same-fast serve -m fundus-lite --stream --adapt online --audit adapt-audit.jsonl
    same-fast serve -m model.safetensors --host 0.0.0.0 --token "$TOKEN"
    same-fast serve -m identity --pipe --shape 480x640x3 < in.raw > out.raw
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from same_fast.adapt.config import add_flags, from_args
from same_fast.errors import InputError
from same_fast.serve.config import ADAPT_FLAGS, ADAPT_IN, ServeConfig

HELP = "serve enhancement over HTTP/WebSocket or a pipe"

TOKEN_ENV = "SAME_FAST_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    p.add_argument("-m", "--model", default=d.model,
                   help="shipped model name, checkpoint path, or identity[:delay_ms=N]")
    p.add_argument("--stream", action="store_true", default=d.stream,
                   help="also serve the WebSocket stream ws://HOST:PORT/v1/stream")
    p.add_argument("--host", default=d.host, help="listen address (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=d.port, help="listen port (0 = any free port)")
    p.add_argument("--backend", default=d.backend,
                   help="inference backend: auto, torch, torchscript, compile, onnxruntime, "
                        "tensorrt")
    p.add_argument("--device", default=d.device, help="cpu, cuda or auto")
    p.add_argument("--channels-last", action="store_true", default=d.channels_last,
                   help="torch/compile backends: NHWC weights and frames (often faster on CPU)")
    p.add_argument("--force-modality", action="store_true", default=d.force_modality,
                   help="enhance DICOM requests of a modality the model was not trained for")
    p.add_argument("--adapt", default=d.adapt, choices=["off", "online"],
                   help="adapt the served model to incoming frames in the background")
    p.add_argument("--config", metavar="FILE",
                   help="read settings from a TOML, YAML or JSON file whose keys are these "
                        "flags' long names (e.g. max-batch = 8); flags given here win")
    p.add_argument("--token", default=d.token,
                   help="bearer token required on every endpoint but /healthz (visible in the "
                        "process list: prefer --token-file or SAME_FAST_TOKEN)")
    p.add_argument("--token-file", default=d.token_file, metavar="FILE",
                   help="read the bearer token from the first line of FILE")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="frames per model call")
    g.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms,
                   help="longest a frame waits for its batch to fill")
    g.add_argument("--capacity", type=int, default=d.capacity, help="queued frames, all clients")
    g.add_argument("--policy", default=d.policy, choices=["block", "drop_oldest"],
                   help="when the queue is full: refuse new frames (busy) or drop the oldest")
    g.add_argument("--workers", type=int, default=d.workers, help="threads calling the model")
    g = p.add_argument_group("limits")
    g.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="pixels per frame")
    g.add_argument("--max-inflight", type=int, default=d.max_inflight,
                   help="unanswered frames per connection before the server stops reading")
    g.add_argument("--max-connections", type=int, default=d.max_connections)
    g.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s)
    g.add_argument("--send-timeout-s", type=float, default=d.send_timeout_s)
    g.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s,
                   help="longest SIGTERM waits for received frames to be answered")
    g.add_argument("--drain-quiet-s", type=float, default=d.drain_quiet_s,
                   help="on SIGTERM a stream closes once silent this long")
    g.add_argument("--first-byte-timeout-s", type=float, default=d.first_byte_timeout_s,
                   help="a new connection must send its first byte within this")
    g.add_argument("--header-timeout-s", type=float, default=d.header_timeout_s,
                   help="a request head must be complete within this")
    g.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                   help="longest gap between pieces of a request body (408 past it)")
    g.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s,
                   help="a whole request body must arrive within this (408 past it)")
    g.add_argument("--max-client-connections", type=int, default=d.max_client_connections,
                   help="open connections per client address (idle ones are closed first)")
    g.add_argument("--max-open-connections", type=int, default=d.max_open_connections,
                   help="open connections in all (idle ones are closed first)")
    g.add_argument("--max-batch-pixels", type=int, default=d.max_batch_pixels,
                   help="pixels per model call; larger frames are enhanced in tiles")
    g.add_argument("--max-queued-pixels", type=int, default=d.max_queued_pixels,
                   help="decoded pixels waiting or in the model, all clients (busy beyond)")
    g.add_argument("--codec-threads", type=int, default=d.codec_threads,
                   help="threads decoding and encoding frames off the event loop")
    g = p.add_argument_group("online adaptation")
    g.add_argument("--adapt-in", default=d.adapt_in, choices=list(ADAPT_IN),
                   help="run the adapter in a child process (no GIL shared with serving) "
                        "or a thread")
    add_flags(g, ADAPT_FLAGS, d.adaptation)
    g = p.add_argument_group("pipe mode")
    g.add_argument("--pipe", action="store_true", help="raw frames stdin -> stdout")
    g.add_argument("--shape", default=d.shape, help="HxWxC of every raw frame")
    g.add_argument("--dtype", default=d.dtype, choices=["uint8", "uint16"],
                   help="sample type (uint16 is little-endian)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of parsed ``serve`` arguments (the ``ADAPT_FLAGS`` ones nested in
    ``adaptation``), after ``--config`` and the ``SAME_FAST_TOKEN`` environment variable."""
    if getattr(args, "config", None):
        apply_config_file(args, args.config)
    if args.token is None and args.token_file is None and os.environ.get(TOKEN_ENV):
        args.token = os.environ[TOKEN_ENV]
    names = {f.name for f in dataclasses.fields(ServeConfig)} - {"adaptation"}
    return ServeConfig(**{k: v for k, v in vars(args).items() if k in names},
                       adaptation=from_args(args, ADAPT_FLAGS, ServeConfig().adaptation))


def apply_config_file(args: argparse.Namespace, path: str) -> None:
    """Set ``args`` from a settings file whose keys are flag names (``max-batch`` or
    ``max_batch``, with or without ``--``); a flag given on the command line (a value other
    than its default) wins. InputError for an unknown key or an unreadable file."""
    from same_fast.serve.settings_file import read_settings

    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    defaults = vars(p.parse_args([]))
    # every long flag -> its argparse destination (the --adapt-* ones land on AdaptConfig fields)
    dests = {_key(opt): action.dest for action in p._actions for opt in action.option_strings}
    for key, value in read_settings(path).items():
        dest = dests.get(_key(key))
        if dest is None or dest == "config":
            raise InputError(f"--config {path}: unknown setting '{key}' (keys are the flags of "
                             "same-fast serve, e.g. max-batch)")
        if getattr(args, dest) == defaults[dest]:
            setattr(args, dest, value)


def _key(flag: str) -> str:
    """A flag or settings-file key as one spelling: ``--max-batch`` -> ``max_batch``."""
    return flag.lstrip("-").replace("-", "_")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).validate()
    if cfg.pipe:
        from same_fast.serve.pipe import run_pipe

        return run_pipe(cfg, freeze=True)
    import importlib.util

    from same_fast.errors import missing_dependency

    for package in ("starlette", "uvicorn", "websockets", "prometheus_client"):
        if importlib.util.find_spec(package) is None:
            raise missing_dependency(package, "same-fast serve (HTTP/WebSocket)", "serve")
    from same_fast.serve.server import run_server

    return run_server(cfg, log_level="debug" if getattr(args, "debug", False) else "info")
