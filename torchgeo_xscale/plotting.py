"""Figures: reconstructions of both scale views, retrieval, loss curves, saved atomically."""

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


def display_limits(image: Tensor) -> tuple[Tensor, Tensor]:
    """The 2-98 % percentiles of each of the first three bands (or one).

    Args:
        image: ``(C, H, W)`` or ``(N, C, H, W)`` (percentiles over all images).

    Returns:
        ``lo`` and ``hi``, each ``(C', 1, 1)`` with ``C' = min(C, 3)``.
    """
    x = image.detach().float().cpu()
    x = x.unsqueeze(0) if x.ndim == 3 else x
    flat = x[:, :3].transpose(0, 1).reshape(min(x.shape[1], 3), -1)
    lo = torch.quantile(flat, 0.02, dim=1).view(-1, 1, 1)
    hi = torch.quantile(flat, 0.98, dim=1).view(-1, 1, 1)
    return lo, hi


def to_display(
    image: Tensor, limits: tuple[Tensor, Tensor] | None = None
) -> np.ndarray:
    """Turn a normalised ``(C, H, W)`` image into an RGB/grey array in [0, 1].

    Uses the first three bands (or one), each stretched to *limits* (default: its
    own 2-98 % percentiles, see :func:`display_limits`).

    Args:
        image: ``(C, H, W)``.
        limits: ``(lo, hi)`` per band, to show several images on one stretch.

    Returns:
        ``(H, W, 3)`` or ``(H, W)`` float array.
    """
    x = image[:3].detach().float().cpu()
    lo, hi = display_limits(x) if limits is None else limits
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    arr = x.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _unnormalise(target: Tensor, pred: Tensor, norm_pix: bool) -> Tensor:
    """Predictions in image units: per-patch ``pred * std + mean`` of the target."""
    if not norm_pix:
        return pred
    mean = target.mean(-1, keepdim=True)
    std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return pred * std + mean


