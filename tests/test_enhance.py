"""`same-fast synth` and `same-fast enhance` end to end through the CLI on real files."""
import json

import numpy as np
import pytest
import torch

from same_fast.cli import main
from same_fast.io import load, read_image, write_image
from same_fast.models import save_model
from same_fast.nn import SAMENet


@pytest.fixture()
def tiny_models(tmp_path):
    torch.manual_seed(0)
    p3 = save_model(tmp_path / "m3.safetensors", SAMENet(3, "lite", base=8, levels=3),
                    modality="fundus")
    p1 = save_model(tmp_path / "m1.safetensors", SAMENet(1, "lite", base=8, levels=3),
                    modality="ultrasound")
    return str(p3), str(p1)


def _clean_folder(tmp_path, n=3, dtype=np.uint8):
    rng = np.random.default_rng(0)
    d = tmp_path / "clean_in"
    (d / "images").mkdir(parents=True)
    (d / "fov").mkdir()
    (d / "vessels").mkdir()
    top = 255 if dtype == np.uint8 else 65535
    for i in range(n):
        img = (rng.uniform(0.2, 0.8, (37 + i, 45, 3)) * top).astype(dtype)
        write_image(d / "images" / f"case{i}.png", img)
        fov = np.zeros((37 + i, 45, 1), np.uint8)
        fov[5:30, 5:40] = 255
        write_image(d / "fov" / f"case{i}.png", fov)
        write_image(d / "vessels" / f"case{i}.png", (fov // 255) * 255 * (rng.uniform(size=fov.shape) > 0.8))
    return d


def test_synth_writes_matching_folders_reproducibly(tmp_path, capsys):
    d = _clean_folder(tmp_path)
    args = ["synth", "--preset", "fundus-shen2020", "-i", str(d / "images"), "--fov", str(d / "fov"),
            "--structure", str(d / "vessels"), "--per-image", "2", "--seed", "5", "--no-progress"]
    assert main(args + ["-o", str(tmp_path / "a")]) == 0
    assert main(args + ["-o", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a" / "degraded").iterdir())
    assert names == [f"case{i}_{k}.png" for i in range(3) for k in range(2)]
    for sub in ("clean", "fov", "structure"):
        assert sorted(p.name for p in (tmp_path / "a" / sub).iterdir()) == names
    for n in names:
        a = read_image(tmp_path / "a" / "degraded" / n)
        assert np.array_equal(a, read_image(tmp_path / "b" / "degraded" / n))
        fov = read_image(tmp_path / "a" / "fov" / n)[..., 0] > 127
        assert a.shape == read_image(tmp_path / "a" / "clean" / n).shape
        assert a[~fov].max() == 0  # outside the field of view stays black
    assert not np.array_equal(read_image(tmp_path / "a" / "degraded" / names[0]),
                              read_image(tmp_path / "a" / "degraded" / names[1]))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["pairs"] == 6 and summary["preset_fields"]["blur_sigma"] == [5.0, 15.0]


def test_synth_grey_preset_makes_grey_and_keeps_16_bit(tmp_path):
    d = _clean_folder(tmp_path, n=1, dtype=np.uint16)
    assert main(["synth", "--preset", "ultrasound-speckle", "-i", str(d / "images"), "-o",
                 str(tmp_path / "o"), "--no-progress"]) == 0
    y = read_image(tmp_path / "o" / "degraded" / "case0.png")
    assert y.dtype == np.uint16 and y.shape == (37, 45, 1)


def test_enhance_folder_with_masks(tmp_path, tiny_models):
    d = _clean_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                 "--mask", str(d / "fov"), "--batch", "2", "--no-progress"]) == 0
    for i in range(3):
        y = read_image(out / f"case{i}.png")
        assert y.shape == (37 + i, 45, 3) and y.dtype == np.uint8
        fov = read_image(d / "fov" / f"case{i}.png")[..., 0] > 127
        assert y[~fov].max() == 0 and y[fov].mean() > 20
    s = json.loads((out / "summary.json").read_text())
    assert s["n_files"] == 3 and s["n_frames"] == 3 and s["files"][0]["ms_per_frame"] > 0


def test_enhance_keeps_16_bit_and_grey_model_on_rgb(tmp_path, tiny_models):
    d = _clean_folder(tmp_path, n=1, dtype=np.uint16)
    src = d / "images" / "case0.png"
    assert main(["enhance", "-m", tiny_models[1], "-i", str(src), "-o", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    y = read_image(tmp_path / "o" / "case0.png")
    assert y.dtype == np.uint16 and y.shape == (37, 45, 3)
    # a grey scan stored as RGB stays grey: equal channels in, equal channels out
    grey = np.repeat(read_image(src)[..., :1], 3, -1)
    write_image(tmp_path / "grey.png", grey)
    assert main(["enhance", "-m", tiny_models[1], "-i", str(tmp_path / "grey.png"), "-o",
                 str(tmp_path / "o2"), "--no-progress"]) == 0
    g = read_image(tmp_path / "o2" / "grey.png")
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])


def test_enhance_multiframe_dicom_gives_derived_series(tmp_path, tiny_models):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("examples_ybr_color.dcm")
    out = tmp_path / "dcm"
    assert main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(out), "--batch", "8",
                 "--no-progress"]) == 0
    before, after = load(src), load(out / "examples_ybr_color.dcm")
    assert after.is_dicom and after.frames.shape == before.frames.shape
    assert after.dataset.SeriesInstanceUID != before.dataset.SeriesInstanceUID
    assert after.dataset.StudyInstanceUID == before.dataset.StudyInstanceUID
    assert "DERIVED" in list(after.dataset.ImageType)
    assert not np.array_equal(after.frames, before.frames)


