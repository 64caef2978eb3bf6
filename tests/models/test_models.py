import pytest
import timm
import torch
from conftest import TINY_MODEL

from torchgeo_xscale.masks import (
    build_mask_strategy,
    list_mask_strategies,
    num_visible,
    random_masking,
)
from torchgeo_xscale.models import (
    CrossScaleMAE,
    CrossScaleViT,
    build_attention,
    build_vit,
    list_attention_backends,
)
from torchgeo_xscale.models.pos_embed import fit_pos_embed

TINY = {**TINY_MODEL, 'depth': 2}


def views(b: int = 3, c: int = 3) -> torch.Tensor:
    return torch.randn(b, 2, c, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large'])
def test_vit_state_dict_loads_into_timm(size: str) -> None:
    name = {
        'tiny': 'vit_tiny_patch16_224',
        'small': 'vit_small_patch16_224',
        'base': 'vit_base_patch16_224',
        'large': 'vit_large_patch16_224',
    }[size]
    ours = build_vit(size, img_size=32, patch_size=16, depth=1)
    ref = timm.create_model(name, img_size=32, depth=1, num_classes=0, pretrained=False)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(ours.forward_features(x), ref.forward_features(x), atol=1e-5)
    assert ours.num_features == ref.num_features
    assert ours(x).shape == (1, ref.num_features)


def test_vit_bad_size() -> None:
    with pytest.raises(ValueError, match='huge'):
        build_vit('huge')


def test_vit_any_in_chans_and_masked_pass() -> None:
    vit = build_vit(
        'tiny',
        img_size=32,
        patch_size=8,
        in_chans=5,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    x = torch.randn(2, 5, 32, 32)
    ids = torch.tensor([[0, 5, 9], [1, 2, 15]])
    out = vit.forward_encoder(x, ids)
    assert out.shape == (2, 4, 32)
    # a masked pass over a subset equals a full pass that has no token mixing
    # beyond the kept tokens: check against gathering by hand the patch embeddings
    full = vit.forward_encoder(x, torch.arange(16).expand(2, -1))
    assert torch.allclose(full, vit.forward_features(x))


def test_fit_pos_embed_to_another_grid() -> None:
    small = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    big = build_vit(
        'tiny', img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    pe = fit_pos_embed(small.state_dict()['pos_embed'], big.grid_size)
    assert torch.equal(pe, big.pos_embed)  # fixed sin-cos: regenerated exactly
    big.load_state_dict({**small.state_dict(), 'pos_embed': pe})
    assert fit_pos_embed(pe, big.grid_size) is pe


def test_gsd_pos_embed_changes_features_and_needs_gsd() -> None:
    vit = build_vit(
        'tiny',
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        gsd_pos_embed=True,
        reference_gsd=10.0,
    )
    x = torch.randn(2, 3, 32, 32)
    a = vit.forward_features(x, gsd=torch.tensor([10.0, 10.0]))
    b = vit.forward_features(x, gsd=torch.tensor([10.0, 40.0]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match='gsd'):
        vit.forward_features(x)


def test_attention_sdpa_equals_eager() -> None:
    assert {'sdpa', 'eager'} <= set(list_attention_backends())
    sdpa = build_attention('sdpa', 32, num_heads=4, qkv_bias=True)
    eager = build_attention('eager', 32, num_heads=4, qkv_bias=True)
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7, 32)
    assert torch.allclose(sdpa(x), eager(x), atol=1e-5)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True
    assert torch.allclose(sdpa(x, attn_mask=mask), eager(x, attn_mask=mask), atol=1e-5)
    with pytest.raises(ValueError, match='nope'):
        build_attention('nope', 32, num_heads=4)


def test_random_masking() -> None:
    assert 'random' in list_mask_strategies()
    m = random_masking(4, 4, 4, 0.75, torch.Generator().manual_seed(0))
    assert m.ids_keep.shape == (4, 4) and m.mask.sum(1).tolist() == [12.0] * 4
    # mask is 0 exactly at the kept indices
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)
    again = random_masking(4, 4, 4, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(m.ids_keep, again.ids_keep)
    with pytest.raises(ValueError, match='mask_ratio'):
        num_visible(16, 1.0)
    with pytest.raises(ValueError, match='unknown'):
        build_mask_strategy('nope')
    with pytest.raises(ValueError, match='options'):
        build_mask_strategy('random', foo=1)


def test_forward_shapes_and_parts() -> None:
    model = CrossScaleMAE(**TINY)
    out = model(views(), gsd=torch.ones(3, 2))
    assert set(out.parts) == {'re', 'cc', 'cp'}
    assert out.pred.shape == (3, 2, 16, 8 * 8 * 3)
    assert out.mask.shape == (3, 2, 16) and torch.all(out.mask.sum(-1) == 12)
    assert torch.isclose(out.loss, sum(out.parts.values()))
    # independent masks differ between views; consistent ones do not
    assert not torch.equal(out.mask[:, 0], out.mask[:, 1])
    out = CrossScaleMAE(**TINY, view_masks='consistent')(views())
    assert torch.equal(out.mask[:, 0], out.mask[:, 1])


def grads_of(model: CrossScaleMAE, **kwargs) -> set[str]:
    out = model(views(), **kwargs)
    out.loss.backward()
    return {
        n.split('.')[0]
        for n, p in model.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }


@pytest.mark.parametrize(
    ('switches', 'expected'),
    [
        (
            {},
            {
                'encoder',
                'projection_head',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'decoder_pred',
                'mask_token',
            },
        ),
        (
            {'loss_cc': False},
            {
                'encoder',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'decoder_pred',
                'mask_token',
            },
        ),
        (
            {'loss_cp': False},
            {
                'encoder',
                'projection_head',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'decoder_pred',
                'mask_token',
            },
        ),
        (
            {'loss_re': False},  # default L_cp reads the last block, not decoder_norm
            {
                'encoder',
                'projection_head',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'mask_token',
            },
        ),
        ({'loss_re': False, 'loss_cp': False}, {'encoder', 'projection_head'}),
        (
            {
                'cp_stop_grad': True,
                'cp_target': 'decoder_norm',
                'loss_re': False,
                'loss_cc': False,
            },
            {
                'encoder',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'mask_token',
            },
        ),
        (
            {'cp_negatives': True},
            {
                'encoder',
                'projection_head',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'decoder_pred',
                'mask_token',
            },
        ),
        (
            {'cc_negatives': False, 'projection_dim': 0},
            {
                'encoder',
                'predictor',
                'decoder_embed',
                'decoder_blocks',
                'decoder_norm',
                'decoder_pred',
                'mask_token',
            },
        ),
    ],
)
def test_ablation_switches_change_gradients(switches: dict, expected: set[str]) -> None:
    model = CrossScaleMAE(**{**TINY, **switches})
    assert grads_of(model) == expected
    if not switches.get('loss_cc', True):
        assert model.projection_head is None
    if not switches.get('loss_cp', True):
        assert model.predictor is None


def test_cp_stop_grad_blocks_full_view_path() -> None:
    """With stop-grad, L_cp alone gives no gradient to the full-scale decoder path
    through its target: only the low view's features move."""
    kwargs = {**TINY, 'loss_re': False, 'loss_cc': False, 'cp_target': 'decoder_norm'}
    free = CrossScaleMAE(**kwargs, cp_stop_grad=False)
    stopped = CrossScaleMAE(**kwargs, cp_stop_grad=True)
    stopped.load_state_dict(free.state_dict())
    torch.manual_seed(0)
    free(views()).loss.backward()
    torch.manual_seed(0)
    stopped(views()).loss.backward()
    assert not torch.allclose(
        free.decoder_norm.weight.grad, stopped.decoder_norm.weight.grad
    )


def test_plain_mae_one_view() -> None:
    model = CrossScaleMAE(**TINY, loss_cc=False, loss_cp=False)
    out = model(views()[:, :1])
    assert set(out.parts) == {'re'} and out.pred.shape[1] == 1
    with pytest.raises(ValueError, match='2 views'):
        CrossScaleMAE(**TINY)(views()[:, :1])


def test_invalid_pixels_and_skipped_samples_do_not_count() -> None:
    model = CrossScaleMAE(**TINY, loss_cc=False, loss_cp=False)
    x = views()
    valid = torch.ones(3, 2, 1, 32, 32, dtype=torch.bool)
    torch.manual_seed(0)
    base = model(x, valid=valid).parts['re']
    x2 = x.clone()
    x2[1] = 1e4  # garbage in a sample with weight 0
    torch.manual_seed(0)
    skipped = model(x2, valid=valid, sample_weight=torch.tensor([1.0, 0.0, 1.0])).parts[
        're'
    ]
    assert torch.isfinite(skipped) and skipped < 1e3
    x3 = x.clone()
    x3[0, :, :, :8, :] = 1e4  # garbage in invalid pixels
    valid3 = valid.clone()
    valid3[0, :, :, :8, :] = False
    torch.manual_seed(0)
    masked = model(x3, valid=valid3).parts['re']
    assert masked < 1e3 and base < 1e3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='view_masks'):
        CrossScaleMAE(**TINY, view_masks='same')
    with pytest.raises(ValueError, match='cc_pool'):
        CrossScaleMAE(**TINY, cc_pool='max')
    with pytest.raises(ValueError, match='at least one'):
        CrossScaleMAE(**TINY, loss_re=False, loss_cc=False, loss_cp=False)
    with pytest.raises(ValueError, match='multiple'):
        CrossScaleMAE(**{**TINY, 'img_size': 30})
    with pytest.raises(ValueError, match='ViT size'):
        CrossScaleMAE(**{**TINY, 'size': 'xl'})
    model = CrossScaleMAE(**TINY)
    with pytest.raises(ValueError, match='4 bands'):
        model(torch.randn(2, 2, 4, 32, 32))
    with pytest.raises(ValueError, match='B, V, C, H, W'):
        model(torch.randn(2, 3, 32, 32))


def test_cls_pool_and_grad_checkpointing_match() -> None:
    a = CrossScaleMAE(**TINY, cc_pool='cls')
    b = CrossScaleMAE(**TINY, cc_pool='cls', grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    la = a(views()).loss
    torch.manual_seed(0)
    lb = b(views()).loss
    assert torch.allclose(la, lb)
    lb.backward()
    assert b.encoder.patch_embed.proj.weight.grad is not None
    assert isinstance(b.encoder, CrossScaleViT)
