"""Scale transfer: classify images of one scale level with a classifier fit on another.

Datasets such as :class:`~torchgeo_xscale.datasets.RSSCN7` photograph every class at
several scale levels. The protocol embeds each level's images once with the frozen
encoder (at their own scale: no resampling beyond resizing to the encoder's input),
fits the classifier on the ``train`` images of one level (the kNN bank of
:func:`~.knn.knn_predict`, or the linear probe of
:func:`~.linear_probe.train_linear_probe`) and tests it on the ``test`` images of
every level. The result is a train-level x test-level accuracy table.

On the diagonal (same level) the classifier meets the scale it was fit on; off the
diagonal it must transfer. The **gap** = mean same-level accuracy - mean cross-level
accuracy measures how much the features depend on scale: 0 for features that are
scale invariant on this data, larger when accuracy drops as the scale changes.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.functional.classification import multiclass_accuracy

from ..datasets.rsscn7 import RSSCN7
from ..renames import refuse_renamed
from .datasets import IMAGENET_STATS, ResizeImage, channel_stats
from .encoders import FeatureEncoder, load_encoder
from .knn import embed_at_scale, knn_predict
from .linear_probe import train_linear_probe
from .report import markdown_table, write_report

__all__ = (
    'LEVELLED_DATASETS',
    'LevelSplits',
    'evaluate_scale_transfer',
    'plot_transfer_matrix',
    'prepare_level_splits',
    'run_scale_transfer',
    'transfer_matrix',
    'transfer_summary',
)

#: Datasets with a scale level per image, accepted by :func:`prepare_level_splits`.
LEVELLED_DATASETS: dict[str, type[RSSCN7]] = {'rsscn7': RSSCN7}

Classifier = Literal['knn', 'linear']


@dataclass
class LevelSplits:
    """Per-level train and test splits of a levelled dataset, ready to embed.

    Attributes:
        train: Level -> its ``train`` images (the classifier is fit on one of them).
        test: Level -> its ``test`` images.
        num_classes: Number of classes.
        mean: Per-band mean ``(C,)`` subtracted before the encoder.
        std: Per-band std ``(C,)`` dividing after that.
        name: Dataset name.
    """

    train: dict[int, Dataset[dict[str, Any]]]
    test: dict[int, Dataset[dict[str, Any]]]
    num_classes: int
    mean: Tensor
    std: Tensor
    name: str


def _evenly(dataset: Any, max_samples: int | None) -> Any:
    """At most *max_samples* evenly spaced samples (class order is kept balanced)."""
    n = len(dataset)
    if max_samples is None or n <= max_samples:
        return dataset
    return Subset(dataset, [i * n // max_samples for i in range(max_samples)])


def prepare_level_splits(
    name: str,
    root: str | os.PathLike[str],
    size: int,
    in_channels: int | None = None,
    train_levels: Sequence[int] | None = None,
    test_levels: Sequence[int] | None = None,
    normalize: str = 'dataset',
    max_samples: int | None = None,
    train_fraction: float = 0.5,
    seed: int = 0,
    *,
    in_chans: int | None = None,
) -> LevelSplits:
    """Build the per-level splits and their normalisation.

    Args:
        name: A key of :data:`LEVELLED_DATASETS`.
        root: Dataset root.
        size: Encoder input side (images are resized to it).
        in_channels: Encoder bands (TorchGeo's name; checked against the data).
        train_levels: Levels to fit classifiers on (default all).
        test_levels: Levels to test on (default all).
        normalize: ``dataset`` (per-band statistics of the train images of
            *train_levels*), ``imagenet`` (0-255 RGB) or ``none``.
        max_samples: At most this many images per level and split.
        train_fraction: Train share of each class and level.
        seed: Seed of the split.
        in_chans: Renamed *in_channels* (:mod:`torchgeo_xscale.renames`); giving
            it raises.

    Returns:
        The splits.

    Raises:
        ValueError: On an unknown dataset, level or *normalize*, a band mismatch,
            or *in_chans* given.
    """
    refuse_renamed('in_chans', in_chans)
    key = name.lower()
    if key not in LEVELLED_DATASETS:
        msg = (
            f'dataset={name!r} has no scale levels; the scale-transfer protocol '
            f'expects one of {list(LEVELLED_DATASETS)}'
        )
        raise ValueError(msg)
    if normalize not in ('dataset', 'imagenet', 'none'):
        raise ValueError(
            f"normalize={normalize!r}; expected 'dataset', 'imagenet' or 'none'"
        )
    cls = LEVELLED_DATASETS[key]
    levels = cls.levels_all
    for option, chosen in (
        ('train_levels', train_levels),
        ('test_levels', test_levels),
    ):
        if chosen is not None and (not chosen or not set(chosen) <= set(levels)):
            raise ValueError(
                f'{option}={list(chosen)}; expected levels among {list(levels)}'
            )
    transform = ResizeImage(size)

    def split(which: Literal['train', 'test'], level: int) -> Any:
        dataset = cls(
            root,
            which,
            levels=[level],
            train_fraction=train_fraction,
            seed=seed,
            transforms=transform,
        )
        return _evenly(dataset, max_samples)

    train = {level: split('train', level) for level in (train_levels or levels)}
    test = {level: split('test', level) for level in (test_levels or levels)}
    first = next(iter(train.values()))
    channels = int(first[0]['image'].shape[0])
    if in_channels is not None and channels != in_channels:
        msg = (
            f'dataset={name!r} gives {channels} bands; the encoder expects '
            f'{in_channels} (in_channels)'
        )
        raise ValueError(msg)
    if normalize == 'dataset':
        mean, std = channel_stats(torch.utils.data.ConcatDataset(list(train.values())))
    elif normalize == 'imagenet':
        mean, std = (torch.tensor(v) for v in IMAGENET_STATS)
    else:
        mean, std = torch.zeros(channels), torch.ones(channels)
    return LevelSplits(train, test, len(cls.folders), mean, std, key)


def evaluate_scale_transfer(
    encoder: FeatureEncoder,
    splits: LevelSplits,
    classifier: Classifier = 'knn',
    k: int = 20,
    temperature: float = 0.07,
    epochs: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = 'cpu',
) -> list[dict[str, Any]]:
    """Top-1 accuracy of a classifier fit on each train level, on each test level.

    Every level's images are embedded once (at scale ratio 1: the level itself is
    the scale); then one classifier per train level is fit and applied to every
    test level.

    Args:
        encoder: Frozen encoder.
        splits: Per-level data from :func:`prepare_level_splits`.
        classifier: ``knn`` (weighted kNN votes) or ``linear`` (linear probe).
        k: kNN neighbours.
        temperature: kNN vote temperature.
        epochs: Linear-probe epochs.
        lr: Linear-probe learning rate.
        seed: Linear-probe seed.
        batch_size: Images per encoder batch.
        num_workers: Data loader workers.
        device: Device of the encoder.

    Returns:
        One row per (train level, test level): ``model``, ``dataset``,
        ``classifier``, ``train_level``, ``test_level``, ``same_level``, ``top1``,
        ``n_train``, ``n_test``.

    Raises:
        ValueError: If *classifier* is unknown.
    """
    if classifier not in ('knn', 'linear'):
        raise ValueError(f"classifier={classifier!r}; expected 'knn' or 'linear'")

    def embed(dataset: Any) -> tuple[Tensor, Tensor]:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        feats, labels = embed_at_scale(
            encoder, loader, 1.0, splits.mean, splits.std, device=device
        )
        assert labels is not None
        return feats, labels

    c = splits.num_classes
    train = {level: embed(ds) for level, ds in splits.train.items()}
    test = {level: embed(ds) for level, ds in splits.test.items()}
    rows = []
    for train_level, (bank, bank_labels) in train.items():
        probe = (
            train_linear_probe(bank, bank_labels, c, epochs, lr, seed=seed)
            if classifier == 'linear'
            else None
        )
        for test_level, (feats, labels) in test.items():
            if probe is not None:
                with torch.no_grad():
                    pred = probe(feats).argmax(dim=1)
            else:
                pred, _ = knn_predict(bank, bank_labels, feats, c, k, temperature)
            top1 = multiclass_accuracy(pred, labels, c, average='micro')
            rows.append(
                {
                    'model': encoder.name,
                    'dataset': splits.name,
                    'classifier': classifier,
                    'train_level': int(train_level),
                    'test_level': int(test_level),
                    'same_level': train_level == test_level,
                    'top1': float(top1),
                    'n_train': int(bank.shape[0]),
                    'n_test': int(feats.shape[0]),
                }
            )
    return rows


def transfer_matrix(
    rows: Sequence[dict[str, Any]], metric: str = 'top1'
) -> list[dict[str, Any]]:
    """The train-level x test-level table of *metric*, one row per train level.

    Args:
        rows: Rows of :func:`evaluate_scale_transfer`.
        metric: The value in each cell.

    Returns:
        Rows ``{'train level': i, 'test 1': ..., 'test 2': ...}``.
    """
    tests = sorted({int(r['test_level']) for r in rows})
    table: dict[int, dict[str, Any]] = {}
    for row in rows:
        level = int(row['train_level'])
        entry = table.setdefault(level, {'train level': level})
        entry[f'test {int(row["test_level"])}'] = float(row[metric])
    return [
        {
            'train level': level,
            **{f'test {t}': table[level].get(f'test {t}', math.nan) for t in tests},
        }
        for level in sorted(table)
    ]


def transfer_summary(
    rows: Sequence[dict[str, Any]], metric: str = 'top1'
) -> dict[str, float]:
    """Mean same-level and cross-level *metric*, and their gap.

    Args:
        rows: Rows of :func:`evaluate_scale_transfer`.
        metric: The value averaged.

    Returns:
        ``same_level`` (mean where train level == test level), ``cross_level``
        (mean elsewhere) and ``gap`` = same - cross (NaN where a part is empty).
    """
    same = [float(r[metric]) for r in rows if r['train_level'] == r['test_level']]
    cross = [float(r[metric]) for r in rows if r['train_level'] != r['test_level']]
    mean_same = sum(same) / len(same) if same else math.nan
    mean_cross = sum(cross) / len(cross) if cross else math.nan
    return {
        'same_level': mean_same,
        'cross_level': mean_cross,
        'gap': mean_same - mean_cross,
    }


def plot_transfer_matrix(
    rows: Sequence[dict[str, Any]], metric: str = 'top1', title: str | None = None
) -> Figure:
    """Heat map of *metric* by train level (rows) and test level (columns).

    Args:
        rows: Rows of :func:`evaluate_scale_transfer`.
        metric: The value shown.
        title: Figure title.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    matrix = transfer_matrix(rows, metric)
    tests = [key for key in matrix[0] if key != 'train level']
    values = [[float(row[t]) for t in tests] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * len(tests) + 2, 1.0 * len(matrix) + 1.5))
    image = ax.imshow(values, vmin=0, vmax=1, cmap='viridis')
    for i, line in enumerate(values):
        for j, value in enumerate(line):
            ax.text(
                j,
                i,
                f'{value:.2f}',
                ha='center',
                va='center',
                color='w' if value < 0.6 else 'k',
            )
    ax.set_xticks(range(len(tests)), [t.split()[1] for t in tests])
    ax.set_yticks(range(len(matrix)), [str(r['train level']) for r in matrix])
    ax.set_xlabel('test level')
    ax.set_ylabel('train level')
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    return fig


