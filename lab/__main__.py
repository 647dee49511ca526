"""Run the SAME adaptation experiments and write their JSON and Markdown tables.

    python -m lab [-o experiments] [--only drive-cataract] [--quick] [--threads 1]
        [--set steps=200 --set view=128 ...]

Each experiment writes ``<out>/<name>/results.json``, ``results.md`` and ``examples.png``
(``lab.experiment.run_experiment``); the combined Markdown table goes to ``<out>/README.md``.
Needs the shared data folder ($SAME_FAST_DATA) and
the shipped models and pickers (or ``--set model=PATH --set picker=PATH``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _parse_sets(pairs: list[str]) -> dict[str, object]:
    from lab.config import ExperimentConfig

    types = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
    out: dict[str, object] = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        if k not in types:
            raise SystemExit(f"unknown setting '{k}' (one of {', '.join(sorted(types))})")
        t = str(types[k])
        out[k] = (int(v) if "int" in t else float(v) if "float" in t
                  else v.lower() in ("1", "true", "yes") if "bool" in t else v)
    return out


def main(argv: list[str] | None = None) -> int:
    from lab.config import EXPERIMENTS
    from lab.experiment import run_experiment
    from lab.report import markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", default="experiments")
    p.add_argument("--only", action="append", choices=sorted(EXPERIMENTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = default; 1 is fastest on a busy shared CPU)")
    a = p.parse_args(argv)
    if a.threads > 0:
        import torch

        torch.set_num_threads(a.threads)
    overrides = _parse_sets(a.set)
    results = {}
    for name in a.only or list(EXPERIMENTS):
        results[name] = run_experiment(name, Path(a.out) / name, quick=a.quick, **overrides)
    text = "\n".join(markdown(r) for r in results.values())
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "README.md").write_text(text)
    (Path(a.out) / "summary.json").write_text(json.dumps(
        {k: {"table": v["table"], "picker": v["picker"], "targets": v["targets"],
             "downstream": v["downstream"], "seconds": v["seconds"]}
         for k, v in results.items()}, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
