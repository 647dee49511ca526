"""torch.compile backend: same output as eager, before and after update_weights (slow: it compiles)."""
from __future__ import annotations

import pytest
import torch

from same_fast.engine import create_backend
from same_fast.engine.testing import perturbed_state
from same_fast.nn import SAMENet, enhance


@pytest.mark.slow
def test_compile_matches_eager_before_and_after_update(tmp_path) -> None:
    torch.manual_seed(0)
    model = SAMENet(3, "lite", base=8, levels=3).eval()
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    b = create_backend("compile", model, cache_dir=str(tmp_path))
    # Inductor may reorder float sums and fuse pointwise ops: 1e-5 on values in [0, 1].
    assert (b.enhance(x) - enhance(model, x)).abs().max().item() < 1e-5
    new = perturbed_state(model, 0.3, seed=1)
    b.update_weights(new)
    model.load_state_dict(new)
    assert (b.enhance(x) - enhance(model, x)).abs().max().item() < 1e-5
    assert b.describe()["compile_mode"] == "default"
