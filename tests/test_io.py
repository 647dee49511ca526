"""same_fast.io on real scans and on hand-made bad files."""
from __future__ import annotations

import io as _io
import struct
import zlib

import numpy as np
import pydicom
import pytest

from same_fast import io
from same_fast.errors import (
    CorruptFileError,
    ImageTooLargeError,
    InputError,
    SameFastError,
    UnsupportedFormatError,
)


# ---------------------------------------------------------------- round trips of every format
@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lossless_round_trip(tmp_path, suffix, dtype, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, np.iinfo(dtype).max, size=(37, 53, channels), endpoint=True).astype(dtype)
    p = io.write_image(tmp_path / f"x{suffix}", a)
    b = io.read_image(p)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path, retina, channels):
    a = retina[200:456, 300:556] if channels == 3 else retina[200:456, 300:556, 1:2]
    b = io.read_image(io.write_image(tmp_path / "x.jpg", a))
    assert b.shape == a.shape and b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_jpeg_refuses_16bit(tmp_path):
    with pytest.raises(InputError, match="JPEG"):
        io.write_image(tmp_path / "x.jpg", np.zeros((8, 8, 1), np.uint16))


def test_unknown_output_suffix(tmp_path):
    with pytest.raises(InputError, match="unknown output format"):
        io.write_image(tmp_path / "x.webp", np.zeros((8, 8, 3), np.uint8))


def test_tensor_conversions_round_trip(retina):
    t = io.to_tensor(retina)
    assert t.shape == (3, *retina.shape[:2]) and float(t.max()) <= 1.0
    np.testing.assert_array_equal(io.to_array(t), retina)
    a16 = (retina.astype(np.uint16) * 257)
    np.testing.assert_array_equal(io.to_array(io.to_tensor(a16), np.uint16), a16)


# ---------------------------------------------------------------- real data sets
def test_drive_images_and_masks(data_dir):
    d = data_dir / "fundus/DRIVE/test"
    img = io.read_image(d / "images/01_test.tif")
    assert img.shape == (584, 565, 3) and img.dtype == np.uint8
    fov = io.load_mask(d / "fov/01_test_mask.gif", img.shape[:2])
    vessels = io.load_mask(d / "masks/01_manual1.gif", img.shape[:2])
    assert 0.5 < fov.mean() < 0.8  # the circular field of view
    assert 0.05 < vessels.mean() < 0.2
    assert not (vessels & ~fov).sum() > 0.001 * vessels.size  # vessels lie inside the FOV


def test_drive_pairing_by_name(data_dir):
    d = data_dir / "fundus/DRIVE/test"
    images = io.list_images(d / "images")
    assert [p.name for p in images[:3]] == ["01_test.tif", "02_test.tif", "03_test.tif"]
    items = io.pair_by_name(images, d / "fov")
    assert len(items) == 20
    assert all(it.partner.name == it.path.stem + "_mask.gif" for it in items)
    vessels = io.pair_by_name(images, d / "masks")
    assert vessels[4].partner.name == "05_manual1.gif"


def test_busi_and_hrf_masks(data_dir):
    img = io.read_image(data_dir / "ultrasound/BUSI/benign/images/benign (1).png")
    assert img.ndim == 3 and img.dtype == np.uint8
    mask_files = sorted((data_dir / "ultrasound/BUSI/benign/masks").glob("benign (1)_mask*.png"))
    m = io.load_mask(mask_files[0], img.shape[:2])
    assert 0 < m.mean() < 0.5
    # HRF masks are JPEG-compressed: thresholding must still give a clean binary vessel map
    hrf = io.load_mask(data_dir / "fundus/HRF/masks/01_h.jpg")
    assert hrf.dtype == bool and 0.03 < hrf.mean() < 0.2


def test_natural_sort(tmp_path):
    for n in ("img10.png", "img2.png", "img1.png", ".hidden.png", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in io.list_images(tmp_path)] == ["img1.png", "img2.png", "img10.png"]


