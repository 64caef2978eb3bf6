"""Exact resume as users run it: the shipped tiny config (sizes reduced only, its
``num_workers: 1`` and image logging kept), stopped mid-epoch by ``max_steps``,
SIGKILLed, resumed with ``--ckpt_path last.ckpt``; one process and two DDP (gloo)
processes. Every step's loss, tile bounds and views equal the uninterrupted run's."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / 'configs' / 'pretrain' / 'xscale_tiny_geotiff.yaml'

RECORDER = textwrap.dedent(
    '''
    import json, os, signal
    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        """Write every step's loss, tile bounds and views; SIGKILL at a step."""

        def __init__(self, path: str, kill_at: int = -1) -> None:
            self.path, self.kill_at = path, kill_at

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real crash, every rank

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            row = {
                'step': trainer.global_step - 1,
                'loss': float(outputs['loss']),
                'bounds': batch['bounds'].tolist(),
                'views': float(batch['views'].double().sum()),
            }
            with open(f'{self.path}.{trainer.global_rank}', 'a') as f:
                f.write(json.dumps(row) + '\\n')
    '''
)


def fit(tmp: Path, name: str, *extra: str, kill_at: int = -1, devices: int = 1):
    """``xscale fit`` of the shipped tiny config, sizes reduced, in a subprocess."""
    args = ['fit', '--config', str(TINY_CONFIG), '--data.paths', str(tmp / 'rasters')]
    for key, value in TINY_MODEL.items():
        args += [f'--model.{key}', str(value)]
    args += ['--data.img_size', '32', '--data.patch_size', '32']
    args += ['--data.batch_size', '4', '--data.length', str(12 * devices)]
    args += ['--data.stats_cache', str(tmp / 'stats'), '--seed_everything', '3']
    args += ['--trainer.accelerator', 'cpu', '--trainer.devices', str(devices)]
    args += [
        '--trainer.enable_progress_bar',
        'false',
        '--trainer.log_every_n_steps',
        '1',
    ]
    args += ['--trainer.default_root_dir', str(tmp / name)]
    args += ['--trainer.callbacks+=recorder.Record']
    args += [f'--trainer.callbacks.path={tmp / name}.jsonl']
    args += [f'--trainer.callbacks.kill_at={kill_at}']
    if devices > 1:
        args += ['--trainer.strategy', 'ddp']
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(tmp), env.get('PYTHONPATH', '')])
    return subprocess.run(
        [sys.executable, '-m', 'torchgeo_xscale', *args, *extra],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def steps(tmp: Path, *names: str, rank: int = 0) -> dict[int, dict]:
    """The recorded steps of the runs *names* (later runs overwrite earlier)."""
    rows: dict[int, dict] = {}
    for name in names:
        path = tmp / f'{name}.jsonl.{rank}'
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[row['step']] = row
    return rows


def last_checkpoint(tmp: Path, name: str) -> Path:
    """The newest ``last.ckpt`` of the runs in *name* (one log version per run)."""
    return max((tmp / name).rglob('last.ckpt'), key=lambda p: p.stat().st_mtime_ns)


def write_inputs(tmp: Path) -> None:
    """Two rasters on different grids, and the recorder callback."""
    from conftest import write_geotiff

    write_geotiff(tmp / 'rasters' / 'a.tif', width=128, height=96)
    write_geotiff(tmp / 'rasters' / 'b.tif', width=64, height=64, res=2.5, seed=1)
    (tmp / 'recorder.py').write_text(RECORDER)


def reference(tmp: Path, devices: int) -> dict[int, dict[int, dict]]:
    """The uninterrupted run: 3 epochs of 3 steps, per rank."""
    run = fit(tmp, 'ref', '--trainer.max_epochs', '3', devices=devices)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = {rank: steps(tmp, 'ref', rank=rank) for rank in range(devices)}
    assert sorted(ref[0]) == list(range(9))
    if devices > 1:  # the ranks read different tiles
        assert ref[0][0]['bounds'] != ref[1][0]['bounds']
    return ref


def kill_and_resume(
    tmp: Path,
    name: str,
    ref: dict[int, dict[int, dict]],
    kill_at: int,
    killed_args: list[str],
    resumed_args: list[str],
    devices: int,
) -> None:
    """SIGKILL a run at step *kill_at*, resume it from last.ckpt; compare every step."""
    killed = fit(tmp, name, *killed_args, kill_at=kill_at, devices=devices)
    assert killed.returncode == -9, killed.stderr[-3000:]  # really killed
    ckpt = last_checkpoint(tmp, name)
    saved = torch.load(ckpt, weights_only=False)['global_step']
    assert saved == 3 * (kill_at // 3)  # the end of the last whole epoch
    resumed = fit(tmp, name, *resumed_args, '--ckpt_path', str(ckpt), devices=devices)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in range(devices):
        got = steps(tmp, name, rank=rank)
        assert sorted(got) == list(range(9)), name
        for step, row in got.items():
            want, where = ref[rank][step], (name, rank, step)
            assert row['bounds'] == want['bounds'], where
            assert row['views'] == pytest.approx(want['views'], rel=1e-6), where
            assert row['loss'] == pytest.approx(want['loss'], rel=1e-5, abs=1e-6), where


@pytest.mark.slow
def test_resume_is_exact_single_process(tmp_path: Path) -> None:
    """With max_epochs (killed at 7, resumed from step 6) and with max_steps
    (killed at 4, resumed from step 3): both equal the uninterrupted run."""
    write_inputs(tmp_path)
    ref = reference(tmp_path, devices=1)
    epochs = ['--trainer.max_epochs', '3']
    kill_and_resume(tmp_path, 'epochs', ref, 7, epochs, epochs, devices=1)
    max_steps = ['--trainer.max_steps', '9']
    kill_and_resume(tmp_path, 'max_steps', ref, 4, max_steps, max_steps, devices=1)


@pytest.mark.slow
def test_resume_is_exact_two_ddp_processes(tmp_path: Path) -> None:
    """Two gloo processes: killed at 7 (max_epochs), resumed with max_steps."""
    write_inputs(tmp_path)
    ref = reference(tmp_path, devices=2)
    killed, resumed = ['--trainer.max_epochs', '3'], ['--trainer.max_steps', '9']
    kill_and_resume(tmp_path, 'ddp', ref, 7, killed, resumed, devices=2)
