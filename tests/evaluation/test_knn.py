"""kNN classification across scales (evaluation/knn.py): exact, end to end."""

import math

import numpy as np
import pytest
import torch
from classification_layouts import (
    fake_resisc45,
    tiny_vit,
)

from torchgeo_xscale.evaluation import (
    FeatureEncoder,
    embed_at_scale,
    evaluate_knn,
    evaluate_linear_probe,
    knn_predict,
    prepare_classification,
)


def brute_force_knn(train, labels, test, c, k, t):
    preds = []
    for q in test:
        sims = [
            float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x))) for x in train
        ]
        order = sorted(range(len(train)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * c
        for j in order:
            votes[int(labels[j])] += math.exp(sims[j] / t)
        preds.append(int(np.argmax(votes)))
    return preds


@pytest.mark.parametrize('k', [1, 3, 20, 50])
def test_knn_matches_brute_force(k) -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    test = torch.randn(25, 6, generator=g)
    pred, votes = knn_predict(
        train, labels, test, 4, k=k, temperature=0.07, chunk_size=7
    )
    ref = brute_force_knn(
        train.numpy(), labels.numpy(), test.numpy(), 4, min(k, 40), 0.07
    )
    assert pred.tolist() == ref
    assert votes.shape == (25, 4)


def test_knn_hand_made_features() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    # with k = 5, class 1 has three votes but class 0's two are much closer: exp(sim/T)
    pred, votes = knn_predict(train, labels, test, 2, k=5, temperature=0.07)
    assert pred.tolist() == [0, 1]
    assert votes[0, 0] > votes[0, 1]
    with pytest.raises(ValueError, match='k=0'):
        knn_predict(train, labels, test, 2, k=0)


def test_knn_and_linear_probe_end_to_end(tmp_path) -> None:
    splits = prepare_classification(
        'resisc45', fake_resisc45(tmp_path, per_class=8), 32, 3
    )
    torch.manual_seed(0)
    enc = FeatureEncoder(tiny_vit(), name='tiny')
    rows = evaluate_knn(enc, splits, scales=(0.25, 1.0), k=3)
    assert [r['scale'] for r in rows] == [0.25, 1.0]
    assert rows[1]['n_train'] == 18 and rows[1]['n_test'] == 3
    assert rows[1]['top1'] == 1.0  # colour classes are separable even for a random ViT
    probe = evaluate_linear_probe(enc, splits, scales=(1.0,), epochs=10, lr=3e-2)
    assert probe[0]['train_top1'] == 1.0 and probe[0]['top5'] == 1.0


def test_embed_at_scale_uses_scale_to_ratio() -> None:
    images = torch.randn(3, 3, 32, 32)
    identity = FeatureEncoder(torch.nn.Flatten(), img_size=32)
    full, _ = embed_at_scale(identity, images, 1.0)
    low, _ = embed_at_scale(identity, images, 0.25)
    assert torch.allclose(full, images.flatten(1))
    blocks = low.view(3, 3, 32, 32)
    assert blocks.std() < images.std()  # detail removed
