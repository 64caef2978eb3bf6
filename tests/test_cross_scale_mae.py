"""CrossScaleMAE's constructor: values that would silently train nothing are refused."""

import pytest
import torch
from conftest import TINY_MODEL

from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.tasks import CrossScaleMAETask


def test_mask_ratio_zero_with_reconstruction_loss_is_refused() -> None:
    # Today's failure: nothing masked, so L_re (on masked patches only) is exactly 0.
    with pytest.raises(ValueError, match=r'^mask_ratio=0 with loss_re=True: .*0 <'):
        CrossScaleMAE(**TINY_MODEL, mask_ratio=0.0)
    with pytest.raises(ValueError, match=r'mask_ratio=0 with loss_re=True'):
        CrossScaleMAETask(**TINY_MODEL, mask_ratio=0)


@pytest.mark.parametrize('ratio', [-0.25, 1.0, 1.5])
def test_mask_ratio_outside_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=rf'^mask_ratio={ratio}; expected 0 <= '):
        CrossScaleMAE(**TINY_MODEL, mask_ratio=ratio)


def test_mask_ratio_zero_without_reconstruction_loss_trains() -> None:
    """Without L_re, unmasked views are legitimate (contrastive losses only)."""
    model = CrossScaleMAE(**TINY_MODEL, mask_ratio=0.0, loss_re=False)
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert torch.isfinite(out.loss) and out.loss > 0
    assert 're' not in out.parts
