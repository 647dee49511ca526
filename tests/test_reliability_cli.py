"""Nothing lost: names that cannot collide, -o outside -i, per-file isolation, atomic writes,
one stderr line per error, a malformed-file corpus, limits from the environment, tiling."""
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from same_fast.batch import EnhanceConfig, enhance_files
from same_fast.cli import main
from same_fast.engine.tiles import batch_within, enhance_in_tiles
from same_fast.errors import InputError
from same_fast.io import load, write_image
from same_fast.models import save_model
from same_fast.nn import SAMENet

PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


@pytest.fixture()
def model(tmp_path):
    torch.manual_seed(0)
    return str(save_model(tmp_path / "m.safetensors", SAMENet(3, "lite", base=4, levels=2),
                          modality="fundus"))


def _img(seed=0, shape=(24, 32, 3)):
    return (np.random.default_rng(seed).uniform(size=shape) * 255).astype(np.uint8)


def _run(model, src, out, **kw):
    return enhance_files(EnhanceConfig(model=model, input=str(src), output=str(out),
                                       progress=False, **kw))


def test_same_stem_different_formats_give_three_outputs(tmp_path, model):
    d = tmp_path / "in"
    d.mkdir()
    for fmt, ext in (("GIF", "gif"), ("BMP", "bmp"), ("JPEG", "jpg")):
        Image.fromarray(_img()).save(d / f"scan.{ext}", format=fmt)
    s = _run(model, d, tmp_path / "o")
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["scan.bmp.png", "scan.gif.png", "scan.jpg.png", "summary.json"]
    assert sorted(r["output"] for r in s["files"]) == [str(tmp_path / "o" / n) for n in names[:3]]


def test_remaining_collision_is_refused_before_writing(tmp_path, model):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_img()).save(d / "scan.jpg", format="JPEG")
    write_image(d / "scan.jpg.png", _img())
    with pytest.raises(InputError, match="both be written"):
        _run(model, d, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_output_inside_or_equal_to_input_is_refused(tmp_path, model):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", _img())
    before = (d / "a.png").read_bytes()
    for out in (d, d / "sub"):
        with pytest.raises(InputError, match="inside"):
            _run(model, d, out)
    with pytest.raises(InputError, match="overwrite"):
        _run(model, d / "a.png", d)  # one file, -o its own folder
    assert (d / "a.png").read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["a.png"]


def test_big_endian_dicom_and_a_folder_in_the_way_do_not_abort_the_run(tmp_path, model,
                                                                         dicom_file):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        write_image(d / f"ok{i}.png", _img(i))
    write_image(d / "blocked.png", _img(3))
    d2 = tmp_path / "o"
    (d2 / "blocked.png").mkdir(parents=True)  # the output path exists as a folder
    (d / "mr.dcm").write_bytes(dicom_file("MR_small_bigendian.dcm").read_bytes())
    s = _run(model, d, d2, force_modality=True)
    assert s["n_files"] == 3 and s["n_failed"] == 1
    assert "exists as a folder" in s["failed"][0]["error"]
    got = pydicom.dcmread(d2 / "mr.dcm")
    assert got.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert not [p for p in d2.rglob("*") if p.name.endswith(".tmp")]
    written = {p.name for p in d2.iterdir() if p.is_file()} - {"summary.json"}
    assert written == {"ok0.png", "ok1.png", "mr.dcm"}
    assert json.loads((d2 / "summary.json").read_text())["n_failed"] == 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _malformed(d, dicom_src):
    """The corpus: truncated PNG/JPEG/TIFF/DICOM, wrong magic, zero size, huge declared size."""
    d.mkdir()
    write_image(d / "good.png", _img())
    for ext in ("png", "jpg", "tif"):
        write_image(d / f"src.{ext}", _img(1, (64, 80, 3)))
        data = (d / f"src.{ext}").read_bytes()
        (d / f"src.{ext}").unlink()
        for frac in (0.1, 0.5, 0.9):
            (d / f"trunc{int(frac * 100)}_{ext}.{ext}").write_bytes(data[:int(len(data) * frac)])
    dcm = dicom_src.read_bytes()
    for frac in (0.05, 0.3, 0.9):
        (d / f"trunc{int(frac * 100)}.dcm").write_bytes(dcm[:int(len(dcm) * frac)])
    (d / "zero.png").write_bytes(b"")
    (d / "magic.png").write_bytes(b"GIF89a" + bytes(64))
    (d / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)) + _chunk(b"IEND", b""))
    bomb = Image.new("L", (20_000, 20_000))  # 400 Mpx JPEG declared, a few KB on disk
    bomb.save(d / "bomb.jpg", quality=1)
    return sorted(p for p in d.iterdir() if p.name != "good.png")


