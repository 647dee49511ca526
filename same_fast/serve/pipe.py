"""Pipe mode: raw frames on stdin, enhanced raw frames on stdout (like ffmpeg's rawvideo).

Each frame is exactly H x W x C samples, row-major, channels interleaved (``gray``, ``rgb24``,
``rgba`` for uint8; ``gray16le``, ``rgb48le``, ``rgba64le`` for uint16: little-endian). Frames
are batched and enhanced by the same stream loop as the server, so reading, the model and
writing overlap; output order is input order.

End of input inside a frame is an error (stderr, exit status 2) after every full frame before
it has been written. A model error stops the pipe the same way (nothing after it is written).

Example::

    ffmpeg -i scan.mp4 -f rawvideo -pix_fmt rgb24 - \\
      | same-fast serve -m fundus-lite --pipe --shape 480x640x3 \\
      | ffmpeg -f rawvideo -pix_fmt rgb24 -s 640x480 -i - enhanced.mp4
"""
from __future__ import annotations

import queue
import sys
import threading
from typing import BinaryIO

import numpy as np

from same_fast.errors import CorruptFileError, InputError
from same_fast.serve.config import ServeConfig, parse_shape
from same_fast.serve.service import Service
from same_fast.stream import StreamError


def _read_exact(f: BinaryIO, buf: bytearray) -> int:
    """Fill ``buf`` from ``f``; returns the bytes read (< len(buf) only at end of input)."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def run_pipe(config: ServeConfig, stdin: BinaryIO | None = None,
             stdout: BinaryIO | None = None, service: Service | None = None,
             freeze: bool = False) -> int:
    """Stream raw frames from ``stdin`` to ``stdout``; returns 0, raises InputError on a bad end.

    freeze: exempt the loaded heap from garbage collection (``serve.service.freeze_heap``), as
    ``same-fast serve --pipe`` does for its own process.
    """
    config.pipe = True
    config.validate()
    h, w, c = parse_shape(config.shape)
    dtype = np.dtype("<u2" if config.dtype == "uint16" else "u1")
    if h * w > config.max_pixels:
        raise InputError(f"--shape {h}x{w} is over the limit of {config.max_pixels} pixels")
    from same_fast.serve.service import freeze_heap, tune_process

    tune_process()
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    svc = service or Service(config)
    if freeze:
        freeze_heap()
    frame_bytes = h * w * c * dtype.itemsize
    # Bounded: the reader waits when the writer falls behind (memory stays flat).
    pending: queue.Queue = queue.Queue(maxsize=max(2 * config.max_batch, 8))
    failure: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        while True:
            item = pending.get()
            if item is None:
                return
            n, fut = item
            if failure:
                continue
            try:
                arr = fut.result()[0]
                stdout.write(arr.astype(dtype, copy=False).tobytes())
            except StreamError as e:
                failure.append(InputError(f"frame {n}: {e}"))
                stop.set()
            except (BrokenPipeError, OSError) as e:
                failure.append(e)
                stop.set()
        # unreachable

    t = threading.Thread(target=writer, name="same-fast-pipe-writer", daemon=True)
    t.start()
    n = 0
    short: tuple[int, int] | None = None
    try:
        while not stop.is_set():
            buf = bytearray(frame_bytes)
            got = _read_exact(stdin, buf)
            if got == 0:
                break
            if got < frame_bytes:
                short = (n, got)
                break
            arr = np.frombuffer(buf, dtype=dtype).reshape(h, w, c)
            fut = svc.loop.submit(arr.astype(dtype.newbyteorder("="), copy=False), n)
            pending.put((n, fut))
            n += 1
    finally:
        pending.put(None)
        t.join()
        try:
            stdout.flush()
        except (BrokenPipeError, OSError):
            pass
        if service is None:
            svc.close()
    if failure:
        e = failure[0]
        if isinstance(e, BrokenPipeError):
            return 0  # the consumer went away: like `head`, not an error
        raise e if isinstance(e, InputError) else InputError(f"writing stdout failed ({e})")
    if short is not None:
        raise CorruptFileError(f"stdin ended inside frame {short[0]} ({short[1]} of "
                               f"{frame_bytes} bytes); the {short[0]} full frame(s) before it "
                               "were written")
    return 0
