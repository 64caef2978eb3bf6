"""Multi-scale reconstruction (evaluation/reconstruction.py): metrics, models, determinism."""

import pytest
import torch

from torchgeo_xscale.evaluation import (
    MAEReconstructor,
    evaluate_reconstruction,
    load_reconstructor,
    reconstruction_metrics,
)
from torchgeo_xscale.masks import mask_from_scores


def test_reconstruction_metrics_perfect_and_wrong() -> None:
    images = torch.rand(2, 3, 32, 32)
    from torchgeo_xscale.losses import patchify

    mask = mask_from_scores(torch.rand(2, 16), 4).mask
    mse, ssim, recon = reconstruction_metrics(images, patchify(images, 8), mask, 8)
    assert torch.allclose(mse, torch.zeros(2)) and torch.allclose(
        ssim, torch.ones(2), atol=1e-4
    )
    assert torch.equal(recon, images)
    mse, ssim, _ = reconstruction_metrics(images, torch.zeros(2, 16, 192), mask, 8)
    assert (mse > 0).all() and (ssim < 0.9).all()


def test_reconstructors_agree_with_the_models(trained) -> None:
    images = torch.randn(2, 3, 32, 32)
    masks = mask_from_scores(
        torch.rand(2, 16, generator=torch.Generator().manual_seed(0)), 4
    )
    ours = load_reconstructor(str(trained['cross_scale_mae']))
    model = trained['cross_scale_mae_task'].model
    with torch.no_grad():
        expected = model.decoder_pred(
            model.forward_decoder(model.forward_encoder(images, masks), masks)
        )
    assert torch.allclose(ours(images, masks), expected, atol=1e-5)
    peer = load_reconstructor(str(trained['torchgeo_mae']))
    task = trained['torchgeo_mae_task']
    masked = masks.mask.bool()
    idx_mask = torch.stack([torch.nonzero(m).squeeze(1) for m in masked]) + 1
    keep = torch.cat([torch.zeros(2, 1, dtype=torch.long), masks.ids_keep + 1], 1)
    with torch.no_grad():
        direct = task(images, keep, idx_mask)
    pred = peer(images, masks)
    assert torch.allclose(pred[masked].view(2, -1, 192), direct, atol=1e-5)
    assert (pred[~masked] == 0).all()
    with pytest.raises(TypeError, match='not a CrossScaleMAE'):
        MAEReconstructor(torch.nn.Linear(2, 2))


def test_evaluate_reconstruction_is_deterministic(trained) -> None:
    ours = MAEReconstructor(trained['cross_scale_mae_task'], 'ours')
    peer = MAEReconstructor(trained['torchgeo_mae_task'], 'peer')
    tiles = torch.randn(5, 3, 48, 48)
    from torchgeo_xscale.evaluation.datasets import TileSet

    tileset = TileSet(
        tiles,
        torch.ones(5, 1, 48, 48, dtype=torch.bool),
        torch.full((5,), 10.0),
        [(0, 0, 1, 1)] * 5,
    )
    models = [ours, peer]
    rows, examples = evaluate_reconstruction(
        models, tileset, (0.25, 1.0), repeats=2, batch_size=3
    )
    again, _ = evaluate_reconstruction(
        models, tileset, (0.25, 1.0), repeats=2, batch_size=3
    )
    assert rows == again and len(rows) == 4 and all(r['n'] == 10 for r in rows)
    assert set(examples) == {'ours', 'peer'}
    assert examples['ours'][0.25].shape == (3, 3, 32, 32)
    # both models saw the same crop and the same mask
    assert torch.equal(examples['ours'][1.0][1], examples['peer'][1.0][1])
    crop, crop_examples = evaluate_reconstruction(
        [ours], tileset, (0.25,), repeats=1, mode='crop'
    )
    assert crop[0]['mode'] == 'crop' and crop[0]['n'] == 5
    # a 25 % crop zoomed to 32 px is another image than the same-footprint 25 % view
    assert not torch.equal(crop_examples['ours'][0.25][0], examples['ours'][0.25][0])
    with pytest.raises(ValueError, match='mode'):
        evaluate_reconstruction([ours], tileset, mode='zoom')  # type: ignore[arg-type]
