"""The linear probe (evaluation/linear_probe.py)."""

import pytest
import torch

from torchgeo_xscale.evaluation import (
    train_linear_probe,
)


def test_train_linear_probe_separable() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    feats = (
        torch.randn(60, 8, generator=g) * 0.1
        + torch.nn.functional.one_hot(labels, 8).float() * 3
    )
    probe = train_linear_probe(feats, labels, 3, epochs=20, lr=3e-2, batch_size=32)
    assert (probe(feats).argmax(1) == labels).all()
    with pytest.raises(ValueError, match='labels'):
        train_linear_probe(feats, labels[:5], 3)
