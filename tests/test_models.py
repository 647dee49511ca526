"""Model files: save/load round trip, shipped names, clear errors for bad checkpoints."""
import pytest
import torch

from same_fast import checkpoint
from same_fast.errors import CheckpointError
from same_fast.models import SHIPPED, WEIGHTS_DIR, available, load_model, save_model
from same_fast.nn import SAMENet


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = SAMENet(1, "lite", base=8, levels=3)
    p = save_model(tmp_path / "m.safetensors", m, modality="ultrasound",
                   provenance={"command": "test"})
    m2, meta = load_model(p)
    assert not m2.training
    assert meta["architecture"] == "SAMENet" and meta["modality"] == "ultrasound"
    assert meta["config"]["base"] == 8 and meta["channels"] == 1
    assert meta["value_range"] == [-1, 1] and "date" in meta["provenance"]
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    m.eval()
    assert torch.equal(m(x)[0], m2(x)[0])


def test_checkpoint_file_mode_follows_umask_and_the_replaced_file(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        p = checkpoint.save(tmp_path / "a.safetensors", {"w": torch.zeros(2)}, {})
        assert p.stat().st_mode & 0o777 == 0o644  # safetensors alone writes 0600
        os.chmod(p, 0o640)
        checkpoint.save(p, {"w": torch.ones(2)}, {})
        assert p.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_unknown_name_lists_available():
    with pytest.raises(CheckpointError, match="available"):
        load_model("no-such-model")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_wrong_architecture_and_mismatched_weights(tmp_path):
    p = checkpoint.save(tmp_path / "x.safetensors", {"w": torch.zeros(2)},
                        {"architecture": "Other"})
    with pytest.raises(CheckpointError, match="not SAMENet"):
        load_model(p)
    m = SAMENet(3, "lite", base=8, levels=3)
    p = save_model(tmp_path / "y.safetensors", m)
    tensors, meta = checkpoint.load(p)
    meta["config"]["base"] = 4  # weights no longer fit the recorded config
    checkpoint.save(p, tensors, meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(p)


# Names whose weights are committed; each must load by name, stay small and run.
COMMITTED = ["fundus-lite", "ultrasound-lite"]


@pytest.mark.parametrize("name", COMMITTED)
def test_shipped_weights_load_by_name_and_are_small(name):
    assert name in SHIPPED and name in available()
    path = WEIGHTS_DIR / f"{name}.safetensors"
    assert path.stat().st_size < 20 * 1024 * 1024
    m, meta = load_model(name)
    assert meta["preset"] == "lite" and meta["modality"] in ("fundus", "ultrasound")
    prov = meta["provenance"]
    assert prov["command"] and prov["held_out"] and prov["degrade"]
    assert not any(n.startswith("DRIVE") for n in prov["train_images"])  # DRIVE is for evaluation
    c = meta["channels"]
    x = torch.rand(1, c, 64, 64) * 2 - 1
    y, s = m(x)
    assert y.shape == (1, c, 64, 64) and torch.isfinite(y).all() and s.shape == (1, 1, 64, 64)
    assert not torch.equal(y, x)  # trained weights do something


def test_context_round_trips_and_older_checkpoints_load_without_it(tmp_path):
    torch.manual_seed(0)
    m = SAMENet(3, "lite", base=8, levels=3, context=True).eval()
    with torch.no_grad():
        m.context.fc2.weight.normal_(0, 0.3)
    m2, meta = load_model(save_model(tmp_path / "c.safetensors", m))
    assert meta["config"]["context"] is True and m2.context is not None
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    assert torch.equal(m(x)[0], m2(x)[0])
    # a checkpoint written before the option existed has no "context" in its config
    p = save_model(tmp_path / "old.safetensors", SAMENet(3, "lite", base=8, levels=3))
    tensors, meta = checkpoint.load(p)
    del meta["config"]["context"]
    checkpoint.save(p, tensors, meta)
    old, _ = load_model(p)
    assert old.context is None and old.config["context"] is False
