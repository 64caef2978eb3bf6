"""fMoW-RGB dataset, datamodule and the paper configs, on a generated fMoW layout."""

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import logged_scalars
from fmow_layout import LAYOUT, write_fmow, write_fmow_image
from PIL import Image

from torchgeo_xscale.datamodules.fmow import FMoWDataModule
from torchgeo_xscale.datasets.fmow import (
    FMOW_CATEGORIES,
    FMOW_RGB_MEAN,
    FMOW_RGB_STD,
    FMoWInputError,
    FMoWRGB,
)

CONFIGS = Path(__file__).parents[2] / 'configs' / 'paper'


@pytest.fixture
def fmow_root(tmp_path: Path) -> Path:
    return write_fmow(tmp_path / 'fmow-rgb')


def by_name(dataset: FMoWRGB) -> dict[str, int]:
    return {Path(f.decode()).name: i for i, f in enumerate(dataset.files)}


# ----------------------------------------------------------------------- dataset
def test_folder_scan_reads_gsd_per_image(fmow_root: Path) -> None:
    ds = FMoWRGB(fmow_root, split='train', size=32, crop='center')
    assert len(ds) == 6 and not ds.skipped
    index = by_name(ds)
    for _, category, location, width, height, gsd in LAYOUT[:6]:
        sample = ds[index[f'{category}_{location}_0_rgb.jpg']]
        assert (
            sample['image'].shape == (3, 32, 32)
            and sample['image'].dtype == torch.float32
        )
        assert sample['valid'].shape == (1, 32, 32) and bool(sample['valid'].all())
        # The largest centred square, resized to 32 px: gsd_out = gsd * side / 32.
        assert float(sample['gsd']) == pytest.approx(
            gsd * min(width, height) / 32, rel=1e-6
        )
        assert int(sample['label']) == FMOW_CATEGORIES.index(category)
        assert sample['files'].endswith(f'{category}_{location}_0_rgb.jpg')


def test_resize_and_random_crop_gsd(fmow_root: Path) -> None:
    resized = FMoWRGB(fmow_root, size=16, crop='resize')
    sample = resized[by_name(resized)['zoo_3_0_rgb.jpg']]  # 96 x 64 px, 0.3 m
    assert float(sample['gsd']) == pytest.approx(
        0.3 * math.sqrt(96 * 64) / 16, rel=1e-6
    )
    quarter = FMoWRGB(fmow_root, size=16, crop='random', crop_scale=(0.25, 0.25))
    torch.manual_seed(0)
    expected = 0.3 * math.sqrt(0.25 * 96 * 64) / 16
    for _ in range(4):  # random position, fixed area
        sample = quarter[by_name(quarter)['zoo_3_0_rgb.jpg']]
        assert float(sample['gsd']) == pytest.approx(expected, rel=1e-6)


def test_normalisation_uses_fmow_statistics(tmp_path: Path) -> None:
    """The dataset returns raw 8-bit values; the datamodule normalises on the device."""
    write_fmow_image(tmp_path, 'train', 'dam', 0, 40, 40, 1.0, value=128)
    image = FMoWRGB(tmp_path, size=8)[0]['image']
    assert torch.allclose(image.mean((1, 2)), torch.full((3,), 128.0), atol=8)
    dm = FMoWDataModule(tmp_path, img_size=8, batch_size=1, index_cache=None)
    dm.setup('fit')
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    expected = (image.mean((1, 2)) / 255 - torch.tensor(FMOW_RGB_MEAN)) / torch.tensor(
        FMOW_RGB_STD
    )
    assert torch.allclose(batch['image'][0].mean((1, 2)), expected, atol=1e-4)


def test_test_split_without_categories(fmow_root: Path) -> None:
    ds = FMoWRGB(fmow_root, split='test', size=16)
    assert len(ds) == 1 and int(ds[0]['label']) == -1
    assert float(ds[0]['gsd']) == pytest.approx(0.7 * 48 / 16, rel=1e-6)


