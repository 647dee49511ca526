"""The KServe v2 (Open Inference Protocol) routes beside ``/v1``, as Triton serves them.

``GET /v2`` (server metadata), ``GET /v2/health/live``, ``GET /v2/health/ready`` (200, or 400
while draining: the protocol's status code is the answer), ``GET /v2/models/{name}`` (model
metadata), ``GET /v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer`` (also under
``/versions/{version}``, which may name any version: weights change online).

Inference takes one input tensor and returns one output, ``enhanced``:
- ``UINT8`` or ``UINT16`` of shape ``[N, H, W, C]`` or ``[H, W, C]`` (C the model's channels),
  as JSON ``data`` (flat or nested, row major) or binary (the binary tensor data extension:
  ``"parameters": {"binary_data_size": n}`` and the ``Inference-Header-Content-Length``
  header); the output has the input's shape and datatype.
- ``BYTES`` of shape ``[1]``: one encoded image (PNG, JPEG, TIFF, GIF, BMP or single-frame
  DICOM) as binary data (4-byte little-endian length, then the bytes); the output is its decoded
  pixels enhanced, ``[H, W, C]``.
The output comes back as JSON ``data`` unless the request asks for binary (``outputs[i]
.parameters.binary_data`` or the request parameter ``binary_data_output``). Errors are
``{"error": "..."}`` with 400 (bad request), 404 (unknown model), 413, 503 as for ``/v1``.
"""
from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from same_fast import __version__
from same_fast.serve.codec import check_channels, decode_frames
from same_fast.serve.http_v1 import enhance_frames, read_body
from same_fast.serve.replies import Failure, error_response
from same_fast.serve.service import Service

HEADER = "inference-header-content-length"
OUTPUT = "enhanced"
DTYPES = {"UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2")}


def routes(service: Service) -> list[Route]:
    """The v2 routes over ``service``."""
    name = service.model_name

    def model_ok(request: Request) -> JSONResponse | None:
        if request.path_params["model"] != name:
            return JSONResponse({"error": f"unknown model '{request.path_params['model']}' "
                                          f"(this server serves '{name}')"}, status_code=404)
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "same-fast", "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = not service.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    async def model_ready(request: Request) -> Response:
        ok = not service.draining
        return model_ok(request) or JSONResponse({"name": name, "ready": ok},
                                                 status_code=200 if ok else 400)

    async def metadata(request: Request) -> Response:
        c = service.model.channels or -1
        tensor = {"datatype": "UINT8", "shape": [-1, -1, -1, c]}
        return model_ok(request) or JSONResponse({
            "name": name, "versions": [str(service.model.weights_version)],
            "platform": f"same-fast_{service.model.backend}",
            "inputs": [{"name": "image", **tensor}], "outputs": [{"name": OUTPUT, **tensor}],
            "parameters": {"datatypes": sorted(DTYPES) + ["BYTES"]}})

    async def infer(request: Request) -> Response:
        refused = model_ok(request)
        if refused is not None:
            return refused
        service.enter()
        try:
            body = await read_body(request, service)
            head, tensor = await service.codec.run(parse_request, body, request.headers,
                                                   service)
            frames, out_shape = tensor
            results = await enhance_frames(service, frames)
            out = np.stack([r[0] for r in results]).reshape(out_shape)
            return reply(head, out, name, results[-1][1])
        except Exception as e:
            return error_response(e, service.metrics)
        finally:
            service.leave()

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    out = [Route("/v2", server_metadata), Route("/v2/health/live", live),
           Route("/v2/health/ready", ready)]
    for base in (model, versioned):
        out += [Route(base, metadata), Route(base + "/ready", model_ready),
                Route(base + "/infer", infer, methods=["POST"])]
    return out


def _bad(message: str) -> Failure:
    return Failure(message, "decode")


