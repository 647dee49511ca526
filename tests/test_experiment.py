"""The lab's evaluation harness (``lab/``), reduced: stand-in models, a few real held-out images,
two steps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lab.config import make_config
from lab.experiment import run_experiment
from lab.images import experiment_images
from lab.planted import auroc
from same_fast.data import data_root
from same_fast.errors import InputError
from same_fast.models import save_model
from same_fast.nn import SAMENet
from same_fast.nn.iqa import IQANet
from same_fast.nn.isd import StructureVAE
from same_fast.picker import save_picker


def test_auroc_matches_definition():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert auroc(np.array([2.0]), np.array([2.0])) == 0.5


def test_unknown_experiment_is_an_input_error():
    with pytest.raises(InputError, match="unknown experiment"):
        make_config("nope")


def _tiny_us_model_and_picker(tmp_path) -> tuple[str, str]:
    """A small random ultrasound enhancer and a picker whose ISD accepts everything."""
    torch.manual_seed(0)
    model = save_model(tmp_path / "us.safetensors", SAMENet(1, "lite", base=8, max_channels=16),
                       modality="ultrasound")
    picker = save_picker(tmp_path / "p.safetensors", IQANet(1, width=4, depth=2, size=32),
                         StructureVAE(size=16, latent=4, width=4), 1e9, "ultrasound")
    return str(model), str(picker)


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_busi_experiment_quick(tmp_path):
    model, picker = _tiny_us_model_and_picker(tmp_path)
    res = run_experiment("busi-speckle", tmp_path / "out", quick=True, progress=False,
                         model=model, picker=picker, n_images=3, steps=2)
    assert res["n"] == 3
    t = res["table"]
    assert set(t) == {"degraded", "clahe", "source", "mean_teacher", "same_offline",
                      "same_online", "mean_teacher_redegrade", "same_redegrade",
                      "same_online_redegrade"}
    for row in t.values():
        assert 0 < row["ssim"] <= 1 and row["psnr"] > 0
    for m in ("mean_teacher", "same_offline", "same_online", "mean_teacher_redegrade",
              "same_redegrade", "same_online_redegrade"):
        assert 0 <= t[m]["negative_rate"] <= 1
    p = res["picker"]
    assert set(p["auroc"]) >= {"noise", "scramble", "washout", "all", "iqa_only", "isd_only"}
    assert all(0 <= v <= 1 for v in p["auroc"].values())
    assert res["picker"]["online"]["steps"] == 3  # one step per frame, one pass
    assert res["picker"]["online_redegrade"]["steps"] == 3
    assert "same_redegrade: beats mean_teacher_redegrade" in res["targets"]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["table"] == json.loads(json.dumps(t))
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| same_offline |" in md and "AUROC" in md
    assert (tmp_path / "out" / "examples.png").stat().st_size > 500


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_pseudo_clean_redegrade_script_runs_and_reports(tmp_path):
    """lab/adapt_pseudo_clean.py (a variant tried and not kept) still runs end to end."""
    import lab.adapt_pseudo_clean as mod

    out = tmp_path / "pc.json"
    assert mod.main(["--steps", "2", "--every", "1", "--n-images", "2", "--size", "128",
                     "--view", "64", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(0 < r["teacher"][0] <= 1 and r["teacher"][1] > 5 for r in rows[1:])
    # two steps at EMA 0.995 barely move the teacher: its scores stay near the source's
    assert abs(rows[-1]["teacher"][0] - rows[0]["source"][0]) < 0.01


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_picker_auroc_script_compares_pickers_on_the_same_images(tmp_path):
    """lab/picker_auroc.py: every picker sees the same images and teacher outputs."""
    import lab.picker_auroc as mod

    torch.manual_seed(0)
    model = save_model(tmp_path / "us.safetensors", SAMENet(1, "lite", base=8, max_channels=16),
                       modality="ultrasound")
    iqa, isd = IQANet(1, width=4, depth=2, size=32), StructureVAE(size=16, latent=4, width=4)
    keep = save_picker(tmp_path / "keep.safetensors", iqa, isd, 1e9, "ultrasound")
    same = save_picker(tmp_path / "same.safetensors", iqa, isd, 1e9, "ultrasound")
    never = save_picker(tmp_path / "never.safetensors", iqa, isd, -1e9, "ultrasound")
    out = tmp_path / "auroc.json"
    assert mod.main(["--experiment", "busi-speckle", "--model", str(model), "--n-images", "3",
                     "--size", "64", "--seeds", "0,1", "--json", str(out),
                     "--picker", str(keep), "--picker", str(same), "--picker", str(never)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 3 and res["seeds"] == [0, 1]
    s = res["summary"]
    assert s[str(keep)] == s[str(same)]  # identical pickers, identical inputs
    assert s[str(never)]["accept_real"] == 0.0  # every ISD score is above -1e9
    for name, row in s.items():
        assert set(row["auroc"]) == {"noise", "scramble", "washout", "all", "iqa_only",
                                     "isd_only"}
        assert all(0 <= v <= 1 for v in row["auroc"].values())
        assert row["auroc"]["all"] == pytest.approx(
            np.mean([r["auroc"]["all"] for r in res["runs"][name]]))
        assert row["auroc_min_all"] <= row["auroc"]["all"]


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_drive_noise_shift_and_its_noisier_student_view():
    from same_fast.adapt.augment import redegrade
    cfg = make_config("drive-noise", quick=True, n_images=2)
    data, degraded = experiment_images(cfg)
    fov = data["fov"].expand_as(degraded) > 0.5
    clean = data["clean"]
    r = (degraded - clean)[fov & (clean > 0.05) & (clean < 0.9)]  # away from the clamp
    assert abs(float(r.mean())) < 0.01  # noise, not a change of brightness
    assert 0.01 ** 2 < float(r.var()) < 0.03 ** 2 + 0.008  # within the preset's range
    assert float((degraded - clean)[~fov].abs().max()) == 0  # the FOV stays black outside
    # the student's view adds the same kind of noise again (Noisier2Noise)
    g = torch.Generator().manual_seed(0)
    noisier = redegrade(degraded, cfg.redegrade_preset, cfg.redegrade_strength, g)
    extra = (noisier - degraded)[fov & (degraded > 0.05) & (degraded < 0.9)]
    assert cfg.redegrade_preset == "sensor-noise" and float(extra.var()) > 0.01 ** 2


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_ungradable_share_corrupts_a_seeded_subset_and_scores_the_rest(tmp_path):
    plain_cfg = make_config("busi-speckle", quick=True, n_images=4)
    _, plain = experiment_images(plain_cfg)
    cfg = make_config("busi-speckle", quick=True, n_images=4, ungradable=0.5,
                      ungradable_kind="washout")
    data, mixed = experiment_images(cfg)
    bad = data["ungradable"]
    assert len(bad) == 2 and bad == experiment_images(cfg)[0]["ungradable"]  # seeded
    for i in range(4):
        same = torch.equal(mixed[i], plain[i])
        assert same == (i not in bad)
    assert float(mixed[bad].std()) < float(plain[bad].std())  # washed out: flatter
    with pytest.raises(InputError, match="ungradable_kind"):
        experiment_images(make_config("busi-speckle", quick=True, n_images=4, ungradable=0.5,
                                      ungradable_kind="fog"))


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder (SAME_FAST_DATA)")
def test_experiment_with_ungradable_images_reports_the_usable_ones_apart(tmp_path):
    model, picker = _tiny_us_model_and_picker(tmp_path)
    res = run_experiment("busi-speckle", tmp_path / "out", quick=True, progress=False,
                         model=model, picker=picker, n_images=4, steps=2,
                         arms="mean_teacher", ungradable=0.5)
    assert len(res["ungradable"]) == 2
    per, t = res["per_image"]["source"], res["table"]["source"]
    bad = {res["images"].index(n) for n in res["ungradable"]}
    usable = [per[i]["ssim"] for i in range(4) if i not in bad]
    assert t["ssim_usable"] == pytest.approx(sum(usable) / 2)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "SSIM usable" in md and "the ungradable images' own" in md
    # the ungradable images' pseudo-labels are a negative family of the AUROC, not positives
    assert 0 <= res["picker"]["auroc"]["ungradable"] <= 1
    assert set(res["picker"]["accept_planted"]) == {"noise", "scramble", "washout", "ungradable"}
