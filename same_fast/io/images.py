"""PNG, JPEG, TIFF, GIF and BMP files <-> ``(H, W, C)`` uint8/uint16 arrays.

Pillow decodes most formats; tifffile reads and writes TIFF (16-bit colour included); pypng
reads and writes 16-bit colour PNG, which Pillow cannot hold. Sizes are checked against the
pixel limit from the header, before any pixel is decoded.
"""
from __future__ import annotations

import io as _io
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from same_fast.errors import CorruptFileError, ImageTooLargeError, InputError, UnsupportedFormatError
from same_fast.files import atomic_path
from same_fast.io.limits import check_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def sniff(head: bytes) -> str | None:
    """Format from the first bytes of a file: png, jpeg, tiff, gif, bmp, dicom, or None."""
    # DICOM first: its 128-byte preamble may itself look like a TIFF header (dual-format files).
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, C)``, C in {1, 3, 4}, dtype uint8 or uint16."""
    path = Path(path)
    data = _read_bytes(path)
    return decode_image(data, name=str(path), max_pixels=max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, TIFF, GIF, BMP) like ``read_image``."""
    if not data:
        raise CorruptFileError(f"{name}: empty file")
    fmt = sniff(data[:132])
    if fmt is None:
        raise UnsupportedFormatError(f"{name}: not a PNG, JPEG, TIFF, GIF, BMP or DICOM file")
    if fmt == "dicom":
        raise UnsupportedFormatError(f"{name}: is DICOM; read it with same_fast.io.load")
    try:
        if fmt == "tiff":
            arr = _decode_tiff(data, name, max_pixels)
        elif fmt == "png" and _png_is_16bit_colour(data, name, max_pixels):
            arr = _decode_png16(data, name)
        else:
            arr = _decode_pil(data, fmt, name, max_pixels)
    except (CorruptFileError, UnsupportedFormatError, InputError):
        raise
    except MemoryError:
        raise CorruptFileError(f"{name}: out of memory while decoding") from None
    except Exception as e:  # decoder libraries raise many types; all mean a bad file to us
        raise CorruptFileError(f"{name}: cannot decode {fmt.upper()} ({_short(e)})") from None
    return _normalise(arr, name)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _png_is_16bit_colour(data: bytes, name: str, max_pixels: int | None) -> bool:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise CorruptFileError(f"{name}: truncated PNG header")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    check_pixels(width, height, what=name, max_pixels=max_pixels)
    return depth == 16 and colour in (2, 4, 6)


def _decode_png16(data: bytes, name: str) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(bytes=data).read()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    if arr.shape != (height, width * planes):
        raise CorruptFileError(f"{name}: truncated PNG (got {arr.shape[0]} of {height} rows)")
    arr = arr.reshape(height, width, planes)
    if planes == 2:  # gray + alpha: keep gray, it is what a scanner means
        arr = arr[..., :1]
    return arr


def _decode_tiff(data: bytes, name: str, max_pixels: int | None) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(_io.BytesIO(data)) as tif:
        if not tif.pages:
            raise CorruptFileError(f"{name}: TIFF without pages")
        page = tif.pages[0]
        shape = page.shape
        h, w = (shape[0], shape[1]) if page.photometric != 2 or len(shape) < 3 or shape[-1] <= 4 \
            else (shape[1], shape[2])
        check_pixels(int(w), int(h), what=name, max_pixels=max_pixels)
        arr = page.asarray()
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    return arr


def open_pil(data: bytes, fmt: str):
    """A Pillow image for ``fmt`` opened through its plugin class.

    ``Image.open`` applies Pillow's process-wide ``MAX_IMAGE_PIXELS`` guard; we apply our own
    limit instead and must not change that global for the host process, so the plugin class
    (which has no such check) opens the header and ``check_pixels`` runs before any decoding.
    """
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin

    plugin = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile,
              "gif": GifImagePlugin.GifImageFile, "bmp": BmpImagePlugin.BmpImageFile}[fmt]
    return plugin(_io.BytesIO(data))


def _decode_pil(data: bytes, fmt: str, name: str, max_pixels: int | None) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # we enforce our own pixel limit
        im = open_pil(data, fmt)
        check_pixels(im.width, im.height, what=name, max_pixels=max_pixels)
        try:
            im.load()
        except Image.DecompressionBombError as e:  # a GIF frame larger than its screen
            raise ImageTooLargeError(f"{name}: {_short(e)}") from None
    mode = im.mode
    if mode == "1":
        return (np.asarray(im.convert("L")))
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "P":
        return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
    if mode == "LA":
        return np.asarray(im)[..., :1]
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "PA"):
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise UnsupportedFormatError(f"{name}: 32-bit integer images are not supported")
        return arr.astype(np.uint16)
    raise UnsupportedFormatError(f"{name}: unsupported image mode {mode}")


def _normalise(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        else:
            raise UnsupportedFormatError(f"{name}: unsupported sample type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise UnsupportedFormatError(f"{name}: unsupported image shape {arr.shape}")
    return np.ascontiguousarray(arr)


def write_image(path: str | os.PathLike, arr: np.ndarray, png_level: int = 6) -> Path:
    """Write ``(H, W)`` or ``(H, W, C)`` uint8/uint16 to PNG, JPEG (8-bit) or TIFF, by suffix.
    ``png_level``: the PNG's zlib level (0 none, 1 fastest, 9 smallest; 6 is Pillow's default:
    level 1 encodes 512 x 512 photographs about 3x faster into files about 15 % larger,
    docs/PERFORMANCE.md)."""
    path = Path(path)
    if not 0 <= int(png_level) <= 9:
        raise InputError(f"PNG compression level must be 0-9, got {png_level}")
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: cannot write array of shape {arr.shape} and dtype {arr.dtype}")
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        raise InputError(f"{path}: unknown output format '{suffix}' (use .png, .jpg or .tif)")
    if suffix in (".jpg", ".jpeg") and (arr.dtype != np.uint8 or arr.shape[-1] == 4):
        raise InputError(f"{path}: JPEG holds 8-bit gray or RGB only; write PNG or TIFF")
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, arr[..., 0] if arr.shape[-1] == 1 else arr,
                             photometric="minisblack" if arr.shape[-1] == 1 else "rgb",
                             compression="zlib")
        elif suffix == ".png" and arr.dtype == np.uint16 and arr.shape[-1] != 1:
            import png

            h, w, c = arr.shape
            writer = png.Writer(w, h, greyscale=False, alpha=c == 4, bitdepth=16,
                                compression=int(png_level))
            with open(tmp, "wb") as f:
                writer.write(f, arr.reshape(h, w * c))
        elif suffix == ".png":
            _pil_from(arr).save(tmp, format="PNG", compress_level=int(png_level))
        else:
            _pil_from(arr).save(tmp, format="JPEG", quality=95)
    return path


def _pil_from(arr: np.ndarray):
    from PIL import Image

    if arr.shape[-1] == 1:
        if arr.dtype == np.uint16:
            return Image.fromarray(arr[..., 0].astype("<u2"), mode=None)
        return Image.fromarray(arr[..., 0])
    return Image.fromarray(arr)
