"""``POST /v1/enhance``: one encoded image or DICOM file in, its enhanced version out.

The reply is a PNG of the same size and channels (``image/png``), or a derived DICOM instance
(``application/dicom``) for DICOM input; a multi-frame DICOM (a cine) comes back as a derived
multi-frame DICOM with every frame enhanced (at most ``max_inflight`` of its frames queued at a
time, so a long cine never finds the queue full of its own frames). Headers
``X-Same-Fast-Weights-Version`` and ``X-Same-Fast-Weights-Hash`` name the weights that produced
it. Errors: ``replies.STATUS``.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from same_fast.serve.codec import (
    check_channels,
    check_modality_of,
    decode_frames,
    encode_dicom,
    encode_png,
)
from same_fast.serve.replies import Failure, error_response
from same_fast.serve.service import Service


async def read_body(request: Request, service: Service) -> bytes:
    """The request body under the server's limits: Failure 'limit' (413) past
    ``max_message_bytes``, 'timeout' (408) when a piece is ``body_timeout_s`` late or the whole
    body takes over ``request_timeout_s``."""
    cfg = service.config
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cfg.max_message_bytes:
        raise Failure(f"body of {declared} bytes is over the limit of {cfg.max_message_bytes}",
                      "limit")
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + cfg.request_timeout_s
    stream = request.stream().__aiter__()
    while True:
        wait = min(cfg.body_timeout_s, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.0))
        except StopAsyncIteration:
            return b"".join(chunks)
        except (TimeoutError, asyncio.TimeoutError):
            raise Failure(f"request body too slow ({size} bytes received; a body must keep "
                          f"coming every {cfg.body_timeout_s:g} s and arrive within "
                          f"{cfg.request_timeout_s:g} s)", "timeout") from None
        size += len(chunk)
        if size > cfg.max_message_bytes:
            raise Failure(f"body is over the limit of {cfg.max_message_bytes} bytes", "limit")
        chunks.append(chunk)


async def enhance_frames(service: Service, frames: list[np.ndarray]) -> list[tuple]:
    """Enhance ``frames`` through the service, at most ``max_inflight`` queued at a time;
    ``[(array, weights_version, weights_hash)]`` in order."""
    cfg = service.config
    # The queue holds other clients' frames too: a file longer than its capacity must not be
    # refused as busy.
    window = max(1, min(cfg.max_inflight, cfg.capacity))
    futs: deque = deque()
    results = []
    for f in frames:
        if len(futs) >= window:
            results.append(await asyncio.wrap_future(futs.popleft()))
        futs.append(service.accept(f))
    while futs:
        results.append(await asyncio.wrap_future(futs.popleft()))
    return results


def endpoint(service: Service) -> Any:
    """The ``/v1/enhance`` handler."""
    cfg = service.config

    async def enhance(request: Request) -> Response:
        t0 = time.perf_counter()
        service.enter()
        try:
            data = await read_body(request, service)
            decoded = await service.codec.run(decode_frames, data, cfg.max_pixels, "request")
            del data
            check_modality_of(decoded, service.model.metadata.get("modality"), "request",
                              cfg.force_modality)
            frames = [check_channels(f, service.model.channels, "request")
                      for f in decoded.frames]
            results = await enhance_frames(service, frames)
            arrays = [r[0] for r in results]
            if decoded.format == "dicom":
                body = await service.codec.run(encode_dicom, decoded.dataset, np.stack(arrays))
                media = "application/dicom"
            else:
                body = await service.codec.run(encode_png, arrays[0])
                media = "image/png"
        except Exception as e:  # every failure is a JSON reply (replies.STATUS)
            return error_response(e, service.metrics)
        finally:
            service.leave()
        elapsed = time.perf_counter() - t0
        for _ in arrays:
            service.metrics.frame_done(elapsed)
        version, digest = results[-1][1], results[-1][2]
        headers = {"X-Same-Fast-Weights-Version": str(version),
                   "X-Same-Fast-Weights-Hash": digest,
                   "X-Same-Fast-Latency-Ms": f"{elapsed * 1000:.3f}"}
        if service.draining:
            headers["Connection"] = "close"
        return Response(body, media_type=media, headers=headers)

    return enhance
