"""Checkpoint layouts (``checkpoints.layouts``): detection, conversion, the inverse."""

import os
from pathlib import Path

import pytest
import torch
from authors_checkpoints import (
    VARIANTS,
    official_state_dict,
    reference_features,
    relative_error,
    write_official,
)
from conftest import TINY_MODEL
from torch import nn

from torchgeo_xscale.checkpoints import (
    convert_checkpoint,
    detect_layout,
    safe_load,
    to_official,
)
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.vit import (
    PostNormBlock,
    build_vit,
    residual_norm_style,
    set_residual_norm_style,
)

TINY = {**TINY_MODEL, 'depth': 2, 'decoder_depth': 2}
SMALL = {'dims': (64, 2, 4), 'decoder': (32, 1, 4), 'img_size': 64}


def small(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small network in the authors' layout (same names, smaller shapes)."""
    return official_state_dict(
        SMALL['dims'], variant, seed, SMALL['img_size'], decoder=SMALL['decoder']
    )


def encoder_of(sd: dict, variant: str) -> nn.Module:
    """Our encoder from the authors' state dict, computing what theirs did."""
    conv = convert_checkpoint({'model': sd})
    vit = build_vit('tiny', **{**conv.model_args, 'num_heads': 4}, final_norm=False)
    set_residual_norm_style(vit, conv.residual_norm_style)
    vit.load_state_dict(conv.encoder, strict=True)
    return vit.eval()


@pytest.mark.parametrize('variant', VARIANTS)
def test_conversion_gives_the_authors_features(variant: str) -> None:
    sd = small(variant)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_features(sd, x, variant, heads=4)
        out = encoder_of(sd, variant).forward_features(x)
    assert relative_error(out, ref) <= 1e-5


@pytest.mark.parametrize('variant', VARIANTS)
def test_to_official_writes_the_real_key_names(variant: str) -> None:
    """The inverse gives back the authors' state dict, key for key (heads aside)."""
    sd = small(variant)
    conv = convert_checkpoint({'model': sd})
    back = to_official(conv.mae_state_dict(), variant)
    authors = {k for k in sd if not k.startswith('predictor.')}
    assert set(back) == authors
    for k in authors:
        assert torch.equal(back[k], sd[k]), k
    assert torch.equal(back['encoder_norm.weight'], torch.ones(64))


@pytest.mark.parametrize('variant', VARIANTS)
def test_round_trip_of_our_model(variant: str) -> None:
    """Ours -> theirs -> ours: the same encoder and decoder outputs."""
    style = 'post' if variant == 'official-xformers-post' else 'pre'
    torch.manual_seed(0)
    model = set_residual_norm_style(CrossScaleMAE(**TINY), style).eval()
    model.encoder.norm = nn.Identity()  # theirs has no final norm
    conv = convert_checkpoint({'model': to_official(model.state_dict(), variant)})
    assert conv.layout == variant and conv.residual_norm_style == style
    assert conv.model_args == dict(
        embed_dim=32, depth=2, patch_size=8, in_chans=3, mlp_ratio=4.0, img_size=32
    )
    other = set_residual_norm_style(CrossScaleMAE(**TINY), style).eval()
    other.encoder.norm = nn.Identity()
    result = other.load_state_dict(conv.mae_state_dict(), strict=False)
    assert {k.split('.')[0] for k in result.missing_keys} == {
        'projection_head',
        'predictor',
    }
    assert not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    masks = model.draw_masks(2, 1, x.device, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model.forward_decoder(model.forward_encoder(x, masks), masks)
        assert torch.equal(
            other.forward_decoder(other.forward_encoder(x, masks), masks), ref
        )


def test_post_norm_block_is_not_pre_norm() -> None:
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        pre = vit.eval().forward_features(x)
        set_residual_norm_style(vit, 'post')
        assert isinstance(vit.blocks[0], PostNormBlock)
        assert residual_norm_style(vit) == 'post'
        assert not torch.allclose(vit.forward_features(x), pre)
        set_residual_norm_style(vit, 'pre')
        assert torch.equal(vit.forward_features(x), pre)
    with pytest.raises(ValueError, match="'sandwich'"):
        set_residual_norm_style(vit, 'sandwich')


def test_unmapped_keys_are_reported_not_loaded() -> None:
    sd = {f'module.{k}': v for k, v in small('official-timm').items()}  # from DDP
    conv = convert_checkpoint({'model': sd})
    assert conv.unexpected_keys == sorted(
        k
        for k in small('official-timm')
        if k.startswith(('predictor.', 'encoder_norm.'))
    )
    assert conv.metadata()['unexpected_keys'] == conv.unexpected_keys
    assert conv.metadata()['final_norm'] is False


def test_unknown_and_partial_layouts_fail_naming_them() -> None:
    with pytest.raises(
        ValueError,
        match=r"cannot map this checkpoint layout \(first keys \['foo.weight'\]",
    ):
        convert_checkpoint({'foo.weight': torch.zeros(1)})
    sd = small('official-xformers-post')
    del sd['encoder.encoders.1.wrap_att.sublayer.layer.in_proj_container.k_proj.weight']
    with pytest.raises(
        ValueError,
        match=r"layout 'official-xformers-post' detected.*blocks\.1\.attn\.qkv\.weight",
    ):
        convert_checkpoint({'model': sd}, source='x.pth')
    # a guessed extra norm after the last pre-norm block is not the authors' layout
    sd = small('official-xformers-pre')
    sd['encoder.encoders.1.wrap_ff.norm.weight'] = torch.ones(64)
    with pytest.raises(
        ValueError, match=r'encoder keys are not part of it.*wrap_ff\.norm'
    ):
        convert_checkpoint({'model': sd})
    with pytest.raises(ValueError, match='no state dict of tensors'):
        convert_checkpoint({'model': {'a': 1}})
    with pytest.raises(ValueError, match='official-timm'):
        to_official({}, 'official-jax')


def test_detect_our_layouts() -> None:
    model = CrossScaleMAE(**TINY)
    assert detect_layout(model.encoder.state_dict()) == 'encoder'
    assert detect_layout(model.state_dict()) == 'mae'
    lightning = {f'model.{k}': v for k, v in model.state_dict().items()}
    assert detect_layout(lightning) == 'lightning'
    peer = {f'backbone.vit.{k}': v for k, v in model.encoder.state_dict().items()}
    assert detect_layout(peer) == 'torchgeo-mae'
    conv = convert_checkpoint(
        {
            'state_dict': peer,
            'hyper_parameters': {'model': 'vit_xscale_e32_d2_h2_p8_32'},
        }
    )
    assert conv.model_args['num_heads'] == 2
    assert conv.extra['timm_model'] == 'vit_xscale_e32_d2_h2_p8_32'
    conv = convert_checkpoint(model.state_dict())
    assert set(conv.mae_state_dict()) == set(model.state_dict())  # heads kept for ours
    assert conv.final_norm


def test_safe_load_refuses_code_and_broken_files(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ('echo pwned',))

    torch.save({'model': {}, 'x': Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(ValueError, match=r'not a tensors-only checkpoint.*system'):
        safe_load(tmp_path / 'evil.pth')
    torch.save({'model': {}, 'args': Path('/x')}, tmp_path / 'path.pth')
    with pytest.raises(ValueError, match='not a tensors-only checkpoint'):
        safe_load(tmp_path / 'path.pth')  # only argparse.Namespace is allowed
    good = write_official(
        tmp_path / 'good.pth', small('official-timm'), 'official-timm'
    )
    data = good.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='truncated or corrupt'):
        safe_load(tmp_path / 'cut.pth')
    (tmp_path / 'page.pth').write_text('<html>Google Drive - quota exceeded</html>')
    with pytest.raises(ValueError, match='web page'):
        safe_load(tmp_path / 'page.pth')
    with pytest.raises(FileNotFoundError, match=r'nope\.pth'):
        safe_load(tmp_path / 'nope.pth')
