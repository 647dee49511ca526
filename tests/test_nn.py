"""SAMENet: the paper preset's exact size, shapes for odd inputs, the structure path, enhance()."""
import pytest
import torch

from same_fast.errors import InputError
from same_fast.nn import SAMENet, count_parameters, enhance, pad_to_multiple


def test_paper_preset_has_reference_parameter_count():
    # pix2pix U-Net-256 (54,409,603 with instance norm) + a structure decoder of the same widths
    assert count_parameters(SAMENet(3, "paper")) == 89_279_300


def test_paper_preset_layout():
    m = SAMENet(3, "paper")
    assert m.multiple == 256
    assert m.widths == [64, 128, 256, 512, 512, 512, 512, 512]
    drops = [getattr(u.drop, "p", 0.0) for u in m.image_decoder.ups]
    # ups[k-1] makes level k-1's resolution; the three stages after the innermost use dropout 0.5
    assert drops == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.0]
    assert any(isinstance(mod, torch.nn.InstanceNorm2d) and not mod.affine for mod in m.modules())


def test_lite_is_small_and_has_no_full_resolution_conv():
    m = SAMENet(3, "lite")
    assert 100_000 < count_parameters(m) < 5_000_000
    assert m.stem > 1 and m.multiple == m.stem * 2 ** (len(m.widths) - 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes_and_ranges(channels):
    torch.manual_seed(0)
    m = SAMENet(channels, "lite").eval()
    x = torch.rand(2, channels, 64, 96) * 2 - 1
    y, s = m(x)
    assert y.shape == x.shape and s.shape == (2, 1, 64, 96)
    assert y.min() >= -1 and y.max() <= 1
    y2, none = m(x, structure=False)
    assert none is None and torch.equal(y, y2)


def test_structure_decoder_reads_image_decoder_features():
    # Gradient of the structure logits must reach the image decoder's transposed convolutions.
    torch.manual_seed(0)
    m = SAMENet(1, "lite", dropout=0.0)
    _, s = m(torch.rand(1, 1, 32, 32) * 2 - 1)
    s.sum().backward()
    g = m.image_decoder.ups[-1].conv.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert m.image_decoder.head.weight.grad is None  # the image head does not feed structure


def test_forward_rejects_bad_sizes():
    m = SAMENet(3, "lite")
    with pytest.raises(InputError, match="multiples of 32"):
        m(torch.zeros(1, 3, 33, 32))
    with pytest.raises(InputError):
        m(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputError):
        SAMENet(3, "huge")
    with pytest.raises(InputError):
        SAMENet(3, "lite", widths=3)


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (5, 70)])
def test_enhance_pads_and_crops_odd_sizes(hw):
    m = SAMENet(3, "lite")
    x = torch.rand(2, 3, *hw)
    y = enhance(m, x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not m.training


def test_enhance_masks_fov_black():
    torch.manual_seed(0)
    m = SAMENet(3, "lite")
    x = torch.rand(1, 3, 40, 40)
    fov = torch.zeros(1, 40, 40, dtype=torch.bool)
    fov[:, 10:30, 10:30] = True
    y = enhance(m, x, fov)
    assert y[..., ~fov[0]].abs().max() == 0
    assert torch.allclose(y[..., fov[0]], enhance(m, x)[..., fov[0]])
    with pytest.raises(InputError):
        enhance(m, x, fov[:, :20])


def test_residual_lite_starts_near_identity_at_zero_head():
    # With the head zeroed the residual lite net returns its input exactly (padding cropped away).
    m = SAMENet(3, "lite")
    torch.nn.init.zeros_(m.image_decoder.head.weight)
    torch.nn.init.zeros_(m.image_decoder.head.bias)
    x = torch.rand(1, 3, 45, 50)
    assert torch.allclose(enhance(m, x), x, atol=1e-6)


def test_pad_to_multiple():
    x = torch.rand(1, 1, 30, 17)
    p, hw = pad_to_multiple(x, 16)
    assert p.shape[-2:] == (32, 32) and hw == (30, 17)
    assert torch.equal(p[..., :30, :17], x)


def test_fast_dropout_semantics():
    """same_fast.nn.dropout.Dropout: nn.Dropout's maths with a faster CPU mask."""
    from same_fast.nn.dropout import Dropout, dropout_mask

    d = Dropout(0.1)
    x = torch.ones(64, 32, 33, 17, requires_grad=True)
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003  # 1.2M draws: sd ~3e-4
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.9)  # gradient flows through kept units only
    torch.manual_seed(0)
    assert torch.equal(d(x), y)  # torch.manual_seed reproduces the mask
    assert not torch.equal(d(x), y)  # and the next call draws a new one
    d.eval()
    assert d(x) is x
    # lanes are independent of their neighbours: no structure left by cutting 64-bit words
    m = dropout_mask((400_000,), 0.5).view(-1, 4).float()
    assert torch.allclose(m.mean(0), torch.full((4,), 0.5), atol=0.005)
    assert abs(torch.corrcoef(m.T)[0, 1].item()) < 0.01
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_context_starts_as_the_plain_network_and_sees_the_whole_image():
    torch.manual_seed(0)
    plain = SAMENet(3, "lite").eval()
    ctx = SAMENet(3, "lite", context=True).eval()
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("context.") for k in missing)
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ctx(x)[0], plain(x)[0])  # the block's last layer starts at zero
        ctx.context.fc2.weight.normal_(0, 2.0)
        far = x.clone()
        far[..., :96, :96] = -1.0  # change one corner only
        # the opposite corner lies outside every convolution's reach, but not the context's
        d_plain = (plain(far)[0] - plain(x)[0])[..., -64:, -64:].abs().max()
        d_ctx = (ctx(far)[0] - ctx(x)[0])[..., -64:, -64:].abs().max()
    assert d_plain == 0 and d_ctx > 1e-5
    y = enhance(ctx, torch.rand(2, 3, 37, 53))
    assert y.shape == (2, 3, 37, 53) and 0 <= y.min() and y.max() <= 1
