"""Property-based: random and mutated bytes never crash, hang or escape as untyped exceptions."""
from __future__ import annotations

import io as _io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from same_fast import io
from same_fast.errors import SameFastError
from same_fast.io.images import decode_image

# CI runs 60 examples per property; SAME_FAST_FUZZ_EXAMPLES=2000 for a deeper local run.
SETTINGS = settings(max_examples=int(os.environ.get("SAME_FAST_FUZZ_EXAMPLES", 60)),
                    deadline=2000, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every format we read, made here (real content from the retina)."""
    from pydicom.data import get_testdata_file
    from skimage import data

    retina = data.retina()[500:564, 500:564]
    out = {}
    for suffix, arr in ((".png", retina), (".jpg", retina), (".tif", retina),
                        (".png", (retina[..., :1].astype(np.uint16) * 257)),
                        (".tif", (retina.astype(np.uint16) * 257))):
        buf = _io.BytesIO()
        from tempfile import TemporaryDirectory

        with TemporaryDirectory() as d:
            p = io.write_image(f"{d}/x{suffix}", arr)
            buf.write(open(p, "rb").read())
        out[f"{suffix}-{arr.dtype}"] = buf.getvalue()
    for name in ("MR_small.dcm", "examples_rgb_color.dcm"):
        out[name] = open(get_testdata_file(name), "rb").read()
    return out


SEEDS = _seed_files()


def _load_bytes(tmp_path, data: bytes, suffix: str) -> None:
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(data)
    try:
        loaded = io.load(p)
    except SameFastError as e:
        assert str(e).strip(), "errors carry a message"
        return
    assert loaded.frames.ndim == 4 and loaded.frames.dtype in (np.uint8, np.uint16)


@SETTINGS
@given(data=st.binary(min_size=0, max_size=2048), suffix=st.sampled_from([".png", ".dcm", ".jpg"]))
def test_random_bytes(tmp_path, data, suffix):
    _load_bytes(tmp_path, data, suffix)


@SETTINGS
@given(data=st.binary(min_size=0, max_size=512),
       magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*",
                              b"GIF89a", b"BM", b"\x00" * 128 + b"DICM"]))
def test_random_bytes_behind_a_valid_magic(tmp_path, data, magic):
    _load_bytes(tmp_path, magic + data, ".bin")


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
@SETTINGS
@given(st.data())
def test_mutated_real_files(tmp_path, seed_name, data):
    raw = bytearray(SEEDS[seed_name])
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 16))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    suffix = ".dcm" if seed_name.endswith(".dcm") else ".img"
    _load_bytes(tmp_path, bytes(raw), suffix)


@SETTINGS
@given(data=st.binary(min_size=0, max_size=1024))
def test_decode_image_bytes(data):
    try:
        decode_image(b"\x89PNG\r\n\x1a\n" + data)
    except SameFastError:
        pass
