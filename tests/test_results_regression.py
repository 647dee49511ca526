"""Quick reruns of the committed results on a subset, compared with the stored JSON (issue #21,
hygiene): a change that moves a reported number fails here until the results are rerun."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from same_fast.data import data_root

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (CI has it)")
def test_fundus_cross_camera_rows_match_the_stored_run(bench_script, tmp_path):
    stored = json.loads((RESULTS / "2026-12-06-cpu-fundus-cross-camera.json").read_text())
    out = tmp_path / "quick.json"
    bench_script("fundus_cross_camera").main([
        "--arm", "fundus-lite=fundus-lite", "--camera", "DRIVE-test", "--max-images", "2",
        "--condition", "fundus-local", "--condition", "identity", "--threads", "1",
        "--json", str(out)])
    quick = json.loads(out.read_text())["cameras"]["DRIVE-test"]
    for cond in ("fundus-local", "identity"):
        for new, old in zip(quick[cond]["rows"], stored["cameras"]["DRIVE-test"][cond]["rows"][:2],
                            strict=False):
            assert new["name"] == old["name"]
            for key in ("degraded", "fundus-lite"):
                assert new[key]["ssim"] == pytest.approx(old[key]["ssim"], abs=2e-4), (cond, key)
                assert new[key]["psnr"] == pytest.approx(old[key]["psnr"], abs=0.05), (cond, key)


@pytest.mark.slow
def test_ultrasound_report_matches_the_stored_run(bench_script, tmp_path):
    stored = json.loads((RESULTS / "2026-12-06-cpu-ultrasound-report.json").read_text())
    mod = bench_script("ultrasound_report")
    from same_fast.models import load_model

    model, _ = load_model("ultrasound-lite")
    res = mod.score_set(model, mod.echo_frames()[:6], 0)
    old = stored["sets"]["echo (never trained or selected on)"]["rows"][:6]
    for new, ref in zip(res["rows"], old, strict=True):
        assert new["name"] == ref["name"]
        assert new["enhanced"][0] == pytest.approx(ref["enhanced"][0], abs=2e-4)
        assert new["input"][0] == pytest.approx(ref["input"][0], abs=2e-4)


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (CI has it)")
def test_adaptation_on_the_fixed_shifts_matches_the_stored_run(bench_script, tmp_path):
    # docs/RESULTS.md's adaptation table: the default's gain on DRIVE test noise+JPEG (the whole
    # case: 20 images, 300 steps, about a minute) and its skip on haze+gamma
    stored = json.loads((RESULTS / "2026-12-06-cpu-adaptation-shifts-drive-view.json")
                        .read_text())["cases"]
    out = tmp_path / "quick.json"
    bench_script("adaptation_shifts").main([
        "--camera", "DRIVE-test", "--shift", "shift-noise-jpeg", "--shift", "shift-haze-gamma",
        "--arm", "default", "--threads", "1", "--json", str(out)])
    quick = json.loads(out.read_text())["cases"]
    for case in ("DRIVE-test/shift-noise-jpeg", "DRIVE-test/shift-haze-gamma"):
        new, old = quick[case]["arms"], stored[case]["arms"]
        assert new["source"]["ssim"]["mean"] == pytest.approx(old["source"]["ssim"]["mean"], abs=2e-4)
        for key in ("gain_ssim", "gain_psnr"):
            assert new["default"][key]["mean"] == pytest.approx(old["default"][key]["mean"],
                                                                abs=2e-3 if key == "gain_ssim" else 0.05)
    assert quick["DRIVE-test/shift-noise-jpeg"]["arms"]["default"]["gain_ssim"]["mean"] > 0.03
    assert quick["DRIVE-test/shift-haze-gamma"]["arms"]["default"]["gain_ssim"]["mean"] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (CI has it)")
def test_oct_source_rows_match_the_stored_run(bench_script):
    # docs/results/oct.md's source table: one reporting scan per class, scored again
    stored = {r["file"]: r for r in json.loads(
        (RESULTS / "2026-12-06-cpu-oct-source.json").read_text())["rows"]}
    res = bench_script("oct_eval").main(["--max-per-class", "1", "--boot", "20"])
    assert len(res["rows"]) == 4
    for row in res["rows"]:
        old = stored[row["file"]]
        for key in ("ssim_input", "ssim", "identity_ssim"):
            assert row[key] == pytest.approx(old[key], abs=2e-4), (row["file"], key)
        assert row["psnr"] == pytest.approx(old["psnr"], abs=0.05)


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (CI has it)")
def test_oct_adaptation_with_the_speckle_view_matches_the_stored_run(bench_script, tmp_path):
    # docs/results/oct.md: the speckle view (the default's re-degradation) with oct-lite's
    # structure head, on one reporting scan per class and 15 steps, without the picker (whole
    # frames make a step slow: the stored quick run of the same command, about a minute; the
    # full runs are the 113-scan, 100-step JSONs). The picker is pinned by
    # test_oct_eval.py::test_oct_picker_benchmark_ranks_planted_failures_below_real_pseudo_labels:
    # on four scans its automatic share is 0.5 and 15 steps end at -0.004, a quick run that
    # says nothing of the default on a clinic's folder.
    stored = json.loads((RESULTS / "2026-12-06-cpu-oct-adapt-speckle-view-quick.json").read_text())
    res = bench_script("oct_adapt").main(["--recipe", "default", "--picker", "none",
                                          "--max-per-class", "1", "--steps", "15", "--boot", "20",
                                          "--out", str(tmp_path / "q.json")])
    assert res["student_view"] == stored["student_view"] and res["skipped"] is None
    old = {r["file"]: r for r in stored["rows"]}
    for row in res["rows"]:
        assert row["ssim"] == pytest.approx(old[row["file"]]["ssim"], abs=2e-4)
        assert row["ssim_adapted"] == pytest.approx(old[row["file"]]["ssim_adapted"], abs=2e-3)
    assert res["summary"]["all"]["ssim_gain"] > 0.01 and res["summary"]["all"]["share_worse"] <= 0.2


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (CI has it)")
def test_csdi_no_reference_rows_match_the_stored_run(bench_script, tmp_path):
    # docs/results/csdi.md: the quality model's P(good) of the input and of the source model's
    # output, per photograph (every 30th); adaptation keeps the source on CSDI today
    if not (data_root() / "fundus" / "CSDI").is_dir():
        pytest.skip("needs fundus/CSDI in the shared data folder")
    stored = {r["name"]: r for r in json.loads(
        (RESULTS / "2026-12-06-cpu-csdi-clinic.json").read_text())["rows"]}
    out = tmp_path / "csdi.json"
    assert bench_script("csdi_clinic").main(["--every", "30", "--steps", "2", "--json", str(out),
                                             "--figures", str(tmp_path)]) == 0
    quick = json.loads(out.read_text())
    assert quick["skipped"] and quick["acceptance"] is None
    for row in quick["rows"]:
        old = stored[row["name"]]
        for key in ("input_p_good", "source_p_good", "input_noise_sigma"):
            assert row[key] == pytest.approx(old[key], abs=2e-4), (row["name"], key)
        assert row["adapted_p_good"] == pytest.approx(row["source_p_good"], abs=1e-6)
