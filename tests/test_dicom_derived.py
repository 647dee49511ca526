"""Derived DICOM: modality values survive, the derivation is recorded, odd sources are handled.

pydicom's whole bundled corpus goes through ``info`` and ``enhance`` (in-process, a tiny model):
every file either gives a valid derived instance in the source's units or a per-file error.
"""
import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut

from same_fast import io
from same_fast.batch import EnhanceConfig, enhance_files
from same_fast.cli import main
from same_fast.commands.info import describe
from same_fast.errors import InputError, SameFastError
from same_fast.io.dicom_derived import IMPLEMENTATION_CLASS_UID, uid_root
from same_fast.models import save_model
from same_fast.nn import SAMENet


@pytest.fixture()
def grey_model(tmp_path):
    torch.manual_seed(0)
    return str(save_model(tmp_path / "g.safetensors", SAMENet(1, "lite", base=4, levels=2),
                          modality="ultrasound"))


def _identity(tmp_path, src_path, name="out.dcm", **kw):
    src = io.load(src_path)
    out = io.write_dicom_derived(src.dataset, src.frames, tmp_path / name, **kw)
    return pydicom.dcmread(src_path), pydicom.dcmread(out)


def _modality_values(ds):
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


def test_signed_ct_keeps_hu(tmp_path, dicom_file):
    # today: PixelRepresentation 0 and every value shifted by 32768
    src, out = _identity(tmp_path, dicom_file("CT_small.dcm"))
    assert out.PixelRepresentation == 1 and float(out.RescaleIntercept) == -1024
    assert np.array_equal(_modality_values(out), _modality_values(src))


def test_enhanced_ct_stays_in_hu(tmp_path, dicom_file, grey_model):
    out = tmp_path / "o"
    assert main(["enhance", "-m", grey_model, "-i", str(dicom_file("CT_small.dcm")), "-o",
                 str(out), "--force-modality", "--no-progress"]) == 0
    src, got = pydicom.dcmread(dicom_file("CT_small.dcm")), pydicom.dcmread(out / "CT_small.dcm")
    hu_src, hu_out = _modality_values(src), _modality_values(got)
    # the tiny residual net changes values by a fraction of the range, not by 32768
    assert np.abs(np.median(hu_out - hu_src)) < 2000 and got.PixelRepresentation == 1


def test_monochrome1_and_big_endian_keep_their_values(tmp_path, dicom_file):
    src, out = _identity(tmp_path, dicom_file("MR_small_bigendian.dcm"))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(out.pixel_array, src.pixel_array)
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    src, out = _identity(tmp_path, tmp_path / "m1.dcm", name="m1_out.dcm")
    assert out.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(out.pixel_array, src.pixel_array)


def test_derivation_is_recorded(tmp_path, dicom_file):
    src, out = _identity(tmp_path, dicom_file("CT_small.dcm"))
    ref = out.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert out.DerivationCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert out.SeriesNumber != src.SeriesNumber
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.ContentDate == dt.date.today().strftime("%Y%m%d")
    assert out.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert out.SOPInstanceUID.startswith("2.25.")


def test_lossy_flag_is_never_reset(tmp_path, dicom_file):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.LossyImageCompression = "01"
    ds.save_as(tmp_path / "lossy.dcm")
    _, out = _identity(tmp_path, tmp_path / "lossy.dcm", name="lossy_out.dcm")
    assert out.LossyImageCompression == "01"  # today: deleted


def test_uid_root_from_flag_and_environment(tmp_path, dicom_file, monkeypatch):
    _, out = _identity(tmp_path, dicom_file("MR_small.dcm"), uid_root="1.2.3.4")
    assert out.SOPInstanceUID.startswith("1.2.3.4.") and out.SeriesInstanceUID.startswith("1.2.3.4.")
    monkeypatch.setenv("SAME_FAST_UID_ROOT", "1.2.999.")
    _, out = _identity(tmp_path, dicom_file("MR_small.dcm"), name="b.dcm")
    assert out.SOPInstanceUID.startswith("1.2.999.")
    for bad in ("1.02.3", "abc", "1." * 30):
        with pytest.raises(InputError):
            uid_root(bad)


