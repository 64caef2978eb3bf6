"""Multi-process training with the shipped configs: figures on rank 0 never hang a run.

Each test runs ``xscale fit`` with a shipped config unchanged except for sizes and
steps (image logging on, a figure due within the steps, validation on, the shipped
``num_workers``) in 2 gloo CPU processes, under a hard timeout that kills the whole
process group.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, write_geotiff
from isprs_layout import make_vaihingen, tiny_overrides
from lightning.pytorch import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchgeo_xscale.models.vit import build_vit
from torchgeo_xscale.tasks import CrossScaleMAETask

REPO = Path(__file__).resolve().parents[1]
#: Lightning's message when it falls back to CSV for want of TensorBoard.
CSV_FALLBACK = 'will use `CSVLogger` as the default logger'
DDP = [
    '--trainer.devices',
    '2',
    '--trainer.accelerator',
    'cpu',
    '--trainer.strategy',
    'ddp',
    '--trainer.enable_progress_bar',
    'false',
]


#: A callback that makes the loss of process 1 (only) non-finite at step 0.
POISON_CALLBACK = textwrap.dedent(
    """
    from lightning.pytorch.callbacks import Callback

    class PoisonRankOne(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_rank == 1 and trainer.global_step == 0:
                batch['views'].fill_(float('nan'))
    """
)


def failure_output(out: str, size: int = 3000) -> str:
    """The end of the output and, first, the end of every rank's traceback.

    A rank that crashes makes the others fail at their next collective; its own
    traceback is then far from the end of the output.
    """
    parts = []
    for rank in ('[rank0]', '[rank1]'):
        lines = [line for line in out.splitlines() if line.startswith(rank)]
        if lines:
            parts.append('\n'.join(lines)[-size:])
    return '\n...\n'.join([*parts, out[-size:]])


def run_xscale(
    args: list[str], cwd: Path, timeout: float = 240, path: Path | None = None
) -> tuple[int, str]:
    """Run ``xscale ARGS`` in its own process group; kill the group on timeout.

    Returns:
        The exit status (``-9`` after a timeout) and stdout + stderr.
    """
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    if path is not None:
        env['PYTHONPATH'] = os.pathsep.join([str(path), env.get('PYTHONPATH', '')])
    proc = subprocess.Popen(
        [sys.executable, '-m', 'torchgeo_xscale', *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank Lightning started
        out, _ = proc.communicate()
        return -9, f'timed out after {timeout} s (hang)\n{out}'
    return proc.returncode, out


def tensorboard_tags(run: Path) -> dict[str, list[str]]:
    """Tags of the TensorBoard event files under *run*."""
    events = sorted(run.rglob('events.out.tfevents.*'))
    assert events, f'no TensorBoard event file under {run}'
    tags: dict[str, list[str]] = {}
    for path in events:
        accumulator = EventAccumulator(str(path), size_guidance={'images': 0})
        accumulator.Reload()
        for kind, names in accumulator.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, []).extend(names)
    return tags


def _pretrain_args(tmp_path: Path, run: Path, *extra: str) -> list[str]:
    """The shipped tiny pretraining config at test size, 2 steps, 2 processes."""
    make = tmp_path / 'rasters' / 'a.tif'
    if not make.exists():
        write_geotiff(make, width=160, height=160)
    return [
        'fit',
        '--config',
        str(REPO / 'configs' / 'pretrain' / 'xscale_tiny_geotiff.yaml'),
        '--data.paths',
        str(tmp_path / 'rasters'),
        '--data.batch_size',
        '4',
        '--data.length',
        '16',
        '--trainer.max_epochs',
        '1',
        '--trainer.limit_train_batches',
        '2',
        '--trainer.limit_val_batches',
        '2',
        '--trainer.default_root_dir',
        str(run),
        *DDP,
        *extra,
    ]


@pytest.mark.slow
def test_pretraining_ddp_shipped_config_saves_figure(tmp_path: Path) -> None:
    """The tiny pretraining config (figure due at step 0) in 2 processes finishes."""
    run = tmp_path / 'run'
    code, out = run_xscale(_pretrain_args(tmp_path, run), tmp_path)
    assert code == 0, failure_output(out)
    log_dir = run / 'lightning_logs' / 'version_0'
    assert (log_dir / 'reconstructions' / 'step_0000000.png').is_file(), out[-2000:]
    assert not list(run.rglob('version_1'))  # both ranks agreed on one folder
    ckpt = torch.load(next(run.rglob('last.ckpt')), weights_only=False)
    assert ckpt['global_step'] == 2
    # TensorBoard is the default logger (no CSV fallback) and got the figure
    assert CSV_FALLBACK not in out
    tags = tensorboard_tags(run)
    assert 'reconstruction' in tags['images']
    assert {'train_loss_epoch', 'val_loss'} <= set(tags['scalars'])


@pytest.mark.slow
def test_pretraining_ddp_nonfinite_on_one_rank_stops_all(tmp_path: Path) -> None:
    """A NaN loss in process 1 only: every process stops, naming it (no hang).

    L_re only: the contrastive losses gather embeddings from every process, which
    would spread the NaN to all of them.
    """
    (tmp_path / 'poison.py').write_text(POISON_CALLBACK)
    run = tmp_path / 'run'
    extra = ['--trainer.callbacks+=poison.PoisonRankOne']
    extra += [
        '--model.init_args.loss_cc',
        'false',
        '--model.init_args.loss_cp',
        'false',
    ]
    args = _pretrain_args(tmp_path, run, *extra)
    code, out = run_xscale(args, tmp_path, path=tmp_path)
    assert code not in (0, -9), out[-4000:]
    assert 'FloatingPointError: non-finite loss nan at step 0' in out
    assert 'FloatingPointError: non-finite loss in another process at step 0' in out


def test_nonfinite_skip_with_several_processes_is_refused(tmp_path: Path) -> None:
    """Lightning cannot skip a step in distributed training: refused at setup."""
    task = CrossScaleMAETask(**TINY_MODEL, nonfinite='skip')
    trainer = Trainer(
        accelerator='cpu',
        devices=2,
        strategy='ddp',
        logger=False,
        default_root_dir=str(tmp_path),
    )
    task.trainer = trainer  # as Lightning attaches it; no process is launched
    with pytest.raises(ValueError, match=r"^nonfinite='skip' with 2 processes: "):
        task.setup('fit')
    task.setup('validate')  # only training skips steps


@pytest.mark.slow
def test_segmentation_ddp_shipped_config_saves_figure(tmp_path: Path) -> None:
    """The Vaihingen config at tiny size in 2 processes: validation figure, clean end."""
    root = make_vaihingen(tmp_path / 'vaihingen')
    torch.manual_seed(0)
    vit = build_vit('tiny', embed_dim=32, depth=2, num_heads=2, img_size=64)
    torch.save(vit.state_dict(), tmp_path / 'encoder.pth')  # offline: no download
    run = tmp_path / 'run'
    code, out = run_xscale(
        [
            'fit',
            '--config',
            str(REPO / 'configs' / 'segmentation' / 'vaihingen.yaml'),
            # the shipped num_workers and precision kept
            *tiny_overrides(
                root, run, tmp_path / 'encoder.pth', num_workers=None, precision=None
            ),
            *DDP,
        ],
        tmp_path,
    )
    assert code == 0, failure_output(out)
    log_dir = run / 'lightning_logs' / 'version_0'
    assert (log_dir / 'predictions' / 'epoch_0000.png').is_file(), out[-2000:]
    assert next(run.rglob('last.ckpt')).is_file()
    assert CSV_FALLBACK not in out
    tags = tensorboard_tags(run)
    assert 'predictions/epoch_0000.png' in tags['images']
    assert 'val_AverageJaccardIndex' in tags['scalars']
