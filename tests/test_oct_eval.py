"""benchmarks/oct_eval.py: reporting patients only, per class, the identity check and the
targets are what they say (a model that returns its input scores exactly as the input)."""
import json
from pathlib import Path

import pytest
import torch

from same_fast.models import save_model
from same_fast.nn import SAMENet


def _passthrough(path):
    """A lite SAMENet whose image head is zero: its residual output is its input."""
    model = SAMENet(1, "lite", context=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("image_decoder"):
                p.zero_()
    save_model(path, model, modality="oct")
    return str(path)


def test_oct_eval_passthrough_scores_as_its_input(tmp_path, bench_script, data_dir):
    mod = bench_script("oct_eval")
    out = tmp_path / "r.json"
    res = mod.main(["--model", _passthrough(tmp_path / "m.safetensors"), "--max-per-class", "2",
                    "--boot", "50", "--out", str(out), "--grid", str(tmp_path / "g.png")])
    assert json.loads(out.read_text())["summary"] == res["summary"]
    assert (tmp_path / "g.png").stat().st_size > 10_000
    rows = res["rows"]
    assert sorted({r["class"] for r in rows}) == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert len(rows) == 8
    from same_fast.data import split_files

    assert {r["file"] for r in rows} <= split_files("kermany-oct:report")
    for r in rows:
        # float rounding in [-1, 1] may move a pixel by one grey level
        assert r["identity_ssim"] > 0.9999 and abs(r["ssim"] - r["ssim_input"]) < 1e-4
        assert r["ssim_input"] < 0.9  # the oct preset did degrade the scan
    a = res["summary"]["all"]
    assert abs(a["ssim_gain"]) < 1e-4 and abs(a["ssim_gain_ci95"][1]) < 1e-4
    t = res["targets"]
    assert t["identity_ssim>=0.95"]["met"] and not t["ssim_gain>=0.05"]["met"]
    assert not t["no_class_below_input"]["met"]  # no gain is not above the input
    assert res["seeds"]["degrade"] == 0 and len(res["git"]["commit"]) == 40
    # a scan's degradation depends on the seed and its name only, not on the others evaluated
    one = mod.main(["--model", str(tmp_path / "m.safetensors"), "--max-per-class", "1",
                    "--boot", "10"])
    first = {r["file"]: r for r in rows}
    for r in one["rows"]:
        assert r["ssim_input"] == first[r["file"]]["ssim_input"]


def test_oct_adapt_zero_steps_changes_nothing(tmp_path, bench_script, data_dir):
    mod = bench_script("oct_adapt")
    assert mod.SHIFT.looks[1] < mod.SHIFT.looks[0] * 2 < 16  # fewer looks than oct draws
    res = mod.main(["--model", _passthrough(tmp_path / "m.safetensors"), "--max-per-class", "1",
                    "--steps", "0", "--boot", "20", "--out", str(tmp_path / "a.json"),
                    "--grid", str(tmp_path / "g.png"), "--lr", "1e-3"])
    assert (tmp_path / "g.png").stat().st_size > 10_000  # four labelled panels per class
    a = res["summary"]["all"]
    assert a["n"] == 4 and a["ssim_gain"] == 0.0 and a["share_worse"] == 0.0  # the same net
    assert abs(a["ssim_source"] - a["ssim_input"]) < 1e-4  # the passthrough returns its input
    assert res["adapt"]["redegrade_preset"] == "oct" and res["shift"]["name"] == "oct-shift"
    assert res["adapt"]["lr"] == 1e-3  # --lr is recorded as run (default: the modality's)
    assert json.loads((tmp_path / "a.json").read_text())["targets"] == res["targets"]


def test_oct_adapt_ungradable_scans_stay_out_of_the_scores(tmp_path, bench_script, data_dir):
    mod = bench_script("oct_adapt")
    res = mod.main(["--model", _passthrough(tmp_path / "m.safetensors"), "--max-per-class", "2",
                    "--steps", "0", "--boot", "20", "--ungradable", "0.3", "--picker", "none"])
    junk = res["ungradable"]
    assert len(junk) == 2 and [j["family"] for j in junk] == ["noise", "scramble"]
    scored = {r["file"] for r in res["rows"]}
    assert len(scored) == 6 and not scored & {j["file"] for j in junk}
    # the same draw for the same seed, whatever else runs
    again = mod.contaminate([{"file": str(i), "degraded": torch.rand(1, 32, 48)}
                             for i in range(8)], 0.3, 0)
    assert len(again) == 2 and again == mod.contaminate(
        [{"file": str(i), "degraded": torch.rand(1, 32, 48)} for i in range(8)], 0.3, 0)
    with pytest.raises(SystemExit, match="ungradable"):
        mod.contaminate([{"file": "a", "degraded": torch.rand(1, 8, 8)}], 1.0, 0)


def test_oct_picker_benchmark_ranks_planted_failures_below_real_pseudo_labels(bench_script,
                                                                               data_dir):
    mod = bench_script("oct_picker")
    res = mod.main(["--max-per-class", "1", "--shift", "oct-shift", "--boot", "20"])
    r = res["shifts"]["oct-shift"]
    assert r["scans"] == 4 and len(res["git"]["commit"]) == 40
    p = r["planted"]
    assert set(p) >= {"all", "iqa", "isd", "all:noise", "all:scramble", "all:washout"}
    assert p["all:washout"]["auroc"] > 0.9 and p["all"]["auroc"] > 0.7
    assert r["harmful"]["harmful"] + r["harmful"]["helpful"] == 4
    # the reporting run's real pseudo-labels, scan by scan (the planted draws depend on order)
    stored = {row["file"]: row for row in json.loads(
        (Path(__file__).resolve().parents[1] / "benchmarks" / "results"
         / "2026-12-06-cpu-oct-picker.json").read_text())["shifts"]["oct-shift"]["rows"]}
    for row in r["rows"]:
        old = stored[row["file"]]
        assert abs(row["plausibility"] - old["plausibility"]) < 1e-4
        assert abs(row["ssim_teacher"] - old["ssim_teacher"]) < 2e-4
