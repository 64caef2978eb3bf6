"""``xscale fit`` takes the data's band count as ``--data.init_args.in_channels``
(TorchGeo's name, as the task's); ``in_chans`` from the command line or a config
file stops in one line naming the new key (exit status 2), before anything is
built."""

from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL, tiny_fit_args, write_geotiff

from torchgeo_xscale.cli import lightning_cli, main
from torchgeo_xscale.config import TINY_CONFIG

EXPECTED = (
    "xscale: error: in_chans was renamed in_channels (TorchGeo's name); expected "
    '--data.init_args.in_channels 3 (in Python: in_channels=3)'
)


@pytest.fixture
def fit_args(tmp_path: Path) -> list[str]:
    write_geotiff(tmp_path / 'data' / 'a.tif', width=64, height=64)
    return tiny_fit_args(tmp_path / 'data', tmp_path / 'run', TINY_MODEL)


def test_data_in_channels_on_the_command_line(fit_args: list[str]) -> None:
    cli = lightning_cli([*fit_args[1:], '--data.init_args.in_channels', '3'], run=False)
    assert cli.datamodule.kwargs['in_channels'] == 3


def test_data_in_chans_is_refused(
    fit_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*fit_args, '--data.init_args.in_chans', '3']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [EXPECTED]
    assert main([*fit_args, '--data.in_chans', '3']) == 2  # the short form too
    assert capsys.readouterr().err.strip().splitlines() == [EXPECTED]
    # a config file written for the old name (the shipped tiny config, edited)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config['data']['init_args']['in_chans'] = 3
    path = tmp_path / 'old.yaml'
    path.write_text(yaml.safe_dump(config))
    assert main(['fit', '--config', str(path), *fit_args[1:]]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == EXPECTED
    assert not (tmp_path / 'run').exists()  # refused before anything was built
