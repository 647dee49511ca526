"""One entry point for any supported file: ``load(path) -> Loaded``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from same_fast.errors import CorruptFileError, InputError, UnsupportedFormatError
from same_fast.io.dicom import read_dicom
from same_fast.io.images import decode_image, sniff


@dataclass
class Loaded:
    """Frames ``(F, H, W, C)`` uint8/uint16 plus what a writer needs to write them back."""

    path: Path
    format: str  # png, jpeg, tiff, gif, bmp, dicom
    frames: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None  # the pydicom Dataset for DICOM sources

    @property
    def is_dicom(self) -> bool:
        return self.format == "dicom"


def load(path: str | os.PathLike, max_pixels: int | None = None) -> Loaded:
    """Read an image or DICOM file, deciding the format from its bytes, not its name."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise CorruptFileError(f"{path}: empty file")
    fmt = sniff(head)
    if fmt == "dicom" or (fmt is None and path.suffix.lower() in (".dcm", ".dicom")):
        if fmt is None:
            raise CorruptFileError(f"{path}: not a DICOM file (no DICM preamble)")
        frames, ds, meta = read_dicom(path, max_pixels)
        return Loaded(path, "dicom", frames, meta, ds)
    if fmt is None:
        raise UnsupportedFormatError(f"{path}: not a PNG, JPEG, TIFF, GIF, BMP or DICOM file")
    arr = decode_image(path.read_bytes(), name=str(path), max_pixels=max_pixels)
    meta = {"format": fmt, "frames": 1, "height": arr.shape[0], "width": arr.shape[1],
            "channels": arr.shape[2], "dtype": str(arr.dtype)}
    return Loaded(path, fmt, arr[None], meta)


def peek_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(frames, height, width)`` of an image or DICOM file from its header, without decoding
    its pixels (TIFF: decoded); None for a file that cannot be read so (``load`` says why)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            fmt = sniff(head)
            if fmt in ("png", "jpeg", "gif", "bmp"):
                from same_fast.io.images import open_pil

                w, h = open_pil(head + f.read(), fmt).size
                return 1, int(h), int(w)
        if fmt == "dicom":
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
        if fmt == "tiff":
            return (1, *load(path).frames.shape[1:3])
    except Exception:  # noqa: BLE001 - a peek that fails only leaves the shape unknown
        return None
    return None


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask ``(H, W)`` bool: first channel > half range (JPEG-compressed masks too)."""
    arr = load(path).frames[0]
    half = 127 if arr.dtype == np.uint8 else 32767
    mask = arr[..., 0] > half
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is "
                         f"{shape[1]}x{shape[0]}")
    return mask
