"""Reading and writing what scanners emit: PNG, JPEG, TIFF (8/16 bit) and DICOM (single/multi-frame).

Arrays are ``numpy`` ``(H, W, C)`` images with ``C`` in {1, 3, 4} and dtype ``uint8`` or
``uint16``; multi-frame sources are ``(F, H, W, C)``. Every reader validates untrusted input and
raises a ``SameFastError`` subclass (``CorruptFileError``, ``UnsupportedFormatError``,
``ImageTooLargeError``) with a one-line message, never an untyped exception.

Tensors for the networks are float32 ``(C, H, W)`` in [0, 1] (``to_tensor``); the enhancer works
in [-1, 1] and converts at its own boundary.
"""
from same_fast.io.convert import to_array, to_tensor
from same_fast.io.dicom import read_dicom, write_dicom_derived
from same_fast.io.folders import Item, list_images, output_name, pair_by_name, plan_outputs
from same_fast.io.images import IMAGE_SUFFIXES, read_image, write_image
from same_fast.io.limits import MAX_PIXELS
from same_fast.io.load import Loaded, load, load_mask, peek_shape

__all__ = [
    "IMAGE_SUFFIXES", "MAX_PIXELS", "Item", "Loaded", "list_images", "load", "load_mask",
    "output_name", "pair_by_name", "peek_shape", "plan_outputs", "read_dicom", "read_image",
    "to_array", "to_tensor", "write_dicom_derived", "write_image",
]
