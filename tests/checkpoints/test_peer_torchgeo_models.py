"""TorchGeo's model-API contract, run against our builders and weights entries.

Written from TorchGeo's ``tests/models/test_api.py`` (get_model, get_model_weights,
get_weight, list_models, an invalid name) and its per-model tests
(``test_scale_mae.py``, ``test_vit.py``: construction, forward pass, loading mocked
weights at the default and another image size, ``meta['bands']`` against
``meta['in_chans']``, ``transforms`` on a sample dict and under ``torch.export``),
adapted only by parameter: our builders and enums; ViT-L built on the meta device
(TorchGeo marks it memory-intensive); the mocked weights are served from the
converted-weights cache that ``xscale weights import`` fills (our entries'
downloads are converted once, so that is where TorchGeo's monkeypatched URL lands).
"""

import enum
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchgeo.models import get_model, get_model_weights, get_weight, list_models
from torchvision.models._api import WeightsEnum

from torchgeo_xscale.checkpoints import (
    CrossScaleMAEBase16_Weights,
    CrossScaleMAELarge16_Weights,
    crossscalemae_base_patch16,
    crossscalemae_large_patch16,
    save_weights,
)
from torchgeo_xscale.models.vit import build_vit

BUILDERS = [crossscalemae_base_patch16, crossscalemae_large_patch16]
ENUMS = [CrossScaleMAEBase16_Weights, CrossScaleMAELarge16_Weights]
ENTRIES = [entry for e in ENUMS for entry in e]
SIZES = {crossscalemae_base_patch16: 'base', crossscalemae_large_patch16: 'large'}


# ------------------------------------------------------------ test_api.py
@pytest.mark.parametrize('builder', BUILDERS)
def test_get_model(builder: Callable[..., nn.Module]) -> None:
    with torch.device('meta'):  # the real builder, no memory (ViT-L is 300M params)
        model = get_model(builder.__name__)
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize('builder', BUILDERS)
def test_get_model_weights(builder: Callable[..., nn.Module]) -> None:
    assert isinstance(get_model_weights(builder), enum.EnumMeta)
    assert isinstance(get_model_weights(builder.__name__), enum.EnumMeta)


@pytest.mark.parametrize('weights_enum', ENUMS)
def test_get_weight(weights_enum: type[WeightsEnum]) -> None:
    for weight in weights_enum:
        assert weight == get_weight(str(weight))


def test_list_models() -> None:
    assert {b.__name__ for b in BUILDERS} <= set(list_models())


def test_invalid_model() -> None:
    with pytest.raises(ValueError, match='bad_model is not a valid WeightsEnum'):
        get_weight('bad_model')


# ------------------------------------------------ test_scale_mae.py / test_vit.py
@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub'
    torch.hub.set_dir(old)


@pytest.fixture(params=ENTRIES, ids=str)
def weights(request: pytest.FixtureRequest) -> WeightsEnum:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def mocked_weights(weights: WeightsEnum, hub_dir: Path) -> WeightsEnum:
    """The entry with converted weights of a 1-block ViT of its width in the cache."""
    size = 'base' if weights in CrossScaleMAEBase16_Weights else 'large'
    model = build_vit(size, img_size=224, depth=1)
    info = {
        'layout': 'official-xformers-pre',
        'residual_norm_style': 'pre',
        'model': {'depth': 1, 'img_size': 224},
    }
    save_weights(model.state_dict(), weights.cache_path(), info)  # type: ignore[attr-defined]
    return weights


@pytest.mark.parametrize('builder', BUILDERS)
def test_builder(builder: Callable[..., nn.Module]) -> None:
    with torch.device('meta'):
        builder()


def test_forward_pass() -> None:
    model = crossscalemae_base_patch16(img_size=64, num_classes=2, depth=1)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    with torch.device('meta'):
        large = crossscalemae_large_patch16(img_size=64, num_classes=2)
        assert large(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_weights_at_default_and_other_image_size(mocked_weights: WeightsEnum) -> None:
    builder = BUILDERS[ENUMS.index(type(mocked_weights))]
    state = mocked_weights.get_state_dict(progress=False)
    model = builder(weights=mocked_weights)
    assert torch.equal(
        model.blocks[0].attn.qkv.weight, state['blocks.0.attn.qkv.weight']
    )
    model = builder(weights=mocked_weights, img_size=256)
    assert model.pos_embed.shape[1] == 1 + (256 // 16) ** 2
    assert torch.equal(model.blocks[0].mlp.fc2.weight, state['blocks.0.mlp.fc2.weight'])


def test_bands(weights: WeightsEnum) -> None:
    if 'bands' in weights.meta:
        assert len(weights.meta['bands']) == weights.meta['in_chans']


def test_transforms(weights: WeightsEnum) -> None:
    c = weights.meta['in_chans']
    image = torch.arange(c * 224 * 224, dtype=torch.float).view(c, 224, 224)
    out = weights.transforms({'image': image})
    assert out['image'].shape == (c, 224, 224)


def test_export_transforms(weights: WeightsEnum) -> None:
    """The transforms have no graph breaks."""
    torch.compiler.reset()
    c = weights.meta['in_chans']
    inputs = (torch.randn(1, c, 224, 224, dtype=torch.float),)
    torch.export.export(weights.transforms, inputs)
