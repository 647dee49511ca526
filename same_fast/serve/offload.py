"""Decoding and encoding off the event loop, on a small pool of its own.

A 62 KB 16-bit 4000x4000 PNG took ~1.8 s to decode (older Pillow; ~0.15 s now); on the event
loop that stalled every other connection (health checks included) for as long. Every decode and
encode runs here; the pool's size (``codec_threads``) also bounds how many decoded frames are
being built at once.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class CodecPool:
    """``await pool.run(fn, *args)`` runs ``fn`` on one of ``threads`` codec threads."""

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="same-fast-codec")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
