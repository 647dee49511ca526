"""Source training: a short run lowers the loss, checkpoints carry metadata, resume continues,
real data sets load with their masks."""
import json

import numpy as np
import pytest
import torch

from same_fast import checkpoint
from same_fast.data import data_root
from same_fast.errors import CheckpointError, InputError
from same_fast.io import write_image
from same_fast.models import load_model
from same_fast.nn import SAMENet
from same_fast.train.source import (
    SourceConfig,
    load_samples,
    make_batch,
    source_loss,
    split,
    train_source,
    validate_structure,
    validation_set,
)


def _folder(tmp_path, n=4, size=72, channels=3):
    """A tiny data set: smooth backgrounds with dark 'vessel' lines, masks of the lines."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        base = 0.5 + 0.2 * np.sin(3 * xx + i) * np.cos(2 * yy)
        mask = np.zeros((size, size), bool)
        for _ in range(3):
            a, b = rng.uniform(-1, 1, 2)
            mask |= np.abs(yy - (a * xx + 0.5 + 0.2 * b)) < 0.02
        img = base - 0.25 * mask
        rgb = np.stack([img, 0.8 * img, 0.6 * img][:channels], -1)
        write_image(tmp_path / "images" / f"im{i}.png", (rgb * 255).astype(np.uint8))
        write_image(tmp_path / "masks" / f"im{i}.png", (mask * 255).astype(np.uint8)[..., None])
    return tmp_path


def _cfg(tmp_path, **kw):
    d = dict(data=str(tmp_path), out=str(tmp_path / "out" / "m.safetensors"), modality="fundus",
             steps=40, batch=2, size=64, load_size=64, lr=3e-3, val_every=20, holdout=0.25,
             progress=False, degrade="gray", net={"base": 8, "levels": 3})
    d.update(kw)
    return SourceConfig(**d)


def _fixed_loss(model, cfg, train):
    g = torch.Generator().manual_seed(123)
    batch = make_batch(train, cfg, g, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        return source_loss(model, batch, cfg.lambda_s)[1]


@pytest.mark.slow
def test_short_run_lowers_loss_and_writes_checkpoint(tmp_path):
    data = _folder(tmp_path)
    cfg = _cfg(data)
    torch.manual_seed(cfg.seed)
    untrained = SAMENet(3, "lite", **cfg.net)  # the initialisation train_source starts from
    summary = train_source(cfg)
    sets = load_samples(cfg.data, 3, cfg.load_size, "fundus")
    train, val = split(sets, cfg.holdout, cfg.seed)
    assert len(val) == 1 and summary["held_out"] == 1 and summary["train_images"] == 3
    model, meta = load_model(cfg.out)
    before = _fixed_loss(untrained, cfg, train)
    after = _fixed_loss(model, cfg, train)
    assert after["l1"] < 0.85 * before["l1"]
    assert after["loss"] < before["loss"]
    assert meta["modality"] == "fundus" and meta["preset"] == "lite"
    assert meta["config"]["base"] == 8 and meta["config"]["levels"] == 3
    assert meta["provenance"]["held_out"] == [val[0].name]
    assert meta["provenance"]["degrade"] == "gray"
    log = [json.loads(line) for line in open(tmp_path / "out" / "m.log.jsonl")]
    assert [r["step"] for r in log] == [20, 40]
    assert {"val_ssim", "val_psnr", "val_ssim_input", "val_psnr_input"} <= set(log[0])


def test_resume_continues_from_last(tmp_path):
    data = _folder(tmp_path, n=3, size=48)
    cfg = _cfg(data, steps=4, size=32, load_size=48, val_every=2)
    train_source(cfg)
    with pytest.raises(CheckpointError):
        train_source(_cfg(data, out=str(tmp_path / "other.safetensors"), resume=True))
    with pytest.raises(CheckpointError, match="same --preset"):
        train_source(_cfg(data, steps=6, size=32, load_size=48, val_every=2, resume=True,
                          net={"base": 4, "levels": 3}))
    summary = train_source(_cfg(data, steps=6, size=32, load_size=48, val_every=2, resume=True))
    assert summary["start_step"] == 4
    # the training state loads as a model wherever one is expected (Adam moments left out)
    last, last_meta = load_model(tmp_path / "out" / "m.last.safetensors")
    assert last_meta["step"] == 6
    assert sum(p.numel() for p in last.parameters()) > 0
    steps = [json.loads(line)["step"] for line in open(tmp_path / "out" / "m.log.jsonl")]
    assert steps == [2, 4, 6]
    # --init fine-tunes from a checkpoint and records where it came from
    first, _ = load_model(cfg.out)
    fine = _cfg(data, out=str(tmp_path / "ft.safetensors"), steps=2, size=32, load_size=48,
                val_every=2, init=cfg.out, lr=0.0)
    train_source(fine)
    model, meta = load_model(fine.out)
    assert meta["provenance"]["init"]["path"] == cfg.out
    assert meta["provenance"]["init"]["provenance"]["degrade"] == "gray"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


def test_bad_config(tmp_path):
    with pytest.raises(InputError, match="images/"):
        train_source(_cfg(tmp_path))
    data = _folder(tmp_path, n=2, size=32)
    with pytest.raises(InputError, match="modality"):
        train_source(_cfg(data, modality="xray"))
    with pytest.raises(InputError, match="load-size"):
        train_source(_cfg(data, size=64, load_size=32))
    with pytest.raises(InputError, match="unknown degradation preset"):
        train_source(_cfg(data, degrade="nope"))


def test_real_sets_load_with_masks():
    root = data_root()
    if root is None:
        pytest.skip("no data folder (set SAME_FAST_DATA); CI always has it")
    sets = dict(load_samples("BUSI", 1, 64, "ultrasound", max_images=2))
    busi = sets["BUSI"]
    assert len(busi) == 6  # 2 per class folder
    assert all(s.image.shape == (1, 64, 64) and s.image.dtype == torch.uint8 for s in busi)
    benign = [s for s in busi if "/benign/" in s.name]
    assert benign and all(s.mask is not None and s.mask.any() for s in benign)
    normal = [s for s in busi if "/normal/" in s.name]
    assert normal and all(s.mask is not None and not s.mask.any() for s in normal)
    fives = dict(load_samples("FIVES", 3, 64, "fundus", max_images=1))["FIVES"][0]
    # no FOV folder in FIVES: estimated from the image, a disc with black corners
    assert fives.fov is not None and 0.6 < float(fives.fov.float().mean()) < 0.9
    assert not fives.fov[0, 0, 0] and fives.fov[0, 32, 32]
    assert fives.mask is not None and 0.02 < float(fives.mask.float().mean()) < 0.3


def test_crop_must_fit_the_network(tmp_path):
    data = _folder(tmp_path, n=2, size=48)
    with pytest.raises(InputError, match="multiple of 32"):
        train_source(_cfg(data, size=48, load_size=48, net={}))


def test_color_aug_and_ssim_term(tmp_path):
    data = _folder(tmp_path, n=2, size=64)
    sets = load_samples(str(data), 3, 64, "fundus")
    train, _ = split(sets, 0.0, 0)
    plain = make_batch(train, _cfg(data), torch.Generator().manual_seed(0), torch.device("cpu"))
    aug = make_batch(train, _cfg(data, color_aug=0.5), torch.Generator().manual_seed(0),
                     torch.device("cpu"))
    assert aug["clean"].min() >= 0 and aug["clean"].max() <= 1
    # channel ratios of the clean image change: a palette shift, not only a brightness change
    r = (aug["clean"].mean((2, 3)) / plain["clean"].mean((2, 3)).clamp_min(1e-6))
    assert float((r[:, 0] - r[:, 1]).abs().max()) > 0.05
    model = SAMENet(3, "lite", base=8, levels=3)
    loss0, parts0 = source_loss(model, plain, 0.1)
    loss1, parts1 = source_loss(model, plain, 0.1, lambda_ssim=1.0)
    assert "ssim_loss" not in parts0 and 0 < parts1["ssim_loss"] <= 2
    assert abs(float((loss1 - loss0).detach()) - parts1["ssim_loss"]) < 1e-4


def test_gamma_aug_and_identity_pairs(tmp_path):
    data = _folder(tmp_path, n=2, size=64)
    sets = load_samples(str(data), 3, 64, "fundus")
    train, _ = split(sets, 0.0, 0)
    cpu = torch.device("cpu")
    plain = make_batch(train, _cfg(data), torch.Generator().manual_seed(0), cpu)
    assert not torch.allclose(plain["degraded"], plain["clean"])
    ident = make_batch(train, _cfg(data, clean_prob=1.0), torch.Generator().manual_seed(0), cpu)
    assert torch.equal(ident["degraded"], ident["clean"])
    gam = make_batch(train, _cfg(data, gamma_aug=0.5), torch.Generator().manual_seed(0), cpu)
    assert gam["clean"].min() >= 0 and gam["clean"].max() <= 1
    # a tone curve, not a gain: the ratio of mean to mean of squares changes per sample
    assert not torch.allclose(gam["clean"].mean((1, 2, 3)), plain["clean"].mean((1, 2, 3)),
                              atol=1e-3)


def test_channel_gamma_aug_gives_each_channel_its_own_tone_curve(tmp_path):
    """``channel_gamma_aug``: a gamma per channel, drawn independently, in input and target
    alike; off (0) it draws nothing, so the recipes' streams are unchanged."""
    (tmp_path / "images").mkdir()
    for i in range(2):  # flat grey frames: whatever differs between channels is the gamma
        write_image(tmp_path / "images" / f"g{i}.png", np.full((64, 64, 3), 128, np.uint8))
    train, _ = split(load_samples(str(tmp_path), 3, 64, "fundus"), 0.0, 0)
    kw = dict(size=64, load_size=64, zoom=(1.0, 1.0), clean_prob=1.0)
    cpu = torch.device("cpu")
    plain = make_batch(train, _cfg(tmp_path, **kw), torch.Generator().manual_seed(0), cpu)
    off = make_batch(train, _cfg(tmp_path, channel_gamma_aug=0.0, **kw),
                     torch.Generator().manual_seed(0), cpu)
    assert torch.equal(off["clean"], plain["clean"])
    b = make_batch(train, _cfg(tmp_path, channel_gamma_aug=0.5, **kw),
                   torch.Generator().manual_seed(0), cpu)
    x = b["clean"]
    assert torch.equal(b["degraded"], x)  # identity pairs: the tone curves are in both
    level = x.mean((2, 3))  # (batch, channel): 0.502 ** gamma, in exp(-0.5)..exp(0.5)
    gamma = level.log() / torch.tensor(128 / 255).log()
    assert ((gamma > 0.6) & (gamma < 1.65)).all()
    assert (level.amax(1) - level.amin(1) > 0.01).all()  # the channels' gammas differ
    assert torch.allclose(x.std((2, 3)), torch.zeros(1), atol=1e-6)  # a curve, not a pattern


