"""Pipe mode: raw frames through stdin/stdout, byte-exact through the identity model."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from same_fast.errors import CorruptFileError, InputError
from same_fast.serve.config import ServeConfig
from same_fast.serve.pipe import run_pipe


def test_cli_pipe_round_trips_uint8_rgb_byte_exactly():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (25, 24, 32, 3), dtype=np.uint8).tobytes()
    p = subprocess.run([sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity", "--pipe",
                        "--shape", "24x32x3", "--max-batch", "4"], input=data,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == data


def test_cli_pipe_short_final_frame_is_an_error_after_full_frames():
    frame = 8 * 6 * 1
    data = bytes(range(256)) * 2  # 512 bytes = 10 full frames of 48 bytes + 32 left over
    p = subprocess.run([sys.executable, "-m", "same_fast.cli", "serve", "-m", "identity", "--pipe",
                        "--shape", "8x6x1"], input=data, capture_output=True, timeout=120)
    assert p.returncode == 2
    assert p.stdout == data[: 10 * frame]
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("same-fast: error: stdin ended inside frame 10")


@pytest.mark.parametrize("shape,dtype", [((5, 7, 1), "uint16"), ((4, 4, 4), "uint16"),
                                         ((9, 3, 1), "uint8")])
def test_pipe_round_trip_in_process(shape, dtype):
    rng = np.random.default_rng(1)
    np_dtype = np.dtype("<u2" if dtype == "uint16" else "u1")
    hi = 65536 if dtype == "uint16" else 256
    arr = rng.integers(0, hi, (13, *shape)).astype(np_dtype)
    arr[0].flat[:3] = [0, hi - 1, 1]  # the extremes survive the float round trip too
    out = io.BytesIO()
    cfg = ServeConfig(model="identity", shape="x".join(map(str, shape)), dtype=dtype,
                      max_batch=3)
    assert run_pipe(cfg, io.BytesIO(arr.tobytes()), out) == 0
    assert out.getvalue() == arr.tobytes()


def test_pipe_empty_input_and_bad_shapes():
    out = io.BytesIO()
    assert run_pipe(ServeConfig(model="identity", shape="4x4x3"), io.BytesIO(b""), out) == 0
    assert out.getvalue() == b""
    for bad in ("4x4x2", "axb", "0x4x3", None):
        with pytest.raises(InputError):
            run_pipe(ServeConfig(model="identity", shape=bad), io.BytesIO(b""), io.BytesIO())
    with pytest.raises(CorruptFileError, match="frame 1"):
        run_pipe(ServeConfig(model="identity", shape="2x2x1"), io.BytesIO(b"12345"),
                 io.BytesIO())
