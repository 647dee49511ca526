"""Limits on untrusted input (decompression-bomb and resource guards)."""
from __future__ import annotations

import os

from same_fast.errors import ImageTooLargeError

# Pixels per frame. A 3504x2336 HRF photo is 8.2 Mpx; 100 Mpx leaves room for whole-slide-ish
# scans while refusing bombs. Override with SAME_FAST_MAX_PIXELS.
MAX_PIXELS = int(os.environ.get("SAME_FAST_MAX_PIXELS", 100_000_000))
# Total decoded bytes of one file (all frames).
MAX_DECODED_BYTES = int(os.environ.get("SAME_FAST_MAX_DECODED_BYTES", 4 * 1024**3))
# DICOM sequence nesting depth we accept (real files rarely exceed 5).
MAX_DICOM_DEPTH = 16


def check_pixels(width: int, height: int, frames: int = 1, channels: int = 1, itemsize: int = 1,
                 what: str = "image", max_pixels: int | None = None) -> None:
    """Raise ``ImageTooLargeError`` when a declared size is absurd or over the limits."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width <= 0 or height <= 0 or frames <= 0:
        raise ImageTooLargeError(f"{what}: invalid size {width}x{height}x{frames}")
    if width * height > limit:
        raise ImageTooLargeError(
            f"{what}: {width}x{height} = {width * height} pixels is over the limit of {limit} "
            "(set SAME_FAST_MAX_PIXELS to raise it)")
    if width * height * frames * channels * itemsize > MAX_DECODED_BYTES:
        raise ImageTooLargeError(f"{what}: {frames} frames of {width}x{height} would decode to "
                                 f"more than {MAX_DECODED_BYTES} bytes")