def test_resized_copy_rescales_the_metadata_gsd(tmp_path: Path) -> None:
    # A JPEG down-sized to half (64 px) with the original JSON (128 px at 0.5 m).
    write_fmow_image(tmp_path, 'train', 'dam', 0, 64, 64, 0.5, meta_size=(128, 128))
    sample = FMoWRGB(tmp_path, size=32, crop='center')[0]
    assert float(sample['gsd']) == pytest.approx(0.5 * 2 * 64 / 32, rel=1e-6)


@pytest.mark.parametrize(('width', 'height'), [(517, 300), (300, 1031), (257, 257)])
@pytest.mark.parametrize('crop', ['center', 'resize'])
def test_reduced_dct_decoding_matches_full_resolution(
    tmp_path: Path, width: int, height: int, crop: str
) -> None:
    # A smooth image: decoding at 1/2..1/8 scale must give the same crop as resizing
    # the full-resolution pixels (a mis-mapped box would shift it).
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], -1
    )
    folder = tmp_path / 'train' / 'dam' / 'dam_0'
    folder.mkdir(parents=True)
    Image.fromarray(pixels.astype(np.uint8)).save(
        folder / 'dam_0_0_rgb.jpg', quality=95
    )
    (folder / 'dam_0_0_rgb.json').write_text(json.dumps({'gsd': 1.0}))
    ds = FMoWRGB(tmp_path, size=32, crop=crop)
    sample = ds[0]
    sample['image'] = sample['image'] / 255
    full = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    if crop == 'center':
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
        full = full[..., top : top + side, left : left + side]
    reference = torch.nn.functional.interpolate(full, size=(32, 32), mode='area')[0]
    assert (sample['image'] - reference).abs().mean() < 0.02
    spacing = min(width, height) if crop == 'center' else math.sqrt(width * height)
    assert float(sample['gsd']) == pytest.approx(spacing / 32, rel=1e-6)


def test_small_images_and_bad_gsd_values_are_dropped(tmp_path: Path) -> None:
    write_fmow_image(tmp_path, 'train', 'dam', 0, 40, 100, 1.0)
    write_fmow_image(tmp_path, 'train', 'dam', 1, 100, 80, 1.0)
    write_fmow_image(tmp_path, 'train', 'dam', 2, 100, 80, -1.0)
    write_fmow_image(tmp_path, 'train', 'dam', 3, 100, 80, float('nan'))
    ds = FMoWRGB(tmp_path, size=16, min_image_size=64)
    assert [Path(f.decode()).name for f in ds.files] == ['dam_1_0_rgb.jpg']
    assert ds.skipped == {'too small': 1, 'bad gsd': 2}
    with pytest.raises(FMoWInputError, match='expected a finite gsd > 0'):
        FMoWRGB(tmp_path, size=16, on_error='raise')


def break_files(root: Path) -> dict[str, Path]:
    """One of each problem in the training split of *root*."""
    train = root / 'train'
    broken = {
        'bad JSON': train / 'airport' / 'airport_0' / 'airport_0_0_rgb.json',
        'missing JSON': train / 'airport' / 'airport_1' / 'airport_1_0_rgb.json',
        'missing image': train / 'zoo' / 'zoo_2' / 'zoo_2_0_rgb.jpg',
    }
    broken['bad JSON'].write_text('{"gsd": 0.5, "img_width": ')  # truncated
    broken['missing JSON'].unlink()
    broken['missing image'].unlink()
    no_gsd = train / 'zoo' / 'zoo_3' / 'zoo_3_0_rgb.json'
    no_gsd.write_text(json.dumps({'img_width': 96, 'img_height': 64}))
    return broken


