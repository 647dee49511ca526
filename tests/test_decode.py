"""Decoding front: the DALI CPU path equals the Pillow/pypng reference on PNG (8/16 bit, grey,
colour, RGBA) and JPEG (baseline colour, 4:2:0 and grey), byte for byte; bad bytes are typed."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from same_fast.engine.decode import decode, to_batch
from same_fast.errors import CorruptFileError, InputError, UnsupportedFormatError

pytest.importorskip("nvidia.dali")


def _retina(step: int = 6) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.retina()[::step, ::step])  # real fundus, ~236 px


def _pil(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _png16(arr: np.ndarray) -> bytes:
    import png

    h, w, c = arr.shape
    buf = io.BytesIO()
    png.Writer(w, h, bitdepth=16, greyscale=c == 1, alpha=c == 4).write(
        buf, arr.reshape(h, w * c).tolist())
    return buf.getvalue()


def _cases() -> dict[str, bytes]:
    r = _retina()
    g = np.random.default_rng(0)
    rgba = np.concatenate([r, g.integers(0, 256, r.shape[:2] + (1,), dtype=np.uint8)], -1)
    return {
        "png_rgb": _pil(r, "PNG"),
        "png_gray": _pil(r[..., 1], "PNG"),
        "png_rgba": _pil(rgba, "PNG"),
        "png16_rgb": _png16(g.integers(0, 65536, (37, 53, 3)).astype(np.uint16)),
        "png16_gray": _png16(g.integers(0, 65536, (37, 53, 1)).astype(np.uint16)),
        "jpeg_444": _pil(r, "JPEG", quality=95, subsampling=0),
        "jpeg_420": _pil(r, "JPEG", quality=75, subsampling=2),
        "jpeg_gray": _pil(r[..., 1], "JPEG", quality=90),
    }


CASES = _cases()


def test_dali_cpu_equals_reference_exactly() -> None:
    names = list(CASES)
    ref = decode([CASES[n] for n in names], path="reference")
    got = decode([CASES[n] for n in names], path="dali", device="cpu")
    for n, a, b in zip(names, got, ref, strict=True):
        assert a.dtype == b.dtype, n
        assert a.shape == b.shape, n
        # Exact: both decoders are libjpeg-turbo (same islow IDCT, same fancy upsampling) for
        # JPEG, and PNG is lossless. A tolerance here would hide a colour or rounding bug.
        assert torch.equal(a, b), f"{n}: max diff {(a.int() - b.int()).abs().max()}"
    assert got[names.index("png16_gray")].dtype == torch.uint16
    assert got[names.index("jpeg_gray")].shape[-1] == 1


def test_dali_batches_beyond_one_pipeline_run_and_mixed_formats() -> None:
    r = _retina(12)
    frames = [_pil(np.roll(r, i, 0), "PNG") for i in range(18)] + [_pil(r, "BMP")]
    got = decode(frames, path="dali")
    assert len(got) == 19
    for i in (0, 17):
        assert torch.equal(got[i], torch.from_numpy(np.roll(r, i, 0)))
    assert torch.equal(got[-1], torch.from_numpy(r))  # BMP: reference path inside the front


def test_to_batch_converts_once() -> None:
    r = _retina(12)
    frames = decode([_pil(r, "PNG"), _pil(r[::-1].copy(), "PNG")], path="dali")
    b = to_batch(frames)
    assert b.shape == (2, 3) + r.shape[:2] and b.dtype == torch.float32
    assert torch.allclose(b[0], torch.from_numpy(r).permute(2, 0, 1).float() / 255)
    f16 = decode([CASES["png16_gray"]], path="dali")
    b16 = to_batch(f16)
    assert f16[0].dtype == torch.uint16
    assert torch.equal(b16[0], f16[0].permute(2, 0, 1).float() / 65535)
    with pytest.raises(InputError, match="differ"):
        to_batch([frames[0], frames[0][:5]])
    with pytest.raises(InputError, match="unsupported image dtype torch.float32"):
        to_batch([frames[0].float()])  # was silently divided by 255


@pytest.mark.parametrize("path", ["reference", "dali"])
def test_bad_bytes_are_typed(path: str) -> None:
    good = CASES["png_rgb"]
    with pytest.raises(UnsupportedFormatError):
        decode(b"not an image at all", path=path)
    with pytest.raises(CorruptFileError):
        decode(good[:40], path=path)
    with pytest.raises(CorruptFileError):
        decode(CASES["jpeg_420"][:300], path=path)
    # The pipeline still works after a failure.
    assert torch.equal(decode(good, path=path)[0], decode(good, path="reference")[0])


def test_unknown_path_and_gpu_only_paths() -> None:
    with pytest.raises(InputError, match="unknown decode path"):
        decode(CASES["png_rgb"], path="magic")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            decode(CASES["jpeg_420"], path="nvjpeg", device="cuda")
