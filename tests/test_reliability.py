"""Interrupted runs, atomic writes and multi-process training (issue: reliability)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import TINY_MODEL, logged_scalars

from torchgeo_xscale.io import AtomicCheckpointIO, atomic_path, atomic_torch_save
from torchgeo_xscale.masks import MaskInfo
from torchgeo_xscale.models import CrossScaleMAE

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_MODEL


def xscale(
    args: list[str], cwd: Path, extra_path: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    if extra_path is not None:
        env['PYTHONPATH'] = os.pathsep.join(
            [str(extra_path), env.get('PYTHONPATH', '')]
        )
    return subprocess.run(
        [sys.executable, '-m', 'torchgeo_xscale', *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config(tmp: Path, rasters: Path, callbacks: list | None = None, **trainer) -> Path:
    cfg = {
        'seed_everything': 3,
        'model': {
            'class_path': 'torchgeo_xscale.tasks.CrossScaleMAETask',
            'init_args': {**TINY, 'warmup_epochs': 1, 'log_image_every_n_steps': 0},
        },
        'data': {
            'class_path': 'torchgeo_xscale.datamodules.GeoTIFFDataModule',
            'init_args': {
                'paths': str(rasters),
                'img_size': 32,
                'patch_size': 32,
                'batch_size': 4,
                'length': 12,
                'stats_cache': None,
            },
        },
        'trainer': {
            'accelerator': 'cpu',
            'devices': 1,
            'max_epochs': 3,
            'log_every_n_steps': 1,
            'limit_val_batches': 0,
            'enable_progress_bar': False,
            'callbacks': [
                {
                    'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint',
                    'init_args': {'save_last': True, 'save_top_k': 1},
                }
            ]
            + (callbacks or []),
            **trainer,
        },
    }
    path = tmp / f'config{len(list(tmp.glob("config*.yaml")))}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def step_losses(root: Path) -> dict[int, float]:
    """Per-step training losses logged under *root* (TensorBoard or CSV)."""
    return logged_scalars(root).get('train_loss_step', {})


def test_atomic_checkpoint_keeps_previous_file_on_failure(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / 'last.ckpt'
    io.save_checkpoint({'step': 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('disk full (simulated)')

    with pytest.raises(RuntimeError, match='disk full'):
        io.save_checkpoint({'step': 2, 'bad': Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {'step': 1}
    assert os.listdir(tmp_path) == ['last.ckpt']


def test_atomic_path_and_torch_save(tmp_path: Path) -> None:
    target = tmp_path / 'sub' / 'out.txt'
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            Path(tmp).write_text('half')
            raise OSError(28, 'No space left on device')
    assert not target.exists() and os.listdir(tmp_path / 'sub') == []
    atomic_torch_save({'a': torch.ones(1)}, target)
    assert torch.load(target)['a'].item() == 1.0


def _slice_masks(masks: MaskInfo, views: int, batch: int, rows: slice) -> MaskInfo:
    def take(x):
        return x.view(views, batch, *x.shape[1:])[:, rows].reshape(-1, *x.shape[1:])

    return MaskInfo(take(masks.ids_keep), take(masks.ids_restore), take(masks.mask))


def _ddp_model_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        model = CrossScaleMAE(**TINY)
        views = torch.randn(8, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        masks = model.draw_masks(
            8, 2, torch.device('cpu'), torch.Generator().manual_seed(2)
        )
        rows = slice(rank * 4, rank * 4 + 4)
        out = model(views[rows], masks=_slice_masks(masks, 2, 8, rows))
        out.loss.backward()
        losses = [torch.empty(()) for _ in range(world)]
        dist.all_gather(losses, out.loss.detach())
        grad = model.projection_head[0].weight.grad.clone()
        dist.all_reduce(grad)
        torch.save(
            {'loss': torch.stack(losses).mean(), 'grad': grad / world},
            f'{init_file}.{rank}',
        )
    finally:
        dist.destroy_process_group()


def test_model_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    """Two gloo processes on halves of a batch (negatives from both) give the loss and
    DDP-averaged gradients of one process on the whole batch."""
    mp.spawn(_ddp_model_worker, args=(2, str(tmp_path / 'pg')), nprocs=2, join=True)
    got = torch.load(str(tmp_path / 'pg') + '.0')
    torch.manual_seed(0)
    model = CrossScaleMAE(**TINY)
    views = torch.randn(8, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    masks = model.draw_masks(
        8, 2, torch.device('cpu'), torch.Generator().manual_seed(2)
    )
    out = model(views, masks=masks)
    out.loss.backward()
    assert got['loss'] == pytest.approx(out.loss.item(), rel=1e-5)
    assert torch.allclose(
        got['grad'], model.projection_head[0].weight.grad, atol=1e-6, rtol=1e-4
    )
