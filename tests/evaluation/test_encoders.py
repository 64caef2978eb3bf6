"""Frozen encoders (evaluation/encoders.py): pooling, GSD, names, files, checkpoints."""

import pytest
import timm
import torch
from classification_layouts import (
    tiny_vit,
)
from torchgeo.models.scale_mae import ScaleMAE

from torchgeo_xscale.evaluation import (
    FeatureEncoder,
    load_encoder,
)
from torchgeo_xscale.models.timm_vit import register_timm_name, register_timm_vit


def test_feature_encoder_pools_and_is_frozen() -> None:
    vit = tiny_vit()
    enc = FeatureEncoder(vit, pool='mean')
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.forward_features(x)
    assert torch.allclose(enc(x), tokens[:, 1:].mean(1), atol=1e-6)
    assert torch.allclose(FeatureEncoder(vit, pool='cls')(x), tokens[:, 0], atol=1e-6)
    enc.train()
    assert not enc.model.training and not any(p.requires_grad for p in enc.parameters())
    assert (enc.img_size, enc.in_chans) == (32, 3)
    with pytest.raises(ValueError, match='pool'):
        FeatureEncoder(vit, pool='max')  # type: ignore[arg-type]


def test_gsd_aware_encoders_get_gsd_over_ratio() -> None:
    x = torch.randn(2, 3, 32, 32)
    ours = FeatureEncoder(tiny_vit(gsd_pos_embed=True, reference_gsd=10.0))
    assert not torch.allclose(
        ours(x, 1.0, torch.full((2,), 10.0)), ours(x, 0.25, torch.full((2,), 10.0))
    )
    assert torch.allclose(
        ours(x, 0.5, torch.full((2,), 10.0)), ours(x, 1.0, torch.full((2,), 20.0))
    )
    scale_mae = ScaleMAE(
        res=2.0,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=0,
    )
    enc = FeatureEncoder(scale_mae)
    out = enc(x, 0.5)
    assert scale_mae.res == 2.0  # restored
    scale_mae.res = 4.0
    assert torch.allclose(out, FeatureEncoder(scale_mae)(x, 1.0), atol=1e-6)
    mixed = FeatureEncoder(
        ScaleMAE(res=1.0, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    )
    per_sample = mixed(x, 1.0, torch.tensor([1.0, 3.0]))
    mixed.model.res = 3.0
    assert torch.allclose(per_sample[1], mixed(x[1:], 1.0)[0], atol=1e-6)


def test_load_encoder_from_names_and_files(tmp_path) -> None:
    vit = tiny_vit()
    path = tmp_path / 'enc.pth'
    torch.save(vit.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    ref = FeatureEncoder(vit)(x)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    assert torch.allclose(
        load_encoder('tiny', str(path), model_kwargs=kwargs)(x), ref, atol=1e-5
    )
    assert torch.allclose(
        load_encoder(str(path), model_kwargs={'num_heads': 2})(x), ref, atol=1e-5
    )
    # the same weights in timm's ViT (timm names)
    timm_enc = load_encoder('vit_tiny_patch16_224', str(path), model_kwargs=kwargs)
    assert isinstance(timm_enc.model, timm.models.VisionTransformer)
    assert torch.allclose(timm_enc(x), ref, atol=1e-5)
    assert load_encoder(vit, name='mine').name == 'mine'
    with pytest.raises(ValueError, match='not a file'):
        load_encoder('no_such_model_xyz')
    with pytest.raises(ValueError, match='do not fit'):
        load_encoder('vit_small_patch16_224', str(path), model_kwargs={'img_size': 32})


def test_load_encoder_from_lightning_checkpoints(trained) -> None:
    x = torch.randn(2, 3, 32, 32)
    ours = load_encoder(str(trained['cross_scale_mae']))
    task = trained['cross_scale_mae_task']
    assert torch.allclose(ours(x), FeatureEncoder(task.model.encoder)(x), atol=1e-5)
    peer = load_encoder(str(trained['torchgeo_mae']))
    assert torch.allclose(
        peer(x), FeatureEncoder(trained['torchgeo_mae_task'].backbone.vit)(x), atol=1e-5
    )
    # a registered crossscalemae_* builder takes our checkpoint as weights
    built = load_encoder('crossscalemae_base_patch16', str(trained['cross_scale_mae']))
    assert torch.allclose(built(x), ours(x), atol=1e-5)


def test_register_timm_vit() -> None:
    name = register_timm_vit(24, 1, 2, 4, 16)
    assert name == 'vit_xscale_e24_d1_h2_p4_16' and register_timm_name(name)
    model = timm.create_model(name, num_classes=0)
    assert model.embed_dim == 24 and model.patch_embed.img_size == (16, 16)
    assert not register_timm_name('vit_nothing_like_this')
