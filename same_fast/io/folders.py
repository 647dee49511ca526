"""Folders of images: sorted listing and pairing by name (images with masks, predictions with GT)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from same_fast.errors import InputError
from same_fast.io.images import IMAGE_SUFFIXES, sniff

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class Item:
    """One input file and, when paired, its partner (mask, ground truth)."""

    name: str
    path: Path
    partner: Path | None = None


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def list_images(folder: str | os.PathLike, recursive: bool = False, dicom: bool = True) -> list[Path]:
    """Image (and DICOM: by extension or by preamble) files in ``folder``, naturally sorted;
    hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    suffixes = IMAGE_SUFFIXES + (DICOM_SUFFIXES if dicom else ())
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in it if p.is_file() and not p.name.startswith(".")
             and (p.suffix.lower() in suffixes or (dicom and is_dicom_file(p)))]
    return sorted(files, key=_natural_key)


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble (``DICM`` at byte 128), whatever its name.

    Scanners and PACS exports often write DICOM without an extension (``IM0001``) or with a UID as
    the name (``1.2.840.113619.2.55.3.604688119``).
    """
    try:
        with open(path, "rb") as f:
            return sniff(f.read(132)) == "dicom"
    except OSError:
        return False


def _keys(stem: str) -> list[str]:
    """Names a file may be matched by, most specific first: the stem, then shorter prefixes."""
    keys = [stem.lower()]
    parts = re.split(r"[_\-. ]", stem.lower())
    for n in range(len(parts) - 1, 0, -1):
        keys.append("_".join(parts[:n]))
    return keys


def pair_by_name(images: list[Path], partners_dir: str | os.PathLike, required: bool = True
                 ) -> list[Item]:
    """Pair each image with the file in ``partners_dir`` of the same name.

    Exact stems match first (``a.png`` with ``a.tif``); otherwise the longest shared leading
    name tokens decide, which pairs DRIVE's ``01_test.tif`` with ``01_test_mask.gif`` and
    ``01_manual1.gif``. Ambiguity or (when ``required``) a missing partner is an ``InputError``.
    """
    partners = list_images(partners_dir)
    index: dict[str, list[Path]] = {}
    for p in partners:
        for k in _keys(p.stem):
            index.setdefault(k, []).append(p)
    out = []
    for img in images:
        match = None
        for k in _keys(img.stem):
            cands = index.get(k, [])
            if len(cands) == 1:
                match = cands[0]
                break
            if len(cands) > 1:
                exact = [c for c in cands if c.stem.lower() == img.stem.lower()]
                if len(exact) == 1:
                    match = exact[0]
                    break
                raise InputError(f"{img.name}: ambiguous partners in {partners_dir}: "
                                 f"{', '.join(c.name for c in cands[:3])}")
        if match is None and required:
            raise InputError(f"{img.name}: no file of the same name in {partners_dir}")
        out.append(Item(img.stem, img, match))
    return out


#: Image suffixes an enhanced output keeps (lossless, same format written back); other images
#: (JPEG, GIF, BMP) are written as PNG under their whole name plus ``.png``.
KEPT_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def output_name(path: Path, dicom: bool) -> str:
    """The file name an enhanced ``path`` is written under.

    Kept when the format is kept (``a.png``, ``a.tif``, ``a.dcm``); otherwise the whole source
    name plus the new suffix (``scan.jpg`` -> ``scan.jpg.png``, DICOM ``IM0001`` ->
    ``IM0001.dcm``), so that ``scan.gif``, ``scan.bmp`` and ``scan.jpg`` in one folder give three
    outputs and the source of each output is its name.
    """
    suffix = path.suffix.lower()
    if dicom:
        return path.name if suffix in DICOM_SUFFIXES else path.name + ".dcm"
    return path.name if suffix in KEPT_IMAGE_SUFFIXES else path.name + ".png"


def plan_outputs(inputs: list[Path], out_dir: str | os.PathLike) -> list[Path]:
    """Output paths for ``inputs`` in ``out_dir``, one per input, in order.

    Refused before anything is written (``InputError``): two inputs that would write one name
    (compared without case, as macOS and Windows file systems do), and an output that would
    overwrite its own input.
    """
    out_dir = Path(out_dir)
    seen: dict[str, Path] = {}
    outputs = []
    for src in inputs:
        dst = out_dir / output_name(src, is_dicom_file(src))
        other = seen.setdefault(dst.name.lower(), src)
        if other != src:
            raise InputError(f"{other.name} and {src.name} would both be written as {dst}; "
                             "rename one or enhance them into separate folders")
        if dst.resolve() == src.resolve():
            raise InputError(f"{src}: the output would overwrite the input; choose another -o")
        outputs.append(dst)
    return outputs