def test_pairing_missing_partner(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    io.write_image(tmp_path / "a/one.png", np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(InputError, match="no file of the same name"):
        io.pair_by_name(io.list_images(tmp_path / "a"), tmp_path / "b")


# ---------------------------------------------------------------- DICOM
def test_ultrasound_cine_ybr(dicom_file):
    loaded = io.load(dicom_file("examples_ybr_color.dcm"))
    assert loaded.is_dicom and loaded.frames.shape == (30, 240, 320, 3)
    assert loaded.meta["Modality"] == "US" and loaded.meta["frames"] == 30
    # frames are RGB: equal to pydicom's own decoding with YBR -> RGB conversion
    from pydicom.pixels import pixel_array

    rgb = pixel_array(str(dicom_file("examples_ybr_color.dcm")), as_rgb=True)
    ybr = pixel_array(str(dicom_file("examples_ybr_color.dcm")), as_rgb=False)
    np.testing.assert_array_equal(loaded.frames[7], rgb[7])
    assert np.abs(ybr[7].astype(int) - loaded.frames[7].astype(int)).mean() > 20
    # a grey background is grey in RGB (all channels near equal), so no YBR left undecoded
    corner = loaded.frames[0, :20, :20].astype(int)
    assert np.abs(corner[..., 0] - corner[..., 1]).mean() < 8


@pytest.mark.parametrize("name,shape", [
    ("examples_rgb_color.dcm", (1, 240, 320, 3)),
    ("examples_palette.dcm", (1, 350, 800, 3)),
    ("examples_jpeg2k.dcm", (1, 480, 640, 3)),
    ("MR_small.dcm", (1, 64, 64, 1)),
])
def test_dicom_variants(dicom_file, name, shape):
    loaded = io.load(dicom_file(name))
    assert loaded.frames.shape == shape
    assert loaded.frames.dtype in (np.uint8, np.uint16)
    assert loaded.frames.std() > 0


def test_peek_shape_reads_headers_as_load_would(tmp_path, dicom_file, retina):
    """``peek_shape`` (``--backend auto``'s probe shape) agrees with ``load`` on every format
    without decoding, and says None for what ``load`` would refuse."""
    img = retina[:300, :200]
    paths = [io.write_image(tmp_path / f"a{suffix}", img) for suffix in (".png", ".jpg", ".tif")]
    paths += [dicom_file("examples_ybr_color.dcm"), dicom_file("MR_small.dcm")]
    for p in paths:
        f, h, w = io.load(p).frames.shape[:3]
        assert io.peek_shape(p) == (f, h, w), p
    assert io.peek_shape(paths[-2]) == (30, 240, 320)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "text.png").write_text("not an image")
    for bad in ("junk.png", "text.png", "missing.png"):
        assert io.peek_shape(tmp_path / bad) is None


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "MR_small.dcm"])
def test_derived_series(tmp_path, dicom_file, name):
    src = io.load(dicom_file(name))
    enhanced = (255 - src.frames) if src.frames.dtype == np.uint8 else src.frames // 2
    out = io.write_dicom_derived(src.dataset, enhanced, tmp_path / "out.dcm",
                                 description="test enhancement")
    back = io.load(out)
    np.testing.assert_array_equal(back.frames, enhanced)
    ds, orig = back.dataset, src.dataset
    assert ds.SeriesInstanceUID != orig.SeriesInstanceUID
    assert ds.SOPInstanceUID != orig.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == orig.StudyInstanceUID
    assert ds.get("PatientName") == orig.get("PatientName")
    assert ds.Modality == orig.Modality
    assert ds.DerivationDescription == "test enhancement"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_derived_series_shares_uid(tmp_path, dicom_file):
    from pydicom.uid import generate_uid

    src = io.load(dicom_file("MR_small.dcm"))
    uid = generate_uid()
    a = io.write_dicom_derived(src.dataset, src.frames, tmp_path / "a.dcm", series_uid=uid)
    b = io.write_dicom_derived(src.dataset, src.frames, tmp_path / "b.dcm", series_uid=uid)
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    assert da.SeriesInstanceUID == db.SeriesInstanceUID == uid
    assert da.SOPInstanceUID != db.SOPInstanceUID


# ---------------------------------------------------------------- untrusted input
def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        io.read_image(p)


def test_pixel_limit_is_configurable(tmp_path, retina):
    p = io.write_image(tmp_path / "r.png", retina[:100, :100])
    with pytest.raises(ImageTooLargeError):
        io.load(p, max_pixels=99 * 99)
    assert io.load(p, max_pixels=100 * 100).frames.shape == (1, 100, 100, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_images(tmp_path, retina, suffix):
    full = io.write_image(tmp_path / f"full{suffix}", retina[:300, :300]).read_bytes()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(CorruptFileError):
        io.load(p)


def test_zero_byte_and_random_files(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "rand.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "rand.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CorruptFileError, match="empty"):
        io.load(tmp_path / "zero.png")
    with pytest.raises(CorruptFileError, match="not a DICOM"):
        io.load(tmp_path / "rand.dcm")
    with pytest.raises(UnsupportedFormatError):
        io.load(tmp_path / "rand.bin")
    with pytest.raises(InputError, match="no such file"):
        io.load(tmp_path / "missing.png")


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = _io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_truncated_dicom_pixel_data(tmp_path, dicom_file):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    p = tmp_path / "short.dcm"
    p.write_bytes(_dicom_bytes(ds))
    with pytest.raises(CorruptFileError, match="truncated pixel data"):
        io.load(p)


def test_truncated_dicom_file(tmp_path, dicom_file):
    data = dicom_file("examples_ybr_color.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        io.load(p)


def test_inconsistent_dicom_attributes(tmp_path, dicom_file):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.BitsAllocated = 24
    p = tmp_path / "bits.dcm"
    p.write_bytes(_dicom_bytes(ds))
    with pytest.raises(UnsupportedFormatError, match="BitsAllocated"):
        io.load(p)
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.Rows = 60000
    ds.Columns = 60000
    p.write_bytes(_dicom_bytes(ds))
    with pytest.raises(SameFastError):
        io.load(p)


def test_deeply_nested_dicom(tmp_path, dicom_file):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    inner = Dataset()
    inner.PatientID = "leaf"
    for _ in range(40):
        outer = Dataset()
        outer.ReferencedSOPSequence = Sequence([inner])
        inner = outer
    ds.ReferencedImageSequence = Sequence([inner])
    p = tmp_path / "deep.dcm"
    p.write_bytes(_dicom_bytes(ds))
    with pytest.raises(CorruptFileError, match="nested"):
        io.load(p)


def test_dicom_without_pixels(tmp_path, dicom_file):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    del ds.PixelData
    p = tmp_path / "nopix.dcm"
    p.write_bytes(_dicom_bytes(ds))
    with pytest.raises(UnsupportedFormatError, match="without pixel data"):
        io.load(p)
