"""The shipped configs: one source of the demo's model, sizes tied, bands that fit."""

import copy
from pathlib import Path

import pytest
import rasterio
import yaml

from torchgeo_xscale.config import (
    ARCHITECTURE_KEYS,
    CONFIG_DIR,
    TINY_CONFIG,
    link_img_size,
    load_model_args,
    read_config,
)
from torchgeo_xscale.study import StudyConfig

PRETRAIN_CONFIGS = sorted((CONFIG_DIR / 'pretrain').glob('*.yaml'))


def test_study_model_is_the_tiny_configs_architecture() -> None:
    """The study's ViT comes from the shipped tiny config, not from a copy of it."""
    init_args = yaml.safe_load(TINY_CONFIG.read_text())['model']['init_args']
    model = StudyConfig().model
    assert model == {k: v for k, v in init_args.items() if k in ARCHITECTURE_KEYS}
    assert (model['embed_dim'], model['depth'], model['patch_size']) == (128, 4, 8)
    assert load_model_args(TINY_CONFIG)['base_lr'] == init_args['base_lr']


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_pretrain_configs_tie_the_view_size(path: Path) -> None:
    config = read_config(path)
    size = config['model']['init_args']['img_size']
    assert link_img_size(config, path.name)['data']['init_args']['img_size'] == size


def test_link_img_size_sets_and_refuses_a_drifted_size() -> None:
    config = read_config(TINY_CONFIG)
    config['model']['init_args']['img_size'] = 32
    with pytest.raises(
        ValueError,
        match=r'^tiny: data.init_args.img_size=64 but model.init_args.img_size=32; '
        'expected the same value',
    ):
        link_img_size(copy.deepcopy(config), 'tiny')
    del config['data']['init_args']['img_size']
    assert link_img_size(config)['data']['init_args']['img_size'] == 32


def test_read_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r'^config .*nope.yaml does not exist'):
        read_config(tmp_path / 'nope.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('trainer: {max_steps: 1}\n')
    with pytest.raises(ValueError, match=r'^config .*bad.yaml has no model.init_args'):
        read_config(bad)


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_default_paths_into_the_demo_data_have_the_models_bands(
    path: Path, example_rgb: Path
) -> None:
    """A config whose default paths point at what the demo downloads (data/example:
    1- and 3-band files) reads files with the model's band count (today the
    paper-literal config takes the whole folder)."""
    config = read_config(path)
    paths = config['data']['init_args']['paths']
    paths = [paths] if isinstance(paths, str) else paths
    inside = [p for p in paths if Path(p).parts[:2] == ('data', 'example')]
    if not inside:
        pytest.skip(f'{path.name} does not default to data/example')
    bands = config['model']['init_args'].get('in_channels', 3)
    for p in inside:
        local = example_rgb.parent.joinpath(*Path(p).parts[2:])
        files = sorted(local.glob('*.tif')) if local.is_dir() else [local]
        for file in files:
            with rasterio.open(file) as src:
                assert src.count == bands, f'{path.name}: {p} -> {file.name}'
