"""Limits on untrusted input (decompression-bomb and resource guards).

Each limit is read from its environment variable when it is used (not at import), so a bad
value is a one-line ``InputError`` where it matters, and a test or a host can change it.
"""
from __future__ import annotations

import os

from same_fast.errors import ImageTooLargeError, InputError

# Pixels per frame. A 3504x2336 HRF photo is 8.2 Mpx; 100 Mpx leaves room for whole-slide-ish
# scans while refusing bombs. Override with SAME_FAST_MAX_PIXELS.
MAX_PIXELS = 100_000_000
# Total decoded bytes of one file (all frames). Override with SAME_FAST_MAX_DECODED_BYTES.
MAX_DECODED_BYTES = 4 * 1024**3
# DICOM sequence nesting depth we accept (real files rarely exceed 5).
MAX_DICOM_DEPTH = 16


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer setting from the environment; a clear ``InputError`` when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise InputError(f"{name}={raw[:40]!r} is not a whole number") from None
    if value < minimum:
        raise InputError(f"{name}={value} must be at least {minimum}")
    return value


def pixel_limit() -> int:
    """Pixels per frame allowed (``SAME_FAST_MAX_PIXELS``, default ``MAX_PIXELS``)."""
    return env_int("SAME_FAST_MAX_PIXELS", MAX_PIXELS)


def decoded_bytes_limit() -> int:
    """Decoded bytes per file allowed (``SAME_FAST_MAX_DECODED_BYTES``)."""
    return env_int("SAME_FAST_MAX_DECODED_BYTES", MAX_DECODED_BYTES)


def check_pixels(width: int, height: int, frames: int = 1, channels: int = 1, itemsize: int = 1,
                 what: str = "image", max_pixels: int | None = None) -> None:
    """Raise ``ImageTooLargeError`` when a declared size is absurd or over the limits."""
    limit = pixel_limit() if max_pixels is None else max_pixels
    if width <= 0 or height <= 0 or frames <= 0:
        raise ImageTooLargeError(f"{what}: invalid size {width}x{height}x{frames}")
    if width * height > limit:
        raise ImageTooLargeError(
            f"{what}: {width}x{height} = {width * height} pixels is over the limit of {limit} "
            "(set SAME_FAST_MAX_PIXELS to raise it)")
    budget = decoded_bytes_limit()
    if width * height * frames * channels * itemsize > budget:
        raise ImageTooLargeError(f"{what}: {frames} frames of {width}x{height} would decode to "
                                 f"more than {budget} bytes")
