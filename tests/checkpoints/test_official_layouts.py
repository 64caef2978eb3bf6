"""The authors' checkpoints, in their exact documented layouts, give their features.

Checkpoints are written by ``tests/authors_checkpoints.py`` from the facts of
OFFICIAL_LAYOUTS.md (exact key names, shapes, tensor counts and file structure;
ViT-B and ViT-L at full size) and compared with the authors' encoder forward written
out in that file. The released files themselves were never downloaded. ViT-B runs
by default (the builder for every variant; ``xscale weights import`` and
``torchgeo.models.get_model`` for the released, post-norm one); ViT-L and the other
ViT-B import paths are ``slow`` (a ViT-L file is 1.3 GB).
"""

import argparse
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from authors_checkpoints import (
    COUNTS,
    SIZES,
    VARIANTS,
    official_state_dict,
    reference_features,
    relative_error,
    write_official,
)
from torch import nn
from torchgeo.models import get_model, get_weight

from torchgeo_xscale.checkpoints import (
    convert_checkpoint,
    crossscalemae_base_patch16,
    crossscalemae_large_patch16,
    load_into,
    read_checkpoint,
    safe_load,
)
from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.models import CrossScaleMAE
from torchgeo_xscale.models.vit import PostNormBlock, build_vit

BUILDERS = {'base': crossscalemae_base_patch16, 'large': crossscalemae_large_patch16}
ENTRIES = {
    'base': 'CrossScaleMAEBase16_Weights.FMOW_RGB',
    'large': 'CrossScaleMAELarge16_Weights.FMOW_RGB',
}
#: The equality asked of every path: relative error of the features.
TOLERANCE = 1e-4


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """torch hub's cache folder in tmp_path (restored after)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints' / 'xscale'
    torch.hub.set_dir(old)


def images(seed: int = 3) -> torch.Tensor:
    """One 128-px RGB image, normalised-looking."""
    return torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def check(model: nn.Module, ref: torch.Tensor, variant: str) -> None:
    """*model* computes the authors' encoder output *ref*, as they did."""
    with torch.no_grad():
        ours = model.eval().forward_features(images())
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= TOLERANCE
    assert isinstance(model.norm, nn.Identity)  # their encoder has no final norm
    post = variant == 'official-xformers-post'
    assert isinstance(model.blocks[0], PostNormBlock) == post


def full_size(
    tmp_path: Path,
    size: str,
    variant: str,
    capsys: pytest.CaptureFixture[str],
    import_it: bool = True,
) -> None:
    """A full-size file through the builder, `xscale weights import` and get_model."""
    sd = official_state_dict(size, variant, seed=len(variant))
    assert len(sd) == COUNTS[(size, variant)]
    path = write_official(tmp_path / 'checkpoint-399.pth', sd, variant)
    with torch.no_grad():
        ref = reference_features(sd, images(), variant, heads=SIZES[size][2])
    assert ref.shape == (1, 65, SIZES[size][0])
    check(BUILDERS[size](weights=path), ref, variant)
    if not import_it:
        return
    entry = ENTRIES[size]
    args = ['weights', 'import', str(path), '--weights', entry, '--no-check-md5']
    assert xscale(args) == 0  # filed under the entry although the MD5 differs
    out = capsys.readouterr().out
    style = 'post' if variant == 'official-xformers-post' else 'pre'
    assert f'{variant} layout, {style}-norm blocks, no final norm' in out
    assert "is not the release's" in out
    weights = get_weight(entry)
    model = get_model(f'crossscalemae_{size}_patch16', weights=weights, img_size=128)
    check(model, ref, variant)


@pytest.mark.filterwarnings('ignore:for .*copying from a non-meta parameter')
@pytest.mark.parametrize('size', list(SIZES))
@pytest.mark.parametrize('variant', VARIANTS)
def test_full_size_layouts_map_every_tensor(size: str, variant: str) -> None:
    """Every tensor of the documented layouts, at full size (shapes only, meta device)."""
    sd = official_state_dict(size, variant, meta=True)
    assert len(sd) == COUNTS[(size, variant)]
    conv = convert_checkpoint({'model': sd}, source='full-size')
    assert conv.layout == variant and not conv.final_norm
    dim, depth, heads = SIZES[size]
    expected = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=16)
    assert expected.items() <= conv.model_args.items()
    assert conv.model_args['img_size'] == 128 and conv.model_args['mlp_ratio'] == 4
    not_mapped = {k.rsplit('.', 1)[0] for k in conv.unexpected_keys}
    assert not_mapped == {'encoder_norm', 'predictor.0', 'predictor.1', 'predictor.3'}
    with torch.device('meta'):
        encoder = build_vit(size, img_size=128, patch_size=16, final_norm=False)
        mae = CrossScaleMAE(size=size, img_size=128, loss_cp=False)
    load_into(encoder, conv.encoder, conv.metadata())  # every key and shape fits
    assert len(conv.encoder) == len(encoder.state_dict())
    result = mae.load_state_dict(conv.mae_state_dict(), strict=False)
    assert not result.unexpected_keys  # the decoder maps completely too
    assert {k.split('.')[0] for k in result.missing_keys} == {
        'encoder',
        'projection_head',
    }
    assert {k for k in result.missing_keys if k.startswith('encoder.')} == {
        'encoder.norm.weight',
        'encoder.norm.bias',
    }  # CrossScaleMAE's encoder has a final norm; the authors' has none


