"""The ASGI application (Starlette): routes, the bearer token, and JSON for every failure.

Endpoints (docs/SERVING.md has the limits and what each failure returns):

- ``POST /v1/enhance`` (``http_v1``): one image or DICOM file in, its enhanced version out.
- ``WS /v1/stream`` (``ws``, with ``--stream``): one encoded frame per message, replies in order.
- KServe v2 (``kserve``): ``/v2/health/{live,ready}``, ``/v2/models/{name}[/ready|/infer]``.
- ``GET /healthz`` (liveness, never needs the token), ``GET /readyz`` (503 while draining),
  ``GET /metrics`` (Prometheus, ``metrics``), ``GET /openapi.json``, ``GET /v1/model`` (JSON:
  model, backend, adaptation state, weights version and hash),
  ``POST /v1/adaptation/{freeze,resume,reset}``.

Security: with a token every endpoint but /healthz needs ``Authorization: Bearer <token>``
(WebSocket clients that cannot set headers may pass ``?token=``, which never reaches the log).
"""
from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from same_fast.serve import http_v1, kserve, ws
from same_fast.serve.metrics import CONTENT_TYPE
from same_fast.serve.openapi import document
from same_fast.serve.replies import error_response
from same_fast.serve.service import Service

ABORT_KEY = ws.ABORT_KEY


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
        body = await asyncio.to_thread(service.prometheus)
        return Response(body, media_type=CONTENT_TYPE)

    async def model_info(request: Request) -> Response:
        return JSONResponse(service.describe())

    async def openapi(request: Request) -> Response:
        return JSONResponse(document(app.routes, auth=bool(cfg.token)))

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

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, service.metrics)

    routes = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/openapi.json", openapi), Route("/v1/model", model_info),
        Route("/v1/enhance", http_v1.endpoint(service), methods=["POST"]),
        Route("/v1/adaptation/{action}", adaptation, methods=["POST"]),
        *kserve.routes(service),
    ]
    # Set (on the event loop's thread) when SIGTERM starts the drain: streams answer what they
    # receive until their client goes quiet, then close.
    drain_event = asyncio.Event()
    if cfg.stream:
        routes.append(WebSocketRoute("/v1/stream", ws.endpoint(service, drain_event)))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error,
                                                       Exception: internal_error})
    app.state.service = service
    app.state.drain_event = drain_event
    return _Auth(app, cfg.token, service)