def test_modality_is_refused_unless_forced(tmp_path, dicom_file, grey_model, capsys):
    ct = str(dicom_file("CT_small.dcm"))
    with pytest.raises(SystemExit) as e:
        main(["enhance", "-m", grey_model, "-i", ct, "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--force-modality" in err[0]
    assert not (tmp_path / "o" / "CT_small.dcm").exists()
    us = str(dicom_file("examples_ybr_color.dcm"))  # Modality US: accepted as it is
    assert main(["enhance", "-m", grey_model, "-i", us, "-o", str(tmp_path / "u"),
                 "--no-progress"]) == 0


def test_extensionless_dicom_in_a_folder(tmp_path, dicom_file, grey_model):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(dicom_file("MR_small.dcm"), d / "IM0001")
    shutil.copy(dicom_file("CT_small.dcm"), d / "1.2.840.5")
    (d / "notes").write_text("not an image")
    assert [p.name for p in io.list_images(d)] == ["1.2.840.5", "IM0001"]
    s = enhance_files(EnhanceConfig(model=grey_model, input=str(d), output=str(tmp_path / "o"),
                                    progress=False, force_modality=True))
    assert s["n_files"] == 2 and (tmp_path / "o" / "IM0001.dcm").is_file()
    assert (tmp_path / "o" / "1.2.840.5.dcm").is_file()


def _corpus(tmp_path) -> Path:
    from pydicom.data import get_testdata_files

    d = tmp_path / "corpus"
    d.mkdir()
    files = [Path(f) for f in sorted(get_testdata_files()) if Path(f).is_file()]
    for i, f in enumerate(files):
        shutil.copy(f, d / f"{i:03d}_{f.name}")
    assert len(files) > 150
    return d


def test_pydicom_corpus_through_info(tmp_path):
    d = _corpus(tmp_path)
    ok = 0
    for f in sorted(d.iterdir()):
        try:
            r = describe(str(f))
        except SameFastError as e:
            assert "\n" not in str(e)
            continue
        ok += 1
        assert r["width"] > 0 and r["frames"] >= 1
    assert ok > 50


@pytest.mark.slow
def test_pydicom_corpus_in_one_enhance_folder_run(tmp_path, grey_model):
    d = _corpus(tmp_path)
    out = tmp_path / "out"
    s = enhance_files(EnhanceConfig(model=grey_model, input=str(d), output=str(out),
                                    progress=False, force_modality=True))
    inputs = io.list_images(d)  # the corpus's README, .json, .dump and .gz files are not listed
    assert len(inputs) > 150
    assert s["n_files"] + s["n_failed"] == len(inputs)  # nothing aborted the run
    assert s["n_files"] > 50
    assert json.loads((out / "summary.json").read_text())["n_failed"] == s["n_failed"]
    written = {Path(r["output"]).name for r in s["files"]}
    assert written == {p.name for p in out.iterdir()} - {"summary.json"}
    for r in s["files"]:
        src, got = pydicom.dcmread(r["input"]), pydicom.dcmread(r["output"])
        assert got.pixel_array.shape[-2:] == (src.Rows, src.Columns) or got.SamplesPerPixel == 3
        if got.PhotometricInterpretation.startswith("MONOCHROME"):
            assert got.PixelRepresentation == src.PixelRepresentation
            assert got.get("RescaleIntercept") == src.get("RescaleIntercept")


def test_pydicom_corpus_identity_write_keeps_units(tmp_path):
    """Written back without enhancement, every readable grey file has its exact modality values."""
    d = _corpus(tmp_path)
    checked = 0
    for f in sorted(d.iterdir()):
        try:
            src = io.load(f)
            out = io.write_dicom_derived(src.dataset, src.frames, tmp_path / "x.dcm")
        except SameFastError:
            continue
        a, b = pydicom.dcmread(f), pydicom.dcmread(out)
        if b.PhotometricInterpretation.startswith("MONOCHROME") and "ModalityLUTSequence" not in a:
            assert np.array_equal(_modality_values(b), _modality_values(a)), f.name
            checked += 1
    assert checked > 30
