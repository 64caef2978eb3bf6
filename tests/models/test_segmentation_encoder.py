"""Our ViTs as SMP encoders (models/segmentation.py): pyramid, shapes, UPerNet, weights."""

from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from isprs_layout import (
    TINY,
)
from torchgeo.tasks import SemanticSegmentation

from torchgeo_xscale.checkpoints import upernet
from torchgeo_xscale.models.segmentation import (
    XScaleViTEncoder,
    pyramid_block_indices,
    register_encoder,
)
from torchgeo_xscale.models.vit import VIT_SIZES

CONFIGS = Path(__file__).parents[2] / 'configs' / 'segmentation'


def test_pyramid_block_indices() -> None:
    assert pyramid_block_indices(12) == (3, 5, 7, 11)
    assert pyramid_block_indices(24) == (7, 11, 15, 23)
    assert pyramid_block_indices(2) == (0, 0, 0, 1)


@pytest.mark.parametrize('size', list(VIT_SIZES))
def test_smp_encoder_shapes_every_size(size: str) -> None:
    dim = VIT_SIZES[size][0]
    with torch.device('meta'):  # real code path, no compute: shapes only
        model = smp.UPerNet(
            encoder_name=f'xscale_vit_{size}',
            encoder_weights=None,
            in_channels=4,
            classes=6,
        )
        x = torch.empty(2, 4, 64, 96)
        features = model.encoder(x)
        logits = model(x)
    assert isinstance(model.encoder, XScaleViTEncoder)
    assert model.encoder.out_channels == [4, 0, dim, dim, dim, dim]
    assert [tuple(f.shape) for f in features] == [
        (2, 4, 64, 96),
        (2, 0, 32, 48),
        (2, dim, 16, 24),
        (2, dim, 8, 12),
        (2, dim, 4, 6),
        (2, dim, 2, 3),
    ]
    assert logits.shape == (2, 6, 64, 96)


def test_encoder_real_forward_any_size() -> None:
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder('xscale_vit_tiny', in_channels=3)
    assert encoder.grid_size == (14, 14)
    for h, w in ((64, 64), (96, 32)):
        features = encoder(torch.randn(1, 3, h, w))
        assert features[-1].shape == (1, 192, h // 32, w // 32)
        assert all(torch.isfinite(f).all() for f in features)
    with pytest.raises(ValueError, match='divisible by the patch size 16'):
        encoder(torch.randn(1, 3, 40, 64))
    with pytest.raises(ValueError, match='output_stride=16'):
        XScaleViTEncoder('tiny', output_stride=16)


def test_smp_and_torchgeo_build_upernet() -> None:
    name = register_encoder('xscale_vit_test', 'tiny', **TINY)
    model = smp.UPerNet(
        encoder_name=name, encoder_weights=None, classes=6, decoder_channels=32
    )
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6, 64, 64)
    task = SemanticSegmentation(
        model='upernet', backbone=name, num_classes=6, in_channels=5
    )
    assert task(torch.randn(2, 5, 64, 32)).shape == (2, 6, 64, 32)


def test_pretrained_weights_are_used(encoder_weights: Path) -> None:
    saved = torch.load(encoder_weights, weights_only=True)
    torch.manual_seed(0)
    random = upernet('xscale_vit_tiny', in_channels=4, decoder_channels=32, **TINY)
    torch.manual_seed(0)
    loaded = upernet(
        'xscale_vit_tiny',
        in_channels=4,
        decoder_channels=32,
        weights=encoder_weights,
        **TINY,
    )
    enc = loaded.encoder
    torch.testing.assert_close(
        enc.blocks[1].mlp.fc2.weight, saved['blocks.1.mlp.fc2.weight']
    )
    # 3 -> 4 bands: repeated and scaled by 3/4, as TorchGeo/timm adapt input convs
    w = saved['patch_embed.proj.weight']
    torch.testing.assert_close(enc.patch_embed.proj.weight[:, :3], w * 0.75)
    torch.testing.assert_close(enc.patch_embed.proj.weight[:, 3], w[:, 0] * 0.75)
    assert enc.pos_embed.shape == (1, 1 + 16, 32)  # refitted from the 2x2 grid to 4x4
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        ours, theirs = enc(x)[-1], random.encoder(x)[-1]
    assert not torch.allclose(ours, theirs, atol=1e-3)
    # the same weights give the same ViT features (stride 16: the identity level)
    torch.manual_seed(5)
    again = upernet(
        'xscale_vit_tiny',
        in_channels=4,
        decoder_channels=32,
        weights=encoder_weights,
        **TINY,
    )
    with torch.no_grad():
        torch.testing.assert_close(again.encoder(x)[4], enc(x)[4])


def test_mismatched_weights_fail_clearly(encoder_weights: Path) -> None:
    with pytest.raises(ValueError, match='do not fit XScaleViTEncoder'):
        upernet(
            'xscale_vit_tiny',
            weights=encoder_weights,
            embed_dim=48,
            vit_depth=2,
            num_heads=2,
        )


def test_full_encoder_state_dict_roundtrip() -> None:
    a = upernet('xscale_vit_tiny', decoder_channels=32, **TINY).encoder
    b = upernet('xscale_vit_tiny', decoder_channels=32, **TINY).encoder
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[3], b(x)[3])
