"""Decoding encoded frames for the engine: one front, three paths.

- ``reference``: Pillow / pypng / tifffile through ``same_fast.io.images.decode_image`` (and
  pydicom through ``same_fast.io.load`` for files); every format, every platform.
- ``dali``: NVIDIA DALI, a pipeline fed by ``fn.external_source`` with the encoded bytes and
  ``fn.decoders.image``; ``device="cpu"`` runs on the CPU (``device_id=None``), on CUDA the
  decoder is ``mixed`` (nvJPEG on the GPU, outputs in device memory). PNG and JPEG only; other
  formats take the reference path.
- ``nvjpeg``: torchvision's ``decode_jpeg(device="cuda")`` (GPU only, JPEG only).

Frames are ``(H, W, C)`` uint8/uint16 torch tensors, C in {1, 3, 4}, the same layout and values
as the reference. Measured on CI (tests/test_decode.py): DALI's CPU decoder gives byte-identical
results to Pillow for PNG (8 and 16 bit, grey and colour) and for baseline JPEG (both use
libjpeg-turbo with the same integer IDCT and fancy upsampling). Grey JPEGs are decoded with
``output_type=GRAY``: DALI 2.4's CPU decoder crashes the process on them with ``ANY_DATA``.

``to_batch`` turns equal-sized frames into the backends' ``(N, C, H, W)`` float in [0, 1] on the
frames' device; on GPU the DALI outputs are viewed through DLPack, so the uint8 -> float
conversion is the only copy.
"""
from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from same_fast.errors import CorruptFileError, DependencyError, InputError, missing_dependency
from same_fast.io.convert import full_scale
from same_fast.io.images import decode_image, open_pil, sniff
from same_fast.io.limits import check_pixels

PATHS = ("auto", "reference", "dali", "nvjpeg")


def decode(data: bytes | Sequence[bytes], path: str = "auto", device: str = "cpu",
           max_pixels: int | None = None) -> list[torch.Tensor]:
    """Decode one or more encoded images to ``(H, W, C)`` uint8/uint16 tensors on ``device``.

    ``path``: "reference", "dali", "nvjpeg" or "auto" (nvJPEG, then DALI on CUDA; the
    reference on CPU, which is fastest for single frames there). An explicit path whose
    library is missing raises DependencyError; bad bytes raise the io module's typed errors.
    """
    items = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    items = [bytes(b) for b in items]
    if path not in PATHS:
        raise InputError(f"unknown decode path '{path}' (choose {', '.join(PATHS)})")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("decode on cuda requested but no CUDA device is available")
    if path == "auto":
        path = _auto_path(dev)
    if path == "reference":
        return [_reference(b, max_pixels).to(dev) for b in items]
    if path == "dali":
        return _dali_decode(items, dev, max_pixels)
    return _nvjpeg_decode(items, dev, max_pixels)


def _reference(b: bytes, max_pixels: int | None) -> torch.Tensor:
    arr = decode_image(b, max_pixels=max_pixels)
    # Pillow may hand out read-only buffers; torch tensors must own writable memory.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _auto_path(dev: torch.device) -> str:
    if dev.type != "cuda":
        return "reference"
    for name, probe in (("nvjpeg", _torchvision), ("dali", _dali)):
        try:
            probe()
            return name
        except DependencyError:
            continue
    return "reference"


def to_batch(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """Equal-sized ``(H, W, C)`` uint8/uint16 frames -> ``(N, C, H, W)`` float32 in [0, 1]."""
    if not frames:
        raise InputError("to_batch: no frames")
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) != 1:
        raise InputError(f"to_batch: frames differ in shape {sorted(shapes)[:2]}")
    scale = full_scale(frames[0].dtype)
    out = torch.empty((len(frames),) + tuple(frames[0].permute(2, 0, 1).shape),
                      dtype=torch.float32, device=frames[0].device)
    for i, f in enumerate(frames):
        # The dtype conversion writes straight into the batch: one pass, no staging copy.
        out[i].copy_(f.permute(2, 0, 1))
    return out.div_(scale)


# --- header inspection: what DALI must be asked for, and the pixel limit before decoding ----

def _inspect(b: bytes, name: str, max_pixels: int | None) -> tuple[str, int, int] | None:
    """``(format, channels, bits)`` for a PNG/JPEG DALI can decode exactly, else None."""
    fmt = sniff(b[:132])
    if fmt == "png":
        if len(b) < 33 or b[12:16] != b"IHDR":
            raise CorruptFileError(f"{name}: truncated PNG header")
        w, h, depth, colour = struct.unpack(">IIBB", b[16:26])
        check_pixels(w, h, what=name, max_pixels=max_pixels)
        channels = {0: 1, 2: 3, 6: 4}.get(colour)  # palette and grey+alpha: reference path
        if channels is None or depth not in (8, 16):
            return None
        return "png", channels, depth
    if fmt == "jpeg":
        try:
            with open_pil(b, "jpeg") as im:  # header only: no pixels decoded, no global limit
                check_pixels(im.width, im.height, what=name, max_pixels=max_pixels)
                mode = im.mode
                progressive = bool(im.info.get("progressive") or im.info.get("progression"))
        except (OSError, ValueError, SyntaxError) as e:
            raise CorruptFileError(f"{name}: cannot read JPEG header ({e})") from None
        if mode not in ("L", "RGB") or progressive:
            return None  # CMYK/YCCK and progressive JPEGs: the reference decodes them
        return "jpeg", 1 if mode == "L" else 3, 8
    return None


