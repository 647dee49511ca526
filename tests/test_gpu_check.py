"""benchmarks/gpu_check.py on a machine without a GPU: a clear message and exit status 2, nothing
written; with --allow-cpu the CPU-safe sections run and the GPU ones say why they were skipped."""
import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_fails_cleanly(tmp_path):
    assert not torch.cuda.is_available()  # CI and this suite run on CPU-only machines
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("gpu_check: error: no CUDA device")
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_allow_cpu_records_every_gpu_section_as_skipped(bench_script, tmp_path):
    gpu_check = bench_script("gpu_check")
    rc = gpu_check.main(["--allow-cpu", "--out", str(tmp_path), "--skip",
                         "onnx_graph,decode_cpu"])
    [written] = tmp_path.iterdir()
    result = json.loads(written.read_text())
    gpu = [name for name, _ in gpu_check.SECTIONS if name not in ("onnx_graph", "decode_cpu")]
    assert {name: result[name]["status"] for name in gpu} == {
        name: "skipped: no CUDA device" for name in gpu}
    assert rc == 0 and result["seconds"] < 60
