"""Reconstruction and retrieval figures: what the panels show is what was predicted."""

from pathlib import Path

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
    image = torch.randn(3, 8, 8)
    fig = plot_scene_reconstruction([('a', image), ('b', image)], hidden, 'title')
    path = save_figure(fig, tmp_path / 'scene.png')
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