def test_bad_json_and_missing_files_are_skipped_with_a_count(fmow_root: Path) -> None:
    break_files(fmow_root)
    ds = FMoWRGB(fmow_root, size=16)
    assert len(ds) == 2  # dam_4 and dam_5
    assert ds.skipped == {'bad JSON': 2, 'missing JSON': 1, 'missing image': 1}
    assert sorted(by_name(ds)) == ['dam_4_0_rgb.jpg', 'dam_5_0_rgb.jpg']


@pytest.mark.parametrize('problem', ['bad JSON', 'missing JSON', 'missing image'])
def test_bad_json_and_missing_files_raise_by_option(
    tmp_path: Path, problem: str
) -> None:
    for location in (0, 1):
        write_fmow_image(tmp_path, 'train', 'dam', location, 32, 32, 1.0)
    image = write_fmow_image(tmp_path, 'train', 'zoo', 2, 32, 32, 1.0)
    if problem == 'bad JSON':
        image.with_suffix('.json').write_text('[1, 2')
    else:
        (image.with_suffix('.json') if problem == 'missing JSON' else image).unlink()
    assert FMoWRGB(tmp_path, size=16).skipped == {problem: 1}
    with pytest.raises(FMoWInputError, match=re.escape(f'{image}: {problem}')):
        FMoWRGB(tmp_path, size=16, on_error='raise')


def test_corrupt_image_is_zero_weighted_or_raises(fmow_root: Path) -> None:
    jpeg = fmow_root / 'train' / 'dam' / 'dam_4' / 'dam_4_0_rgb.jpg'
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    ds = FMoWRGB(fmow_root, size=16)
    sample = ds[by_name(ds)['dam_4_0_rgb.jpg']]
    assert not bool(sample['valid'].any()) and ds.load_errors == 1
    strict = FMoWRGB(fmow_root, size=16, on_error='raise')
    with pytest.raises(
        FMoWInputError, match=re.escape('dam_4_0_rgb.jpg: cannot decode')
    ):
        strict[by_name(strict)['dam_4_0_rgb.jpg']]


def test_satmae_csv_index(fmow_root: Path, tmp_path: Path) -> None:
    folder = FMoWRGB(fmow_root, size=16, crop='center')
    ds = FMoWRGB(
        fmow_root, csv_path=fmow_root / 'train_62classes.csv', size=16, crop='center'
    )
    assert sorted(ds.files.tolist()) == sorted(folder.files.tolist())
    a, b = by_name(ds), by_name(folder)
    for name in a:
        assert float(ds[a[name]]['gsd']) == float(folder[b[name]]['gsd'])
        assert int(ds[a[name]]['label']) == int(folder[b[name]]['label'])
    # Positional columns (category, path), paths absolute on another machine, a
    # gsd column (no JSON read), and a row whose image is missing.
    index = tmp_path / 'index.csv'
    elsewhere = '/data/cluster/fmow-rgb/train/dam/dam_4/dam_4_0_rgb.jpg'
    index.write_text(
        'label,file,gsd\n'
        f'dam,{elsewhere},3.0\n'
        'zoo,train/zoo/zoo_9/zoo_9_0_rgb.jpg,1.0\n'
    )
    (fmow_root / 'train' / 'dam' / 'dam_4' / 'dam_4_0_rgb.json').unlink()
    ds = FMoWRGB(fmow_root, csv_path=index, size=16, crop='center')
    assert len(ds) == 1 and ds.skipped == {'missing image': 1}
    assert float(ds[0]['gsd']) == pytest.approx(3.0 * 48 / 16)
    with pytest.raises(
        FMoWInputError, match=re.escape('zoo_9_0_rgb.jpg: missing image')
    ):
        FMoWRGB(fmow_root, csv_path=index, on_error='raise')