def parse_request(body: bytes, headers: Any, service: Service
                  ) -> tuple[dict, tuple[list[np.ndarray], tuple[int, ...]]]:
    """(the JSON header, (frames, output shape)) of an infer request; Failure when malformed."""
    size = headers.get(HEADER)
    if size is not None and (not size.isdigit() or int(size) > len(body)):
        raise _bad(f"{HEADER} must be a byte count within the body, got '{size}'")
    split = int(size) if size is not None else len(body)
    try:
        head = json.loads(body[:split])
    except (ValueError, RecursionError):
        raise _bad("the request header is not valid JSON") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise _bad("the request must be a JSON object with an 'inputs' list")
    if len(head["inputs"]) != 1 or not isinstance(head["inputs"][0], dict):
        raise _bad("send exactly one input tensor (the image)")
    for o in head.get("outputs") or []:
        if not isinstance(o, dict) or o.get("name") != OUTPUT:
            raise _bad(f"the only output is '{OUTPUT}'")
    return head, _tensor(head["inputs"][0], memoryview(body)[split:], service)


def _tensor(spec: dict, binary: memoryview, service: Service
            ) -> tuple[list[np.ndarray], tuple[int, ...]]:
    cfg = service.config
    dtype, shape = spec.get("datatype"), spec.get("shape")
    params = spec.get("parameters") or {}
    nbytes = params.get("binary_data_size")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise _bad("'shape' must be a list of positive integers")
    if nbytes is not None and (not isinstance(nbytes, int) or not 0 <= nbytes <= len(binary)):
        raise _bad(f"binary_data_size {nbytes} does not fit the {len(binary)} bytes sent")
    if dtype == "BYTES":
        if shape != [1] or nbytes is None:
            raise _bad("BYTES input: one encoded image of shape [1], sent as binary data")
        data = bytes(binary[:nbytes])
        if len(data) < 4 or struct.unpack("<I", data[:4])[0] != len(data) - 4:
            raise _bad("BYTES data must be a 4-byte little-endian length and that many bytes")
        decoded = decode_frames(data[4:], cfg.max_pixels, "input", 1)
        frame = check_channels(decoded.frames[0], service.model.channels, "input")
        return [frame], frame.shape
    if dtype not in DTYPES:
        raise _bad(f"datatype must be UINT8, UINT16 or BYTES, got '{dtype}'")
    if len(shape) not in (3, 4):
        raise _bad("an image tensor has shape [N, H, W, C] or [H, W, C]")
    h, w, c = shape[-3:]
    if h * w > cfg.max_pixels:
        raise Failure(f"frame of {w}x{h} pixels is over the limit of {cfg.max_pixels}", "limit")
    count = math.prod(shape)
    if nbytes is not None:
        if nbytes != count * DTYPES[dtype].itemsize:
            raise _bad(f"binary_data_size {nbytes} does not match shape {shape} of {dtype}")
        arr = np.frombuffer(binary[:nbytes], DTYPES[dtype])
    else:
        try:
            arr = np.asarray(spec.get("data"), dtype=np.int64).ravel()
        except (ValueError, TypeError):
            raise _bad("'data' must be a list of integers") from None
        if arr.size != count or arr.min(initial=0) < 0 or arr.max(initial=0) > np.iinfo(
                DTYPES[dtype]).max:
            raise _bad(f"'data' must hold {count} values in the range of {dtype}")
        arr = arr.astype(DTYPES[dtype])
    batch = arr.astype(DTYPES[dtype].newbyteorder("="), copy=False).reshape(-1, h, w, c)
    frames = [check_channels(np.ascontiguousarray(f), service.model.channels, "input")
              for f in batch]
    return frames, (*shape[:-1], frames[0].shape[-1])


def reply(head: dict, out: np.ndarray, name: str, version: int) -> Response:
    """The v2 inference response for ``out`` (binary when the request asked for it)."""
    wanted = [o for o in head.get("outputs") or [] if isinstance(o, dict)]
    binary = bool((head.get("parameters") or {}).get("binary_data_output")) or any(
        (o.get("parameters") or {}).get("binary_data") for o in wanted)
    dtype = "UINT8" if out.dtype == np.uint8 else "UINT16"
    output: dict[str, Any] = {"name": OUTPUT, "datatype": dtype, "shape": list(out.shape)}
    resp: dict[str, Any] = {"model_name": name, "model_version": str(version),
                            "outputs": [output]}
    if "id" in head:
        resp["id"] = head["id"]
    if not binary:
        output["data"] = out.ravel().tolist()
        return JSONResponse(resp)
    data = out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(resp).encode()
    return Response(header + data, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
