"""The ASGI application (Starlette): HTTP enhancement, the WebSocket stream, health and metrics.

Endpoints:

- ``POST /v1/enhance``: body = one encoded image (PNG, JPEG, TIFF, GIF, BMP) or a DICOM file;
  reply = PNG of the same size and channels (``image/png``), or a derived DICOM instance
  (``application/dicom``) for DICOM input; a multi-frame DICOM (a cine) comes back as a derived
  multi-frame DICOM with every frame enhanced (at most ``max_inflight`` of its frames queued at a
  time, so a long cine never finds the queue full of its own frames). Headers
  ``X-Same-Fast-Weights-Version`` and ``X-Same-Fast-Weights-Hash`` name the weights that produced
  it. Errors are JSON ``{"error": ...}`` with 400 (bad input), 413 (too large), 503 (busy,
  shutting down), 500.
- ``WS /v1/stream`` (with ``--stream``): each binary message is one encoded frame; each reply
  is one binary PNG of the same size, in the same order. A frame that fails gets a text message
  ``{"error": ..., "frame": n}`` (n counts this connection's messages from 0) in its place and
  the stream goes on. A multi-frame DICOM message is such an error (refused before its pixels are
  decoded: "send one frame per message"); the stream's one-reply-per-message order stays
  exact. Before the first reply, and whenever the weights change (online
  adaptation), a text message ``{"weights_version": v, "weights_hash": h, "frame": n}`` announces
  the weights of reply n and later ones. A client that sends more than ``max_inflight`` frames
  ahead of the replies is back-pressured (the server stops reading). A client that reads no
  reply for ``send_timeout_s`` is disconnected (its connection aborted, unsent replies dropped)
  and one that sends nothing for ``idle_timeout_s`` is closed with 1001. On SIGTERM every frame
  already received is answered, then the socket closes with 1001.
- ``GET /healthz`` (liveness, never needs the token), ``GET /readyz`` (503 while draining),
  ``GET /metrics`` (Prometheus text), ``GET /v1/model`` (JSON: model, backend, adaptation
  state, weights version and hash), ``POST /v1/adaptation/{freeze,resume,reset}``.

Security: with a token every endpoint but /healthz needs ``Authorization: Bearer <token>``
(WebSocket clients that cannot set headers may pass ``?token=``).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections import deque
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from same_fast.errors import ImageTooLargeError, InputError, SameFastError
from same_fast.serve.codec import check_channels, decode_frames, encode_dicom, encode_png, too_many_frames
from same_fast.serve.service import Busy, Service, ShuttingDown
from same_fast.stream import FrameDropped, StreamError

# Decoding or encoding above this many bytes/pixels moves to a thread so one large frame does
# not stall every other connection's event loop; small frames stay inline (a thread hop costs
# more than they do).
_OFFLOAD_BYTES = 256 * 1024
_OFFLOAD_PIXELS = 512 * 512

# Scope key under which the server (``server.build_server``) puts the connection's
# ``transport.abort``: a client that stopped reading cannot take a close frame, and a graceful
# close would wait forever for it to read what is buffered.
ABORT_KEY = "same_fast.abort"


def _error_kind(e: BaseException) -> str:
    if isinstance(e, ImageTooLargeError):
        return "limit"
    if isinstance(e, Busy):
        return "busy"
    if isinstance(e, ShuttingDown):
        return "shutdown"
    if isinstance(e, FrameDropped):
        return "dropped"
    if isinstance(e, StreamError):
        return "model"
    return "decode"


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:500]


class _Auth:
    """ASGI middleware: bearer token on every HTTP and WebSocket endpoint but /healthz."""

    def __init__(self, app: Any, token: str | None, service: Service) -> None:
        self.app, self.token, self.service = app, token, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.token and scope["path"] != "/healthz":
            if not self._allowed(scope):
                self.service.metrics.error("auth")
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                resp = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict) -> bool:
        token = None
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                text = v.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    token = text[7:].strip()
        if token is None and scope["type"] == "websocket":
            from urllib.parse import parse_qs

            q = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            token = (q.get("token") or [None])[0]
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())


def create_app(service: Service) -> Any:
    """The ASGI app over ``service`` (auth middleware outermost)."""
    cfg = service.config

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if service.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready", "model": service.model.name})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(service.prometheus(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def model_info(request: Request) -> Response:
        return JSONResponse(service.describe())

    async def adaptation(request: Request) -> Response:
        action = request.path_params["action"]
        if service.adaptation is None:
            return JSONResponse({"error": "adaptation is off (start with --adapt online)"},
                                status_code=409)
        if action not in ("freeze", "resume", "reset"):
            return JSONResponse({"error": f"unknown action '{action}'"}, status_code=404)
        await asyncio.to_thread(getattr(service.adaptation, action))
        return JSONResponse({"action": action, **service.adaptation.describe(),
                             "weights_version": service.model.weights_version})

    async def enhance(request: Request) -> Response:
        t0 = time.perf_counter()
        service.enter()
        try:
            return await _enhance(request, t0)
        finally:
            service.leave()

    async def _enhance(request: Request, t0: float) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_message_bytes:
            service.metrics.error("limit")
            return JSONResponse({"error": f"body of {declared} bytes is over the limit of "
                                          f"{cfg.max_message_bytes}"}, status_code=413)

        async def read_body() -> bytes | None:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > cfg.max_message_bytes:
                    return None
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            data = await asyncio.wait_for(read_body(), cfg.idle_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            service.metrics.error("timeout")
            return JSONResponse({"error": "request body too slow"}, status_code=408)
        if data is None:
            service.metrics.error("limit")
            return JSONResponse({"error": f"body is over the limit of {cfg.max_message_bytes} "
                                          "bytes"}, status_code=413)
        try:
            decoded = await asyncio.to_thread(decode_frames, data, cfg.max_pixels, "request")
            frames = [check_channels(f, service.model.channels, "request")
                      for f in decoded.frames]
            # A cine's frames go in a window of max_inflight: the queue holds other clients'
            # frames too, and a file longer than its capacity must not be refused as busy.
            window = max(1, min(cfg.max_inflight, cfg.capacity))
            futs: deque = deque()
            results = []
            for f in frames:
                if len(futs) >= window:
                    results.append(await asyncio.wrap_future(futs.popleft()))
                futs.append(service.accept(f))
            while futs:
                results.append(await asyncio.wrap_future(futs.popleft()))
        except SameFastError as e:
            kind = _error_kind(e)
            service.metrics.error(kind)
            status = {"limit": 413, "busy": 503, "shutdown": 503, "dropped": 503,
                      "model": 500}.get(kind, 400)
            return JSONResponse({"error": _one_line(e)}, status_code=status)
        arrays = [r[0] for r in results]
        version, digest = results[-1][1], results[-1][2]
        if decoded.format == "dicom":
            body = await asyncio.to_thread(encode_dicom, decoded.dataset, np.stack(arrays))
            media = "application/dicom"
        else:
            body = await asyncio.to_thread(encode_png, arrays[0])
            media = "image/png"
        elapsed = time.perf_counter() - t0
        for _ in arrays:
            service.metrics.frame_done(elapsed)
        return Response(body, media_type=media, headers={
            "X-Same-Fast-Weights-Version": str(version), "X-Same-Fast-Weights-Hash": digest,
            "X-Same-Fast-Latency-Ms": f"{elapsed * 1000:.3f}"})

    async def stream(ws: WebSocket) -> None:
        if service.draining:
            await ws.close(code=1001)
            return
        if service.metrics.connections >= cfg.max_connections:
            service.metrics.error("busy")
            await ws.close(code=1013)  # try again later
            return
        await ws.accept()
        service.enter()
        service.metrics.connection(+1)
        try:
            await _stream(ws)
        finally:
            service.metrics.connection(-1)
            service.leave()

    async def _stream(ws: WebSocket) -> None:
        pending: asyncio.Queue = asyncio.Queue()
        # One slot per unanswered frame: at max_inflight the server stops reading, so TCP flow
        # control back-pressures the client instead of frames piling up here.
        slots = asyncio.Semaphore(cfg.max_inflight)
        state = {"dead": False}
        sender = asyncio.create_task(_send_loop(ws, pending, state, slots))
        drain = asyncio.create_task(app.state.drain_event.wait())
        n = 0
        reason = 1000
        try:
            while True:
                slot = asyncio.ensure_future(slots.acquire())
                done, _ = await asyncio.wait({slot, drain}, return_when=asyncio.FIRST_COMPLETED)
                if slot not in done:
                    slot.cancel()
                    reason = 1001
                    break
                if state["dead"]:
                    break
                recv = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({recv, drain}, timeout=cfg.idle_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    with contextlib.suppress(BaseException):
                        await recv
                    reason = 1001  # idle timeout or shutting down
                    break
                msg = recv.result()
                if msg["type"] == "websocket.disconnect":
                    state["dead"] = True
                    break
                t0 = time.perf_counter()
                pending.put_nowait(await _accept_message(msg, n, t0))
                n += 1
                if state["dead"]:
                    break
        finally:
            drain.cancel()
            pending.put_nowait(None)
            if state["dead"]:
                sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        if not state["dead"]:
            with contextlib.suppress(Exception):
                await ws.close(code=reason)

    async def _accept_message(msg: dict, n: int, t0: float) -> tuple:
        data = msg.get("bytes")
        if data is None:
            return (n, t0, None, "send each frame as one binary message", "decode")
        if len(data) > cfg.max_message_bytes:
            return (n, t0, None, f"message of {len(data)} bytes is over the limit of "
                                 f"{cfg.max_message_bytes}", "limit")
        try:
            if len(data) > _OFFLOAD_BYTES:
                decoded = await asyncio.to_thread(decode_frames, data, cfg.max_pixels, "frame", 1)
            else:
                decoded = decode_frames(data, cfg.max_pixels, "frame", 1)
            if decoded.frames.shape[0] != 1:
                raise InputError(too_many_frames("frame", decoded.frames.shape[0]))
            frame = check_channels(decoded.frames[0], service.model.channels)
            return (n, t0, service.accept(frame), None, None)
        except SameFastError as e:
            return (n, t0, None, _one_line(e), _error_kind(e))
        except Exception as e:  # a decoder bug must not end the stream
            return (n, t0, None, f"cannot decode frame ({_one_line(e)})", "decode")

    async def _send_loop(ws: WebSocket, pending: asyncio.Queue, state: dict,
                         slots: asyncio.Semaphore) -> None:
        announced: int | None = None
        while True:
            item = await pending.get()
            if item is None:
                return
            try:
                if not state["dead"]:
                    announced = await _reply(ws, item, announced)
            except (TimeoutError, asyncio.TimeoutError):
                # The client stopped reading: drop the connection (unsent replies too); other
                # streams go on.
                state["dead"] = True
                service.metrics.error("disconnect")
                abort = ws.scope.get(ABORT_KEY)
                if abort is not None:
                    abort()
            except (WebSocketDisconnect, RuntimeError, OSError):
                state["dead"] = True  # the client left: stop writing to it
                service.metrics.error("disconnect")
            finally:
                slots.release()  # also for a dead socket, so the receiver never waits forever

    async def _reply(ws: WebSocket, item: tuple, announced: int | None) -> int | None:
        n, t0, fut, err, kind = item
        if fut is not None:
            try:
                arr, version, digest = await asyncio.wrap_future(fut)
            except StreamError as e:
                err, kind = _one_line(e), _error_kind(e)
        if err is not None:
            service.metrics.error(kind)
            await asyncio.wait_for(ws.send_text(json.dumps({"error": err, "frame": n})),
                                   cfg.send_timeout_s)
            return announced
        if arr.shape[0] * arr.shape[1] > _OFFLOAD_PIXELS:
            png = await asyncio.to_thread(encode_png, arr)
        else:
            png = encode_png(arr)
        if version != announced:
            await asyncio.wait_for(ws.send_text(json.dumps(
                {"weights_version": version, "weights_hash": digest, "frame": n})),
                cfg.send_timeout_s)
            announced = version
        await asyncio.wait_for(ws.send_bytes(png), cfg.send_timeout_s)
        service.metrics.frame_done(time.perf_counter() - t0)
        return announced

    routes = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/v1/model", model_info), Route("/v1/enhance", enhance, methods=["POST"]),
        Route("/v1/adaptation/{action}", adaptation, methods=["POST"]),
    ]
    if cfg.stream:
        routes.append(WebSocketRoute("/v1/stream", stream))

    app = Starlette(routes=routes)
    app.state.service = service
    # Set (on the event loop's thread) when SIGTERM starts the drain: streams stop reading,
    # answer what they hold and close with 1001.
    app.state.drain_event = asyncio.Event()
    return _Auth(app, cfg.token, service)
