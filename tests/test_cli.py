"""The ``same-fast`` command as a user runs it: a real subprocess, exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from same_fast import io
from same_fast.cli import COMMANDS, main


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "same_fast.cli", *args], capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("same-fast: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_lists_commands():
    out = run("--help", check=True).stdout
    for cmd in ("info", "eval", "bench"):
        assert cmd in out


def test_info_reports_cine_frames(dicom_file):
    proc = run("info", str(dicom_file("examples_ybr_color.dcm")), "--json", check=True)
    d = json.loads(proc.stdout)
    assert d["frames"] == 30 and d["format"] == "dicom" and d["modality"] == "US"
    assert (d["width"], d["height"], d["channels"]) == (320, 240, 3)
    assert d["dicom"]["PhotometricInterpretation"] == "YBR_FULL_422"
    text = run("info", str(dicom_file("examples_ybr_color.dcm")), check=True).stdout
    assert "frames=30" in text and "modality=US" in text


def test_info_on_image(tmp_path, retina):
    p = io.write_image(tmp_path / "r16.tif", retina[:64, :80].astype(np.uint16) * 257)
    d = json.loads(run("info", str(p), "--json", check=True).stdout)
    assert (d["format"], d["width"], d["height"], d["dtype"]) == ("tiff", 80, 64, "uint16")


def test_bad_files_give_one_line_and_exit_2(tmp_path, retina):
    png = io.write_image(tmp_path / "ok.png", retina[:200, :200]).read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "empty.png").write_bytes(b"")
    for name, word in (("truncated.png", "truncated"), ("random.dcm", "not a DICOM"),
                       ("empty.png", "empty")):
        line = assert_one_line_error(run("info", str(tmp_path / name)))
        assert word in line and name in line


def test_info_several_files_reports_each(tmp_path, retina):
    good = io.write_image(tmp_path / "ok.png", retina[:50, :50])
    (tmp_path / "empty.png").write_bytes(b"")
    proc = run("info", str(good), str(tmp_path / "empty.png"))
    assert proc.returncode == 2
    assert "ok.png: PNG 50x50" in proc.stdout
    assert "empty.png: empty file" in proc.stderr


def test_usage_errors(tmp_path):
    assert_one_line_error(run("nonsense"))
    assert_one_line_error(run("eval", "--protocol", "fancy"))
    line = assert_one_line_error(run("eval", "--pred", str(tmp_path / "no"), "--gt", str(tmp_path)))
    assert "no such folder" in line
    assert_one_line_error(run("info"))


def test_debug_shows_traceback(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    proc = run("--debug", "info", str(tmp_path / "empty.png"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_installed_and_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: same-fast {command}")


def test_every_command_help_shows_every_default():
    import argparse

    from same_fast.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser(load=name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
        text = " ".join(p.format_help().split())
        for action in p._actions:
            d = action.default
            if not action.option_strings or action.nargs == 0 or d is None or d is False \
                    or d is argparse.SUPPRESS:
                continue
            assert f"default: {d}" in text, f"{name} {action.option_strings[0]}"
