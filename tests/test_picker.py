"""The pseudo-label picker: per-sample device weights, thresholds, all-rejected batches, files."""
from __future__ import annotations

import pytest
import torch

from same_fast.adapt.step import AdaptStep, StepConfig
from same_fast.errors import CheckpointError
from same_fast.nn import SAMENet
from same_fast.nn.iqa import IQANet
from same_fast.nn.isd import StructureVAE
from same_fast.picker import Picker, PickerConfig, load_picker, save_picker


def _picker(config: PickerConfig | None = None, channels: int = 1, thr: float = 0.5) -> Picker:
    torch.manual_seed(0)
    iqa = IQANet(channels, width=4, depth=2, size=32)
    isd = StructureVAE(size=16, latent=4, width=4)
    return Picker(iqa, isd, thr, "ultrasound", config)


def test_hard_rule_per_sample():
    p = _picker(PickerConfig(p_good=0.8), thr=0.2)
    s = {"p_good": torch.tensor([0.9, 0.5, 0.95, 0.9, 0.81]),
         "good_top": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
         "isd": torch.tensor([0.1, 0.1, 0.1, 0.3, 0.19])}
    w = p.weights_from_scores(s)
    assert w.dtype == torch.float32 and w.shape == (5,)
    # good & confident & plausible; not confident; good not top; implausible; all pass
    assert w.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_soft_rule_is_monotone_and_switchable():
    p = _picker(PickerConfig(p_good=0.8, soft=True, temperature=0.05), thr=0.2)
    s = {"p_good": torch.tensor([0.6, 0.8, 0.99]), "good_top": torch.ones(3),
         "isd": torch.tensor([0.1, 0.1, 0.1])}
    w = p.weights_from_scores(s)
    assert 0 < w[0] < w[1] < w[2] < 1
    assert abs(float(w[1]) - 0.5 * float(torch.sigmoid(torch.tensor(10.0)))) < 1e-5
    off = _picker(PickerConfig(use_iqa=False, use_isd=False), thr=0.2)
    assert off.weights_from_scores(s).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("channels", [1, 3])
def test_weights_are_per_sample_and_on_device(channels):
    """A sample's weight and scores do not depend on the rest of the batch (frozen BN); colour
    inputs go through the device colour spaces."""
    p = _picker(PickerConfig(p_good=0.0), channels=channels, thr=1e9)
    p.train()  # must stay in eval: the assessors are frozen judges
    assert not p.iqa.training
    g = torch.Generator().manual_seed(1)
    img = torch.rand(5, channels, 40, 48, generator=g) * 2 - 1
    logits = torch.randn(5, 1, 40, 48, generator=g)
    batch = p.scores(img, logits)
    for i in range(5):
        single = p.scores(img[i:i + 1], logits[i:i + 1])
        for k in ("p_good", "isd"):
            torch.testing.assert_close(single[k][0], batch[k][i], rtol=1e-4, atol=1e-5)
    w = p(img, logits)
    assert w.device == img.device and w.shape == (5,)
    assert not any(q.requires_grad for q in p.parameters())


def test_all_rejected_batch_gives_zero_loss_and_no_update():
    picker = _picker(PickerConfig(p_good=1.01), thr=0.5)  # nothing can pass
    torch.manual_seed(0)
    student = SAMENet(1, "lite", base=4, max_channels=8, levels=3)
    teacher = SAMENet(1, "lite", base=4, max_channels=8, levels=3)
    teacher.load_state_dict(student.state_dict())
    before = {k: v.clone() for k, v in student.state_dict().items()}
    step = AdaptStep(student, teacher, StepConfig(w_entropy=0.0), picker)
    out = step(torch.rand(3, 1, 16, 16) * 2 - 1)
    assert torch.isfinite(out["loss"]) and float(out["loss"]) == 0.0
    assert float(out["accepted"]) == 0.0 and out["weights"].tolist() == [0.0, 0.0, 0.0]
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_planted_implausible_structure_scores_higher_after_training():
    """A VAE trained on blob masks scores random noise maps as less plausible."""
    torch.manual_seed(0)
    isd = StructureVAE(size=16, latent=4, width=8, beta=0.01)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    g = torch.Generator().manual_seed(0)

    def blobs(n: int) -> torch.Tensor:
        c = torch.rand(n, 2, generator=g) * 8 + 4
        r = torch.rand(n, generator=g) * 2 + 2
        d = (yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2
        return (d < r[:, None, None] ** 2).float()[:, None]

    opt = torch.optim.Adam(isd.parameters(), lr=3e-3)
    for _ in range(80):
        loss = isd.loss(blobs(16), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    isd.eval()
    good = isd.score(blobs(32))
    noise = isd.score(torch.rand(32, 1, 16, 16, generator=g))
    assert float(noise.min()) > float(good.median())


def test_checkpoint_round_trip(tmp_path):
    p = _picker(thr=0.37)
    path = save_picker(tmp_path / "p.safetensors", p.iqa, p.isd, 0.37, "ultrasound")
    q = load_picker(path)
    assert q.isd_threshold == pytest.approx(0.37) and q.p_good == pytest.approx(0.6)
    img, logits = torch.rand(2, 1, 32, 32) * 2 - 1, torch.randn(2, 1, 32, 32)
    a, b = p.scores(img, logits), q.scores(img, logits)
    torch.testing.assert_close(a["p_good"], b["p_good"])
    torch.testing.assert_close(a["isd"], b["isd"])
    with pytest.raises(CheckpointError, match="no such picker"):
        load_picker(tmp_path / "missing.safetensors")


def test_enhancer_checkpoint_is_not_a_picker(tmp_path):
    from same_fast.models import save_model

    path = save_model(tmp_path / "m.safetensors", SAMENet(1, "lite", base=4, max_channels=8,
                                                          levels=3))
    with pytest.raises(CheckpointError, match="not a picker"):
        load_picker(path)
