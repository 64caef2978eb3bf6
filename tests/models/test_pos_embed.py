"""Fixed sin-cos positional embeddings are buffers: freeze semantics, any grid, timm."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.optim import param_groups_weight_decay
from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_with_resolution
from torchgeo.tasks import SemanticSegmentation

from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.pos_embed import fit_pos_embed, is_sincos, sincos_pos_embed
from torchgeo_xscale.models.segmentation import register_encoder
from torchgeo_xscale.models.vit import build_vit

SMALL = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)


def mae_sincos_rect(dim: int, rows: int, cols: int) -> torch.Tensor:
    """MAE's numpy formula on a rows x cols grid (``np.meshgrid(grid_w, grid_h)``)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows))).astype(np.float32)
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros([1, dim]), emb])).float()[None]


def test_sincos_any_grid_is_maes_and_torchgeos() -> None:
    square = get_2d_sincos_pos_embed_with_resolution(
        64, 7, torch.ones(1), cls_token=True
    )
    assert torch.equal(sincos_pos_embed(64, 7), square)
    res = torch.tensor([0.5, 2.0])
    scaled = get_2d_sincos_pos_embed_with_resolution(64, 7, res, cls_token=True)
    assert torch.equal(sincos_pos_embed(64, 7, res), scaled)
    assert torch.allclose(
        sincos_pos_embed(64, (3, 5)), mae_sincos_rect(64, 3, 5), atol=1e-6
    )
    assert is_sincos(sincos_pos_embed(32, (3, 5)), (3, 5))
    assert not is_sincos(torch.randn(1, 16, 32))


def test_pos_embed_is_a_buffer_with_the_same_key() -> None:
    vit = build_vit('tiny', img_size=(32, 48), **SMALL)
    assert 'pos_embed' not in dict(vit.named_parameters())
    assert 'pos_embed' in dict(vit.named_buffers()) and 'pos_embed' in vit.state_dict()
    assert torch.equal(vit.pos_embed, sincos_pos_embed(32, (4, 6)))  # non-square grid
    # timm's own ViT loads our state dict, and ours loads timm's
    theirs = timm.create_model(
        'vit_base_patch16_224', img_size=(32, 48), num_classes=0, **SMALL
    )
    theirs.load_state_dict(vit.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.allclose(
            theirs.eval().forward_features(x), vit.eval().forward_features(x), atol=1e-5
        )
    vit.load_state_dict(theirs.state_dict(), strict=True)
    decoder = CrossScaleMAE(img_size=32, **{**SMALL, 'depth': 1}, decoder_depth=1)
    assert 'decoder_pos_embed' in dict(decoder.named_buffers())
    assert 'decoder_pos_embed' in decoder.state_dict()
    assert not any('pos_embed' in n for n, _ in decoder.named_parameters())
    learned = build_vit('tiny', img_size=32, pos_embed='learn', **SMALL)
    assert dict(learned.named_parameters())['pos_embed'].requires_grad


def test_smp_freeze_and_unfreeze_leave_it_fixed() -> None:
    model = smp.UPerNet(
        encoder_name=register_encoder(
            'xscale_vit_pe',
            'tiny',
            img_size=32,
            **{'patch_size': 8, 'embed_dim': 32, 'vit_depth': 1, 'num_heads': 2},
        ),
        encoder_weights=None,
        classes=3,
        decoder_channels=16,
    )
    encoder = model.encoder
    model.freeze_encoder()
    assert not any(p.requires_grad for p in encoder.parameters())
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in encoder.parameters())
    assert 'pos_embed' not in dict(encoder.named_parameters())  # never trainable
    assert torch.equal(encoder.pos_embed, sincos_pos_embed(32, 4))


def test_torchgeo_freeze_backbone_and_decoder() -> None:
    backbone = register_encoder(
        'xscale_vit_pe_tg',
        'tiny',
        img_size=32,
        patch_size=8,
        embed_dim=32,
        vit_depth=1,
        num_heads=2,
    )
    args = dict(model='upernet', backbone=backbone, num_classes=3, in_channels=3)
    task = SemanticSegmentation(**args, freeze_decoder=True)
    assert all(p.requires_grad for p in task.model.encoder.parameters())
    assert not any(p.requires_grad for p in task.model.decoder.parameters())
    task = SemanticSegmentation(**args, freeze_backbone=True)
    assert not any(p.requires_grad for p in task.model.encoder.parameters())
    assert all(p.requires_grad for p in task.model.decoder.parameters())


def test_timm_internals_that_touch_pos_embed() -> None:
    vit = build_vit('tiny', img_size=32, **SMALL)
    assert 'pos_embed' in vit.no_weight_decay()
    groups = param_groups_weight_decay(vit, 0.05, vit.no_weight_decay())
    assert sum(len(g['params']) for g in groups) == len(list(vit.parameters()))
    vit.set_input_size((48, 64))
    assert 'pos_embed' in dict(vit.named_buffers())
    assert torch.equal(vit.pos_embed, sincos_pos_embed(32, (6, 8)))
    assert vit.forward_features(torch.randn(1, 3, 48, 64)).shape == (1, 49, 32)
    vit.init_weights()  # timm re-initialises parameters; the fixed embedding stays
    assert torch.equal(vit.pos_embed, sincos_pos_embed(32, (6, 8)))
    resampled = resample_abs_pos_embed(vit.pos_embed, [3, 4], [6, 8])
    assert resampled.shape == (1, 13, 32)
    # dynamic_img_size: the exact embedding for every input grid
    dynamic = build_vit('tiny', img_size=32, dynamic_img_size=True, **SMALL).eval()
    fixed = build_vit('tiny', img_size=(40, 24), **SMALL).eval()
    fixed.load_state_dict(
        {**dynamic.state_dict(), 'pos_embed': fixed.pos_embed}, strict=True
    )
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        out = dynamic.forward_features(x)
        assert torch.allclose(out, fixed.forward_features(x), atol=1e-6)
        inter = dynamic.forward_intermediates(x, indices=1, intermediates_only=True)
        assert inter[0].shape == (2, 32, 5, 3)


def test_fit_pos_embed_regenerates_sincos_and_resamples_learned() -> None:
    pe = sincos_pos_embed(32, 4)
    assert torch.equal(fit_pos_embed(pe, (6, 3)), sincos_pos_embed(32, (6, 3)))
    assert fit_pos_embed(pe, (4, 4)) is pe
    learned = torch.randn(1, 17, 32)
    out = fit_pos_embed(learned, (3, 5))
    assert out.shape == (1, 16, 32)
    ref = resample_abs_pos_embed(learned, [3, 5], [4, 4], num_prefix_tokens=1)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="pos_embed='gsd'"):
        build_vit('tiny', img_size=32, pos_embed='gsd', **SMALL)
