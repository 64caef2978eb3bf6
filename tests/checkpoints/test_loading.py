"""The one loading path (``checkpoints.loading``): resolve + load_into, used everywhere."""

from pathlib import Path

import pytest
import timm
import torch
from authors_checkpoints import (
    official_state_dict,
    reference_features,
    relative_error,
    write_official,
)
from timm.models import adapt_input_conv
from torch import nn

from torchgeo_xscale.checkpoints import (
    ResolvedWeights,
    WeightsMismatchError,
    load_cross_scale_mae,
    load_into,
    resolve,
)
from torchgeo_xscale.evaluation.encoders import load_encoder
from torchgeo_xscale.models.vit import build_vit, sincos_pos_embed
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.tasks.segmentation import XScaleSegmentationTask

VARIANT = 'official-xformers-post'
DIMS = {'embed_dim': 32, 'depth': 2, 'num_heads': 2}


@pytest.fixture
def authors_file(tmp_path: Path) -> tuple[Path, dict]:
    """A small network in the authors' released layout and file structure."""
    sd = official_state_dict(
        (32, 2, 2), VARIANT, seed=5, img_size=32, patch_size=8, decoder=(16, 1, 2)
    )
    return write_official(tmp_path / 'checkpoint-399.pth', sd, VARIANT), sd


def test_task_segmentation_and_eval_load_one_file_identically(
    authors_file: tuple[Path, dict],
) -> None:
    path, sd = authors_file
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pretrain = CrossScaleMAETask(
        size='tiny', img_size=32, patch_size=8, **DIMS, weights=str(path)
    )
    segment = XScaleSegmentationTask(
        backbone='xscale_vit_tiny',
        backbone_options={
            'img_size': 32,
            'patch_size': 8,
            'vit_depth': 2,
            **{k: v for k, v in DIMS.items() if k != 'depth'},
        },
        weights=str(path),
        num_classes=3,
        decoder_channels=16,
    )
    evaluate = load_encoder(str(path), model_kwargs={'num_heads': 2})
    encoders = [pretrain.model.encoder, segment.model.encoder, evaluate.model]
    with torch.no_grad():
        ref = reference_features(sd, x, VARIANT, heads=2)
        features = [e.eval().forward_features(x) for e in encoders]
        pooled = evaluate(x)
    for out in features:
        assert torch.equal(out, features[0])
        assert relative_error(out, ref) <= 1e-5
    assert torch.allclose(pooled, ref[:, 1:].mean(1), atol=1e-5)
    # the pyramid's stride-32 level: the last block's tokens (no final norm), pooled
    with torch.no_grad():
        level = segment.model.encoder(x)[5]
    tokens = ref[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    assert torch.allclose(level, nn.functional.max_pool2d(tokens, 4), atol=1e-5)


def test_mismatch_is_one_error_listing_keys_and_shapes(tmp_path: Path) -> None:
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    sd = vit.state_dict()
    sd['blocks.0.mlp.fc1.weight'] = torch.zeros(64, 32)
    del sd['blocks.1.attn.proj.bias']
    sd['extra.weight'] = torch.zeros(1)
    other = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    )
    with pytest.raises(WeightsMismatchError) as err:
        load_into(other, sd, source='mine.pth')
    msg = str(err.value)
    assert '\n' not in msg and msg.startswith('weights mine.pth')
    assert (
        '1 shape mismatches [blocks.0.mlp.fc1.weight has shape (64, 32), the model (128, 32)]'
        in msg
    )
    assert '1 missing keys [blocks.1.attn.proj.bias]' in msg
    assert '1 unexpected keys [extra.weight]' in msg


def test_bands_grid_and_learned_embeddings_are_fitted() -> None:
    torch.manual_seed(0)
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    sd = vit.state_dict()
    wide = build_vit(
        'tiny',
        img_size=48,
        in_chans=5,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    load_into(wide, sd)
    w = sd['patch_embed.proj.weight']
    assert torch.equal(wide.patch_embed.proj.weight, adapt_input_conv(5, w))
    assert torch.equal(wide.pos_embed, sincos_pos_embed(32, 6))  # regenerated
    learned = {**sd, 'pos_embed': torch.randn(1, 17, 32)}
    other = build_vit(
        'tiny', img_size=48, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    load_into(other, learned)
    assert dict(other.named_parameters())['pos_embed'].shape == (1, 37, 32)
    assert not other.fixed_pos_embed  # a learned embedding stays trainable


def test_post_norm_weights_need_our_blocks(authors_file: tuple[Path, dict]) -> None:
    path, _ = authors_file
    resolved = resolve(path)
    assert resolve(resolved) is resolved and isinstance(resolved, ResolvedWeights)
    theirs = timm.create_model(
        'vit_base_patch16_224', img_size=32, patch_size=8, num_classes=0, **DIMS
    )
    with pytest.raises(
        WeightsMismatchError, match=r'post-norm weights .* its blocks are pre-norm'
    ):
        load_into(theirs, *resolved)
    with pytest.raises(WeightsMismatchError, match='post-norm'):
        load_encoder(
            'vit_base_patch16_224',
            str(path),
            model_kwargs={'img_size': 32, 'patch_size': 8, **DIMS},
        )
    plain = resolve(path).metadata | {'residual_norm_style': 'pre'}
    load_into(theirs, resolved.state_dict, plain)
    assert isinstance(theirs.norm, nn.Identity)  # their weights have no final norm


def test_checkpoints_of_our_tasks_keep_what_the_encoder_computes(
    tmp_path: Path, authors_file: tuple[Path, dict]
) -> None:
    """Started from the authors' weights: post-norm, no final norm, after a reload."""
    path, sd = authors_file
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = reference_features(sd, x, VARIANT, heads=2)
    options = {'img_size': 32, 'patch_size': 8, 'vit_depth': 2, 'embed_dim': 32}
    seg = dict(backbone='xscale_vit_tiny', num_classes=3, decoder_channels=16)
    task = XScaleSegmentationTask(
        **seg, backbone_options={**options, 'num_heads': 2}, weights=str(path)
    )
    ckpt: dict = {'state_dict': task.state_dict()}
    task.on_save_checkpoint(ckpt)
    fresh = XScaleSegmentationTask(**seg, backbone_options={**options, 'num_heads': 2})
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt['state_dict'])  # strict: no final norm expected
    with torch.no_grad():
        out = fresh.model.encoder.eval().forward_features(x)
    assert relative_error(out, ref) <= 1e-5
    pretrain = CrossScaleMAETask(
        size='tiny', img_size=32, patch_size=8, **DIMS, weights=str(path)
    )
    ckpt = {'state_dict': pretrain.state_dict(), 'hyper_parameters': pretrain.hparams}
    pretrain.on_save_checkpoint(ckpt)
    with torch.no_grad():
        out = load_cross_scale_mae(ckpt).encoder.forward_features(x)
    assert relative_error(out, ref) <= 1e-5
    torch.save(
        {**ckpt, 'hyper_parameters': dict(pretrain.hparams)}, tmp_path / 'p.ckpt'
    )
    metadata = resolve(tmp_path / 'p.ckpt').metadata
    assert metadata['residual_norm_style'] == 'post' and not metadata['final_norm']
