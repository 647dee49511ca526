"""benchmarks/enhance_pipeline.py end to end on a small folder: the whole command beside its parts,
and what ``--backend auto`` times at the job's shape and at its default probe."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_enhance_pipeline_benchmark_reports_parts_ratios_and_auto_probes(tmp_path, bench_script,
                                                                          monkeypatch):
    monkeypatch.setenv("SAME_FAST_CACHE", str(tmp_path / "cache"))  # main sets it; restored after
    mod = bench_script("enhance_pipeline")
    out = tmp_path / "r.json"
    assert mod.main(["--n", "6", "--size", "64", "--batch", "2", "--memory-n", "0",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["provenance"]["git"]["commit"]
    torch_run, auto_run = r["runs"]["torch"], r["runs"]["auto"]
    for run in (torch_run, auto_run):
        parts = run["parts"]
        assert parts["sum_s"] == pytest.approx(parts["decode_s"] + parts["backend_s"]
                                               + parts["encode_s"], abs=0.01)
        assert run["pipeline_over_parts"] == pytest.approx(run["command"]["files_s"]
                                                           / parts["sum_s"], abs=0.01)
        assert run["command"]["wall_s"] > run["command"]["files_s"] > 0
    assert r["auto_speedup"] == pytest.approx(torch_run["command"]["wall_s"]
                                              / auto_run["command"]["wall_s"], abs=0.01)
    # the parts ran the backend the command chose, probed at the job's shape
    assert auto_run["parts"]["engine"]["auto_probe"] == {"auto_batch": 2, "auto_size": [64, 64]}
    assert auto_run["parts"]["engine"]["backend"] == auto_run["command"]["engine"]
    probes = r["auto_probes"]
    assert probes["job"]["probe"] == {"auto_batch": 2, "auto_size": [64, 64]}
    assert probes["default"]["probe"] == "1 x 256 x 256"
    for p in probes.values():
        times = p["ms_per_frame"]
        assert {"torch", "torch+channels_last", "onnxruntime"} <= set(times)
        assert p["winner"] == min(times, key=times.get)
