"""Atomic file writes: a file appears whole under its name, or not at all, and no temporary is
left. A layer of its own just above ``errors``, so that ``io`` and ``checkpoint`` share it."""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from same_fast.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any failure the temporary is removed and the old ``path`` (if any) is untouched. ``mode``:
    permission bits of the new file (default: those of the file it replaces, else what ``open``
    would give under the umask). An existing folder at ``path`` and OS errors (permissions, full
    disk) are ``InputError``s naming the path.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: exists as a folder; cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    tmp = Path(name)
    try:
        yield tmp
        if mode is None:
            mode = path.stat().st_mode & 0o777 if path.is_file() else 0o666 & ~umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _remove(tmp)
        raise


def remove_orphans(path: str | os.PathLike) -> int:
    """Remove temporaries that ``atomic_path(path)`` left behind (its process was killed before
    it could clean up); returns how many. Only call it when no writer of ``path`` is running."""
    path = Path(path)
    n = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        _remove(tmp)
        n += 1
    return n


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def umask() -> int:
    """The process umask, read without changing it (Linux /proc); 0o022 where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
