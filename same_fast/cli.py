"""The ``same-fast`` command: one subcommand per user task, each a thin module in ``commands/``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs (``--help`` lists them without importing),
so a missing optional dependency never breaks the whole CLI.

Errors: one line on stderr starting ``same-fast: error:``, exit status 2 for bad input or usage,
no traceback unless ``--debug``. Warnings and log records that libraries (pydicom, tifffile) emit
while a command runs are held: shown as ``same-fast: warning:`` lines after a command that
succeeds, dropped when it fails (shown with ``--debug``), so an error stays one line. ``serve``
runs for hours and is left alone.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence

from same_fast import __version__
from same_fast.errors import SameFastError

# name -> (module, one-line help). A command whose module is not installed is not listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("same_fast.commands.demo", "enhance and adapt an embedded example end to end"),
    "info": ("same_fast.commands.info", "describe image and DICOM files"),
    "synth": ("same_fast.commands.synth", "write synthetic degraded/clean pairs"),
    "train-source": ("same_fast.commands.train_source", "train the source enhancer"),
    "train-picker": ("same_fast.commands.train_picker", "train the pseudo-label picker"),
    "adapt": ("same_fast.commands.adapt", "adapt an enhancer to unlabeled target images"),
    "enhance": ("same_fast.commands.enhance", "enhance images, folders or DICOM series"),
    "eval": ("same_fast.commands.eval", "measure PSNR/SSIM of predictions against references"),
    "export": ("same_fast.commands.export", "export a model (ONNX, TensorRT, Triton repository)"),
    "serve": ("same_fast.commands.serve", "serve enhancement over HTTP/WebSocket or a pipe"),
    "bench": ("same_fast.commands.bench", "benchmark ops, enhancement and streaming"),
}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (not for switches, nor when there is none)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and action.nargs != 0 and not any(
            action.default is v for v in (None, False, argparse.SUPPRESS))

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not self._shows_default(action) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # no help text: the default alone
            action.help = "default: %(default)s"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    """argparse with our error contract: one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(f"{self.prog}: {message}", 2)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    sys.stderr.write(f"same-fast: error: {first}\n")
    raise SystemExit(code)


_MAX_HELD = 50


class _Held(logging.Handler):
    """Keeps warning log records (tifffile logs its complaints) instead of printing them."""

    def __init__(self, held: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        _hold(self.held, f"{record.name}: {record.getMessage()}")


def _hold(held: list[str], text: str) -> None:
    first = (text.strip().splitlines() or [""])[0][:300]
    if first and first not in held and len(held) < _MAX_HELD:
        held.append(first)


@contextlib.contextmanager
def _holding(held: list[str], active: bool) -> Iterator[None]:
    """While a command runs, route warnings and log records into ``held``."""
    if not active:
        yield
        return
    handler = _Held(held)
    root = logging.getLogger()
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, cat, *a, **k: _hold(held, f"{cat.__name__}: {msg}")
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


def _show(held: list[str], label: str = "warning") -> None:
    for line in held:
        sys.stderr.write(f"same-fast: {label}: {line}\n")


def _available() -> dict[str, tuple[str, str]]:
    return {name: v for name, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser(load: str | None = None) -> _Parser:
    """The top-level parser; ``load`` names the one subcommand whose arguments are imported."""
    parser = _Parser(prog="same-fast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"same-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Help)
        if name == load:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv
    held: list[str] = []
    try:
        parser = build_parser(load=command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 0 if command is None else 2
        with _holding(held, active=command != "serve"):
            code = int(args._run(args) or 0)
        if code == 0 or debug:
            _show(held)
        return code
    except SameFastError as e:
        if debug:
            _show(held, "held warning")
            raise
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        return 0
    except Exception as e:  # an unexpected bug: still one line, the traceback behind --debug
        if debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