def reconstruct(
    views: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Images of the masked input, the reconstruction and the prediction alone.

    With *norm_pix* the model predicts each patch normalised by its own mean and
    standard deviation (MAE's ``norm_pix_loss``); to show it in image units each
    predicted patch is given the mean and std of the true patch, as MAE's
    visualisation does: the colour and contrast of a masked patch then come from the
    data, its structure from the model.

    Args:
        views: ``(B, V, C, H, W)``.
        pred: ``(B, V, N, P*P*C)``.
        mask: ``(B, V, N)``, 1 = masked.
        patch_size: P.
        norm_pix: Predictions are in per-patch normalised units.

    Returns:
        ``masked`` (masked patches 0), ``recon`` (the prediction on the masked
        patches, the input pasted on the visible ones) and ``prediction`` (the
        prediction on every patch), each ``(B, V, C, H, W)``.
    """
    b, v, c, h, w = views.shape
    grid = (h // patch_size, w // patch_size)
    flat = views.reshape(b * v, c, h, w).float()
    target = patchify(flat, patch_size)
    p = _unnormalise(target, pred.reshape(b * v, *pred.shape[2:]).float(), norm_pix)
    m = mask.reshape(b * v, -1, 1).float()
    masked = unpatchify(target * (1 - m), patch_size, c, grid)
    recon = unpatchify(target * (1 - m) + p * m, patch_size, c, grid)
    prediction = unpatchify(p, patch_size, c, grid)
    shape = (b, v, c, h, w)
    return masked.reshape(shape), recon.reshape(shape), prediction.reshape(shape)


#: Grey level of masked patches in the ``masked`` panels.
MASKED_GREY = 0.85


def plot_reconstruction(
    views: Tensor,
    pred: Tensor,
    mask: Tensor,
    patch_size: int,
    gsd: Tensor | None = None,
    norm_pix: bool = False,
    max_samples: int = 4,
    title: str | None = None,
) -> Figure:
    """Input / masked / reconstruction / prediction for each view of a few samples.

    The *reconstruction* panel pastes the visible input patches next to the
    predicted masked ones (MAE's demo); the *prediction* panel shows the decoder's
    output on every patch, visible ones included (only masked patches are trained).
    Every panel shares one colour stretch, the 2-98 % percentiles of all the inputs
    shown (per-tile stretches turn a near-uniform tile, a lake, into amplified
    noise and make tiles incomparable); masked patches are light grey in the masked
    panel. With *norm_pix* see :func:`reconstruct`.

    Args:
        views: ``(B, V, C, H, W)``.
        pred: ``(B, V, N, P*P*C)``.
        mask: ``(B, V, N)``.
        patch_size: P.
        gsd: Optional GSD per view ``(B, V)`` for the titles.
        norm_pix: Predictions are per-patch normalised.
        max_samples: Rows of samples shown.
        title: Figure title.

    Returns:
        The figure.
    """
    masked, recon, prediction = reconstruct(views, pred, mask, patch_size, norm_pix)
    b = min(views.shape[0], max_samples)
    v = views.shape[1]
    n = 4
    fig, axes = plt.subplots(b, n * v, figsize=(1.9 * n * v, 1.9 * b), squeeze=False)
    limits = display_limits(views[:b].flatten(0, 1))
    labels = ('masked', 'reconstruction', 'prediction')
    if norm_pix:
        labels = ('masked', 'reconstruction*', 'prediction*')
    for i in range(b):
        for j in range(v):
            name = 'full' if j == 0 else 'low'
            label = f'{name} view'
            if gsd is not None:
                label += f' {float(gsd[i, j]):.3g} m'
            hidden = mask[i, j].detach().float().cpu()
            side = views.shape[-1] // patch_size
            hidden_px = (
                hidden.view(-1, side)
                .repeat_interleave(patch_size, 0)
                .repeat_interleave(patch_size, 1)
                .numpy()
                > 0.5
            )
            panels = (views[i, j], masked[i, j], recon[i, j], prediction[i, j])
            for k, (img, text) in enumerate(zip(panels, (label, *labels))):
                arr = to_display(img, limits)
                if k == 1:
                    arr = arr.copy()
                    arr[hidden_px] = MASKED_GREY
                ax = axes[i, n * j + k]
                ax.imshow(arr, cmap='gray', vmin=0, vmax=1)
                ax.set_axis_off()
                if i == 0 or k == 0:
                    ax.set_title(text, fontsize=8)
    if title or norm_pix:
        note = (
            '* norm_pix: each predicted patch shown with the mean and std of the true '
            'patch (as MAE shows it)'
            if norm_pix
            else ''
        )
        fig.suptitle('\n'.join(t for t in (title, note) if t), fontsize=9)
    fig.tight_layout()
    return fig


def mosaic(
    tiles: Tensor, rows: Sequence[int], cols: Sequence[int], fill: float = 0.0
) -> Tensor:
    """Place square tiles on a grid: tile *i* at grid cell ``(rows[i], cols[i])``.

    Args:
        tiles: ``(N, C, T, T)``.
        rows: Grid row of each tile.
        cols: Grid column of each tile.
        fill: Value of the cells no tile covers.

    Returns:
        ``(C, (max(rows) + 1) * T, (max(cols) + 1) * T)``.
    """
    n, c, t, _ = tiles.shape
    out = tiles.new_full((c, (max(rows) + 1) * t, (max(cols) + 1) * t), fill)
    for i in range(n):
        r, k = rows[i] * t, cols[i] * t
        out[:, r : r + t, k : k + t] = tiles[i]
    return out


def plot_scene_reconstruction(
    scenes: Sequence[tuple[str, Sequence[tuple[str, Tensor]], Tensor | None]],
    title: str | None = None,
    height: float = 7.0,
) -> Figure:
    """Whole-scene mosaics side by side, scene after scene, all one height.

    Each scene's panels share its first panel's colour stretch (scenes differ in
    brightness, so each gets its own).

    Args:
        scenes: ``(name, panels, hidden)`` per scene: *panels* ``(label, image
            (C, H, W))`` (e.g. input, masked, reconstruction, baseline), all one
            size; *hidden* an optional ``(H, W)`` boolean of pixels shown light grey
            in the second panel (the masked patches); *name* heads the panels
            (may be empty).
        title: Figure title.
        height: Height of the panels in inches.

    Returns:
        The figure.
    """
    ratios = [
        float(image.shape[-1] / image.shape[-2])
        for _, panels, _ in scenes
        for _, image in panels
    ]
    fig, axes = plt.subplots(
        1,
        len(ratios),
        figsize=(height * sum(ratios) + 0.3 * len(ratios), height + 1.0),
        squeeze=False,
        gridspec_kw={'width_ratios': ratios},
        layout='constrained',
    )
    k = 0
    for name, panels, hidden in scenes:
        limits = display_limits(panels[0][1])
        for j, (label, image) in enumerate(panels):
            arr = to_display(image, limits)
            if j == 1 and hidden is not None:
                arr = arr.copy()
                arr[hidden.cpu().numpy()] = MASKED_GREY
            ax = axes[0, k]
            ax.imshow(arr, cmap='gray', vmin=0, vmax=1)
            ax.set_axis_off()
            ax.set_title(f'{name}\n{label}' if name and j == 0 else label, fontsize=8)
            k += 1
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_retrieval(
    queries: Tensor,
    keys: Tensor,
    ranked: Sequence[tuple[str, Tensor]],
    rows: Sequence[int],
    title: str = '',
) -> Figure:
    """Query tiles and the tiles each encoder retrieves for them, best first.

    Args:
        queries: Query images ``(N, C, H, W)`` as the encoders saw them.
        keys: Key images ``(N, C, H, W)``; key i is query i's own tile.
        ranked: ``(label, top_k)`` per encoder, *top_k* ``(N, k)`` key indices
            by decreasing similarity (:func:`~torchgeo_xscale.evaluation.retrieval.retrieval_topk`).
        rows: Indices of the queries shown.
        title: Figure title.

    Returns:
        The figure; retrieved tiles that are the query's own tile have a green
        frame, the others a thin red one.
    """
    k = max(int(top.shape[1]) for _, top in ranked)
    cols = 1 + len(ranked) * k
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.5 * cols, 1.6 * len(rows)), squeeze=False
    )
    limits = display_limits(keys)
    for r, q in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(to_display(queries[q], limits))
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f'tile {q}', fontsize=8)
        if r == 0:
            ax.set_title('query', fontsize=8)
        for e, (label, top) in enumerate(ranked):
            for j in range(k):
                ax = axes[r, 1 + e * k + j]
                idx = int(top[q, j])
                ax.imshow(to_display(keys[idx], limits))
                ax.set_xticks([]), ax.set_yticks([])
                hit = idx == q
                for spine in ax.spines.values():
                    spine.set_edgecolor('limegreen' if hit else 'red')
                    spine.set_linewidth(3.5 if hit else 0.8)
                if r == 0:
                    ax.set_title(f'{label} #{j + 1}', fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
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