# --- DALI -------------------------------------------------------------------------------------

def _dali() -> Any:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError:
        raise missing_dependency("nvidia-dali-cuda130", "DALI decoding", "gpu") from None
    return fn, types, pipeline_def


class _DaliPool:
    """One built pipeline per (device, channels, bits); DALI pipelines are costly to build.

    Pipelines run synchronously (no prefetch) so one ``run`` answers exactly one fed batch.
    A lock serialises use: a pipeline is not re-entrant.
    """

    def __init__(self) -> None:
        self._pipes: dict[tuple[str, int, int, int], Any] = {}
        self.lock = threading.Lock()

    def get(self, dev: torch.device, channels: int, bits: int, batch: int) -> Any:
        key = (str(dev), channels, bits, batch)
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = _build_pipe(dev, channels, bits, batch)
            self._pipes[key] = pipe
        return pipe

    def clear(self) -> None:
        self._pipes.clear()


_POOL = _DaliPool()
_DALI_BATCH = 16


def _build_pipe(dev: torch.device, channels: int, bits: int, batch: int) -> Any:
    fn, types, pipeline_def = _dali()
    out_type = {1: types.GRAY, 3: types.RGB}.get(channels, types.ANY_DATA)
    dtype = types.UINT16 if bits == 16 else types.UINT8
    gpu = dev.type == "cuda"

    @pipeline_def(batch_size=batch, num_threads=max(1, min(4, os.cpu_count() or 1)),
                  device_id=(dev.index or 0) if gpu else None, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def pipe() -> Any:
        raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=out_type,
                                 dtype=dtype)

    p = pipe()
    p.build()
    return p


def _dali_decode(items: list[bytes], dev: torch.device, max_pixels: int | None) -> list[torch.Tensor]:
    _dali()
    out: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, b in enumerate(items):
        info = _inspect(b, f"<frame {i}>", max_pixels)
        if info is None:
            out[i] = _reference(b, max_pixels).to(dev)
        else:
            groups.setdefault((info[1], info[2]), []).append(i)
    with _POOL.lock:
        for (channels, bits), idx in groups.items():
            for s in range(0, len(idx), _DALI_BATCH):
                chunk = idx[s:s + _DALI_BATCH]
                pipe = _POOL.get(dev, channels, bits, _DALI_BATCH)
                pipe.feed_input("raw", [np.frombuffer(items[i], np.uint8) for i in chunk])
                try:
                    (tl,) = pipe.run()
                except Exception as e:  # DALI reports decode failures as RuntimeError
                    _POOL.clear()  # a failed DALI pipeline is no longer valid
                    raise CorruptFileError(f"DALI could not decode a frame ({_short(e)})") from None
                for j, i in enumerate(chunk):
                    out[i] = _dali_tensor(tl, j, dev)
    return [t for t in out if t is not None]


def _dali_tensor(tl: Any, j: int, dev: torch.device) -> torch.Tensor:
    t = tl[j]
    if dev.type == "cuda":
        # DLPack view of DALI's device buffer, cloned because the pipeline reuses its buffers
        # on the next run; callers that batch should use to_batch (one conversion pass).
        try:
            return torch.from_dlpack(t).clone()
        except (TypeError, AttributeError, RuntimeError):
            from nvidia.dali.plugin.pytorch import feed_ndarray

            arr = torch.empty(t.shape(), dtype=_torch_dtype(t), device=dev)
            feed_ndarray(t, arr, cuda_stream=torch.cuda.current_stream(dev))
            return arr
    return torch.from_numpy(np.array(t))  # host copy: DALI reuses its output buffers


def _torch_dtype(t: Any) -> torch.dtype:
    s = str(t.dtype).lower()
    return torch.uint16 if "16" in s else torch.uint8


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]


# --- torchvision nvJPEG -----------------------------------------------------------------------

def _torchvision() -> Any:
    try:
        import torchvision.io as tvio
    except ImportError:
        raise missing_dependency("torchvision", "nvJPEG decoding") from None
    return tvio


def _nvjpeg_decode(items: list[bytes], dev: torch.device, max_pixels: int | None) -> list[torch.Tensor]:
    tvio = _torchvision()
    if dev.type != "cuda":
        raise InputError("nvJPEG decoding runs on CUDA only (use path 'dali' or 'reference')")
    out: list[torch.Tensor | None] = [None] * len(items)
    jpeg_idx = []
    for i, b in enumerate(items):
        info = _inspect(b, f"<frame {i}>", max_pixels)
        if info is not None and info[0] == "jpeg":
            jpeg_idx.append(i)
        else:
            out[i] = _reference(b, max_pixels).to(dev)
    if jpeg_idx:
        raw = [torch.frombuffer(bytearray(items[i]), dtype=torch.uint8) for i in jpeg_idx]
        decoded = tvio.decode_jpeg(raw, mode=tvio.ImageReadMode.UNCHANGED, device=dev)
        for i, t in zip(jpeg_idx, decoded, strict=True):
            out[i] = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C) view, no copy
    return [t for t in out if t is not None]