@pytest.mark.parametrize('variant', VARIANTS)
def test_small_files_in_the_authors_structure(tmp_path: Path, variant: str) -> None:
    """The file structure, its safe loading, metadata and features (a small network)."""
    dims, decoder = (64, 2, 4), (32, 1, 4)
    sd = official_state_dict(dims, variant, decoder=decoder, img_size=64)
    path = write_official(tmp_path / 'checkpoint-399.pth', sd, variant)
    with pytest.raises(pickle.UnpicklingError, match=r'argparse\.Namespace'):
        torch.load(path, weights_only=True)  # as the authors saved it
    assert isinstance(safe_load(path)['args'], argparse.Namespace)
    resolved = read_checkpoint(path)
    assert resolved.metadata['layout'] == variant
    assert resolved.metadata['final_norm'] is False
    assert resolved.metadata['args']['use_xformers'] == (variant != 'official-timm')
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    kwargs = {'embed_dim': 64, 'depth': 2, 'num_heads': 4}
    with torch.no_grad():
        ref = reference_features(sd, x, variant, heads=4)
        model = crossscalemae_base_patch16(weights=path, **kwargs).eval()
        assert relative_error(model.forward_features(x), ref) <= TOLERANCE
        bigger = crossscalemae_base_patch16(weights=path, img_size=96, **kwargs)
        assert bigger.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 37, 64)


def test_import_of_a_file_that_is_not_the_release(
    tmp_path: Path, hub_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by MD5, with the documented ways out; --no-check-md5 needs an entry."""
    variant = 'official-xformers-post'
    sd = official_state_dict((64, 2, 4), variant, decoder=(32, 1, 4), img_size=64)
    path = write_official(tmp_path / 'my-run.pth', sd, variant)
    assert xscale(['weights', 'import', str(path)]) == 1
    err = capsys.readouterr().err
    assert 'matches no released checkpoint' in err and '--no-check-md5' in err
    assert xscale(['weights', 'import', str(path), '--no-check-md5']) == 1
    assert '--no-check-md5 needs --weights ENTRY' in capsys.readouterr().err
    entry = ENTRIES['base']
    assert xscale(['weights', 'import', str(path), '--weights', entry]) == 1
    assert 'not the published 0c33995d' in capsys.readouterr().err
    assert not hub_dir.exists() or not list(hub_dir.iterdir())


def slow_unless_released(variants: tuple[str, ...]) -> list:
    """The released (post-norm) layout runs by default, the others are ``slow``."""
    slow = [pytest.mark.slow]
    return [
        pytest.param(v, marks=[] if v == 'official-xformers-post' else slow)
        for v in variants
    ]


@pytest.mark.parametrize('variant', slow_unless_released(VARIANTS))
def test_vit_b_files_give_the_authors_features(
    tmp_path: Path, hub_dir: Path, variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """ViT-B: the released layout through every path; the others through the builder."""
    released = variant == 'official-xformers-post'
    full_size(tmp_path, 'base', variant, capsys, import_it=released)


@pytest.mark.slow  # ViT-L files are 1.3 GB
@pytest.mark.parametrize('variant', VARIANTS)
def test_vit_l_files_give_the_authors_features(
    tmp_path: Path, hub_dir: Path, variant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """ViT-L: the released layout through every path; the others through the builder."""
    released = variant == 'official-xformers-post'
    full_size(tmp_path, 'large', variant, capsys, import_it=released)


def test_final_norm_switch_gives_timms_layer_norm(tmp_path: Path) -> None:
    """`final_norm=True` keeps timm's final LayerNorm (weight 1, bias 0) after the blocks."""
    variant = 'official-xformers-post'
    sd = official_state_dict((64, 2, 4), variant, decoder=(32, 1, 4), img_size=64)
    path = write_official(tmp_path / 'small.pth', sd, variant)
    x = torch.randn(2, 3, 64, 64)
    kwargs = {'embed_dim': 64, 'depth': 2, 'num_heads': 4}
    with torch.no_grad():
        ref = reference_features(sd, x, variant, heads=4)
        normed = crossscalemae_base_patch16(weights=path, final_norm=True, **kwargs)
        assert isinstance(normed.norm, nn.LayerNorm)
        timm_like = nn.functional.layer_norm(ref, (64,), eps=1e-6)
        assert relative_error(normed.eval().forward_features(x), timm_like) <= TOLERANCE
