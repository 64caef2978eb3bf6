"""kNN classification of frozen features across scales (Scale-MAE's protocol).

Features are L2-normalised; each test image votes with its k = 20 nearest training
images (cosine similarity), each vote weighted ``exp(sim / 0.07)``; the class with the
largest vote wins. Images of both splits are area down-sampled to each scale ratio
and resized back to the input size before the encoder (``train_scale='same'``); with
``train_scale='full'`` the bank stays at 100 % and only the queries are scaled.
"""

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from ..progress import progress_bar
from ..transforms import scale_to_ratio
from .datasets import ClassificationSplits, prepare_classification
from .encoders import FeatureEncoder, load_encoder
from .report import plot_vs_scale, write_report

__all__ = (
    'DEFAULT_SCALES',
    'embed_at_scale',
    'evaluate_knn',
    'knn_predict',
    'load_classification_eval',
    'run_knn',
)

#: Scale ratios of the paper's Fig. 2 / Table 2.
DEFAULT_SCALES = (0.125, 0.25, 0.5, 1.0)


def embed_at_scale(
    encoder: FeatureEncoder,
    data: Tensor | Iterable[dict[str, Any]],
    scale_ratio: float,
    mean: Tensor | None = None,
    std: Tensor | None = None,
    gsd: Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device = 'cpu',
) -> tuple[Tensor, Tensor | None]:
    """Features of images brought to a scale ratio (Scale-MAE's kNN protocol).

    Each image is normalised, resized to the encoder's input size, then area
    down-sampled by *scale_ratio* and resized back
    (:func:`torchgeo_xscale.transforms.scale_to_ratio`) before the encoder.

    Args:
        encoder: The frozen encoder (moved to *device*).
        data: Images ``(N, C, H, W)``, or batches ``{'image', 'label'[, 'gsd']}``.
        scale_ratio: r in (0, 1].
        mean: Per-band mean ``(C,)`` to subtract (None: none).
        std: Per-band std ``(C,)`` to divide by (None: none).
        gsd: Native GSD per image ``(N,)`` when *data* is a tensor.
        batch_size: Images per forward pass when *data* is a tensor.
        device: Where to run the encoder.

    Returns:
        Features ``(N, D)`` on the CPU, and labels ``(N,)`` (None without labels).
    """
    encoder = encoder.to(device)
    if isinstance(data, Tensor):
        batches: Iterable[dict[str, Any]] = (
            {
                'image': data[i : i + batch_size],
                'gsd': None if gsd is None else gsd[i : i + batch_size],
            }
            for i in range(0, data.shape[0], batch_size)
        )
    else:
        batches = data
    size = (encoder.img_size, encoder.img_size)
    features, labels = [], []
    total = math.ceil(data.shape[0] / batch_size) if isinstance(data, Tensor) else None
    bar = progress_bar(
        batches, total=total, desc=f'embed x{scale_ratio:g}', unit='batch'
    )
    for batch in bar:
        x = batch['image'].to(device).float()
        if mean is not None and std is not None:
            x = (x - mean.to(x).view(1, -1, 1, 1)) / std.to(x).view(1, -1, 1, 1)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(
                x, size=size, mode='bilinear', align_corners=False, antialias=True
            )
        x = scale_to_ratio(x, scale_ratio)
        batch_gsd = batch.get('gsd')
        features.append(
            encoder(
                x, scale_ratio, None if batch_gsd is None else batch_gsd.to(device)
            ).cpu()
        )
        if 'label' in batch:
            labels.append(torch.as_tensor(batch['label']).reshape(-1).cpu())
    return torch.cat(features), (torch.cat(labels) if labels else None)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Weighted kNN votes of L2-normalised features.

    Args:
        train_features: Bank ``(N, D)``.
        train_labels: Bank labels ``(N,)`` in ``[0, num_classes)``.
        test_features: Queries ``(M, D)``.
        num_classes: C.
        k: Neighbours (clipped to N).
        temperature: Vote weight ``exp(sim / temperature)``.
        chunk_size: Queries per similarity matrix (memory bound).

    Returns:
        Predicted classes ``(M,)`` and class votes ``(M, C)``.

    Raises:
        ValueError: If *k* < 1 or the bank is empty.
    """
    if k < 1:
        raise ValueError(f'k={k}; expected >= 1')
    if train_features.shape[0] == 0:
        raise ValueError('train_features is empty; expected a non-empty kNN bank')
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(bank.device)
    k = min(k, bank.shape[0])
    votes = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(
            test_features[start : start + chunk_size].float().to(bank.device), dim=1
        )
        sim, idx = (query @ bank.T).topk(k, dim=1)
        weight = (sim / temperature).exp()
        votes.append(
            torch.zeros(query.shape[0], num_classes, device=bank.device).scatter_add_(
                1, labels[idx], weight
            )
        )
    scores = torch.cat(votes) if votes else torch.zeros(0, num_classes)
    return scores.argmax(dim=1), scores


def _loader(dataset: Any, batch_size: int, num_workers: int) -> DataLoader[Any]:
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False
    )


def evaluate_knn(
    encoder: FeatureEncoder,
    splits: ClassificationSplits,
    scales: Sequence[float] = DEFAULT_SCALES,
    k: int = 20,
    temperature: float = 0.07,
    train_scale: Literal['same', 'full'] = 'same',
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = 'cpu',
) -> list[dict[str, Any]]:
    """KNN top-1 accuracy of *encoder* at each scale ratio.

    Args:
        encoder: Frozen encoder.
        splits: Train (bank) and test data with their normalisation.
        scales: Scale ratios r.
        k: Neighbours.
        temperature: Vote temperature.
        train_scale: Bank at the same ratio as the queries (``same``) or at 100 %.
        batch_size: Images per batch.
        num_workers: Data loader workers.
        device: Device of the encoder.

    Returns:
        One row per scale: ``model``, ``dataset``, ``scale``, ``top1``, ``k``,
        ``n_train``, ``n_test``.
    """

    def embed(dataset: Any, ratio: float) -> tuple[Tensor, Tensor]:
        feats, labels = embed_at_scale(
            encoder,
            _loader(dataset, batch_size, num_workers),
            ratio,
            splits.mean,
            splits.std,
            device=device,
        )
        assert labels is not None
        return feats, labels

    rows = []
    bank = embed(splits.train, 1.0) if train_scale == 'full' else None
    for ratio in scales:
        train_feats, train_labels = (
            bank if bank is not None else embed(splits.train, ratio)
        )
        test_feats, test_labels = embed(splits.test, ratio)
        pred, _ = knn_predict(
            train_feats, train_labels, test_feats, splits.num_classes, k, temperature
        )
        top1 = multiclass_accuracy(
            pred, test_labels, splits.num_classes, average='micro'
        )
        rows.append(
            {
                'model': encoder.name,
                'dataset': splits.name,
                'scale': float(ratio),
                'top1': float(top1),
                'k': k,
                'train_scale': train_scale,
                'n_train': int(train_feats.shape[0]),
                'n_test': int(test_feats.shape[0]),
            }
        )
    return rows


def load_classification_eval(
    encoder: str | FeatureEncoder,
    weights: str | None,
    pool: Literal['mean', 'cls'],
    model_kwargs: dict[str, Any] | None,
    dataset: str,
    root: str | os.PathLike[str],
    split: str,
    normalize: str,
    bands: Sequence[str] | None,
    max_samples: int | None,
) -> tuple[FeatureEncoder, ClassificationSplits]:
    """The encoder (loaded if given by name) and the dataset's splits at its input size.

    Shared by the kNN and linear-probe protocols.

    Args:
        encoder: Encoder name/file (see :func:`~.encoders.load_encoder`) or encoder.
        weights: Weights entry or file.
        pool: ``mean`` or ``cls`` feature.
        model_kwargs: Extra encoder builder arguments.
        dataset: Dataset name (:data:`~.datasets.CLASSIFICATION_DATASETS`).
        root: Dataset root.
        split: Evaluation split.
        normalize: ``dataset``, ``imagenet`` or ``none``.
        bands: EuroSAT band names.
        max_samples: Cap on images per split.

    Returns:
        The encoder and the splits.
    """
    if not isinstance(encoder, FeatureEncoder):
        encoder = load_encoder(encoder, weights, pool, model_kwargs)
    splits = prepare_classification(
        dataset,
        root,
        encoder.img_size,
        encoder.in_chans,
        split,
        normalize,
        bands,
        max_samples,
    )
    return encoder, splits


def run_knn(
    encoder: str | FeatureEncoder,
    dataset: str,
    root: str | os.PathLike[str],
    output: str | os.PathLike[str] = 'outputs/eval/knn',
    weights: str | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    k: int = 20,
    temperature: float = 0.07,
    pool: Literal['mean', 'cls'] = 'mean',
    train_scale: Literal['same', 'full'] = 'same',
    split: str = 'test',
    normalize: str = 'dataset',
    bands: Sequence[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = 'cpu',
    model_kwargs: dict[str, Any] | None = None,
    command: str = '',
) -> list[dict[str, Any]]:
    """Load an encoder and a dataset, run :func:`evaluate_knn`, write the report.

    Writes ``knn_<dataset>.csv``, ``.md`` and ``.png`` (accuracy vs scale, as the
    paper's Fig. 2) into *output*.

    Args:
        encoder: Encoder name/file (see :func:`~.encoders.load_encoder`) or encoder.
        dataset: Dataset name (:data:`~.datasets.CLASSIFICATION_DATASETS`).
        root: Dataset root.
        output: Report folder.
        weights: Weights entry or file.
        scales: Scale ratios.
        k: Neighbours.
        temperature: Vote temperature.
        pool: ``mean`` or ``cls`` feature.
        train_scale: ``same`` or ``full``.
        split: Evaluation split.
        normalize: ``dataset``, ``imagenet`` or ``none``.
        bands: EuroSAT band names.
        max_samples: Cap on images per split.
        batch_size: Images per batch.
        num_workers: Data loader workers.
        device: Device.
        model_kwargs: Extra encoder builder arguments.
        command: Command line recorded in the Markdown report.

    Returns:
        The result rows.
    """
    encoder, splits = load_classification_eval(
        encoder, weights, pool, model_kwargs, dataset, root, split, normalize, bands,
        max_samples,
    )  # fmt: skip
    rows = evaluate_knn(
        encoder,
        splits,
        scales,
        k,
        temperature,
        train_scale,
        batch_size,
        num_workers,
        device,
    )
    fig = plot_vs_scale(
        rows, 'top1', ylabel='kNN top-1 accuracy', title=f'kNN (k={k}) on {dataset}'
    )
    notes = f'kNN k={k}, T={temperature}, pool={pool}, bank at {train_scale} scale, normalize={normalize}.'
    write_report(
        rows,
        output,
        f'knn_{dataset}',
        f'kNN accuracy vs scale: {dataset}',
        fig,
        notes=notes,
        command=command,
    )
    return rows