def test_vignette_aug_is_a_radial_falloff_per_channel_about_the_fov(tmp_path):
    """``vignette_aug``: each channel's light scaled by exp(k (r^2 - 1/2)) about the FOV's
    centre, in input and target alike; a channel's rim darkens or brightens against its centre
    as k's sign says, and a disc cut by the frame keeps its centre and radius."""
    from same_fast.train.source import vignette

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    fov = (((yy - 40) ** 2 + (xx - 30) ** 2) < 30 ** 2).float()[None, None]  # cut at the bottom
    gain = vignette(fov.expand(6, 1, 64, 80), 3, 0.5, torch.Generator().manual_seed(0))
    assert gain.shape == (6, 3, 64, 80)
    k = gain[:, :, 40, 30].log() / -0.5  # at the centre r = 0
    assert (k.abs() <= 0.5 + 1e-5).all() and k.std() > 0.1  # drawn per sample and channel
    rim = gain[:, :, 40, 59].log()  # 29 px from the centre: r^2 = (29 / 30)^2 - about
    assert torch.allclose(rim, k * ((29 / 30) ** 2 - 0.5), atol=0.03)
    (tmp_path / "images").mkdir()
    for i in range(2):  # flat grey frames: whatever varies in a batch is the falloff
        write_image(tmp_path / "images" / f"g{i}.png", np.full((64, 64, 3), 100, np.uint8))
    train, _ = split(load_samples(str(tmp_path), 3, 64, "fundus"), 0.0, 0)
    cfg = _cfg(tmp_path, size=64, load_size=64, zoom=(1.0, 1.0), clean_prob=1.0, vignette_aug=0.5)
    b = make_batch(train, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(b["degraded"], b["clean"])  # in both
    centre, corner = b["clean"][:, :, 30:34, 30:34].mean((2, 3)), b["clean"][:, :, :3, :3].mean((2, 3))
    assert ((corner - centre).abs() > 0.01).any()  # rims darkened or brightened


def test_shading_aug_is_a_smooth_grey_shading_carried_by_input_and_target(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(2):  # flat grey frames: whatever varies in a batch is the shading
        write_image(tmp_path / "images" / f"g{i}.png", np.full((64, 64, 3), 100, np.uint8))
    train, _ = split(load_samples(str(tmp_path), 3, 64, "ultrasound"), 0.0, 0)
    cfg = _cfg(tmp_path, size=64, load_size=64, zoom=(1.0, 1.0), clean_prob=1.0,
               shading_aug=0.5, modality="ultrasound")
    b = make_batch(train, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    x = b["clean"]
    assert torch.equal(b["degraded"], x)  # identity pairs: the shading is in both
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 0], x[:, 2])  # grey
    assert float(x.amax() / x.amin()) > 1.3  # it shades ...
    step = (x[..., 1:, :] - x[..., :-1, :]).abs().amax()
    assert float(step) < 0.05 * float(x.amax() - x.amin()) * 4  # ... smoothly
    flat = make_batch(train, _cfg(tmp_path, size=64, load_size=64, zoom=(1.0, 1.0),
                                  clean_prob=1.0, modality="ultrasound"),
                      torch.Generator().manual_seed(0), torch.device("cpu"))["clean"]
    assert float(flat.amax() - flat.amin()) < 1e-6


def test_skimage_retina_set():
    sets = load_samples("skimage-retina", 3, 128, "fundus")
    assert [name for name, _ in sets] == ["skimage-retina"]
    (s,) = sets[0][1]
    assert s.name == "skimage-retina/retina.jpg" and s.image.shape == (3, 128, 128)
    assert s.fov is not None and 0.5 < float(s.fov.float().mean()) < 0.95
    train, val = split(sets, 0.1, 0)
    assert len(train) == 1 and not val  # a set of one image is never held out


def test_split_seed_keeps_the_parents_hold_out(tmp_path):
    data = _folder(tmp_path, n=8, size=48)
    held = {}
    for name, kw in (("a", dict(seed=0)), ("b", dict(seed=5)), ("c", dict(seed=5, split_seed=0))):
        train_source(_cfg(data, out=str(tmp_path / f"{name}.safetensors"), steps=1, size=32,
                          load_size=48, val_every=1, **kw))
        held[name] = load_model(tmp_path / f"{name}.safetensors")[1]["provenance"]["held_out"]
    assert held["c"] == held["a"] != held["b"]


def test_init_adds_context_or_a_field_and_ema_is_what_is_validated_and_saved(tmp_path):
    data = _folder(tmp_path, n=3, size=48)
    base = _cfg(data, steps=2, size=32, load_size=48, val_every=2)
    train_source(base)
    parent, _ = load_model(base.out)
    # a network without context seeds one with it, starting from the parent's output
    ctx = _cfg(data, out=str(tmp_path / "ctx.safetensors"), steps=2, size=32, load_size=48,
               val_every=2, init=base.out, lr=0.0, net={"base": 8, "levels": 3, "context": True})
    train_source(ctx)
    child, meta = load_model(ctx.out)
    assert meta["config"]["context"] is True
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(child(x)[0], parent(x)[0])
    # and a light field on top of that (the field's grid: the toy network's multiple, 8)
    fld = _cfg(data, out=str(tmp_path / "fld.safetensors"), steps=2, size=32, load_size=48,
               val_every=2, init=ctx.out, lr=0.0,
               net={"base": 8, "levels": 3, "context": True, "field": True})
    train_source(fld)
    child2, meta2 = load_model(fld.out)
    assert meta2["config"]["field"] is True and child2.field is not None
    with torch.no_grad():
        assert torch.equal(child2(x)[0], parent(x)[0])
    # --block-lr: the added blocks learn at their own rate (here alone: lr 0 for the rest)
    fast = _cfg(data, out=str(tmp_path / "fast.safetensors"), steps=3, size=32, load_size=48,
                val_every=3, init=base.out, lr=0.0, block_lr=1e-2,
                net={"base": 8, "levels": 3, "field": True})
    train_source(fast)
    moved = load_model(fast.out)[0].state_dict()
    assert all(torch.equal(moved[k], v) for k, v in parent.state_dict().items())
    assert moved["field.out.weight"].abs().max() > 1e-3
    with pytest.raises(InputError, match="--block-lr"):
        train_source(_cfg(data, block_lr=-1.0))
    with pytest.raises(InputError, match="--block-lr .* has none"):
        train_source(_cfg(data, block_lr=1e-3))
    with pytest.raises(InputError, match="--lambda-field .* without a light field"):
        train_source(_cfg(data, lambda_field=1.0))
    # but not the other way round
    with pytest.raises(CheckpointError, match="--init"):
        train_source(_cfg(data, out=str(tmp_path / "back.safetensors"), steps=1, size=32,
                          load_size=48, init=ctx.out))
    with pytest.raises(CheckpointError, match="--init"):
        train_source(_cfg(data, out=str(tmp_path / "back2.safetensors"), steps=1, size=32,
                          load_size=48, init=fld.out, net={"base": 8, "levels": 3,
                                                           "context": True}))
    with pytest.raises(InputError, match="--ema"):
        train_source(_cfg(data, ema=1.0))
    # --ema: the average (not the raw weights) is validated, saved, and what .last loads as
    ema = _cfg(data, out=str(tmp_path / "ema.safetensors"), steps=4, size=32, load_size=48,
               val_every=4, init=base.out, lr=1e-2, ema=0.5)
    train_source(ema)
    tensors, last_meta = checkpoint.load(tmp_path / "ema.last.safetensors")
    raw = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    avg = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    assert set(raw) == set(avg)
    p0 = dict(parent.state_dict())
    k = "downs.0.weight"
    # after 4 steps at decay 0.5 the average sits between the start and the raw weights
    assert not torch.equal(avg[k], raw[k]) and not torch.equal(avg[k], p0[k])
    saved, saved_meta = load_model(ema.out)
    assert torch.equal(saved.state_dict()[k], avg[k])
    assert saved_meta["training"]["ema"] == 0.5
    last_model, _ = load_model(tmp_path / "ema.last.safetensors")
    assert torch.equal(last_model.state_dict()[k], avg[k])
    # resuming carries the average on rather than restarting it at the raw weights
    train_source(_cfg(data, out=str(tmp_path / "ema.safetensors"), steps=5, size=32,
                      load_size=48, val_every=1, lr=0.0, ema=0.5, resume=True))
    tensors, resumed_meta = checkpoint.load(tmp_path / "ema.last.safetensors")
    # the continuation still says where the run began and which command ran before it
    prov = resumed_meta["provenance"]
    assert prov["init"]["path"] == base.out
    assert prov["resumed"] == [{"step": 4, "command": last_meta["provenance"]["command"]}]
    # lr 0: raw weights fixed, the average moves half way towards them
    assert torch.allclose(tensors[f"ema.{k}"], 0.5 * avg[k] + 0.5 * raw[k], atol=1e-7)


def test_tone_target_keeps_the_inputs_global_colour(tmp_path):
    """--target tone: the batch's target is the clean image through the degradation's global
    colour factors, so a darkened input has a darkened target; the default target is clean."""
    import dataclasses

    from same_fast.degrade import PRESETS

    data = _folder(tmp_path, n=3, size=64)
    (_, samples), = load_samples(str(data), 3, 64, "fundus")
    dark = dataclasses.replace(PRESETS["fundus-shen2020"], name="dark", types=("illum",),
                               brightness=(0.5, 0.5), contrast=(1.0, 1.0),
                               saturation=(1.0, 1.0))
    batches = {}
    for target in ("clean", "tone"):
        cfg = _cfg(data, degrade=dark, target=target, size=64, load_size=64, batch=3)
        batches[target] = make_batch(samples, cfg, torch.Generator().manual_seed(0),
                                     torch.device("cpu"))
    clean, tone = batches["clean"], batches["tone"]
    assert torch.equal(clean["degraded"], tone["degraded"])  # same input either way
    ratio = (tone["clean"].sum() / clean["clean"].sum()).item()
    assert 0.45 < ratio < 0.55  # the target keeps the brightness x 0.5
    with pytest.raises(InputError, match="--target"):
        train_source(_cfg(data, target="palette"))
    # tone-blur: the blur stays in the target too (a blur-only degradation is its own target)
    blur = dataclasses.replace(PRESETS["fundus-local"], name="blur-only", types=("blur",))
    cfg = _cfg(data, degrade=blur, target="tone-blur", size=64, load_size=64, batch=3)
    b = make_batch(samples, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(b["clean"], b["degraded"])
    with pytest.raises(InputError, match="tone-blur"):
        train_source(_cfg(data, target="tone-blur", degrade="gray"))
    # validation measures against what the run trains toward
    from same_fast.train.source import validation_set

    vs = {t: validation_set(samples, _cfg(data, degrade=dark, target=t, load_size=64),
                            torch.device("cpu")) for t in ("clean", "tone")}
    assert torch.equal(vs["clean"]["degraded"], vs["tone"]["degraded"])
    assert 0.45 < float(vs["tone"]["clean"].sum() / vs["clean"]["clean"].sum()) < 0.55


def test_val_data_chooses_on_another_set_and_recipe_round_trips(tmp_path):
    """--val-data validates on another folder (all of it); the run writes its recipe and its
    curves beside the checkpoint, and ``train-source --config`` reads the recipe back."""
    from same_fast.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train_dir = _folder(tmp_path / "a", n=3, size=48)
    val_dir = _folder(tmp_path / "b", n=2, size=48)
    cfg = _cfg(train_dir, val_data=str(val_dir), holdout=0, steps=4, val_every=2, size=32,
               load_size=48, degrade="fundus-local", target="tone")
    summary = train_source(cfg)
    _, meta = load_model(cfg.out)
    assert meta["provenance"]["held_out"] == ["b/im0.png", "b/im1.png"]
    assert meta["provenance"]["val_data"] == str(val_dir)
    assert meta["training"]["target"] == "tone"
    recipe = json.loads((tmp_path / "a" / "out" / "m.recipe.json").read_text())
    assert recipe["target"] == "tone" and recipe["val_data"] == str(val_dir)
    assert "out" not in recipe and "command" not in recipe
    png = tmp_path / "a" / "out" / "m.curves.png"
    assert summary["curves"] == str(png) and png.stat().st_size > 5000
    # the recipe reproduces the run through the CLI; a flag after --config overrides it
    out2 = tmp_path / "again.safetensors"
    recipe_file = tmp_path / "a" / "out" / "m.recipe.json"
    assert main(["train-source", "--config", str(recipe_file), "-o", str(out2), "--steps", "2",
                 "--no-progress", "--contrast-aug", "0.3", "--channel-gamma-aug", "0.4", "--frame", "pad",
                 "--camera-balance", "0.5"]) == 0
    _, meta2 = load_model(out2)
    assert meta2["training"]["target"] == "tone" and meta2["step"] == 2
    assert meta2["training"]["contrast_aug"] == 0.3 and meta2["training"]["frame"] == "pad"
    assert meta2["training"]["channel_gamma_aug"] == 0.4
    assert meta2["training"]["camera_balance"] == 0.5
    assert meta2["provenance"]["config"]["net"] == {"base": 8, "levels": 3}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    for argv in (["--config", str(bad), "-o", str(out2)],
                 ["-o", str(out2), "--modality", "fundus"]):  # no --data
        with pytest.raises(SystemExit) as e:
            main(["train-source", *argv])
        assert e.value.code == 2


@pytest.mark.skipif(data_root() is None, reason="needs the shared data folder")
def test_idrid_splits_by_file_name():
    from same_fast.train.source import data_folders

    (train,) = data_folders("IDRiD")
    (test,) = data_folders("IDRiD-test")
    assert len(train[2]) == 413 and len(test[2]) == 103
    assert all(f.name.startswith("IDRiD_train_") for f in train[2])
    assert not {f.name for f in train[2]} & {f.name for f in test[2]}


def test_kermany_oct_split_is_by_patient_and_covers_the_set(data_dir):
    import csv

    from same_fast.train.source import data_folders

    parts = {}
    for part in ("train", "select", "report"):
        entries = data_folders(f"Kermany-{part}")
        assert len(entries) == 4  # one per class folder
        parts[part] = {f.name for e in entries for f in e[2]}
    rows = list(csv.DictReader(open(data_dir / "oct/Kermany_OCT2017/manifest.csv")))
    patient = {r["file"].split("/")[-1]: r["patient_id"] for r in rows}
    assert set().union(*parts.values()) == set(patient)  # every scan in exactly one part
    pids = {p: {patient[f] for f in files} for p, files in parts.items()}
    assert not pids["train"] & pids["select"] and not pids["train"] & pids["report"]
    assert not pids["select"] & pids["report"]
    assert len(parts["report"]) >= 100 and len(parts["select"]) >= 40
    b = dict(load_samples("Kermany-select", 1, 64, "oct", max_images=1))["Kermany-select"]
    assert len(b) == 4 and all(s.image.shape == (1, 64, 64) and s.fov is None for s in b)


def test_zoom_one_keeps_the_pixels(tmp_path):
    data = _folder(tmp_path, n=2, size=64)
    train, _ = split(load_samples(str(data), 3, 64, "fundus"), 0.0, 0)
    images = [s.image.float() / 255 for s in train]

    def flips(t):
        return [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]

    def exact(batch):  # every clean crop is a whole training image, flipped at most
        return all(any(torch.equal(c, v) for im in images for v in flips(im))
                   for c in batch["clean"])
    g = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    assert exact(make_batch(train, _cfg(data, zoom=(1.0, 1.0)), g, cpu))
    assert not exact(make_batch(train, _cfg(data), g, cpu))  # zoomed: resampled pixels
    with pytest.raises(InputError, match="--zoom"):
        train_source(_cfg(data, zoom=(1.2, 1.1)))


def _blobs(tmp_path, n=4, size=48):
    """Bright discs on grey, masks of the discs (structure a small network learns quickly)."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(2):
            cy, cx = rng.uniform(10, size - 10, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(6, 10) ** 2
        img = np.stack([0.3 + 0.4 * mask] * 3, -1)
        write_image(tmp_path / "images" / f"im{i}.png", (img * 255).astype(np.uint8))
        write_image(tmp_path / "masks" / f"im{i}.png", (mask * 255).astype(np.uint8)[..., None])
    return tmp_path


def test_train_only_structure_keeps_the_image_output_and_chooses_by_dice(tmp_path):
    data = _blobs(tmp_path)
    with pytest.raises(InputError, match="--init"):
        train_source(_cfg(data, train_only="structure"))
    with pytest.raises(InputError, match="--train-only"):
        train_source(_cfg(data, train_only="image"))
    base = _cfg(data, steps=2, size=32, load_size=48, val_every=2)
    train_source(base)
    parent, _ = load_model(base.out)
    cfg = _cfg(data, out=str(tmp_path / "s.safetensors"), steps=100, size=32, load_size=48,
               val_every=25, init=base.out, train_only="structure", lambda_s=1.0, lr=1e-2,
               ema=0.5)
    train_source(cfg)
    child, meta = load_model(cfg.out)
    ps, cs = parent.state_dict(), child.state_dict()
    changed = {k for k in ps if not torch.equal(ps[k], cs[k])}
    # only the structure decoder learnt, and the image output is bit for bit the parent's
    assert changed and all(k.startswith("structure_decoder.") for k in changed)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(child(x)[0], parent(x)[0])
    log = [json.loads(line) for line in open(tmp_path / "s.log.jsonl")]
    assert all("val_dice" in r for r in log)
    best = max(log, key=lambda r: r["val_dice"])
    assert best.get("saved") and meta["validation"]["val_dice"] == best["val_dice"]
    # and the structure head learnt something: Dice on the held-out frame beats the parent's
    sets = load_samples(cfg.data, 3, cfg.load_size, "fundus")
    _, val = split(sets, cfg.holdout, cfg.seed)
    vs = validation_set(val, cfg, torch.device("cpu"))
    assert validate_structure(child, vs)["val_dice"] > 0.5 > validate_structure(parent, vs)["val_dice"]


def test_lambda_field_teaches_the_field_a_veils_gain_and_offset():
    """A veil that halves the contrast and adds light (``y = 0.5 x + 0.3``): the field's own
    loss takes its output to the clean image; with the weight at 0 the term is absent."""
    torch.manual_seed(0)
    model = SAMENet(3, "lite", base=8, levels=3, field=True)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = torch.stack([0.5 + 0.3 * torch.sin(6 * xx + k) * torch.cos(5 * yy) for k in range(3)])
    clean = clean.unsqueeze(0).repeat(2, 1, 1, 1)
    batch = {"clean": clean, "degraded": 0.5 * clean + 0.3, "mask": torch.zeros(2, 1, 32, 32),
             "has_mask": torch.zeros(2)}
    assert "field_l1" not in source_loss(model, batch, 0.1)[1]
    start = source_loss(model, batch, 0.1, lambda_field=1.0)[1]["field_l1"]
    opt = torch.optim.Adam(model.field.parameters(), lr=1e-2)
    for _ in range(300):
        loss, parts = source_loss(model, batch, 0.1, lambda_field=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["field_l1"] < 0.2 * start
    with torch.no_grad():
        g, o = model.field.fields(batch["degraded"] * 2 - 1)
    assert abs(float(g.exp().mean()) - 2.0) < 0.3 and abs(float(o.mean()) - 0.3) < 0.1


def test_frame_pad_keeps_the_whole_photograph_with_its_rim(tmp_path):
    """``frame="pad"``: a wide photograph lands whole on a black square, its FOV and masks with
    it (a camera's rim is in training), where ``crop`` keeps the centre square; train-source
    records the choice; an unknown frame is a one-line error."""
    for d in ("images", "fov", "masks"):
        (tmp_path / d).mkdir()
    img = np.full((40, 80, 3), 200, np.uint8)
    img[:, :20] = 50  # the left quarter differs: crop drops it, pad keeps it
    mask = np.zeros((40, 80), np.uint8)
    mask[:, 60:] = 255
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "images" / name, img)
        write_image(tmp_path / "fov" / name, np.full((40, 80), 255, np.uint8))
        write_image(tmp_path / "masks" / name, mask)
    (_, [crop, _]), = load_samples(str(tmp_path), 3, 40, "fundus", frame="crop")
    (_, [pad, _]), = load_samples(str(tmp_path), 3, 40, "fundus", frame="pad")
    assert crop.image.shape == pad.image.shape == (3, 40, 40)
    assert (crop.image == 200).all() and crop.fov.all()
    # 80 wide -> 40: the photograph fills rows 10..29, black above and below, outside the FOV
    assert (pad.image[:, :10] == 0).all() and (pad.image[:, 30:] == 0).all()
    assert (pad.image[:, 10:30, :10] == 50).all() and (pad.image[:, 10:30, 10:] == 200).all()
    assert pad.fov[0, 10:30].all() and not pad.fov[0, :10].any() and not pad.fov[0, 30:].any()
    assert pad.mask[0, 10:30, 30:].all() and not pad.mask[0, :, :30].any()
    with pytest.raises(InputError, match="frame 'fit'"):
        load_samples(str(tmp_path), 3, 40, "fundus", frame="fit")
    out = tmp_path / "out" / "m.safetensors"
    train_source(_cfg(tmp_path, steps=1, size=32, load_size=40, frame="pad", val_every=1))
    recipe = json.loads((tmp_path / "out" / "m.recipe.json").read_text())
    assert recipe["frame"] == "pad"
    assert load_model(out)[1]["training"]["frame"] == "pad"


def test_contrast_aug_scales_local_contrast_about_the_local_mean_in_input_and_target(tmp_path):
    """``contrast_aug``: a camera's own local contrast, carried by input and target alike. Per
    sample, the detail about a blurred copy is scaled by one factor within exp(+-a), while the
    frame's level stays."""
    from same_fast.degrade.ops import blur

    data = _folder(tmp_path, n=2, size=64)
    train, _ = split(load_samples(str(data), 3, 64, "fundus"), 0.0, 0)
    cpu = torch.device("cpu")
    kw = dict(clean_prob=1.0, batch=8, zoom=(1.0, 1.0))
    plain = make_batch(train, _cfg(data, **kw), torch.Generator().manual_seed(0), cpu)
    aug = make_batch(train, _cfg(data, contrast_aug=0.5, **kw), torch.Generator().manual_seed(0),
                     cpu)
    assert torch.equal(aug["degraded"], aug["clean"])  # identity pairs: the input carries it too

    def detail(t):
        return (t - blur(t, torch.full((t.shape[0],), 2.0))).flatten(1).std(1)

    ratio = detail(aug["clean"]) / detail(plain["clean"])  # flips do not change either
    assert ratio.min() > 0.55 and ratio.max() < 1.75
    assert ratio.max() - ratio.min() > 0.2  # one factor per sample, not one for the batch
    level = aug["clean"].mean((1, 2, 3)) / plain["clean"].mean((1, 2, 3))
    assert (level - 1).abs().max() < 0.03


def test_camera_balance_draws_each_camera_by_its_count_to_a_power(tmp_path):
    """``camera_balance``: a camera of 6 images beside one of 2 is drawn 6:2 under 1 (every
    image alike: the old draw, which the same seed still gives), 1:1 under 0, sqrt(3):1 under
    0.5; a value outside [0, 1] is a one-line error before any data is read."""
    from same_fast.train.source import camera_weights

    for name, n, level in (("big", 6, 20), ("small", 2, 200)):  # one grey level per image
        (tmp_path / name / "images").mkdir(parents=True)
        for i in range(n):
            write_image(tmp_path / name / "images" / f"im{i}.png",
                        np.full((32, 32, 3), level + 10 * i, np.uint8))
    spec = f"{tmp_path / 'big'},{tmp_path / 'small'}"
    train, _ = split(load_samples(spec, 3, 32, "fundus"), 0.0, 0)
    assert [s.name.split("/")[0] for s in train] == ["big"] * 6 + ["small"] * 2
    for b, share in ((1.0, 2 / 8), (0.0, 0.5), (0.5, 1 / (1 + 3 ** 0.5))):
        w = camera_weights(train, b)
        assert float(w[6:].sum() / w.sum()) == pytest.approx(share)
    cpu = torch.device("cpu")
    kw = dict(data=spec, clean_prob=1.0, batch=2000, zoom=(1.0, 1.0), size=32, load_size=32)
    for b, share in ((0.0, 0.5), (0.5, 1 / (1 + 3 ** 0.5)), (1.0, 0.25)):
        clean = make_batch(train, _cfg(tmp_path, camera_balance=b, **kw),
                           torch.Generator().manual_seed(0), cpu)["clean"]
        drawn_small = float((clean.mean((1, 2, 3)) > 0.5).float().mean())
        assert abs(drawn_small - share) < 0.04, (b, drawn_small)
    # balance 1 draws exactly as before the option existed (runs of older recipes reproduce)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(len(train), (4,), generator=g).tolist()
    clean = make_batch(train, _cfg(tmp_path, **{**kw, "batch": 4}), torch.Generator().manual_seed(3),
                       cpu)["clean"]
    levels = [round(float(v) * 255) for v in clean.mean((1, 2, 3))]
    assert levels == [20 + 10 * i if i < 6 else 200 + 10 * (i - 6) for i in idx]
    with pytest.raises(InputError, match="camera-balance"):
        train_source(_cfg(tmp_path, data=spec, camera_balance=1.5))
