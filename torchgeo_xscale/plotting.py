"""Figures: reconstructions of both scale views and loss curves, saved atomically."""

import csv
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .io import atomic_path
from .losses import patchify, unpatchify


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> str:
    """Save *fig* as PNG under a temporary name, then rename it into place.

    Args:
        fig: The figure (closed afterwards).
        path: Destination file.
        dpi: Resolution.

    Returns:
        The destination path.
    """
    path = os.fspath(path)
    try:
        with atomic_path(path, suffix='.png') as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches='tight', format='png')
    finally:
        plt.close(fig)
    return path


def to_display(image: Tensor) -> np.ndarray:
    """Turn a normalised ``(C, H, W)`` image into an RGB/grey array in [0, 1].

    Uses the first three bands (or one), each stretched to its 2-98 % percentiles.

    Args:
        image: ``(C, H, W)``.

    Returns:
        ``(H, W, 3)`` or ``(H, W)`` float array.
    """
    x = image[:3].detach().float().cpu()
    flat = x.reshape(x.shape[0], -1)
    lo = torch.quantile(flat, 0.02, dim=1).view(-1, 1, 1)
    hi = torch.quantile(flat, 0.98, dim=1).view(-1, 1, 1)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    arr = x.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def reconstruct(
    views: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix: bool = False
) -> tuple[Tensor, Tensor]:
    """Images of the masked input and of the reconstruction (visible patches pasted).

    Args:
        views: ``(B, V, C, H, W)``.
        pred: ``(B, V, N, P*P*C)``.
        mask: ``(B, V, N)``, 1 = masked.
        patch_size: P.
        norm_pix: Predictions are in per-patch normalised units.

    Returns:
        ``masked`` and ``recon``, both ``(B, V, C, H, W)``.
    """
    b, v, c, h, w = views.shape
    grid = (h // patch_size, w // patch_size)
    flat = views.reshape(b * v, c, h, w).float()
    target = patchify(flat, patch_size)
    p = pred.reshape(b * v, *pred.shape[2:]).float()
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
        p = p * std + mean
    m = mask.reshape(b * v, -1, 1).float()
    masked = unpatchify(target * (1 - m), patch_size, c, grid)
    recon = unpatchify(target * (1 - m) + p * m, patch_size, c, grid)
    return masked.reshape(b, v, c, h, w), recon.reshape(b, v, c, h, w)


def plot_reconstruction(
    views: Tensor,
    pred: Tensor,
    mask: Tensor,
    patch_size: int,
    gsd: Tensor | None = None,
    norm_pix: bool = False,
    max_samples: int = 4,
) -> Figure:
    """Grid of input / masked / reconstruction for each view of a few samples.

    Args:
        views: ``(B, V, C, H, W)``.
        pred: ``(B, V, N, P*P*C)``.
        mask: ``(B, V, N)``.
        patch_size: P.
        gsd: Optional GSD per view ``(B, V)`` for the titles.
        norm_pix: Predictions are per-patch normalised.
        max_samples: Rows of samples shown.

    Returns:
        The figure.
    """
    masked, recon = reconstruct(views, pred, mask, patch_size, norm_pix)
    b = min(views.shape[0], max_samples)
    v = views.shape[1]
    fig, axes = plt.subplots(b, 3 * v, figsize=(2.2 * 3 * v, 2.2 * b), squeeze=False)
    for i in range(b):
        for j in range(v):
            name = 'full' if j == 0 else 'low'
            title = f'{name} view'
            if gsd is not None:
                title += f' {float(gsd[i, j]):.3g} m'
            panels = (views[i, j], masked[i, j], recon[i, j])
            labels = (title, 'masked', 'reconstruction')
            for k, (img, label) in enumerate(zip(panels, labels)):
                ax = axes[i, 3 * j + k]
                ax.imshow(to_display(img), cmap='gray')
                ax.set_axis_off()
                if i == 0 or k == 0:
                    ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return fig


def read_metrics(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into ``{name: [(step, value)]}``.

    Args:
        path: The CSV file.

    Returns:
        Series per column (empty cells skipped).
    """
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            step = int(float(row.get('step') or 0))
            for key, value in row.items():
                if key in ('step', 'epoch') or value in ('', None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_loss_curves(
    metrics: dict[str, list[tuple[int, float]]], keys: Sequence[str]
) -> Figure:
    """Plot loss series against step.

    Args:
        metrics: As returned by :func:`read_metrics`.
        keys: Which series to draw (missing ones are skipped).

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        if key in metrics:
            steps, values = zip(*metrics[key])
            ax.plot(steps, values, label=key)
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
