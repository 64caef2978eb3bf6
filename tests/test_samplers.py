"""The grouped, resumable training sampler and its data loader (samplers.py)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback

from torchgeo_xscale.datamodules import GeoTIFFDataModule
from torchgeo_xscale.samplers import ExactPatchSampler, GroupedPatchSampler, grid_tiles
from torchgeo_xscale.tasks import CrossScaleMAETask


@pytest.fixture
def groups(make_geotiff, tmp_path):
    """Two GeoTIFF datasets on different grids."""
    from torchgeo_xscale.datasets import group_rasters

    make_geotiff(tmp_path / 'r' / 'a.tif', width=96, height=64)
    make_geotiff(tmp_path / 'r' / 'b.tif', width=64, height=64, res=2.0, seed=1)
    return [g.dataset() for g in group_rasters(tmp_path / 'r')]


def sampler(groups, **kwargs) -> GroupedPatchSampler:
    kwargs.setdefault('length', 20)
    kwargs.setdefault('batch_size', 4)
    samplers = [ExactPatchSampler(ds, size=16) for ds in groups]
    return GroupedPatchSampler(samplers, **kwargs)


def test_tiles_depend_on_seed_and_position_only(groups) -> None:
    a, b = sampler(groups, seed=1), sampler(groups, seed=1)
    first = list(a)
    assert len(first) == 20 and first == list(b)
    assert {g for g, _ in first} == {0, 1}
    assert list(sampler(groups, seed=2)) != first
    b.set_epoch(7)  # Lightning's call has no effect: the position decides
    assert list(b) == first
    a.position = 5  # epoch 1 from its first batch
    b.position = 3  # the last 2 batches of epoch 0, then 3 of epoch 1
    epoch1 = list(a)
    assert list(b) == first[12:] + epoch1[:12]
    assert a.current_epoch == 1 and epoch1 != first


def test_ranks_split_each_epoch(groups) -> None:
    ranks = [sampler(groups, length=18, num_replicas=2, rank=r) for r in (0, 1)]
    everything = ranks[0].epoch_tiles(0)
    assert ranks[0].batches_per_epoch == 2  # 9 tiles per rank, whole batches of 4
    assert list(ranks[0]) == everything[0:16:2] and list(ranks[1]) == everything[1:17:2]
    with pytest.raises(ValueError, match='length=6 gives 3 tiles per device'):
        sampler(groups, length=6, num_replicas=2, rank=0)


def test_state_dict_round_trip_and_changed_settings(groups, caplog) -> None:
    a = sampler(groups)
    a.position = 7
    b = sampler(groups)
    b.load_state_dict(a.state_dict())
    assert b.position == 7 and list(b) == list(a)
    other = sampler(groups, batch_size=2)  # 10 batches per epoch, not 5
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(a.state_dict())
    assert other.position == 10 and 'not an exact resume' in caplog.text


def test_grid_tiles_are_whole_and_flush(make_geotiff, tmp_path) -> None:
    from torchgeo_xscale.datasets import GeoTIFFDataset

    ds = GeoTIFFDataset(make_geotiff(tmp_path / 'g.tif', width=50, height=40))
    tiles = grid_tiles(ds, 16)
    xs = sorted({round((x.start - 500000.0) / 10) for x, _ in tiles})
    ys = sorted({round((5000000.0 - y.stop) / 10) for _, y in tiles})
    assert xs == [0, 16, 32, 34] and ys == [0, 16, 24]  # last tile flush with the edge
    assert all(ds[t]['valid'].all() for t in tiles)


def test_loader_counts_consumed_batches_not_prefetched(groups, tmp_path) -> None:
    dm = GeoTIFFDataModule(
        [f for ds in groups for f in ds.index.filepath],
        img_size=16,
        batch_size=4,
        length=20,
        num_workers=1,
        val_fraction=0,
        stats_cache=None,
    )
    dm.setup('fit')
    loader = dm.train_dataloader()
    iterator = iter(loader)
    first = [next(iterator)['bounds'] for _ in range(2)]
    assert loader.state_dict()['sampler']['position'] == 2  # workers fetched more
    rest = [b['bounds'] for b in iterator]
    again = GeoTIFFDataModule(
        [f for ds in groups for f in ds.index.filepath],
        img_size=16,
        batch_size=4,
        length=20,
        num_workers=1,
        val_fraction=0,
        stats_cache=None,
    )
    again.setup('fit')
    resumed = again.train_dataloader()
    resumed.load_state_dict(
        {'sampler': {**loader.state_dict()['sampler'], 'position': 2}}
    )
    got = [b['bounds'] for b in resumed][:3]
    assert all(torch.equal(a, b) for a, b in zip(got, rest))
    assert not any(torch.equal(a, first[0]) for a in got)


class Bounds(Callback):
    """Keep every training step's tile bounds."""

    def __init__(self) -> None:
        self.steps: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[trainer.global_step - 1] = batch['bounds'].clone()


def train(root: Path, rasters: Path, max_steps: int, ckpt: str | None = None):
    dm = GeoTIFFDataModule(
        rasters,
        img_size=32,
        batch_size=4,
        length=12,
        num_workers=1,
        val_fraction=0,
        stats_cache=None,
    )
    task = CrossScaleMAETask(**TINY_MODEL, log_image_every_n_steps=0)
    record = Bounds()
    trainer = Trainer(
        default_root_dir=root,
        accelerator='cpu',
        max_steps=max_steps,
        logger=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    return trainer, record.steps


def test_resume_mid_epoch_continues_the_tiles(make_geotiff, tmp_path, recwarn) -> None:
    """Stopped by max_steps mid-epoch (step 4 of epochs of 3) and continued: the
    tiles go on where they stopped, and Lightning no longer warns that the data
    loader is not resumable (today it warns and re-reads epoch 0's tiles)."""
    make_geotiff(tmp_path / 'r' / 'a.tif', width=128, height=96)
    _, reference = train(tmp_path / 'ref', tmp_path / 'r', max_steps=7)
    first, _ = train(tmp_path / 'run', tmp_path / 'r', max_steps=4)
    ckpt = tmp_path / 'mid.ckpt'
    first.save_checkpoint(ckpt)
    _, resumed = train(tmp_path / 'run', tmp_path / 'r', max_steps=7, ckpt=str(ckpt))
    assert sorted(resumed) == [4, 5, 6]
    for step, bounds in resumed.items():
        assert torch.equal(bounds, reference[step]), step
    assert not [w for w in recwarn if 'not resumable' in str(w.message)]
    assert np.isfinite(float(reference[6].sum()))
