"""Checkpoint layouts: the authors' (timm / xFormers) and ours, both ways."""

import argparse
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL
from timm.models.vision_transformer import Block as TimmBlock
from torch import Tensor, nn

from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.convert import (
    Conversion,
    PostNormBlock,
    convert_checkpoint,
    detect_layout,
    export_lightning_checkpoint,
    export_weights,
    fit_pos_embed,
    is_sincos,
    load_checkpoint,
    read_weights_info,
    safe_load,
    set_residual_norm_style,
    to_official,
)
from torchgeo_xscale.models.vit import build_vit, sincos_pos_embed

OFFICIAL = ['official-timm', 'official-xformers-post', 'official-xformers-pre']
TINY = {**TINY_MODEL, 'depth': 2, 'decoder_depth': 2}


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every trainable parameter (LayerNorm affines included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_mae(style: str = 'pre') -> CrossScaleMAE:
    torch.manual_seed(0)
    return set_residual_norm_style(randomise(CrossScaleMAE(**TINY)), style)  # type: ignore[return-value]


def official_file(
    tmp_path: Path, sd: dict[str, Tensor], name: str = 'ckpt.pth'
) -> Path:
    """Save as the authors' main_pretrain.py did: model, optimizer, epoch, scaler, args."""
    path = tmp_path / name
    args = argparse.Namespace(
        model='mae_vit_base_MsLdCeCd', input_size=128, use_xformers=True
    )
    torch.save(
        {
            'model': sd,
            'optimizer': {'state': {}, 'param_groups': []},
            'epoch': 399,
            'scaler': {'scale': 65536.0},
            'args': args,
        },
        path,
    )
    return path


def images(b: int = 2) -> Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def load_encoder(conv: Conversion, **kw: object) -> nn.Module:
    args = {k: v for k, v in conv.model_args.items()}
    args.update(num_heads=2, **kw)
    vit = build_vit('tiny', **args)
    set_residual_norm_style(vit, conv.residual_norm_style)
    vit.load_state_dict(conv.encoder, strict=True)
    return vit.eval()


@pytest.mark.parametrize('layout', OFFICIAL)
def test_round_trip_identical_encoder_and_decoder(tmp_path: Path, layout: str) -> None:
    style = 'post' if layout == 'official-xformers-post' else 'pre'
    model = tiny_mae(style)
    path = official_file(tmp_path, to_official(model.state_dict(), layout))
    conv = convert_checkpoint(safe_load(path), source=str(path))
    assert conv.layout == layout and conv.residual_norm_style == style
    assert conv.model_args == dict(
        embed_dim=32, depth=2, patch_size=8, in_chans=3, mlp_ratio=4.0, img_size=32
    )
    x = images()
    with torch.no_grad():
        assert torch.equal(
            load_encoder(conv).forward_features(x), model.encoder.forward_features(x)
        )
    # the full model (decoder included) where the checkpoint has decoder keys
    other = set_residual_norm_style(CrossScaleMAE(**TINY).eval(), style)
    result = other.load_state_dict(conv.mae_state_dict(), strict=False)
    assert all(
        k.startswith(('projection_head.', 'predictor.')) for k in result.missing_keys
    )
    assert result.missing_keys and not result.unexpected_keys
    masks = model.draw_masks(
        2, 1, torch.device('cpu'), torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        ref = model.forward_decoder(model.forward_encoder(x, masks), masks)
        out = other.forward_decoder(other.forward_encoder(x, masks), masks)
    assert torch.equal(out, ref)


def reference_official(
    sd: dict[str, Tensor], x: Tensor, layout: str, heads: int = 2
) -> Tensor:
    """The authors' encoder forward (pos-embed, blocks; encoder_norm discarded), by hand."""
    w = sd['patch_embed.proj.weight']
    t = (
        F.conv2d(x, w, sd['patch_embed.proj.bias'], stride=w.shape[-1])
        .flatten(2)
        .transpose(1, 2)
    )
    pe = sd['encoder_pos_embed']
    t = torch.cat(
        [(sd['cls_token'] + pe[:, :1]).expand(len(x), -1, -1), t + pe[:, 1:]], 1
    )
    dim = t.shape[-1]
    ln = partial(F.layer_norm, normalized_shape=(dim,), eps=1e-6)
    if layout == 'official-timm':
        for i in range(2):
            blk = TimmBlock(
                dim, heads, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)
            )
            blk.load_state_dict(
                {
                    k[len(f'encoder.{i}.') :]: v
                    for k, v in sd.items()
                    if k.startswith(f'encoder.{i}.')
                }
            )
            t = blk.eval()(t)
        return t

    def attn(h: Tensor, a: str) -> Tensor:
        q, k, v = (
            F.linear(
                h,
                sd[f'{a}in_proj_container.{n}_proj.weight'],
                sd[f'{a}in_proj_container.{n}_proj.bias'],
            )
            .view(len(h), -1, heads, dim // heads)
            .transpose(1, 2)
            for n in 'qkv'
        )
        o = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, -1) @ v
        return F.linear(
            o.transpose(1, 2).reshape(h.shape),
            sd[a + 'proj.weight'],
            sd[a + 'proj.bias'],
        )

    def mlp(h: Tensor, f: str) -> Tensor:
        h = F.gelu(F.linear(h, sd[f + '0.weight'], sd[f + '0.bias']))
        return F.linear(h, sd[f + '3.weight'], sd[f + '3.bias'])

    for i in range(2):
        p = f'encoder.encoders.{i}.'
        if layout == 'official-xformers-post':  # PostNorm(Residual(f)): LN(x + f(x))
            t = ln(
                t + attn(t, p + 'wrap_att.sublayer.layer.'),
                weight=sd[p + 'wrap_att.norm.weight'],
                bias=sd[p + 'wrap_att.norm.bias'],
            )
            t = ln(
                t + mlp(t, p + 'wrap_ff.sublayer.layer.mlp.'),
                weight=sd[p + 'wrap_ff.norm.weight'],
                bias=sd[p + 'wrap_ff.norm.bias'],
            )
            continue
        n1 = p + 'wrap_att.layer.norm.'  # Residual(PreNorm(f)): x + f(LN(x))
        t = t + attn(
            ln(t, weight=sd[n1 + 'weight'], bias=sd[n1 + 'bias']),
            p + 'wrap_att.layer.sublayer.',
        )
        ff = p + ('wrap_ff.sublayer.layer.' if i == 1 else 'wrap_ff.layer.')
        t = t + mlp(
            ln(t, weight=sd[ff + 'norm.weight'], bias=sd[ff + 'norm.bias']),
            ff + 'sublayer.mlp.',
        )
        if i == 1:  # the last pre-norm block ends in a final PostNorm
            t = ln(
                t,
                weight=sd[p + 'wrap_ff.norm.weight'],
                bias=sd[p + 'wrap_ff.norm.bias'],
            )
    return t


@pytest.mark.parametrize('layout', OFFICIAL)
def test_converted_encoder_computes_what_the_official_one_did(layout: str) -> None:
    model = tiny_mae('post' if layout == 'official-xformers-post' else 'pre')
    official = to_official(model.state_dict(), layout)
    x = images()
    with torch.no_grad():
        ref = reference_official(official, x, layout)
        out = load_encoder(convert_checkpoint({'model': official}))
        if layout != 'official-xformers-pre':  # the authors discarded encoder_norm
            ref = F.layer_norm(
                ref,
                (32,),
                official['encoder_norm.weight'],
                official['encoder_norm.bias'],
                1e-6,
            )
        assert torch.allclose(out.forward_features(x), ref, atol=1e-5)


@pytest.mark.parametrize('layout', ['official-timm', 'official-xformers-pre'])
def test_converted_weights_load_into_timm_unchanged(layout: str) -> None:
    ours = randomise(build_vit('base', img_size=32, patch_size=16, depth=1))
    conv = convert_checkpoint({'model': to_official(ours.state_dict(), layout)})
    ref = timm.create_model(
        'vit_base_patch16_224', img_size=32, depth=1, num_classes=0, pretrained=False
    )
    ref.load_state_dict(conv.encoder, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            ref.eval().forward_features(x), ours.forward_features(x), atol=1e-5
        )


def test_post_norm_block_is_not_pre_norm() -> None:
    vit = randomise(
        build_vit('tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    )
    x = images(1)
    with torch.no_grad():
        pre = vit.forward_features(x)
        set_residual_norm_style(vit, 'post')
        assert isinstance(vit.blocks[0], PostNormBlock)
        assert not torch.allclose(vit.forward_features(x), pre)
        set_residual_norm_style(vit, 'pre')
        assert torch.equal(vit.forward_features(x), pre)
    with pytest.raises(ValueError, match="'sandwich'"):
        set_residual_norm_style(vit, 'sandwich')


def test_unmapped_keys_are_reported_not_loaded() -> None:
    sd = to_official(tiny_mae().state_dict(), 'official-timm')
    sd['predictor.1.running_mean'] = torch.zeros(16)  # the authors' BatchNorm predictor
    sd = {f'module.{k}': v for k, v in sd.items()}  # saved from DDP
    xf = to_official(tiny_mae().state_dict(), 'official-xformers-post')
    dup = 'encoder.encoders.0.wrap_att.sublayer.layer.proj.weight'
    xf['encoder.encoders.0.mha.proj.weight'] = xf[
        dup
    ]  # older xFormers: registered twice
    assert convert_checkpoint(xf).unexpected_keys == []
    conv = convert_checkpoint({'model': sd})
    assert conv.unexpected_keys == ['predictor.1.running_mean']
    assert 'predictor.1.running_mean' in conv.info()['unexpected_keys']


def test_unknown_and_partial_layouts_fail_naming_them() -> None:
    with pytest.raises(
        ValueError,
        match=r"cannot map this checkpoint layout \(first keys \['foo.weight'\]",
    ):
        convert_checkpoint({'foo.weight': torch.zeros(1)})
    sd = to_official(tiny_mae().state_dict(), 'official-xformers-post')
    del sd['encoder.encoders.1.wrap_att.sublayer.layer.in_proj_container.k_proj.weight']
    with pytest.raises(
        ValueError,
        match=r"layout 'official-xformers-post' detected.*blocks\.1\.attn\.qkv\.weight",
    ):
        convert_checkpoint({'model': sd}, source='x.pth')
    with pytest.raises(ValueError, match='no state dict of tensors'):
        convert_checkpoint({'model': {'a': 1}})
    with pytest.raises(ValueError, match='official-timm'):
        to_official({}, 'official-jax')


def test_detect_our_layouts() -> None:
    model = tiny_mae()
    assert detect_layout(model.encoder.state_dict()) == 'encoder'
    assert detect_layout(model.state_dict()) == 'mae'
    assert (
        detect_layout({f'model.{k}': v for k, v in model.state_dict().items()})
        == 'lightning'
    )
    conv = convert_checkpoint(model.state_dict())
    assert set(conv.mae_state_dict()) == set(model.state_dict())  # heads kept for ours


def test_safe_load_refuses_code_and_broken_files(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ('echo pwned',))

    torch.save({'model': {}, 'x': Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match=r'not a tensors-only checkpoint.*system'):
        safe_load(tmp_path / 'evil.pth')
    good = official_file(
        tmp_path, to_official(tiny_mae().state_dict(), 'official-timm')
    )
    assert isinstance(safe_load(good)['args'], argparse.Namespace)  # the authors' args
    data = good.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='truncated or corrupt'):
        safe_load(tmp_path / 'cut.pth')
    (tmp_path / 'page.pth').write_text('<html>Google Drive - quota exceeded</html>')
    with pytest.raises(ValueError, match='web page'):
        safe_load(tmp_path / 'page.pth')
    with pytest.raises(FileNotFoundError, match=r'nope\.pth'):
        safe_load(tmp_path / 'nope.pth')


def mae_sincos(dim: int, side: int) -> Tensor:
    """MAE's numpy formula for the fixed 2-D sin-cos embedding (as the authors used)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(
        np.meshgrid(
            np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)
        )
    )
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def test_fit_pos_embed_regenerates_sincos_and_resamples_learned() -> None:
    assert is_sincos(mae_sincos(32, 8))  # the authors' encoder_pos_embed
    assert torch.allclose(mae_sincos(64, 14), sincos_pos_embed(64, 14), atol=1e-5)
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    sd = vit.state_dict()
    assert is_sincos(sd['pos_embed'])
    out = fit_pos_embed(sd, (6, 6))
    assert torch.allclose(out['pos_embed'], sincos_pos_embed(32, 6))
    assert fit_pos_embed(sd, (4, 4)) is sd
    learned = {**sd, 'pos_embed': torch.randn(1, 17, 32)}
    assert not is_sincos(learned['pos_embed'])
    assert fit_pos_embed(learned, (3, 5))['pos_embed'].shape == (1, 16, 32)


def test_export_writes_weights_and_description(tmp_path: Path) -> None:
    model = tiny_mae('post')
    src = official_file(
        tmp_path, to_official(model.state_dict(), 'official-xformers-post')
    )
    conv = export_weights(src, tmp_path / 'out.pth')
    sd = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert set(sd) == set(model.encoder.state_dict())
    info = read_weights_info(tmp_path / 'out.pth')
    assert info['residual_norm_style'] == 'post' and info['layout'] == conv.layout
    again = load_checkpoint(
        tmp_path / 'out.pth'
    )  # the description completes the shapes
    assert again.layout == 'encoder' and again.residual_norm_style == 'post'
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'ckpt.pth',
        'out.pth',
        'out.pth.json',
    ]
    with pytest.raises(ValueError, match='not a Lightning checkpoint'):
        export_lightning_checkpoint(src, tmp_path / 'x.pth')
    assert not (tmp_path / 'x.pth').exists()
