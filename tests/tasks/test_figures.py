"""TensorBoard is the default logger of ``xscale fit``; figures go to it and to PNGs."""

from pathlib import Path

from conftest import TINY_MODEL, write_geotiff
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchgeo_xscale.cli import lightning_cli
from torchgeo_xscale.tasks.figures import resolve_log_dir

CONFIG = Path(__file__).parents[2] / 'configs' / 'pretrain' / 'xscale_tiny_geotiff.yaml'


def test_fit_logs_to_tensorboard_with_figure(tmp_path: Path, recwarn) -> None:
    write_geotiff(tmp_path / 'data' / 'a.tif', width=96, height=96)
    args = ['fit', '--config', str(CONFIG), '--data.paths', str(tmp_path / 'data')]
    args += ['--data.img_size', '32', '--data.patch_size', '32']
    args += ['--data.batch_size', '2', '--data.length', '2']
    args += ['--data.stats_cache', str(tmp_path / 'stats')]
    args += ['--trainer.max_steps', '1', '--trainer.limit_val_batches', '1']
    args += ['--trainer.enable_progress_bar', 'false', '--trainer.accelerator', 'cpu']
    args += ['--trainer.default_root_dir', str(tmp_path / 'run')]
    args += [arg for k, v in TINY_MODEL.items() for arg in (f'--model.{k}', str(v))]
    cli = lightning_cli(args)
    assert isinstance(cli.trainer.logger, TensorBoardLogger)
    assert not [w for w in recwarn if 'CSVLogger' in str(w.message)]
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == tmp_path / 'run' / 'lightning_logs' / 'version_0'
    assert (log_dir / 'reconstructions' / 'step_0000000.png').is_file()
    (events,) = log_dir.glob('events.out.tfevents.*')
    accumulator = EventAccumulator(str(events), size_guidance={'images': 0})
    accumulator.Reload()
    assert accumulator.Tags()['images'] == ['reconstruction']
    (image,) = accumulator.Images('reconstruction')
    assert image.step == 0 and image.width > 100 and image.height > 100
    assert 'val_loss' in accumulator.Tags()['scalars']


def test_resolve_log_dir_without_logger(tmp_path: Path) -> None:
    trainer = Trainer(logger=False, default_root_dir=str(tmp_path), accelerator='cpu')
    assert resolve_log_dir(trainer) == str(tmp_path)
