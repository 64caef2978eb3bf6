"""``retrieval_topk``: the keys a query retrieves, by the ranking ``retrieval_ranks`` scores."""

import pytest
import torch

from torchgeo_xscale.evaluation.retrieval import retrieval_ranks, retrieval_topk


def test_topk_agrees_with_the_ranks() -> None:
    torch.manual_seed(0)
    keys = torch.randn(10, 6)
    queries = keys + 0.8 * torch.randn(10, 6)
    top = retrieval_topk(queries, keys, 3)
    assert top.shape == (10, 3)
    ranks = retrieval_ranks(queries, keys)
    for i in range(10):
        assert (int(top[i, 0]) == i) == (float(ranks[i]) == 1.0)
        assert (i in top[i].tolist()) == (float(ranks[i]) <= 3)


def test_topk_refuses_bad_k() -> None:
    with pytest.raises(ValueError, match=r'^k=5; expected 1 <= k <= 4'):
        retrieval_topk(torch.randn(4, 2), torch.randn(4, 2), 5)
