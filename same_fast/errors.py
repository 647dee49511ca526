"""Typed errors. Every error a user can cause is a ``SameFastError`` with an actionable message.

The CLI prints ``same-fast: error: <message>`` and exits with ``exit_code`` (2 for bad input or
usage), with no traceback unless ``--debug``.
"""
from __future__ import annotations


class SameFastError(Exception):
    """Base class of every error same-fast raises on purpose."""

    exit_code = 2


class InputError(SameFastError):
    """Bad input from a user: a missing file, a wrong shape, an unknown option value."""


class UnsupportedFormatError(InputError):
    """A file whose format (or DICOM transfer syntax, photometric interpretation) we do not read."""


class CorruptFileError(InputError):
    """A file that claims a supported format but is truncated, corrupt or inconsistent."""


class ImageTooLargeError(InputError):
    """An image over the pixel limit (a decompression-bomb guard)."""


class CheckpointError(InputError):
    """A checkpoint that is missing, not safetensors, or lacks the metadata we need."""


class DependencyError(SameFastError):
    """An optional dependency (tensorrt, nvidia-dali, triton, onnxruntime...) is missing.

    Raised only when the user explicitly asks for the feature that needs it.
    """

    exit_code = 3


def missing_dependency(package: str, feature: str, extra: str | None = None) -> DependencyError:
    """Build the one message we give for every missing optional dependency."""
    hint = f"pip install 'same-fast[{extra}]'" if extra else f"pip install {package}"
    return DependencyError(f"{feature} needs the optional package '{package}' ({hint})")