def test_malformed_corpus_in_one_folder_run(tmp_path, model, dicom_file):
    bad = _malformed(tmp_path / "in", dicom_file("MR_small.dcm"))
    s = _run(model, tmp_path / "in", tmp_path / "o")
    assert [r["input"] for r in s["files"]] == [str(tmp_path / "in" / "good.png")]
    assert s["n_failed"] == len(bad) == 17
    assert all("\n" not in f["error"] for f in s["failed"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.png", "summary.json"]


def test_bad_files_print_one_line_each_through_the_cli(tmp_path, dicom_file):
    # tifffile logs and pydicom warns on these: today two or three stderr lines per file
    bad = _malformed(tmp_path / "in", dicom_file("MR_small.dcm"))
    data = (tmp_path / "in" / "trunc90_tif.tif").read_bytes()
    hdr = bytearray(data)
    hdr[4:8] = (10**6).to_bytes(4, "little")  # first IFD offset past the end
    (tmp_path / "in" / "ifd.tif").write_bytes(bytes(hdr))
    bad.append(tmp_path / "in" / "ifd.tif")
    r = subprocess.run([sys.executable, "-m", "same_fast", "info", *map(str, bad)],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2
    assert len(lines) == len(bad) and all(x.startswith("same-fast: error:") for x in lines)


def test_max_pixels_from_the_environment(tmp_path, monkeypatch, capsys):
    write_image(tmp_path / "a.png", _img())
    monkeypatch.setenv("SAME_FAST_MAX_PIXELS", "abc")
    with pytest.raises(SystemExit) as e:
        main(["info", str(tmp_path / "a.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "SAME_FAST_MAX_PIXELS" in err[0]
    monkeypatch.setenv("SAME_FAST_MAX_PIXELS", "100")  # read when used, not at import
    with pytest.raises(SystemExit) as e:
        main(["info", str(tmp_path / "a.png")])
    assert e.value.code == 2 and "over the limit of 100" in capsys.readouterr().err


def test_pillow_global_is_left_alone(tmp_path):
    Image.MAX_IMAGE_PIXELS = PIL_DEFAULT_MAX_PIXELS
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp")):
        Image.fromarray(_img()).save(tmp_path / f"a.{ext}", format=fmt)
        assert load(tmp_path / f"a.{ext}").frames.shape == (1, 24, 32, 3)
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_MAX_PIXELS


def test_pillow_global_untouched_by_import():
    code = ("import PIL.Image as I; v = I.MAX_IMAGE_PIXELS; import same_fast.io, "
            "same_fast.commands.enhance, same_fast.engine; assert I.MAX_IMAGE_PIXELS == v")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_large_frames_are_tiled_within_the_budget():
    from same_fast.enhancer import enhance_array

    torch.manual_seed(0)
    net = SAMENet(1, "lite", base=4, levels=3).eval()
    seen = []

    def fn(tile, fov):
        seen.append(tile.shape[0] * tile.shape[1] * tile.shape[2])
        return enhance_array(net, tile, fov)

    x = (np.random.default_rng(0).uniform(size=(2, 200, 260, 1)) * 65535).astype(np.uint16)
    fov = np.ones((200, 260), bool)
    fov[:20] = False
    with torch.inference_mode():
        whole = enhance_array(net, x, fov)
        tiled = enhance_in_tiles(x, fov, fn, max_pixels=180 * 180, multiple=net.multiple,
                                 margin=32)
    assert max(seen) <= 2 * 180 * 180 and len(seen) > 3
    assert tiled.dtype == np.uint16 and tiled.shape == whole.shape
    assert tiled[:, :20].max() == 0  # the mask is tiled with the frame
    # a margin of 32 px hides the tile borders: the tiled result is the whole-frame one, nearly
    assert np.abs(tiled.astype(float) - whole).mean() / 65535 < 2e-3
    assert batch_within(8, 200, 260, 180 * 180) == 1 and batch_within(8, 10, 10, 250) == 2


def test_large_frame_through_enhance_is_tiled(tmp_path, model):
    write_image(tmp_path / "big.png", _img(0, (300, 420, 3)))
    s = _run(model, tmp_path / "big.png", tmp_path / "o", tile_pixels=150 * 150)
    assert s["n_files"] == 1 and load(tmp_path / "o" / "big.png").frames.shape == (1, 300, 420, 3)
    with pytest.raises(InputError, match="budget"):
        _run(model, tmp_path / "big.png", tmp_path / "o2", tile_pixels=100)