def run_scale_transfer(
    encoder: str | FeatureEncoder,
    dataset: str,
    root: str | os.PathLike[str],
    output: str | os.PathLike[str] = 'outputs/eval/scale_transfer',
    classifier: Classifier = 'knn',
    weights: str | None = None,
    train_levels: Sequence[int] | None = None,
    test_levels: Sequence[int] | None = None,
    pool: Literal['mean', 'cls'] = 'mean',
    normalize: str = 'dataset',
    max_samples: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    epochs: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = 'cpu',
    model_kwargs: dict[str, Any] | None = None,
    command: str = '',
) -> list[dict[str, Any]]:
    """Load an encoder and a levelled dataset, run the protocol, write the report.

    Writes ``<classifier>_scale_transfer_<dataset>.csv`` (one row per train x test
    level), ``.md`` (that table, the train x test matrix and the same-level /
    cross-level means with their gap) and ``.png`` (the matrix) into *output*.

    Args:
        encoder: Encoder name/file (see :func:`~.encoders.load_encoder`) or encoder.
        dataset: A key of :data:`LEVELLED_DATASETS`.
        root: Dataset root.
        output: Report folder.
        classifier: ``knn`` or ``linear``.
        weights: Weights entry or file.
        train_levels: Levels to fit on (default all).
        test_levels: Levels to test on (default all).
        pool: ``mean`` or ``cls`` feature.
        normalize: ``dataset``, ``imagenet`` or ``none``.
        max_samples: Cap on images per level and split.
        k: kNN neighbours.
        temperature: kNN vote temperature.
        epochs: Linear-probe epochs.
        lr: Linear-probe learning rate.
        seed: Linear-probe seed.
        batch_size: Images per batch.
        num_workers: Data loader workers.
        device: Device.
        model_kwargs: Extra encoder builder arguments.
        command: Command line recorded in the Markdown report.

    Returns:
        The result rows.
    """
    if not isinstance(encoder, FeatureEncoder):
        encoder = load_encoder(encoder, weights, pool, model_kwargs)
    splits = prepare_level_splits(
        dataset,
        root,
        encoder.img_size,
        encoder.in_chans,
        train_levels,
        test_levels,
        normalize,
        max_samples,
    )
    rows = evaluate_scale_transfer(
        encoder,
        splits,
        classifier,
        k,
        temperature,
        epochs,
        lr,
        seed,
        batch_size,
        num_workers,
        device,
    )
    summary = transfer_summary(rows)
    how = (
        f'kNN k={k}, T={temperature}'
        if classifier == 'knn'
        else f'linear probe {epochs} epochs, AdamW lr {lr}, seed {seed}'
    )
    notes = (
        f'Top-1 accuracy by train level (rows) and test level (columns):\n\n'
        f'{markdown_table(transfer_matrix(rows))}\n'
        f'Same-level mean {summary["same_level"]:.4f}, cross-level mean '
        f'{summary["cross_level"]:.4f}, **gap {summary["gap"]:.4f}** (0 = scale '
        f'invariant on this data). {how}, pool={pool}, normalize={normalize}; '
        f'classifiers fit on the train images of a level, tested on the test images.'
    )
    name = f'{classifier}_scale_transfer_{splits.name}'
    fig = plot_transfer_matrix(
        rows,
        title=f'{classifier} scale transfer on {splits.name} (gap {summary["gap"]:.3f})',
    )
    write_report(
        rows,
        output,
        name,
        f'Scale transfer ({classifier}): {splits.name}',
        fig,
        notes=notes,
        command=command,
    )
    return rows
