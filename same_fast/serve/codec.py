"""Encoded frames <-> arrays for the server: validation of untrusted bytes before model work.

Frames are ``(H, W, C)`` uint8/uint16 numpy arrays (C in 1, 3, 4), as ``same_fast.io`` returns.
Replies are PNG (8 or 16 bit, same size and channels as the input) or, for DICOM requests over
HTTP, a derived DICOM instance.
"""
from __future__ import annotations

import io as _io
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from same_fast.errors import CorruptFileError, InputError, UnsupportedFormatError
from same_fast.io.images import decode_image, sniff


@dataclass
class Frame:
    """One decoded request: ``frames`` (F, H, W, C); ``dataset`` is the pydicom dataset or None."""

    frames: np.ndarray
    format: str
    dataset: Any = None


def decode_frames(data: bytes, max_pixels: int, name: str = "frame",
                  max_frames: int | None = None) -> Frame:
    """Decode PNG/JPEG/TIFF/GIF/BMP or DICOM bytes; raise a SameFastError for bad input.

    Sizes are checked against ``max_pixels`` from headers before pixels are decoded; a DICOM
    declaring more than ``max_frames`` frames is refused before its pixels are decoded.
    """
    if not data:
        raise CorruptFileError(f"{name}: empty message")
    fmt = sniff(data[:132])
    if fmt == "dicom":
        ds, frames = _decode_dicom(data, max_pixels, name, max_frames)
        return Frame(frames, "dicom", ds)
    arr = decode_image(data, name=name, max_pixels=max_pixels)
    return Frame(arr[None], fmt or "image")


def _decode_dicom(data: bytes, max_pixels: int, name: str, max_frames: int | None = None
                  ) -> tuple[Any, np.ndarray]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from same_fast.io.dicom import dataset_frames

    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise CorruptFileError(f"{name}: not a DICOM file") from None
    except RecursionError:
        raise CorruptFileError(f"{name}: DICOM sequences nested too deeply") from None
    except Exception as e:  # pydicom raises many types for malformed files
        raise CorruptFileError(f"{name}: corrupt DICOM ({_short(e)})") from None
    if max_frames is not None:
        try:
            n = int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception as e:
            raise CorruptFileError(f"{name}: bad DICOM NumberOfFrames ({_short(e)})") from None
        if n > max_frames:
            raise InputError(too_many_frames(name, n))
    return ds, dataset_frames(ds, name, max_pixels)


def too_many_frames(name: str, n: int) -> str:
    """The stream's error for a multi-frame DICOM message."""
    return (f"{name}: a multi-frame DICOM ({n} frames) is not one frame; send one frame per "
            "message, or POST the file to /v1/enhance for a derived multi-frame DICOM")


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """``(H, W, C)`` uint8/uint16 -> PNG bytes (16-bit kept). Level 1: latency over size."""
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"cannot encode array of shape {arr.shape} and dtype {arr.dtype} as PNG")
    h, w, c = arr.shape
    if arr.dtype == np.uint16 and c != 1:
        import png  # pypng: Pillow cannot hold 16-bit colour

        buf = _io.BytesIO()
        png.Writer(w, h, greyscale=False, alpha=c == 4, bitdepth=16,
                   compression=compress_level).write(buf, arr.reshape(h, w * c))
        return buf.getvalue()
    from PIL import Image

    if c == 1:
        im = Image.fromarray(arr[..., 0].astype("<u2") if arr.dtype == np.uint16 else arr[..., 0])
    else:
        im = Image.fromarray(np.ascontiguousarray(arr))
    buf = _io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_dicom(source: Any, frames: np.ndarray) -> bytes:
    """A derived DICOM instance (new series and instance UIDs) of ``source`` holding ``frames``."""
    from same_fast.io.dicom import write_dicom_derived

    fd, path = tempfile.mkstemp(suffix=".dcm")
    os.close(fd)
    try:
        if frames.shape[-1] == 4:
            frames = frames[..., :3]
        write_dicom_derived(source, frames, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def check_modality_of(decoded: Frame, model_modality: Any, name: str, force: bool) -> None:
    """A DICOM request whose Modality the model was not trained for is refused (InputError), as
    ``same-fast enhance`` refuses the file, unless ``force``; other formats pass."""
    if decoded.format == "dicom" and decoded.dataset is not None:
        from same_fast.models import check_modality

        check_modality(model_modality, decoded.dataset.get("Modality"), name, force)


def check_channels(frame: np.ndarray, channels: int | None, name: str = "frame") -> np.ndarray:
    """Adapt a frame to a model's channel count, or raise UnsupportedFormatError.

    RGBA loses alpha for a 3-channel model; anything else must match (a grey model does not
    guess how to turn colour into grey).
    """
    c = frame.shape[-1]
    if channels is None or c == channels:
        return frame
    if c == 4 and channels == 3:
        return np.ascontiguousarray(frame[..., :3])
    raise UnsupportedFormatError(f"{name}: the model takes {channels}-channel images, "
                                 f"this frame has {c}")
