"""DICOM via pydicom: frames out of single- and multi-frame files, and derived series back in.

Colour: RGB as stored, YBR_* converted to RGB, PALETTE COLOR expanded through its LUT;
MONOCHROME1 is inverted so that bright means bright. JPEG 2000 and JPEG-compressed pixel data
decode where pydicom has a handler installed (the ``dicom`` extra: pylibjpeg + openjpeg).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from same_fast.errors import CorruptFileError, InputError, SameFastError, UnsupportedFormatError
from same_fast.io.limits import MAX_DICOM_DEPTH, check_pixels

# Attributes reported by `same-fast info` and kept in metadata.
KEY_ATTRIBUTES = (
    "Modality", "Manufacturer", "ManufacturerModelName", "PhotometricInterpretation",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
    "SeriesDescription", "FrameTime", "CineRate",
)


def read_dicom(path: str | os.PathLike, max_pixels: int | None = None
               ) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Read a DICOM file: ``(frames (F, H, W, C) uint8/uint16, dataset, metadata)``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: empty file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(str(path), force=False)
        for w in caught:  # pydicom only warns when a file ends early; for us that is corrupt
            text = str(w.message)
            if "end of file" in text.lower() or "premature" in text.lower():
                raise CorruptFileError(f"{path}: truncated DICOM ({text.split(' in file')[0]})")
        _check_depth(ds, path)
    except InvalidDicomError:
        raise CorruptFileError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except RecursionError:
        raise CorruptFileError(f"{path}: DICOM sequences nested too deeply") from None
    except (CorruptFileError, UnsupportedFormatError):
        raise
    except Exception as e:
        raise CorruptFileError(f"{path}: corrupt DICOM ({_short(e)})") from None
    frames = dataset_frames(ds, str(path), max_pixels)
    try:
        meta = dicom_metadata(ds, frames)
    except Exception as e:
        raise CorruptFileError(f"{path}: corrupt DICOM attributes ({_short(e)})") from None
    return frames, ds, meta


def dataset_frames(ds: Any, name: str = "<dicom>", max_pixels: int | None = None) -> np.ndarray:
    """Pixel data of a parsed dataset as ``(F, H, W, C)`` uint8/uint16 (validated first).

    Any failure is a typed ``SameFastError``: parsing is lazy in pydicom, so malformed values
    surface here as arbitrary exceptions, which all mean a corrupt file to the caller.
    """
    try:
        return _dataset_frames(ds, name, max_pixels)
    except SameFastError:
        raise
    except (MemoryError, RecursionError) as e:
        raise CorruptFileError(f"{name}: DICOM too damaged to decode ({type(e).__name__})") from None
    except Exception as e:
        raise CorruptFileError(f"{name}: corrupt DICOM ({_short(e)})") from None


def _dataset_frames(ds: Any, name: str, max_pixels: int | None) -> np.ndarray:
    try:
        if "PixelData" not in ds:
            raise UnsupportedFormatError(f"{name}: DICOM without pixel data")
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
        photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    except (UnsupportedFormatError, CorruptFileError):
        raise
    except Exception as e:
        raise CorruptFileError(f"{name}: inconsistent DICOM image attributes ({_short(e)})") from None
    if spp not in (1, 3) or bits not in (1, 8, 16) or nframes < 1:
        raise UnsupportedFormatError(
            f"{name}: unsupported DICOM pixels (SamplesPerPixel={spp}, BitsAllocated={bits}, "
            f"frames={nframes})")
    check_pixels(cols, rows, frames=nframes, channels=spp, itemsize=max(bits // 8, 1),
                 what=name, max_pixels=max_pixels)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise CorruptFileError(f"{name}: DICOM without a transfer syntax in its file meta")
    try:
        compressed = tsyntax.is_compressed
    except Exception:
        raise UnsupportedFormatError(f"{name}: unknown transfer syntax {str(tsyntax)[:64]}") from None
    if not compressed:
        expected = rows * cols * spp * nframes * bits // 8
        if not ds.PixelData or len(ds.PixelData) < expected:
            raise CorruptFileError(f"{name}: truncated pixel data ({len(ds.PixelData or b'')} of "
                                   f"{expected} bytes)")
    try:
        arr = ds.pixel_array
    except (CorruptFileError, UnsupportedFormatError):
        raise
    except Exception as e:
        msg = _short(e)
        if "plugin" in msg.lower() or "dependenc" in msg.lower() or "handler" in msg.lower():
            raise UnsupportedFormatError(
                f"{name}: no decoder for transfer syntax {tsyntax.name} "
                "(pip install 'same-fast[dicom]')") from None
        raise CorruptFileError(f"{name}: cannot decode DICOM pixels ({msg})") from None
    arr = np.asarray(arr)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        spp = 3
    elif photometric.startswith("YBR") and "PixelData" in ds:
        # pydicom 3 converts YBR to RGB in pixel_array already; guard older behaviour by checking
        # a flag it sets; when unsure, trust pydicom's default (as_rgb=True).
        pass
    if nframes == 1:
        arr = arr[None]
    if spp == 1:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise CorruptFileError(f"{name}: pixel array of unexpected shape {arr.shape}")
    if arr.dtype.kind == "i":  # signed data: shift into the unsigned range, order preserved
        arr = (arr.astype(np.int32) - np.iinfo(arr.dtype).min).astype(
            np.uint16 if arr.dtype.itemsize > 1 else np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype not in (np.uint8, np.uint16):
        raise UnsupportedFormatError(f"{name}: unsupported DICOM sample type {arr.dtype}")
    if photometric == "MONOCHROME1":
        arr = np.iinfo(arr.dtype).max - arr
    return np.ascontiguousarray(arr)


def dicom_metadata(ds: Any, frames: np.ndarray | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": "dicom"}
    for key in KEY_ATTRIBUTES:
        value = ds.get(key, None)
        if value is not None and value != "":
            meta[key] = value if isinstance(value, (int, float)) else str(value)
    try:
        meta["TransferSyntax"] = ds.file_meta.TransferSyntaxUID.name
    except AttributeError:
        pass
    if frames is not None:
        meta.update(frames=frames.shape[0], height=frames.shape[1], width=frames.shape[2],
                    channels=frames.shape[3], dtype=str(frames.dtype))
    return meta


def write_dicom_derived(source: Any, frames: np.ndarray, path: str | os.PathLike,
                        description: str = "Enhanced by same-fast (SAME)",
                        series_uid: str | None = None, instance_number: int | None = None,
                        uid_root: str | None = None) -> Path:
    """Write ``frames`` ((F,)H,W,C uint8/uint16, as ``read_dicom`` gave them) as a derived
    instance of ``source`` (see ``same_fast.io.dicom_derived``).

    New SeriesInstanceUID (shared by calls that pass the same ``series_uid``), SOPInstanceUID and
    SeriesNumber; patient, study, equipment and modality attributes are kept, and so are the
    pixel values' units (signed data, rescale, MONOCHROME1). Pixels are stored uncompressed as
    explicit VR little endian, whatever the source's transfer syntax (big endian included).
    """
    from pydicom import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    from same_fast.files import atomic_path
    from same_fast.io.dicom_derived import check_derivable, mark_derived, new_uid, stored_pixels

    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"cannot write DICOM frames of shape {arr.shape} and dtype {arr.dtype}")
    check_derivable(source, str(path))
    f, h, w, c = arr.shape
    values, attrs = stored_pixels(arr, source)
    ds = copy.deepcopy(source)
    if not (getattr(source, "original_encoding", None) or (None, True))[1]:
        _drop_swapped_bulk(ds)
    mark_derived(ds, source, description, series_uid or new_uid(uid_root), uid_root)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.Rows, ds.Columns, ds.SamplesPerPixel = h, w, c
    for key, value in attrs.items():
        setattr(ds, key, value)
    if c == 3:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if f > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = f
    ds.PixelData = np.ascontiguousarray(values if f > 1 else values[0]).astype(
        values.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if attrs["BitsAllocated"] == 8 else "OW"
    with atomic_path(path) as tmp:
        dcmwrite(str(tmp), ds, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return Path(path)


def _drop_swapped_bulk(ds: Any, top: bool = True) -> None:
    """Remove binary elements (overlays, LUT data, icon pixels; the top-level pixels excepted)
    that a big-endian source holds byte-swapped: we do not swap them, and never write them wrong."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _drop_swapped_bulk(item, top=False)
        elif elem.VR in ("OW", "OF", "OD", "OL", "OV") and not (top and elem.tag == 0x7FE00010):
            del ds[elem.tag]


def _check_depth(ds: Any, path: Path) -> None:
    """Walk sequences iteratively; refuse absurd nesting before anything recurses on it."""
    stack = [(ds, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DICOM_DEPTH:
            raise CorruptFileError(f"{path}: DICOM sequences nested deeper than {MAX_DICOM_DEPTH}")
        for elem in node:
            seen += 1
            if seen > 1_000_000:
                raise CorruptFileError(f"{path}: DICOM with more than a million elements")
            if elem.VR == "SQ":
                for item in elem.value:
                    stack.append((item, depth + 1))


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]