def test_index_cache(fmow_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / 'cache'
    first = FMoWRGB(fmow_root, size=16, index_cache=cache)
    files = list(cache.glob('fmow-train-*.csv'))
    assert len(files) == 1
    for meta in (fmow_root / 'train').rglob('*.json'):  # the cache holds the GSDs
        meta.unlink()
    second = FMoWRGB(fmow_root, size=16, index_cache=cache)
    assert second.files.tolist() == first.files.tolist()
    assert np.array_equal(second.gsd, first.gsd)
    assert np.array_equal(second.labels, first.labels)
    write_fmow_image(fmow_root, 'train', 'barn', 9, 32, 32, 1.0)  # a new folder
    third = FMoWRGB(fmow_root, size=16, index_cache=cache)  # re-indexed
    assert [Path(f.decode()).name for f in third.files] == ['barn_9_0_rgb.jpg']
    assert len(list(cache.glob('fmow-train-*.csv'))) == 2


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'crop': 'middle'}, 'crop'),
        ({'crop_scale': (0.5, 0.25)}, 'crop_scale'),
        ({'split': 'nowhere'}, 'nowhere: no such folder'),
    ],
)
def test_invalid_arguments(fmow_root: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        FMoWRGB(fmow_root, **kwargs)


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'std': (0.2, 0.0, 0.2)}, r'std=\(0\.2, 0\.0, 0\.2\) is invalid'),
        ({'mean': (0.5, 0.5)}, 'mean=.*3 values'),
        ({'batch_size': 0}, 'batch_size=0 is invalid; expected >= 1'),
    ],
)
def test_invalid_datamodule_arguments(
    fmow_root: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        FMoWDataModule(fmow_root, index_cache=None, **kwargs)


# -------------------------------------------------------------------- datamodule
def test_datamodule_batches_carry_views_and_gsd(
    fmow_root: Path, tmp_path: Path
) -> None:
    dm = FMoWDataModule(
        fmow_root, img_size=32, batch_size=3, index_cache=tmp_path / 'c'
    )
    dm.prepare_data()
    assert len(list((tmp_path / 'c').glob('*.csv'))) == 2  # train and val indexes
    dm.setup('fit')
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 2
    loaders = dm.train_dataloader()
    assert len(loaders) == 2  # drop_last
    batch = dm.on_after_batch_transfer(next(iter(loaders)), 0)
    assert batch['image'].shape == (3, 3, 32, 32)
    assert batch['views'].shape == (3, 2, 3, 32, 32)
    assert torch.equal(batch['view_gsd'][:, 0], batch['gsd'])  # loaded at img_size
    ratio = batch['scale_ratio'][:, 1]
    assert torch.allclose(batch['view_gsd'][:, 1], batch['gsd'] / ratio)
    assert torch.equal(batch['sample_weight'], torch.ones(3))
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(
        dm.view_generator(val, 'val').get_state(),
        dm.view_generator(val, 'val').get_state(),
    )


def test_datamodule_zero_weights_corrupt_images(fmow_root: Path) -> None:
    for jpeg in (fmow_root / 'train').rglob('dam_*_rgb.jpg'):
        jpeg.write_bytes(b'not a jpeg')
    dm = FMoWDataModule(fmow_root, img_size=16, batch_size=6, index_cache=None)
    dm.setup('fit')
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    dams = torch.tensor(['dam_' in f for f in batch['files']])
    assert torch.equal(batch['sample_weight'], (~dams).float())
    assert dm.skipped_tiles == 2


def test_datamodule_without_val_split_and_too_few_images(fmow_root: Path) -> None:
    dm = FMoWDataModule(
        fmow_root,
        img_size=16,
        batch_size=2,
        val_split='none',
        val_samples=3,
        index_cache=None,
    )
    dm.setup('fit')
    assert len(dm.val_dataset) == 3 and dm.val_dataset.dataset.crop == 'center'
    assert dm.train_dataset.crop == 'random'
    with pytest.raises(ValueError, match='batch_size=64'):
        FMoWDataModule(fmow_root, batch_size=64, index_cache=None).setup('fit')


# ----------------------------------------------------------------------- configs
def test_paper_configs_hold_the_paper_recipe() -> None:
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in CONFIGS.glob('*.yaml')}
    assert set(configs) == {
        'xscale_vitb_fmow',
        'xscale_vitl_fmow',
        'xscale_vitb_fmow_public_code',
    }
    for name, config in configs.items():
        model, data = config['model']['init_args'], config['data']['init_args']
        assert (model['img_size'], model['patch_size'], model['mask_ratio']) == (
            128,
            16,
            0.75,
        )
        assert (model['decoder_depth'], model['base_lr'], model['weight_decay']) == (
            8,
            5e-5,
            0.05,
        )
        assert model['betas'] == [0.9, 0.95] and model['warmup_epochs'] == 40
        assert config['trainer']['max_epochs'] == 400
        assert config['trainer']['accumulate_grad_batches'] == 1
        assert data['mean'] == list(FMOW_RGB_MEAN) and data['std'] == list(FMOW_RGB_STD)
        assert data['img_size'] == 128 and data['scale_range'] == [0.2, 0.8]
        assert model['size'] == ('large' if 'vitl' in name else 'base')
        public = name.endswith('public_code')
        assert data['view_mode'] == ('crop' if public else 'same_footprint')
        assert model['projection_dim'] == (0 if public else 256)


