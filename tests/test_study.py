"""The equal-budget study on several rasters (bands, CRSs and sizes differ)."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from torchgeo.tasks import MAE

from torchgeo_xscale.models.cross_scale_mae import PAPER_LITERAL
from torchgeo_xscale.study import (
    ABLATIONS,
    DEFAULT_METHODS,
    StudyConfig,
    StudyDataModule,
    build_task,
    run_study,
)
from torchgeo_xscale.tasks import CrossScaleMAETask


def test_study_datamodule_mixes_rasters_with_their_own_bands(
    make_geotiff, tmp_path: Path
) -> None:
    rgb = make_geotiff(tmp_path / 'rgb.tif', width=96, height=64)
    four = make_geotiff(
        tmp_path / 'four.tif',
        bands=4,
        dtype='uint16',
        crs='EPSG:4326',
        width=64,
        height=96,
    )
    dm = StudyDataModule(
        [(str(rgb), None), (str(four), (3, 2, 1))],
        img_size=32,
        batch_size=4,
        length=8,
        val_fraction=0.3,
        seed=0,
    )
    dm.setup('fit')
    assert [len(c.train_sampler) for c in dm.children] == [4, 4]  # equal shares
    batches = list(dm.train_dataloader())
    assert sum(b['image'].shape[0] for b in batches) == 8
    files = {f for b in batches for f in b['files']}
    assert files == {str(rgb), str(four)}
    assert all(b['image'].shape[1] == 3 for b in batches)
    # each raster normalised by its own statistics
    assert dm.children[1].mean.numel() == 3
    for path in (rgb, four):
        pixels = torch.cat(
            [
                b['image'][i]
                for b in batches
                for i, f in enumerate(b['files'])
                if f == str(path)
            ]
        )
        assert abs(float(pixels.mean())) < 0.5 and 0.5 < float(pixels.std()) < 1.5
    # the same tiles for the same epoch, other tiles for another
    dm.train_sampler.set_epoch(0)
    first = list(dm.train_sampler)
    dm.train_sampler.set_epoch(0)
    assert [str(k) for k in dm.train_sampler] == [str(k) for k in first]
    dm.train_sampler.set_epoch(1)
    assert [str(k) for k in dm.train_sampler] != [str(k) for k in first]
    batch = dm.on_after_batch_transfer(batches[0], 0)
    assert batch['views'].shape[1:] == (2, 3, 32, 32)


def test_paper_literal_and_ablations() -> None:
    config = StudyConfig(model=dict(TINY_MODEL))
    paper = build_task('xscale_paper', config)
    assert {k: paper.hparams[k] for k in PAPER_LITERAL} == PAPER_LITERAL
    assert {'xscale_paper', 'xscale_re_cc', 'xscale_re_cp'} <= set(ABLATIONS)
    crop = build_task('xscale_crop', config)  # view_mode goes to the datamodule
    assert 'view_mode' not in crop.hparams
    out = build_task('xscale_re', config).model(torch.randn(2, 2, 3, 32, 32))
    assert set(out.parts) == {'re'} and out.pred.shape[1] == 2  # both views
    variant = build_task(
        'tau',
        StudyConfig(model=dict(TINY_MODEL), variants={'tau': {'temperature': 0.1}}),
    )
    assert variant.hparams['temperature'] == 0.1


def test_study_runs_end_to_end(make_geotiff, tmp_path: Path) -> None:
    rasters = [
        make_geotiff(tmp_path / 'a.tif', width=128, height=96),
        make_geotiff(tmp_path / 'b.tif', crs='EPSG:4326', width=96, height=128, seed=1),
    ]
    config = StudyConfig(
        seeds=(0,),
        epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        model=dict(TINY_MODEL),
        rasters=[str(r) for r in rasters],
        output=str(tmp_path / 'study'),
        num_workers=0,
        accelerator='cpu',
        repeats=1,
        max_tiles_per_raster=6,
    )
    result = run_study(config, command='xscale study --test')
    runs = {r['method']: r for r in result['runs']}
    assert tuple(runs) == DEFAULT_METHODS
    assert {r['tiles_seen'] for r in runs.values()} == {8}  # equal budget
    assert runs['cross_scale_mae']['final_cp_target_std'] > 0
    pooled = [r for r in result['retrieval'] if r['raster'] == 'all']
    assert {r['model'] for r in pooled} == {*DEFAULT_METHODS, 'random_init'}
    per_raster = {
        r['raster']: r['n']
        for r in result['retrieval']
        if r['raster'] != 'all' and r['model'] == 'mae'
    }
    assert {r['n'] for r in pooled} == {sum(per_raster.values())}
    assert max(per_raster.values()) <= 6  # max_tiles_per_raster
    assert {r['raster'] for r in result['retrieval']} == {'all', 'a', 'b'}
    assert {r['model'] for r in result['reconstruction']} == set(runs)
    text = Path(result['summary']).read_text()
    assert 'xscale study --test' in text and '± ' in text and 'load average' in text
    assert 'cross_scale_mae vs mae' in text
    for name in (
        'eval_study_retrieval.png',
        'eval_study_ssim.png',
        'eval_study_reconstruction_grid.png',
        'retrieval.csv',
        'reconstruction.csv',
        'runs.csv',
    ):
        assert (tmp_path / 'study' / name).stat().st_size > 0
    with pytest.raises(ValueError, match='method'):
        run_study(StudyConfig(methods=('simclr',), output=str(tmp_path / 'x')))


@pytest.mark.slow
def test_study_ablations_switch_losses_off() -> None:
    config = StudyConfig(model=dict(TINY_MODEL))
    for method, off in (('xscale_re_cc', 'cp'), ('xscale_re_cp', 'cc')):
        task = build_task(method, config)
        assert not task.hparams[f'loss_{off}']
        out = task.model(torch.randn(2, 2, 3, 32, 32))
        assert off not in out.parts and 're' in out.parts
    with pytest.raises(ValueError, match='xscale_re_cc'):
        build_task('nope', config)
    with pytest.raises(ValueError, match='xscale_re_cp'):
        run_study(StudyConfig(methods=('nope',)))


def test_build_task_matches_dimensions() -> None:
    config = StudyConfig(model=dict(TINY_MODEL))
    ours, plain, peer = (
        build_task(m, config) for m in ('cross_scale_mae', 'mae', 'torchgeo_mae')
    )
    assert (
        isinstance(ours, CrossScaleMAETask)
        and not plain.model.use_cc
        and not plain.model.use_cp
    )
    assert isinstance(peer, MAE) and not peer.hparams['norm_pix_loss']
    enc, vit = ours.model.encoder, peer.backbone.vit
    assert (vit.embed_dim, len(vit.blocks), vit.patch_embed.img_size) == (
        enc.embed_dim,
        len(enc.blocks),
        (32, 32),
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (
        abs(count(vit) - count(enc)) <= vit.pos_embed.numel()
    )  # only the (learned) pos_embed differs
    with pytest.raises(ValueError, match='method'):
        build_task('byol', config)
