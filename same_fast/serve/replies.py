"""What each failure returns: the HTTP status, the one-line JSON error, the metrics kind.

Every error the server writes is JSON ``{"error": "<one line>"}`` (WebSocket: a text message
``{"error": ..., "frame": n}``); docs/SERVING.md lists them.
"""
from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from same_fast.errors import ImageTooLargeError, InputError, SameFastError
from same_fast.serve.service import Busy, ShuttingDown
from same_fast.stream import FrameDropped, StreamError

log = logging.getLogger("same_fast.serve")

# metrics kind -> HTTP status
STATUS = {"limit": 413, "busy": 503, "shutdown": 503, "dropped": 503, "model": 500,
          "decode": 400, "timeout": 408, "internal": 500, "auth": 401}


class Failure(SameFastError):
    """A request refused before model work, with its metrics kind (``STATUS`` gives the code)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def error_kind(e: BaseException) -> str:
    """The metrics kind of an error (``same_fast_errors_total{kind=...}``)."""
    if isinstance(e, Failure):
        return e.kind
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
    if isinstance(e, SameFastError | InputError):
        return "decode"
    return "internal"


def one_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:500]


def error_response(e: BaseException, metrics=None) -> JSONResponse:  # noqa: ANN001
    """The JSON reply for ``e`` (counted in ``metrics`` when given). An error that is not ours
    says only its type: internals stay in the server log."""
    kind = error_kind(e)
    if metrics is not None:
        metrics.error(kind)
    if kind == "internal":  # a bug of ours: the operator needs the traceback
        log.error("internal error: %s", one_line(e), exc_info=e)
    message = one_line(e) if kind != "internal" else f"internal error ({type(e).__name__})"
    headers = {"Connection": "close"} if kind == "timeout" else None
    return JSONResponse({"error": message}, status_code=STATUS[kind], headers=headers)
