"""``WS /v1/stream``: each binary message is one encoded frame; each reply is one binary PNG of
the same size, in the same order.

A frame that fails gets a text message ``{"error": ..., "frame": n}`` (n counts this
connection's messages from 0) in its place and the stream goes on. A multi-frame DICOM message
is such an error (refused before its pixels are decoded: "send one frame per message"). Before
the first reply, and whenever the weights change (online adaptation), a text message
``{"weights_version": v, "weights_hash": h, "frame": n}`` announces the weights of reply n and
later ones. A client that sends more than ``max_inflight`` frames ahead of the replies is
back-pressured (the server stops reading). A client that reads no reply for ``send_timeout_s``
is disconnected (its connection aborted, unsent replies dropped) and one that sends nothing for
``idle_timeout_s`` is closed with 1001. Decoding and encoding run on the codec threads, never on
the event loop.

On SIGTERM a stream keeps reading and answering until its client has been silent for
``drain_quiet_s`` (or half of ``drain_timeout_s`` has passed), so every frame it receives gets
an image; then the socket closes with 1001.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from same_fast.errors import InputError, SameFastError
from same_fast.serve.codec import (
    check_channels,
    check_modality_of,
    decode_frames,
    encode_png,
    too_many_frames,
)
from same_fast.serve.replies import error_kind, one_line
from same_fast.serve.service import Service
from same_fast.stream import StreamError

# Scope key under which the server (``server.build_server``) puts the connection's
# ``transport.abort``: a client that stopped reading cannot take a close frame, and a graceful
# close would wait forever for it to read what is buffered.
ABORT_KEY = "same_fast.abort"


def endpoint(service: Service, drain_event: asyncio.Event) -> Any:
    """The ``/v1/stream`` handler; ``drain_event`` is set when SIGTERM starts the drain."""
    cfg = service.config

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

    async def _next_message(ws: WebSocket, drain: asyncio.Task) -> dict | None:
        """The next message, or None when the client was idle too long or the drain's quiet
        time passed."""
        recv = asyncio.ensure_future(ws.receive())
        while not recv.done():
            if drain.done():
                left = drain.result() + cfg.drain_timeout_s / 2 - time.monotonic()
                waiters, timeout = {recv}, min(cfg.drain_quiet_s, max(left, 0.0))
            else:
                waiters, timeout = {recv, drain}, cfg.idle_timeout_s
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
        if not recv.done():
            recv.cancel()
            with contextlib.suppress(BaseException):
                await recv
            return None
        return recv.result()

    async def _drain_started() -> float:
        await drain_event.wait()
        return time.monotonic()

    async def _stream(ws: WebSocket) -> None:
        pending: asyncio.Queue = asyncio.Queue()
        # One slot per unanswered frame: at max_inflight the server stops reading, so TCP flow
        # control back-pressures the client instead of frames piling up here.
        slots = asyncio.Semaphore(cfg.max_inflight)
        state = {"dead": False}
        sender = asyncio.create_task(_send_loop(ws, pending, state, slots))
        drain = asyncio.create_task(_drain_started())
        n, reason = 0, 1000
        try:
            while not state["dead"]:
                await slots.acquire()
                if state["dead"]:
                    break
                msg = await _next_message(ws, drain)
                if msg is None:
                    reason = 1001  # idle, or the drain found the client quiet
                    break
                if msg["type"] == "websocket.disconnect":
                    state["dead"] = True
                    break
                pending.put_nowait(await _accept_message(msg, n, time.perf_counter()))
                n += 1
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
            decoded = await service.codec.run(decode_frames, data, cfg.max_pixels, "frame", 1)
            if decoded.frames.shape[0] != 1:
                raise InputError(too_many_frames("frame", decoded.frames.shape[0]))
            check_modality_of(decoded, service.model.metadata.get("modality"), "frame",
                              cfg.force_modality)
            frame = check_channels(decoded.frames[0], service.model.channels)
            return (n, t0, service.accept(frame), None, None)
        except SameFastError as e:
            return (n, t0, None, one_line(e), error_kind(e))
        except Exception as e:  # a decoder bug must not end the stream
            return (n, t0, None, f"cannot decode frame ({one_line(e)})", "decode")

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

    async def _send(ws: WebSocket, message: str | bytes) -> None:
        send = ws.send_text(message) if isinstance(message, str) else ws.send_bytes(message)
        await asyncio.wait_for(send, cfg.send_timeout_s)

    async def _reply(ws: WebSocket, item: tuple, announced: int | None) -> int | None:
        n, t0, fut, err, kind = item
        if fut is not None:
            try:
                arr, version, digest = await asyncio.wrap_future(fut)
                png = await service.codec.run(encode_png, arr)
            except StreamError as e:
                err, kind = one_line(e), error_kind(e)
            except Exception as e:  # an encoder bug: this frame's error, the stream goes on
                err, kind = f"cannot encode the reply ({one_line(e)})", "internal"
        if err is not None:
            service.metrics.error(kind)
            await _send(ws, json.dumps({"error": err, "frame": n}))
            return announced
        if version != announced:
            await _send(ws, json.dumps({"weights_version": version, "weights_hash": digest,
                                        "frame": n}))
            announced = version
        await _send(ws, png)
        service.metrics.frame_done(time.perf_counter() - t0)
        return announced

    return stream
