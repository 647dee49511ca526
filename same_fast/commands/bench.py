"""``same-fast bench --suite ops|enhance|stream|models [--json FILE]``."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json

from same_fast.benchsuites import SUITES
from same_fast.benchsuites.common import write_json
from same_fast.errors import InputError

HELP = "benchmark ops, enhancement and streaming against peers in one run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, choices=sorted(SUITES), help="which suite to run")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per case")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    # Suite-specific flags are accepted as KEY=VALUE pairs to keep one parser for all suites.
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="suite-specific option (see the suite's docstring)")


def run(args: argparse.Namespace) -> int:
    module = SUITES[args.suite]
    if importlib.util.find_spec(module) is None:
        raise InputError(f"benchmark suite '{args.suite}' is not installed in this build")
    options = {}
    for kv in args.set:
        if "=" not in kv:
            raise InputError(f"--set expects KEY=VALUE, got '{kv}'")
        k, v = kv.split("=", 1)
        options[k.strip()] = v.strip()
    args.options = options
    result = importlib.import_module(module).run(args)
    write_json(args.json, result)
    summary = result.get("summary", result)
    print(json.dumps(summary, indent=2, default=str))
    return 0