def test_enhance_errors_are_one_line(tmp_path, tiny_models, capsys):
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", "no-such-model", "-i", str(tmp_path), "-o", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("same-fast: error:") and "available" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", tiny_models[0], "-i", str(tmp_path / "nope.png"), "-o",
              str(tmp_path / "o")])
    assert e.value.code == 2
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", tiny_models[0], "-i", str(tmp_path / "bad.png"), "-o",
              str(tmp_path / "o")])
    assert e.value.code == 2


def test_bad_file_in_a_folder_is_skipped_and_reported(tmp_path, tiny_models, capsys):
    d = _clean_folder(tmp_path, n=2)
    (d / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                 "--no-progress"]) == 2
    assert (out / "case0.png").is_file() and (out / "case1.png").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("same-fast: error:") and "broken.png" in err[0]
    s = json.loads((out / "summary.json").read_text())
    assert s["n_files"] == 2 and s["n_failed"] == 1 and s["failed"][0]["input"].endswith("broken.png")


def test_enhance_backend_onnxruntime_matches_torch(tmp_path, tiny_models):
    d = _clean_folder(tmp_path, n=2)
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                     "--backend", backend, "--no-progress"]) == 0
        outs[backend] = [read_image(out / f"case{i}.png").astype(int) for i in range(2)]
        assert json.loads((out / "summary.json").read_text())["engine"]["backend"] == backend
    for a, b in zip(outs["torch"], outs["onnxruntime"], strict=True):
        assert np.abs(a - b).max() <= 1  # fp32 both; at most one 8-bit rounding step apart


def test_enhance_backend_auto_chooses_at_the_jobs_shape(tmp_path, tiny_models, monkeypatch,
                                                         dicom_file, capsys):
    """``--backend auto`` times its candidates at the batch and frame size of the job's first
    input (read off its header), caches the choice under that shape, and says so in the
    summary; its outputs match torch's."""
    import same_fast.io
    from same_fast.batch import EnhanceConfig
    from same_fast.batch.enhance import auto_probe

    monkeypatch.setenv("SAME_FAST_CACHE", str(tmp_path / "cache"))
    d = _clean_folder(tmp_path, n=2)  # case0 is 37 x 45, case1 38 x 45
    out = tmp_path / "auto"
    listed = []
    list_images = same_fast.io.list_images
    monkeypatch.setattr(same_fast.io, "list_images",
                        lambda *a, **k: listed.append(a) or list_images(*a, **k))
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                 "--backend", "auto", "--batch", "3", "--no-progress"]) == 0
    assert len(listed) == 1  # the probe and the plan share one listing of the folder
    s = json.loads((out / "summary.json").read_text())
    assert s["engine"]["auto_probe"] == {"auto_batch": 3, "auto_size": [37, 45]}
    (entry,) = json.loads((tmp_path / "cache" / "auto.json").read_text()).values()
    assert entry["probe"] == {"batch": 3, "height": 37, "width": 45}
    assert s["engine"]["backend"] == entry["backend"]
    # a folder the plan refuses is reported after the model is checked, before auto times
    # anything (no second cache entry)
    empty = tmp_path / "empty"
    empty.mkdir()
    for model, says in (("missing.safetensors", "neither a checkpoint"), (tiny_models[0], "no images")):
        with pytest.raises(SystemExit) as e:
            main(["enhance", "-m", model, "-i", str(empty), "-o", str(tmp_path / "x"),
                  "--backend", "auto", "--no-progress"])
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert len(json.loads((tmp_path / "cache" / "auto.json").read_text())) == 1
    ref = tmp_path / "torch"
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(ref),
                 "--no-progress"]) == 0
    for i in range(2):
        a, b = (read_image(o / f"case{i}.png").astype(int) for o in (out, ref))
        assert np.abs(a - b).max() <= 1

    cfg = EnhanceConfig(model=tiny_models[0], input=".", output=".", backend="auto", batch=4)
    cine = dicom_file("examples_ybr_color.dcm")  # 30 frames of 240 x 320
    assert auto_probe(cfg, [cine]) == {"auto_batch": 4, "auto_size": [240, 320]}
    # frames that would be tiled, a header that cannot be read, or another backend: the default
    tiled = EnhanceConfig(model=tiny_models[0], input=".", output=".", backend="auto",
                          tile_pixels=240 * 320 - 1)
    assert auto_probe(tiled, [cine]) == {}
    assert auto_probe(cfg, [tmp_path / "missing.png"]) == {}
    assert auto_probe(EnhanceConfig(model="m", input=".", output="."), [cine]) == {}
    # two frames in a file: the batch is no larger than the file
    two = EnhanceConfig(model=tiny_models[0], input=".", output=".", backend="auto",
                        batch=4, tile_pixels=2 * 240 * 320)
    assert auto_probe(two, [cine]) == {"auto_batch": 2, "auto_size": [240, 320]}


