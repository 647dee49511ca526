"""Benchmark suites behind ``same-fast bench --suite NAME``.

Each suite is a module here with ``run(args) -> dict`` (JSON-able results: environment, per-case
medians, ratios against peers measured in the same run) and optionally ``add_arguments(parser)``
for suite-specific flags. ``benchmarks/`` holds the pytest-benchmark front over the same code.
"""
SUITES = {
    "ops": "same_fast.benchsuites.ops",
    "enhance": "same_fast.benchsuites.enhance",
    "stream": "same_fast.benchsuites.stream",
    "models": "same_fast.benchsuites.models",
}
