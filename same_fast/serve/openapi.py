"""The OpenAPI 3.1 document served at ``/openapi.json``, built from the app's own routes (so no
route can be missing from it) and a table of what each one does."""
from __future__ import annotations

from typing import Any

from starlette.routing import Route, WebSocketRoute

from same_fast import __version__

_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/gif", "image/bmp",
                "application/dicom")

# path -> (summary, request body media types or None, reply media types)
DOC: dict[str, tuple[str, tuple[str, ...] | None, tuple[str, ...]]] = {
    "/healthz": ("Liveness (never needs the token).", None, ("application/json",)),
    "/readyz": ("Readiness: 503 while draining after SIGTERM.", None, ("application/json",)),
    "/metrics": ("Prometheus metrics (text exposition 0.0.4).", None, ("text/plain",)),
    "/openapi.json": ("This document.", None, ("application/json",)),
    "/v1/model": ("The served model, backend, adaptation state, weights version and hash.",
                  None, ("application/json",)),
    "/v1/enhance": ("Enhance one image or DICOM file; the reply has the same size and "
                    "channels (PNG), or is a derived DICOM for DICOM input.", _IMAGE_TYPES,
                    ("image/png", "application/dicom")),
    "/v1/adaptation/{action}": ("Online adaptation: freeze, resume or reset.", None,
                                ("application/json",)),
    "/v1/stream": ("WebSocket: one encoded frame per binary message, one PNG reply per "
                   "message, in order (docs/SERVING.md).", None, ()),
    "/v2": ("KServe v2 server metadata.", None, ("application/json",)),
    "/v2/health/live": ("KServe v2 server live.", None, ("application/json",)),
    "/v2/health/ready": ("KServe v2 server ready (400 while draining).", None,
                         ("application/json",)),
    "/v2/models/{model}": ("KServe v2 model metadata.", None, ("application/json",)),
    "/v2/models/{model}/ready": ("KServe v2 model ready.", None, ("application/json",)),
    "/v2/models/{model}/infer": ("KServe v2 inference (JSON tensors or the binary tensor "
                                 "data extension).", ("application/json",
                                                      "application/octet-stream"),
                                 ("application/json", "application/octet-stream")),
}


def _doc(path: str) -> tuple[str, tuple[str, ...] | None, tuple[str, ...]]:
    return DOC.get(path.replace("/versions/{version}", ""), (path, None, ("application/json",)))


def document(routes: list[Any], auth: bool) -> dict[str, Any]:
    """The OpenAPI document for ``routes`` (Starlette routes); ``auth``: a bearer token guards
    every path but /healthz."""
    paths: dict[str, Any] = {}
    for r in routes:
        summary, body, replies = _doc(r.path)
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in r.param_convertors]
        if isinstance(r, WebSocketRoute):
            methods = ["get"]
            summary = summary + " Upgrade to WebSocket."
        elif isinstance(r, Route):
            methods = sorted(m.lower() for m in (r.methods or {"GET"}) if m != "HEAD")
        else:
            continue
        for method in methods:
            op: dict[str, Any] = {"summary": summary, "responses": {
                "200": {"description": "success",
                        "content": {t: {} for t in replies}} if replies else
                {"description": "switching protocols"},
                "default": _ERROR}}
            if params:
                op["parameters"] = params
            if body and method == "post":
                op["requestBody"] = {"required": True, "content": {t: {} for t in body}}
            if auth and r.path != "/healthz":
                op["security"] = [{"bearer": []}]
            paths.setdefault(r.path, {})[method] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "same-fast", "version": __version__,
                 "description": "Medical image enhancement with test-time adaptation "
                                "(docs/SERVING.md)."},
        "paths": paths}
    if auth:
        doc["components"] = {"securitySchemes": {"bearer": {"type": "http",
                                                            "scheme": "bearer"}}}
    return doc