def test_enhance_batch_and_adapt_batch_are_two_settings(tmp_path, tiny_models):
    """``--batch`` (frames per forward pass) and ``--adapt-batch`` (the adapter's) once shared
    one argparse destination, so ``--batch`` was dropped and set the adapter's batch instead."""
    import argparse

    from same_fast.adapt.config import AdaptConfig, add_flags
    from same_fast.commands.enhance import ADAPT_FLAGS

    d = _clean_folder(tmp_path, n=1)
    out = tmp_path / "out"
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                 "--batch", "3", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["batch"] == 3
    out = tmp_path / "adapted"
    assert main(["enhance", "-m", tiny_models[0], "-i", str(d / "images"), "-o", str(out),
                 "--batch", "2", "--adapt", "--adapt-batch", "5", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["batch"] == 2 and s["engine"]["adaptation"]["batch"] == 5
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int)
    with pytest.raises(ValueError, match="--adapt-batch: args.batch is already"):
        add_flags(p, ADAPT_FLAGS, AdaptConfig())


def test_enhance_adapt_online_on_a_cine(tmp_path, tiny_models):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("examples_ybr_color.dcm")
    out = tmp_path / "adapted"
    assert main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(out), "--adapt",
                 "--picker", "none", "--adapt-every", "8", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    # 30 RGB frames of a grey model run as 90 grey frames: a step every 8 frames
    assert s["adaptation"]["frames"] == 90 and s["adaptation"]["steps"] >= 10
    assert s["engine"]["adapt"] == "online"
    # the settings are AdaptConfig's, carried whole into the summary
    assert s["engine"]["adaptation"]["every"] == 8 and s["engine"]["adaptation"]["mode"] == "online"
    plain = tmp_path / "plain"
    assert main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(plain),
                 "--no-progress"]) == 0
    a, p = load(out / "examples_ybr_color.dcm").frames, load(plain / "examples_ybr_color.dcm").frames
    assert a.shape == p.shape
    assert np.array_equal(a[0], p[0])  # the first frame is served before any adaptation step
    assert not np.array_equal(a[-1], p[-1])  # later frames use adapted weights
    with pytest.raises(SystemExit):
        main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(out), "--adapt",
              "--backend", "onnxruntime"])
    with pytest.raises(SystemExit):  # AdaptConfig's own checks, naming enhance's flag
        main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(out), "--adapt",
              "--adapt-every", "0"])


