"""Progress bars: tqdm on stderr, off by itself when stderr is not a terminal (log files and
pipes get no ``\\r`` frames), and off when the caller says so (``--no-progress``)."""
from __future__ import annotations

from typing import Any


def progress_bar(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total=``); ``enabled`` False,
    or stderr not a terminal, gives a bar that draws nothing (``tqdm(disable=True)``: the
    iterable passes through and ``update``/``set_postfix`` do nothing)."""
    import sys

    from tqdm import tqdm

    return tqdm(iterable, disable=True if not enabled else None, file=sys.stderr, **kwargs)