TINY = [
    '--model.size', 'tiny', '--model.embed_dim', '32', '--model.depth', '1',
    '--model.num_heads', '2', '--model.img_size', '32', '--model.patch_size', '8',
    '--model.decoder_embed_dim', '32', '--model.decoder_depth', '1',
    '--model.decoder_num_heads', '2', '--model.projection_hidden_dim', '32',
    '--model.predictor_hidden_dim', '32', '--data.img_size', '32',
    '--data.batch_size', '3', '--data.num_workers', '0', '--data.val_samples', '2',
    '--trainer.accelerator', 'cpu', '--trainer.devices', '1', '--trainer.precision', '32',
    '--trainer.enable_progress_bar', 'false',
]  # fmt: skip


@pytest.mark.parametrize('name', ['xscale_vitl_fmow', 'xscale_vitb_fmow_public_code'])
def test_other_paper_configs_instantiate(
    fmow_root: Path, tmp_path: Path, name: str
) -> None:
    from torchgeo_xscale.cli import lightning_cli

    config = str(CONFIGS / f'{name}.yaml')
    args = ['--config', config, '--data.root', str(fmow_root), *TINY]
    args += ['--data.index_cache', str(tmp_path / 'cache')]
    cli = lightning_cli(args, run=False)  # parse and instantiate only: no subcommand
    assert isinstance(cli.datamodule, FMoWDataModule)
    assert cli.model.hparams['base_lr'] == 5e-5 and cli.trainer.max_epochs == 400


@pytest.mark.slow
def test_xscale_fit_paper_config_two_steps(fmow_root: Path, tmp_path: Path) -> None:
    from torchgeo_xscale.cli import main

    args = [
        'fit',
        '--config',
        str(CONFIGS / 'xscale_vitb_fmow.yaml'),
        '--data.root',
        str(fmow_root),
    ]
    args += [*TINY, '--data.index_cache', str(tmp_path / 'cache')]
    args += [
        '--trainer.max_steps',
        '2',
        '--trainer.default_root_dir',
        str(tmp_path / 'run'),
    ]
    args += ['--trainer.limit_val_batches', '1', '--model.log_image_every_n_steps', '0']
    args += ['--trainer.log_every_n_steps', '1']
    assert main(args) == 0
    (last,) = (tmp_path / 'run').rglob('last.ckpt')
    checkpoint = torch.load(last, map_location='cpu', weights_only=False)
    assert checkpoint['global_step'] == 2
    assert checkpoint['hyper_parameters']['decoder_depth'] == 1
    scalars = logged_scalars(tmp_path / 'run')  # TensorBoard, the default logger
    assert 'val_loss' in scalars and 'train_loss_cc_step' in scalars
