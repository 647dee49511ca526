"""Progress bars draw on a terminal only: log files and pipes get no carriage-return frames."""
from __future__ import annotations

import io
import sys

from same_fast.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drawn(stream: io.StringIO, monkeypatch, enabled: bool = True) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress_bar(range(3), enabled, desc="x", mininterval=0)) == [0, 1, 2]
    bar = progress_bar(enabled=enabled, total=2, desc="y", mininterval=0)
    bar.update(2)
    bar.set_postfix(loss="0.1")
    bar.close()
    return stream.getvalue()


def test_a_bar_draws_on_a_terminal(monkeypatch):
    assert "\r" in _drawn(_Terminal(), monkeypatch)


def test_no_bar_in_a_log_file_or_when_turned_off(monkeypatch):
    assert _drawn(io.StringIO(), monkeypatch) == ""
    assert _drawn(_Terminal(), monkeypatch, enabled=False) == ""
