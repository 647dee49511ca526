"""Connection limits that hold against idle and slow clients, below the ASGI app.

uvicorn starts no timer on a new connection until its first response, and its
``limit_concurrency`` counts idle connections: ~160 sockets that send nothing made every request
(``/healthz`` too) answer 503. Here each HTTP connection must send its first byte within
``first_byte_timeout_s`` and a complete request head within ``header_timeout_s`` (from the
connection, or from the end of the previous response on a kept-alive one; trickling bytes does
not extend it). Connections are capped per client address (``max_client_connections``) and in
all (``max_open_connections``); at a cap the oldest connection that has no request in progress
is closed to make room, so idle sockets cannot lock requests out. Only when every connection is
busy is the new one refused: a JSON 503 and close. Upgraded (WebSocket) connections count
toward the caps but are never evicted (the app caps streams itself).

Also here: uvicorn's plain-text 400 for a malformed request becomes JSON, and the access log
never shows a ``token=`` query value.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from typing import Any

import h11

_TOKEN_RE = re.compile(r"(token=)[^&\s\"]*", re.IGNORECASE)


def json_reply(status: int, reason: str, error: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON ``{"error": ...}`` body."""
    body = json.dumps({"error": error}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class ConnectionGuard:
    """Open connections by client address, with eviction of idle ones at a cap (event loop only).

    Each entry is a protocol object with ``busy`` (a request in progress, or upgraded), ``closing()``
    and ``evict()``.
    """

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self.clients: dict[str, OrderedDict[Any, None]] = {}
        self.count = 0
        self.evicted = 0
        self.refused = 0

    def admit(self, proto: Any, client: str) -> bool:
        """Register ``proto``; False (not registered) when no idle connection can make room."""
        self._purge(client)
        mine = self.clients.setdefault(client, OrderedDict())
        if len(mine) >= self.per_client and not self._evict_one(mine):
            self.refused += 1
            return False
        if self.count >= self.total:
            self._purge_all()
            if self.count >= self.total and not any(
                    self._evict_one(c) for c in sorted(self.clients.values(), key=len,
                                                       reverse=True)):
                self.refused += 1
                return False
        mine[proto] = None
        self.count += 1
        return True

    def release(self, proto: Any, client: str) -> None:
        mine = self.clients.get(client)
        if mine is not None and proto in mine:
            del mine[proto]
            self.count -= 1
            if not mine:
                del self.clients[client]

    def touch(self, proto: Any, client: str) -> None:
        """``proto`` became idle again: it is now the newest candidate for eviction."""
        mine = self.clients.get(client)
        if mine is not None and proto in mine:
            mine.move_to_end(proto)

    def _evict_one(self, conns: OrderedDict[Any, None]) -> bool:
        for proto in conns:
            if not proto.busy:
                self.evicted += 1
                proto.evict()  # closes; its connection_lost releases it
                del conns[proto]
                self.count -= 1
                return True
        return False

    def _purge(self, client: str) -> None:
        # Upgraded connections leave no connection_lost on the HTTP protocol: drop closed ones.
        mine = self.clients.get(client)
        if mine:
            for proto in [p for p in mine if p.closing()]:
                del mine[proto]
                self.count -= 1

    def _purge_all(self) -> None:
        for client in list(self.clients):
            self._purge(client)


def http_protocol(guard: ConnectionGuard, first_byte_timeout_s: float,
                  header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with the timeouts and caps above."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        busy = False
        _first_byte: asyncio.TimerHandle | None = None
        _header: asyncio.TimerHandle | None = None
        _key = ""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._key = self.client[0] if self.client else ""
            if not guard.admit(self, self._key):
                self.busy = True  # not registered: nothing to release
                self._key = "\0refused"
                transport.write(json_reply(503, "Service Unavailable",
                                           "too many open connections; retry later"))
                transport.close()
                return
            self._first_byte = self.loop.call_later(first_byte_timeout_s, self.evict)
            self._header = self.loop.call_later(header_timeout_s, self.evict)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            guard.release(self, self._key)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._first_byte is not None:
                self._first_byte.cancel()
                self._first_byte = None
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and not self.busy:
                self.busy = True  # a full request head arrived
                if self._header is not None:
                    self._header.cancel()
                    self._header = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                self.busy = False
                guard.touch(self, self._key)
                if self._header is not None:
                    self._header.cancel()
                self._header = self.loop.call_later(header_timeout_s, self.evict)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self.busy = True
            self._cancel_timers()
            super().handle_websocket_upgrade(event)

        def send_400_response(self, msg: str) -> None:
            self.transport.write(json_reply(400, "Bad Request", msg))
            self.transport.close()

        def closing(self) -> bool:
            return self.transport is None or self.transport.is_closing()

        def evict(self) -> None:
            """Close without a reply (no request is in progress)."""
            self._cancel_timers()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def _cancel_timers(self) -> None:
            for t in (self._first_byte, self._header):
                if t is not None:
                    t.cancel()
            self._first_byte = self._header = None

    return GuardedH11Protocol


class RedactToken(logging.Filter):
    """Replace ``token=<value>`` in a log record's arguments (uvicorn's access log writes the
    query string) and message with ``token=***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _TOKEN_RE.sub(r"\1***", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_RE.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def redact_logs() -> None:
    """Install ``RedactToken`` on uvicorn's loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) for f in logger.filters):
            logger.addFilter(RedactToken())