def test_enhance_adapt_with_a_calibrated_picker_learns_where_the_rule_rejects_all(
        tmp_path, tiny_models, reject_all_picker):
    # A picker whose absolute rule rejects everything: calibrated to the cine, it learns from
    # the better part of the cine's pseudo-labels.
    from pydicom.data import get_testdata_file

    src = get_testdata_file("examples_ybr_color.dcm")
    acceptance = {}
    for share in ("0", "0.5"):
        out = tmp_path / share
        assert main(["enhance", "-m", tiny_models[1], "-i", src, "-o", str(out), "--adapt",
                     "--picker", reject_all_picker, "--picker-calibrate", share,
                     "--adapt-every", "8", "--no-progress"]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["engine"]["picker_calibrate"] == float(share)
        acceptance[share] = s["adaptation"]["acceptance"]
    assert acceptance["0"] == 0.0
    # under a half: each batch ranks against a window of earlier ones, whose scores drift
    assert 0.1 <= acceptance["0.5"] <= 0.9


def _opt_dicom(path, frames, series=None, study=None, number=None):
    """An Ophthalmic Tomography (OPT) multi-frame instance of grey B-scans ``(F, H, W)``
    (``series``/``study``: UIDs to share with other files of one acquisition)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    opt = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = opt
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = opt, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    if number is not None:
        ds.InstanceNumber = number
    ds.PatientID, ds.Modality, ds.Manufacturer = "P1", "OPT", "Heidelberg Engineering"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = frames.shape[1], frames.shape[2], 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return ds


def test_enhance_oct_lite_on_jpeg_png_and_opt_dicom_b_scans(tmp_path, data_dir):
    import shutil

    from same_fast.data import split_files

    report = sorted(split_files("kermany-oct:report"))
    root = data_dir / "oct" / "Kermany_OCT2017" / "images"
    scans = tmp_path / "scans"
    scans.mkdir()
    wide = next(f for f in report if load(root / f.split("-")[0] / f).frames.shape[2] == 768)
    shutil.copy(root / wide.split("-")[0] / wide, scans / wide)  # a 768 x 496 JPEG as exported
    narrow = [f for f in report if load(root / f.split("-")[0] / f).frames.shape[1:3] == (496, 512)]
    grey = [load(root / f.split("-")[0] / f).frames[0][..., 0] for f in narrow[:3]]
    write_image(scans / "bscan.png", grey[0][..., None])
    src = _opt_dicom(scans / "volume.dcm", np.stack(grey))
    out = tmp_path / "out"
    assert main(["enhance", "-m", "oct-lite", "-i", str(scans), "-o", str(out), "--backend",
                 "torch", "--no-progress"]) == 0
    png = read_image(out / "bscan.png")
    assert png.shape == (496, 512, 1) and png.dtype == np.uint8
    jpg = read_image(out / f"{wide}.png")  # JPEG in, PNG out under the whole name
    assert jpg.shape == (496, 768, 1)
    dcm = load(out / "volume.dcm")
    assert dcm.is_dicom and dcm.frames.shape == (3, 496, 512, 1)
    assert dcm.dataset.Modality == "OPT" and dcm.dataset.SOPClassUID == src.SOPClassUID
    assert dcm.dataset.SeriesInstanceUID != src.SeriesInstanceUID
    assert dcm.dataset.StudyInstanceUID == src.StudyInstanceUID
    assert "DERIVED" in list(dcm.dataset.ImageType)
    # clean exports: oct-lite keeps them (its identity target), frame by frame
    from same_fast.eval import score_pair

    for k in range(3):
        assert score_pair(dcm.frames[k], grey[k][..., None], None, "paper").ssim > 0.9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_files"] == 3 and summary["n_frames"] == 5 and not summary["failed"]
    # a volume exported one B-scan per file: one derived series out, each file's place kept
    from pydicom.uid import generate_uid

    vol, series, study = tmp_path / "volume", generate_uid(), generate_uid()
    vol.mkdir()
    for k, g in enumerate(grey):
        _opt_dicom(vol / f"bscan{k:03d}.dcm", g[None], series, study, number=k + 1)
    out2 = tmp_path / "out2"
    assert main(["enhance", "-m", "oct-lite", "-i", str(vol), "-o", str(out2), "--backend",
                 "torch", "--no-progress"]) == 0
    derived = [load(out2 / f"bscan{k:03d}.dcm") for k in range(3)]
    uids = {d.dataset.SeriesInstanceUID for d in derived}
    assert len(uids) == 1 and series not in uids
    assert {d.dataset.StudyInstanceUID for d in derived} == {study}
    assert [int(d.dataset.InstanceNumber) for d in derived] == [1, 2, 3]
    assert len({d.dataset.SOPInstanceUID for d in derived}) == 3
    for k, d in enumerate(derived):
        assert d.frames.shape == (1, 496, 512, 1) and d.dataset.Modality == "OPT"
        assert score_pair(d.frames[0], grey[k][..., None], None, "paper").ssim > 0.9


def test_png_level_trades_size_for_speed_and_keeps_every_pixel(tmp_path, tiny_models, capsys):
    src = tmp_path / "smooth"
    src.mkdir()
    yy, xx = np.mgrid[:96, :96]
    for i in range(2):  # compressible content, so the zlib level shows in the size
        write_image(src / f"s{i}.png", np.stack([(xx + yy + i) % 256, xx * 2 % 256,
                                                 yy * 2 % 256], -1).astype(np.uint8))
    sizes, pixels = {}, {}
    for level in ("0", "9"):
        out = tmp_path / f"l{level}"
        assert main(["enhance", "-m", tiny_models[0], "-i", str(src), "-o", str(out),
                     "--png-level", level, "--no-progress"]) == 0
        sizes[level] = sum(p.stat().st_size for p in out.glob("*.png"))
        pixels[level] = [read_image(p) for p in sorted(out.glob("*.png"))]
    assert sizes["9"] < sizes["0"]
    assert all(np.array_equal(a, b) for a, b in zip(pixels["0"], pixels["9"], strict=True))
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", tiny_models[0], "-i", str(src), "-o", str(tmp_path / "bad"),
              "--png-level", "12"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "same-fast: error: --png-level must be 0-9, got 12"
