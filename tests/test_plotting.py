"""Reconstruction and retrieval figures: what the panels show is what was predicted."""

from pathlib import Path

import numpy as np
import pytest
import torch

from torchgeo_xscale.losses import patchify
from torchgeo_xscale.plotting import (
    mosaic,
    plot_reconstruction,
    plot_retrieval,
    plot_scene_reconstruction,
    reconstruct,
    save_figure,
)


def test_norm_pix_predictions_are_shown_in_image_units() -> None:
    """A perfect ``norm_pix_loss`` prediction shows the input itself; the prediction
    panel covers every patch, the reconstruction pastes the visible ones."""
    torch.manual_seed(0)
    views = torch.randn(2, 2, 3, 16, 16)
    target = patchify(views.flatten(0, 1), 8)
    mean = target.mean(-1, keepdim=True)
    std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = ((target - mean) / std).view(2, 2, 4, -1)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(2, 2, 4)
    masked, recon, prediction = reconstruct(views, pred, mask, 8, norm_pix=True)
    torch.testing.assert_close(recon, views, atol=1e-4, rtol=0)
    torch.testing.assert_close(prediction, views, atol=1e-4, rtol=0)
    assert masked[..., :8, :8].abs().max() == 0  # patch 0 is masked
    torch.testing.assert_close(masked[..., :8, 8:], views[..., :8, 8:])
    # without norm_pix the same numbers are shown as they are (normalised)
    _, raw, _ = reconstruct(views, pred, mask, 8, norm_pix=False)
    assert not torch.allclose(raw, views, atol=1e-2)
    fig = plot_reconstruction(views, pred, mask, 8, norm_pix=True, title='t')
    assert len(fig.axes) == 2 * 2 * 4
    assert fig.axes[3].get_title() == 'prediction*'


def test_plot_reconstruction_shows_every_tile_on_one_stretch() -> None:
    """A near-uniform tile (a lake) stays near-uniform next to a contrasted one,
    instead of having its noise stretched to the full range."""
    torch.manual_seed(0)
    views = torch.randn(2, 2, 3, 16, 16)
    views[0] = 0.2 + 0.01 * torch.randn(2, 3, 16, 16)  # the lake
    pred = torch.zeros(2, 2, 4, 8 * 8 * 3)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(2, 2, 4)
    fig = plot_reconstruction(views, pred, mask, 8)
    lake, land = fig.axes[0].images[0].get_array(), fig.axes[8].images[0].get_array()
    assert float(np.ptp(lake)) < 0.1
    assert float(np.ptp(land)) > 0.9


def test_plot_retrieval_frames_the_own_tile() -> None:
    images = torch.rand(4, 3, 8, 8)
    top = torch.tensor([[0, 1], [2, 1], [2, 3], [3, 0]])
    fig = plot_retrieval(images, images, [('a', top), ('b', top)], rows=[0, 1])
    axes = fig.axes
    assert len(axes) == 2 * 5
    hit, miss = axes[1], axes[6]  # row 0 'a' #1 is tile 0; row 1 'a' #1 is tile 2
    assert hit.spines['top'].get_edgecolor()[:3] == (
        0.19607843137254902,
        0.803921568627451,
        0.19607843137254902,
    )
    assert miss.spines['top'].get_linewidth() < hit.spines['top'].get_linewidth()


def test_mosaic_places_tiles_and_scene_figure_saves(tmp_path: Path) -> None:
    tiles = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 2, 4, 4)
    out = mosaic(tiles, rows=[0, 1, 1], cols=[1, 0, 1], fill=-1.0)
    assert out.shape == (2, 8, 8)
    assert (out[:, :4, :4] == -1).all()  # no tile at (0, 0)
    assert (out[:, :4, 4:] == 0).all() and (out[:, 4:, :4] == 1).all()
    assert (out[:, 4:, 4:] == 2).all()
    hidden = torch.zeros(8, 8, dtype=torch.bool)
    hidden[:4] = True
    image, strip = torch.randn(3, 8, 8), torch.randn(3, 16, 4)
    fig = plot_scene_reconstruction(
        [
            ('26 m', [('a', image), ('b', image)], hidden),
            ('146 m', [('a', strip), ('b', strip)], None),
        ],
        'title',
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ['26 m\na', 'b', '146 m\na', 'b']
    # scenes of different shapes are shown at one height, in proportion
    widths = [ax.get_position().width for ax in axes]
    assert widths[0] == pytest.approx(4 * widths[2], rel=0.05)
    assert np.allclose(axes[1].images[0].get_array()[:4], 0.85)  # masked: grey
    path = save_figure(fig, tmp_path / 'scene.png')
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
