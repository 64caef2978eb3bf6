"""Cross-scale retrieval (evaluation/retrieval.py): perfect, chance, hand-made ranks."""

import pytest
import torch

from torchgeo_xscale.evaluation import (
    FeatureEncoder,
    evaluate_retrieval,
    retrieval_scores,
)
from torchgeo_xscale.evaluation.retrieval import retrieval_ranks


def test_retrieval_identity_encoder_identical_views_is_perfect() -> None:
    images = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    identity = FeatureEncoder(torch.nn.Flatten(), img_size=32, name='identity')
    rows = evaluate_retrieval(identity, images, scales=(1.0, 0.5))
    full = rows[0]
    assert full['top1'] == 1.0 and full['mean_rank'] == 1.0 and full['mrr'] == 1.0
    assert full['own_sim'] == pytest.approx(1.0) and full['other_sim'] < 0.2
    assert rows[1]['top1'] <= 1.0 and rows[1]['mean_rank'] >= 1.0


class RandomFeatures(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.randn(x.shape[0], 16, generator=self.g)


def test_retrieval_random_encoder_is_near_chance() -> None:
    images = torch.zeros(400, 3, 8, 8)
    random = FeatureEncoder(RandomFeatures(), img_size=8)
    row = evaluate_retrieval(random, images, scales=(1.0,), batch_size=1000)[0]
    assert row['chance_mean_rank'] == pytest.approx(200.5)
    assert abs(row['mean_rank'] - 200.5) < 25  # ~ N/sqrt(12*N) = 5.8 std
    assert row['top1'] < 0.02
    # a constant encoder ties everything: exactly chance, never 1.0
    const = retrieval_scores(torch.ones(10, 4), torch.ones(10, 4))
    assert const['top1'] == 0.0 and const['mean_rank'] == pytest.approx(5.5)


def test_retrieval_ranks_hand_made() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # q0 -> own key first; q1 ([1,0]) ranks k0, k2 above its own k1; q2 exact
    assert retrieval_ranks(queries, keys).tolist() == [1.0, 3.0, 1.0]
