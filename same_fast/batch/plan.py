"""What an enhance run will do, decided before anything is written: inputs, masks, output names.

``plan(cfg)`` refuses the whole run for what can be refused up front (no inputs, a mask folder
for a single file, ``-o`` equal to or inside ``-i``, two inputs that would write one name), and
returns one ``Task`` per input file, in input order. A local run and a Ray run share the plan,
so their outputs land under the same names. ``SeriesUids`` gives each source DICOM series one
derived series UID per run, the same in every process that shares the run's key.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from same_fast.batch.config import EnhanceConfig
from same_fast.errors import InputError


@dataclass(frozen=True)
class Task:
    """One input file, its FOV mask (or None) and the path its output is written to."""

    path: Path
    mask: Path | None
    dst: Path


def plan(cfg: EnhanceConfig, pairs: list[tuple[Path, Path | None]] | None = None) -> list[Task]:
    """One ``Task`` per input of ``cfg``, in input order (``InputError`` for a refused run).
    ``pairs``: ``inputs(cfg)`` when the caller has listed them already."""
    from same_fast.io import plan_outputs

    pairs = inputs(cfg) if pairs is None else pairs
    out = Path(cfg.output)
    check_output_dir(Path(cfg.input), out)
    targets = plan_outputs([p for p, _ in pairs], out)
    return [Task(p, m, d) for (p, m), d in zip(pairs, targets, strict=True)]


def inputs(cfg: EnhanceConfig) -> list[tuple[Path, Path | None]]:
    """(file, mask or None) pairs for the input path."""
    from same_fast.io import list_images, pair_by_name

    src = Path(cfg.input)
    if src.is_dir():
        files = list_images(src)
        if not files:
            raise InputError(f"{src}: no images or DICOM files")
        if cfg.mask:
            if not Path(cfg.mask).is_dir():
                raise InputError(f"--mask {cfg.mask}: a folder input needs a folder of masks")
            return [(it.path, it.partner) for it in pair_by_name(files, cfg.mask)]
        return [(f, None) for f in files]
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if cfg.mask:
        m = Path(cfg.mask)
        if m.is_dir():
            return [(it.path, it.partner) for it in pair_by_name([src], m)]
        if not m.is_file():
            raise InputError(f"--mask {m}: no such file")
        return [(src, m)]
    return [(src, None)]


def check_output_dir(src: Path, out: Path) -> None:
    """``-o`` must be a folder, and neither ``-i`` nor inside it (outputs would be re-read as
    inputs next run, and a kept name would overwrite its source)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    if src.is_dir():
        s, o = src.resolve(), out.resolve()
        if o == s or s in o.parents:
            raise InputError(f"-o {out} is the input folder or inside it; choose a folder "
                             "outside -i")


class SeriesUids:
    """Source SeriesInstanceUID -> the derived series' UID, one per source series and run.

    The UID is drawn from the run's ``key`` and the source UID (a name-based UUID under 2.25, or
    pydicom's ``generate_uid`` with them as entropy under a root), so workers of one distributed
    run agree without talking to each other, and a retried file joins its series.
    """

    def __init__(self, root: str | None = None, key: str | None = None) -> None:
        self.root = root
        self.key = key or uuid.uuid4().hex
        self._uids: dict[str, str] = {}
        self._lock = threading.Lock()

    def uid_for(self, source_series: str) -> str:
        from pydicom.uid import generate_uid

        from same_fast.io.dicom_derived import uid_root

        with self._lock:
            if source_series not in self._uids:
                root = uid_root(self.root)
                name = f"{self.key}|{source_series}"
                # without a root: a name-based UUID under 2.25 (pydicom would ignore the entropy)
                self._uids[source_series] = (
                    f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}" if root is None
                    else str(generate_uid(prefix=root, entropy_srcs=[name])))
            return self._uids[source_series]
