"""Running the ASGI app under uvicorn, with a SIGTERM that drains instead of dropping frames.

uvicorn's own shutdown closes open WebSockets at once (in-flight frames would be lost). Here the
first SIGTERM/SIGINT starts a drain: the listening sockets close (no new connections),
readiness turns 503, open connections keep being served (HTTP replies then say
``Connection: close``; a stream reads until its client is quiet for ``drain_quiet_s``), every
frame received is answered, sockets close with 1001, and only then uvicorn exits (exit status
0). A second signal, or ``drain_timeout_s``, cuts the drain short.

HTTP connections go through ``serve.limits`` (header timeouts, per-client caps that close idle
connections first), not uvicorn's ``limit_concurrency``, which counted idle sockets.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from same_fast.serve.app import ABORT_KEY, create_app
from same_fast.serve.config import ServeConfig
from same_fast.serve.limits import ConnectionGuard, http_protocol, redact_logs
from same_fast.serve.service import Service, freeze_heap, tune_process

log = logging.getLogger("same_fast.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose exit signal drains the service first."""

    def __init__(self, config: uvicorn.Config, service: Service, starlette: Any) -> None:
        super().__init__(config)
        self.service = service
        self.starlette = starlette
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:  # signal handler (main thread)
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self.drain()

    def drain(self) -> None:
        """Start a graceful drain from any thread."""
        self._draining = True
        self.service.begin_drain()
        loop = self._loop
        if loop is None:
            self.should_exit = True
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting; open connections go on
        self.starlette.state.drain_event.set()
        deadline = time.monotonic() + self.service.config.drain_timeout_s
        while not self.service.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.should_exit = True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from same_fast.errors import InputError

        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _ws_protocol() -> Any:
    """uvicorn's WebSocket protocol ("auto") with the connection's ``transport.abort`` in each
    scope under ``ABORT_KEY``, so the app can drop a client that stopped reading (a graceful
    close waits for the client to read what is buffered: forever, for such a client)."""
    try:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
    except ImportError:
        return "auto"
    if AutoWebSocketsProtocol is None:
        return "auto"

    class AbortableProtocol(AutoWebSocketsProtocol):  # type: ignore[misc, valid-type]
        async def run_asgi(self) -> None:
            scope, transport = getattr(self, "scope", None), getattr(self, "transport", None)
            if isinstance(scope, dict) and transport is not None:
                scope[ABORT_KEY] = transport.abort
            await super().run_asgi()

    return AbortableProtocol


def build_server(service: Service, log_level: str = "warning") -> DrainingServer:
    cfg = service.config
    asgi = create_app(service)
    guard = ConnectionGuard(cfg.max_client_connections, _open_files_cap(cfg.max_open_connections))
    uv = uvicorn.Config(
        asgi, log_level=log_level, lifespan="off", ws=_ws_protocol(),
        http=http_protocol(guard, cfg.first_byte_timeout_s, cfg.header_timeout_s),
        # Protocol-level ceiling well above our own per-message limit, so an oversized frame
        # gets a JSON error from us instead of a 1009 close from the protocol.
        ws_max_size=max(cfg.max_message_bytes * 4, 1 << 20),
        ws_ping_interval=20.0, ws_ping_timeout=20.0,
        timeout_keep_alive=5, limit_concurrency=None, timeout_graceful_shutdown=5,
    )
    redact_logs()
    server = DrainingServer(uv, service, asgi.app)
    server.guard = guard
    return server


def _open_files_cap(wanted: int) -> int:
    """``wanted`` connections, at most the process's open-file limit less a reserve (model
    files, pipes, the adapter)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - 64))


def run_server(config: ServeConfig, log_level: str = "info") -> int:
    """Serve until SIGTERM/SIGINT (in the main thread); returns the exit status."""
    tune_process()
    service = Service(config)
    sock = _bind(config.host, config.port)
    server = build_server(service, log_level)
    freeze_heap()  # loaded and bound: what is alive now lives as long as the server
    host, port = sock.getsockname()[:2]
    log.info("same-fast serving %s on http://%s:%s (backend %s, adapt %s)", config.model, host,
             port, service.model.backend, config.adapt)
    if service.adaptation is not None:
        log.info("online adaptation: %s", service.adaptation.cpus.note)
    ws = f" and ws://{host}:{port}/v1/stream" if config.stream else ""
    print(f"same-fast: serving {config.model} on http://{host}:{port}{ws}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
    return 0


class ServerThread:
    """A real uvicorn server on a free loopback port in a background thread (tests, benchmarks).

    ``with ServerThread(service) as srv: srv.url`` ... ; leaving drains and stops it.
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.sock = _bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = build_server(service)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="same-fast-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/stream"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self, drain: bool = True) -> None:
        if self.thread.is_alive():
            if drain:
                self.server.drain()
            else:
                self.server.should_exit = True
            self.thread.join(timeout=60)
        self.service.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
