"""What makes an enhanced frame a correct *derived* DICOM instance of its source.

- Pixel values stay in the source's units: ``read_dicom`` hands out unsigned frames (signed data
  shifted by half the range, MONOCHROME1 inverted so that bright is bright); ``stored_pixels``
  undoes both, so PixelRepresentation, BitsStored, the rescale slope/intercept and the VOI
  window of the source still apply (CT stays in HU, up to the enhancement's own change).
- The derivation is recorded the way PS3.3 asks: ImageType DERIVED/SECONDARY, a
  SourceImageSequence pointing at the source instance (purpose DCM 121322), a
  DerivationCodeSequence (DCM 110001 "Image Processing"; CID 7203 is extensible and lists no
  learned enhancement), a DerivationDescription, a new series (SeriesInstanceUID, SeriesNumber),
  Content/InstanceCreation date and time of the enhancement, and our own
  ImplementationClassUID. LossyImageCompression is never reset: a lossy source stays "01".
- UIDs come from a configurable root (``--uid-root`` or ``SAME_FAST_UID_ROOT``); without one,
  from the 2.25 UUID arc (PS3.5 B.2), which needs no registration.

highdicom was considered: its constructors build new IODs (Secondary Capture, Segmentation,
parametric maps) from scratch, which would change the SOP class of a CT or US image and drop
its modality modules; a derived instance of the *same* class is a copy of the source with the
attributes above changed, which pydicom does directly.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import uuid
from typing import Any

import numpy as np

from same_fast import __version__
from same_fast.errors import InputError, UnsupportedFormatError

UID_ROOT_ENV = "SAME_FAST_UID_ROOT"
#: Our implementation, identified in every file meta we write (a fixed UID under 2.25).
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'https://same-fast/dicom').int}"
IMPLEMENTATION_VERSION_NAME = f"SAME_FAST_{__version__}"[:16]
#: Added to the source's SeriesNumber for the derived series (a new number, still sortable).
SERIES_NUMBER_OFFSET = 1000

_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
# Transfer syntaxes whose pixels were certainly lossy-compressed (JPEG baseline/extended,
# JPEG-LS near-lossless, the video syntaxes); JPEG 2000 may be either and keeps what it says.
_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.100": "ISO_13818_2",
    "1.2.840.10008.1.2.4.101": "ISO_13818_2", "1.2.840.10008.1.2.4.102": "ISO_14496_10",
    "1.2.840.10008.1.2.4.103": "ISO_14496_10", "1.2.840.10008.1.2.4.104": "ISO_14496_10",
    "1.2.840.10008.1.2.4.105": "ISO_14496_10", "1.2.840.10008.1.2.4.106": "ISO_14496_10",
    "1.2.840.10008.1.2.4.107": "ISO_23008_2", "1.2.840.10008.1.2.4.108": "ISO_23008_2",
}
# Attributes whose value (or VR) depends on the old pixels and would now be wrong.
_STALE = (
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "PaletteColorLookupTableUID", "ICCProfile",
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries", "SourceImageSequence", "DerivationCodeSequence",
)


def uid_root(root: str | None = None) -> str | None:
    """The UID root to use: ``root``, else ``SAME_FAST_UID_ROOT``, else None (2.25 UUID UIDs).

    A root is digits separated by dots, at most 40 characters (room for a unique suffix in the
    64 a UID may have); a missing final dot is added. Anything else is an ``InputError``.
    """
    value = root if root is not None else os.environ.get(UID_ROOT_ENV)
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not value.endswith("."):
        value += "."
    if len(value) > 40 or not _UID_ROOT.match(value):
        raise InputError(f"UID root {value[:48]!r} is not digits and dots of at most 40 "
                         f"characters without leading zeros (--uid-root, {UID_ROOT_ENV})")
    return value


def new_uid(root: str | None = None) -> str:
    """A fresh UID under ``uid_root(root)``."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=uid_root(root)))


def check_derivable(ds: Any, name: str = "<dicom>") -> None:
    """Refuse sources whose pixels have no enhanced counterpart in the same units."""
    if int(getattr(ds, "BitsAllocated", 8) or 8) == 1:
        raise UnsupportedFormatError(f"{name}: 1-bit DICOM (a mask or overlay) is not enhanced")


def stored_pixels(frames: np.ndarray, source: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Unsigned enhanced frames ``(F, H, W, C)`` -> the values to store, and the pixel attributes.

    The inverse of ``read_dicom``'s mapping for grey sources of the same bit depth: MONOCHROME1
    inverted back, signed data shifted back, values clipped to the source's BitsStored range.
    Colour output and grey output of another bit depth are stored unsigned at full range.
    """
    bits = frames.dtype.itemsize * 8
    c = frames.shape[-1]
    photometric = str(getattr(source, "PhotometricInterpretation", "")).upper()
    same_depth = int(getattr(source, "BitsAllocated", 0) or 0) == bits
    attrs: dict[str, Any] = {"BitsAllocated": bits, "BitsStored": bits, "HighBit": bits - 1,
                             "PixelRepresentation": 0,
                             "PhotometricInterpretation": "RGB" if c == 3 else "MONOCHROME2"}
    if c != 1 or not same_depth or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return frames, attrs
    stored_bits = min(max(int(getattr(source, "BitsStored", bits) or bits), 1), bits)
    signed = int(getattr(source, "PixelRepresentation", 0) or 0) == 1
    values = frames.astype(np.int32)
    if photometric == "MONOCHROME1":
        values = np.iinfo(frames.dtype).max - values
    if signed:
        values -= 1 << (bits - 1)
        lo, hi = -(1 << (stored_bits - 1)), (1 << (stored_bits - 1)) - 1
    else:
        lo, hi = 0, (1 << stored_bits) - 1
    out = np.clip(values, lo, hi).astype(f"{'i' if signed else 'u'}{bits // 8}")
    attrs.update(BitsStored=stored_bits, HighBit=stored_bits - 1, PixelRepresentation=int(signed),
                 PhotometricInterpretation=photometric)
    return out, attrs


def mark_derived(ds: Any, source: Any, description: str, series_uid: str,
                 root: str | None = None, now: _dt.datetime | None = None) -> None:
    """Turn ``ds`` (a copy of ``source``) into a new derived instance of series ``series_uid``."""
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    now = now or _dt.datetime.now()
    for tag in _STALE:
        if tag in ds:
            delattr(ds, tag)
    sop = new_uid(root)
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = _series_number(source)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = description[:1024]
    old = str(source.get("SeriesDescription", "")).strip()
    ds.SeriesDescription = (f"{old} (same-fast)" if old else "same-fast enhanced")[:64]
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
    if "SOPClassUID" in source and "SOPInstanceUID" in source:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ref.PurposeOfReferenceCodeSequence = [_code(codes.DCM.SourceImageForImageProcessingOperation)]
        ds.SourceImageSequence = [ref]
    ds.DerivationCodeSequence = [_code(codes.DCM.ImageProcessing)]
    _keep_lossy_history(ds, source)


def _series_number(source: Any) -> int:
    try:
        old = int(source.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        old = 0
    return min(max(old, 0) + SERIES_NUMBER_OFFSET, 2**31 - 1)


def _code(code: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _keep_lossy_history(ds: Any, source: Any) -> None:
    """PS3.3 C.7.6.1.1.5: once "01", LossyImageCompression shall not be reset."""
    syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", ""))
    if str(source.get("LossyImageCompression", "")).strip() == "01":
        ds.LossyImageCompression = "01"
    elif syntax in _LOSSY_SYNTAXES:
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = _LOSSY_SYNTAXES[syntax]
