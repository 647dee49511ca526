"""One selection record: the rule, the models trained for it and the runs it judged, in one JSON.

    python benchmarks/selection_record.py --what "WHAT WAS ASKED AND FOUND" --rule RULE.md \\
        [--training NAME=CHECKPOINT.safetensors ...] --run LABEL=RUN.json [--run ...] \\
        [--extra KEY=FILE.json ...] -o benchmarks/results/DATE-cpu-NAME.json [--index "WHAT"]

A selection (issue #20's protocol) is trusted when a reader can see that its rule came before
its runs and that every number traces to clean code. The record keeps the rule's text whole
(it must carry a date), each run's JSON whole (``fundus_cross_camera.py`` and friends: their
provenance, per-image rows and bootstrap intervals), and for each model trained for the rule
its recipe, its validation log and the state its own validation chose (read beside the
checkpoint, as ``train-source`` writes them). It refuses, with one line and exit status 2, a
run made from a tree with uncommitted changes or without seeds, a rule with no date, and a
checkpoint whose recipe or log is missing. ``--index`` adds the record's row to
``benchmarks/results/INDEX.md`` (once).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


class RecordError(Exception):
    """A part of the record that cannot be trusted or read."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: cannot read ({e})") from None


def _pairs(specs: list[str], what: str) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep or not key or not path:
            raise RecordError(f"{what} expects NAME=PATH, got '{spec}'")
        out.append((key, Path(path)))
    if len({k for k, _ in out}) != len(out):
        raise RecordError(f"{what}: a name is given twice")
    return out


def check_run(label: str, run: Any) -> None:
    """A run must say which clean commit made it and with which seeds."""
    prov = run.get("provenance") if isinstance(run, dict) else None
    git = (prov or {}).get("git") or {}
    if not git.get("commit"):
        raise RecordError(f"run {label}: no git commit in its provenance")
    if git.get("dirty") is not False:
        raise RecordError(f"run {label}: made from a tree with uncommitted changes "
                          f"({git['commit'][:7]}); rerun it from a clean commit")
    if not prov.get("seeds"):
        raise RecordError(f"run {label}: no seeds in its provenance")


def training(checkpoint: Path) -> dict[str, Any]:
    """What ``train-source`` left beside ``checkpoint``: the recipe, the validation log and the
    state its validation chose (the checkpoint's own ``step`` and ``validation``)."""
    from same_fast.checkpoint import read_metadata
    from same_fast.errors import SameFastError

    stem = checkpoint.with_suffix("")
    recipe, log = Path(f"{stem}.recipe.json"), Path(f"{stem}.log.jsonl")
    for p in (checkpoint, recipe, log):
        if not p.is_file():
            raise RecordError(f"{checkpoint}: no {p.name} beside it")
    try:
        meta = read_metadata(checkpoint)
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (SameFastError, OSError, ValueError) as e:
        raise RecordError(f"{checkpoint}: cannot read ({e})") from None
    return {"checkpoint": str(checkpoint), "recipe": _json(recipe), "log": rows,
            "validated_state": {"step": meta.get("step"), "validation": meta.get("validation")}}


def build(what: str, rule_text: str, trainings: list[tuple[str, Path]],
          runs: list[tuple[str, Path]], extras: list[tuple[str, Path]] = ()) -> dict[str, Any]:
    if not what.strip():
        raise RecordError("--what is empty: say what was asked and what was found")
    if not DATE.search(rule_text):
        raise RecordError("the rule names no date (YYYY-MM-DD): say when it was written")
    if not runs:
        raise RecordError("no --run: a record holds at least one run")
    record: dict[str, Any] = {"what": what, "rule": rule_text}
    if trainings:
        record["training"] = {name: training(path) for name, path in trainings}
    record["runs"] = {}
    for label, path in runs:
        run = _json(path)
        check_run(label, run)
        record["runs"][label] = run
    for key, path in extras:
        if key in record:
            raise RecordError(f"--extra {key}: a name the record already uses")
        record[key] = _json(path)
    return record


def add_to_index(index: Path, name: str, text: str) -> bool:
    """Append ``| `name` | text |`` to the results index unless the name is there already."""
    lines = index.read_text().splitlines() if index.is_file() else []
    if any(line.startswith(f"| `{name}` |") for line in lines):
        return False
    with open(index, "a") as f:
        f.write(f"| `{name}` | {text} |\n")
    return True


def main(argv: list[str] | None = None) -> int:
    from same_fast.errors import SameFastError
    from same_fast.files import atomic_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", required=True, help="what the selection asked and what it found")
    p.add_argument("--rule", required=True, type=Path, help="the rule, as written before the runs")
    p.add_argument("--training", action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--run", action="append", default=[], metavar="LABEL=RUN.json")
    p.add_argument("--extra", action="append", default=[], metavar="KEY=FILE.json",
                   help="another JSON kept whole under KEY")
    p.add_argument("-o", "--out", required=True, type=Path)
    p.add_argument("--index", metavar="WHAT", help="add the record's row to INDEX.md beside it")
    a = p.parse_args(argv)
    try:
        try:
            rule_text = a.rule.read_text()
        except OSError as e:
            raise RecordError(f"--rule {a.rule}: cannot read ({e.strerror or e})") from None
        record = build(a.what, rule_text, _pairs(a.training, "--training"),
                       _pairs(a.run, "--run"), _pairs(a.extra, "--extra"))
    except RecordError as e:
        print(f"selection_record: {e}", file=sys.stderr)
        return 2
    try:
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    except SameFastError as e:  # a folder in the way, no permission, a full disk
        print(f"selection_record: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({len(record['runs'])} runs)")
    if a.index and add_to_index(a.out.parent / "INDEX.md", a.out.name, a.index):
        print(f"added {a.out.name} to {a.out.parent / 'INDEX.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
