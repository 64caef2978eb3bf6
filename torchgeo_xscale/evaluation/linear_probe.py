"""Linear probing of frozen features across scales (the paper's Table 3 protocol).

The encoder is frozen; its features (cached once per scale) are standardised by a
non-affine BatchNorm (as MAE's linear probe) and a linear layer is trained on them
with AdamW and a cosine schedule. Top-1 and top-5 accuracy per scale ratio; the
probe is trained at the same scale as it is tested (``train_scale='same'``) or at
100 % and tested on every scale (``'full'``: robustness to a GSD never trained on).
"""

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from ..progress import progress_bar
from .datasets import ClassificationSplits
from .encoders import FeatureEncoder
from .knn import DEFAULT_SCALES, embed_at_scale, load_classification_eval
from .report import plot_vs_scale, write_report

__all__ = ('evaluate_linear_probe', 'run_linear_probe', 'train_linear_probe')


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """Train ``BatchNorm1d(affine=False) -> Linear`` on cached features.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` in ``[0, num_classes)``.
        num_classes: C.
        epochs: Passes over the features.
        lr: Peak AdamW learning rate (cosine decay to 0).
        weight_decay: AdamW weight decay.
        batch_size: Features per step.
        seed: Seed of initialisation and shuffling.

    Returns:
        The probe in eval mode, mapping ``(B, D)`` to logits ``(B, C)``.

    Raises:
        ValueError: If features and labels disagree in length.
    """
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            f'{features.shape[0]} features but {labels.shape[0]} labels; expected equal'
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear = nn.Linear(features.shape[1], num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    probe = nn.Sequential(
        nn.BatchNorm1d(features.shape[1], affine=False, eps=1e-6), linear
    )
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = features.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    x, y = features.float(), labels.long()
    probe.train()
    for _ in progress_bar(range(epochs), desc='linear probe', unit='epoch'):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            loss = nn.functional.cross_entropy(probe(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return probe.eval()


def evaluate_linear_probe(
    encoder: FeatureEncoder,
    splits: ClassificationSplits,
    scales: Sequence[float] = DEFAULT_SCALES,
    train_scale: Literal['same', 'full'] = 'same',
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = 'cpu',
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Linear-probe accuracy of *encoder* at each scale ratio.

    Args:
        encoder: Frozen encoder.
        splits: Train and test data with their normalisation.
        scales: Scale ratios r.
        train_scale: Probe trained at the test ratio (``same``) or at 100 %.
        epochs: Probe training epochs.
        lr: Probe learning rate.
        batch_size: Images per encoder batch.
        num_workers: Data loader workers.
        device: Device of the encoder.
        seed: Probe seed.

    Returns:
        One row per scale: ``model``, ``dataset``, ``scale``, ``top1``, ``top5``,
        ``train_top1``, ``n_train``, ``n_test``.
    """

    def embed(dataset: Any, ratio: float) -> tuple[Tensor, Tensor]:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        feats, labels = embed_at_scale(
            encoder, loader, ratio, splits.mean, splits.std, device=device
        )
        assert labels is not None
        return feats, labels

    c = splits.num_classes
    full = embed(splits.train, 1.0) if train_scale == 'full' else None
    probe_full = (
        train_linear_probe(*full, c, epochs, lr, seed=seed)
        if full is not None
        else None
    )
    rows = []
    for ratio in scales:
        train = full if full is not None else embed(splits.train, ratio)
        probe = probe_full or train_linear_probe(*train, c, epochs, lr, seed=seed)
        test_feats, test_labels = embed(splits.test, ratio)
        with torch.no_grad():
            logits, train_logits = probe(test_feats), probe(train[0])
        rows.append(
            {
                'model': encoder.name,
                'dataset': splits.name,
                'scale': float(ratio),
                'top1': float(
                    multiclass_accuracy(logits, test_labels, c, average='micro')
                ),
                'top5': float(
                    multiclass_accuracy(
                        logits, test_labels, c, top_k=min(5, c), average='micro'
                    )
                ),
                'train_top1': float(
                    multiclass_accuracy(train_logits, train[1], c, average='micro')
                ),
                'train_scale': train_scale,
                'n_train': int(train[0].shape[0]),
                'n_test': int(test_feats.shape[0]),
            }
        )
    return rows


def run_linear_probe(
    encoder: str | FeatureEncoder,
    dataset: str,
    root: str | os.PathLike[str],
    output: str | os.PathLike[str] = 'outputs/eval/linear',
    weights: str | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    pool: Literal['mean', 'cls'] = 'mean',
    train_scale: Literal['same', 'full'] = 'same',
    epochs: int = 100,
    lr: float = 1e-3,
    split: str = 'test',
    normalize: str = 'dataset',
    bands: Sequence[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = 'cpu',
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    command: str = '',
) -> list[dict[str, Any]]:
    """Load an encoder and a dataset, run :func:`evaluate_linear_probe`, write the report.

    Writes ``linear_<dataset>.csv``, ``.md`` and ``.png`` into *output*.

    Args:
        encoder: Encoder name/file or encoder.
        dataset: Dataset name.
        root: Dataset root.
        output: Report folder.
        weights: Weights entry or file.
        scales: Scale ratios.
        pool: ``mean`` or ``cls`` feature.
        train_scale: ``same`` or ``full``.
        epochs: Probe epochs.
        lr: Probe learning rate.
        split: Evaluation split.
        normalize: ``dataset``, ``imagenet`` or ``none``.
        bands: EuroSAT band names.
        max_samples: Cap on images per split.
        batch_size: Images per batch.
        num_workers: Data loader workers.
        device: Device.
        model_kwargs: Extra encoder builder arguments.
        seed: Probe seed.
        command: Command line recorded in the Markdown report.

    Returns:
        The result rows.
    """
    encoder, splits = load_classification_eval(
        encoder, weights, pool, model_kwargs, dataset, root, split, normalize, bands,
        max_samples,
    )  # fmt: skip
    rows = evaluate_linear_probe(
        encoder,
        splits,
        scales,
        train_scale,
        epochs,
        lr,
        batch_size,
        num_workers,
        device,
        seed,
    )
    fig = plot_vs_scale(
        rows, 'top1', ylabel='linear probe top-1', title=f'Linear probe on {dataset}'
    )
    notes = f'Linear probe: {epochs} epochs, AdamW lr {lr}, trained at {train_scale} scale, pool={pool}.'
    write_report(
        rows,
        output,
        f'linear_{dataset}',
        f'Linear probe accuracy vs scale: {dataset}',
        fig,
        notes=notes,
        command=command,
    )
    return rows
