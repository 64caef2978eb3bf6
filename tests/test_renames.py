"""The band count is ``in_channels`` wherever a TorchGeo user configures it (issue
20c): datasets, datamodules, tasks, evaluation dataset builders, configs; the old
``in_chans`` is refused in one line naming the new key, and saved old names are read
as the new ones."""

import inspect
from pathlib import Path

import pytest
import yaml

from torchgeo_xscale.config import TINY_CONFIG, read_config
from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.datasets import GeoTIFFDataset
from torchgeo_xscale.datasets.rasters import validate_rasters
from torchgeo_xscale.evaluation import (
    build_classification_dataset,
    prepare_classification,
)
from torchgeo_xscale.evaluation.scale_transfer import prepare_level_splits
from torchgeo_xscale.renames import (
    RENAMED_ARGS,
    refuse_renamed,
    renamed_message,
    renamed_overrides,
    upgrade_renamed,
)
from torchgeo_xscale.tasks import CrossScaleMAETask
from torchgeo_xscale.tasks.pretrain import in_chans_renamed

#: TorchGeo-facing APIs taking the band count, and the argument before it (their
#: positional order is unchanged by the rename).
TORCHGEO_FACING = {
    GeoTIFFDataset.__init__: 'bands',
    GeoTIFFDataModule.__init__: 'std',
    validate_rasters: 'bands',
    build_classification_dataset: 'bands',
    prepare_classification: 'size',
    prepare_level_splits: 'size',
    CrossScaleMAETask.__init__: 'patch_size',
}


def test_messages() -> None:
    assert RENAMED_ARGS == {'in_chans': 'in_channels'}
    assert renamed_message('in_chans', 4) == (
        "in_chans was renamed in_channels (TorchGeo's name); expected in_channels=4"
    )
    assert renamed_message('in_chans', 4, 'data') == (
        "in_chans was renamed in_channels (TorchGeo's name); expected "
        '--data.init_args.in_channels 4 (in Python: in_channels=4)'
    )
    task = in_chans_renamed(4)  # the task's, one text with the others
    assert task.startswith(
        "in_chans was renamed in_channels (TorchGeo's name); expected "
        '--model.init_args.in_channels 4 (in Python: in_channels=4; a checkpoint '
    )
    assert 'load_from_checkpoint(path, in_chans=None, in_channels=4)' in task
    refuse_renamed('in_chans', None)  # not given: nothing to refuse
    with pytest.raises(ValueError, match=r'^in_chans was renamed in_channels'):
        refuse_renamed('in_chans', 0)


def test_saved_old_names_read_as_new() -> None:
    old = {'in_chans': 4, 'img_size': 32}
    assert upgrade_renamed(old)[0] == {'in_channels': 4, 'img_size': 32}
    overrides, notes = renamed_overrides(old)
    assert overrides == {'in_chans': None, 'in_channels': 4}
    assert notes == [
        'stores in_chans=4 (written before in_chans was renamed in_channels); read '
        'as in_channels=4'
    ]
    # given explicitly, the new name wins (no note); the old name, the caller's
    assert renamed_overrides(old, {'in_channels': 5}) == ({'in_chans': None}, [])
    assert renamed_overrides(old, {'in_chans': 5}) == ({}, [])
    new = {'in_chans': None, 'in_channels': 3}  # saved after the rename
    assert renamed_overrides(new) == ({}, [])
    assert upgrade_renamed(new) == (new, [])


@pytest.mark.parametrize(
    'function', list(TORCHGEO_FACING), ids=lambda f: f.__qualname__
)
def test_torchgeo_facing_apis_take_in_channels(function) -> None:
    """``in_channels`` in the old position; ``in_chans`` only as a keyword that
    raises (so positional calls of other modules keep working)."""
    params = list(inspect.signature(function).parameters.values())
    names = [p.name for p in params]
    before = TORCHGEO_FACING[function]
    assert names[names.index(before) + 1] == 'in_channels'
    old = params[names.index('in_chans')]
    assert old.default is None
    assert old.kind is inspect.Parameter.KEYWORD_ONLY or old is params[-1]


def test_dataset_and_datamodule_refuse_in_chans(utm_raster: Path) -> None:
    assert GeoTIFFDataset(utm_raster, in_channels=3).num_bands == 3
    with pytest.raises(ValueError, match=r'^in_chans was renamed') as err:
        GeoTIFFDataset(utm_raster, in_chans=3)
    assert str(err.value).endswith('expected in_channels=3')
    with pytest.raises(ValueError, match=r'^in_chans was renamed'):
        validate_rasters([str(utm_raster)], None, in_chans=3)
    assert validate_rasters([str(utm_raster)], None, 3)[0] == 3
    with pytest.raises(
        ValueError, match=r'expected --data\.init_args\.in_channels 3 \(in Python'
    ) as err:
        GeoTIFFDataModule(utm_raster, in_chans=3)
    assert '\n' not in str(err.value)


def test_read_config_refuses_in_chans(tmp_path: Path) -> None:
    """The demo and the study read configs here: the old key in either section
    stops with the file and the new key."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    for section in ('data', 'model'):
        old = yaml.safe_load(yaml.safe_dump(config))
        old[section]['init_args']['in_chans'] = 3
        old[section]['init_args'].pop('in_channels', None)
        path = tmp_path / f'{section}.yaml'
        path.write_text(yaml.safe_dump(old))
        with pytest.raises(
            ValueError,
            match=rf'^config .*{section}\.yaml: in_chans was renamed in_channels .*'
            rf'--{section}\.init_args\.in_channels 3',
        ):
            read_config(path)
    assert read_config(TINY_CONFIG)['model']['init_args']['in_channels'] == 3
