"""UPerNet on our ViTs through SMP; ISPRS Potsdam/Vaihingen recipes and scale study."""

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import segmentation_models_pytorch as smp
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import RunningStage
from torchgeo.tasks import SemanticSegmentation

from torchgeo_xscale.checkpoints import upernet
from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.cli.scale_study import write_scale_table
from torchgeo_xscale.datamodules.isprs import (
    ScaledPotsdam2DDataModule,
    ScaledVaihingen2DDataModule,
)
from torchgeo_xscale.models.segmentation import (
    XScaleViTEncoder,
    pyramid_block_indices,
    register_encoder,
)
from torchgeo_xscale.models.vit import VIT_SIZES, build_vit
from torchgeo_xscale.tasks.segmentation import (
    XScaleSegmentationTask,
    plot_segmentation,
    warmup_poly,
)
from torchgeo_xscale.transforms import scale_to_ratio

CONFIGS = Path(__file__).parents[1] / 'configs' / 'segmentation'
TINY = {'embed_dim': 32, 'vit_depth': 2, 'num_heads': 2, 'img_size': 64}
COLORS = (
    (255, 0, 0),
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
)
POTSDAM = [
    'top_potsdam_2_10',
    'top_potsdam_2_11',
    'top_potsdam_3_10',
    'top_potsdam_4_12',
]
POTSDAM_TEST = ['top_potsdam_5_15', 'top_potsdam_2_13']
VAIHINGEN = [f'top_mosaic_09cm_area{i}.tif' for i in (1, 3, 5, 7)]
VAIHINGEN_TEST = [f'top_mosaic_09cm_area{i}.tif' for i in (2, 4)]
SIZES = [(72, 80), (64, 96), (80, 64), (70, 70), (64, 64), (96, 72)]


# ------------------------------------------------------------- fake ISPRS archives
def _tile(
    height: int, width: int, bands: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An image whose brightness follows a blocky 6-class map, and the RGB label."""
    cls = rng.integers(0, 6, (height // 16 + 1, width // 16 + 1))
    cls = cls.repeat(16, 0).repeat(16, 1)[:height, :width]
    noise = rng.integers(0, 20, (bands, height, width))
    image = (cls[None] * 40 + noise).clip(0, 255).astype(np.uint8)
    return image, np.asarray(COLORS, dtype=np.uint8)[cls].transpose(2, 0, 1)


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    with rasterio.open(
        path, 'w', driver='GTiff', width=w, height=h, count=c, dtype='uint8'
    ) as dst:
        dst.write(data)


def _zip(archive: Path, files: list[tuple[Path, str]]) -> None:
    with zipfile.ZipFile(archive, 'w') as z:
        for path, name in files:
            z.write(path, name)


def make_potsdam(root: Path) -> Path:
    """``4_Ortho_RGBIR.zip`` (``4_Ortho_RGBIR/<tile>_RGBIR.tif``, 4 bands) and
    ``5_Labels_all.zip`` (``<tile>_label.tif``, RGB), as TorchGeo's Potsdam2D reads."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name, (h, w) in zip(POTSDAM + POTSDAM_TEST, SIZES):
        image, rgb = _tile(h, w, 4, rng)
        _write(root / 'src' / f'{name}_RGBIR.tif', image)
        _write(root / 'src' / f'{name}_label.tif', rgb)
        images.append(
            (root / 'src' / f'{name}_RGBIR.tif', f'4_Ortho_RGBIR/{name}_RGBIR.tif')
        )
        labels.append((root / 'src' / f'{name}_label.tif', f'{name}_label.tif'))
    _zip(root / '4_Ortho_RGBIR.zip', images)
    _zip(root / '5_Labels_all.zip', labels)
    return root


def make_vaihingen(root: Path) -> Path:
    """``ISPRS_semantic_labeling_Vaihingen.zip`` (``top/<tile>``, IRRG) and the
    ``..._ground_truth_COMPLETE.zip`` (``<tile>``, RGB), as TorchGeo's Vaihingen2D reads."""
    rng = np.random.default_rng(1)
    images, labels = [], []
    for name, (h, w) in zip(VAIHINGEN + VAIHINGEN_TEST, SIZES):
        image, rgb = _tile(h, w, 3, rng)
        _write(root / 'src' / 'top' / name, image)
        _write(root / 'src' / 'gt' / name, rgb)
        images.append((root / 'src' / 'top' / name, f'top/{name}'))
        labels.append((root / 'src' / 'gt' / name, name))
    _zip(root / 'ISPRS_semantic_labeling_Vaihingen.zip', images)
    _zip(root / 'ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip', labels)
    return root


@pytest.fixture
def potsdam(tmp_path: Path) -> Path:
    return make_potsdam(tmp_path / 'potsdam')


@pytest.fixture
def vaihingen(tmp_path: Path) -> Path:
    return make_vaihingen(tmp_path / 'vaihingen')


@pytest.fixture
def encoder_weights(tmp_path: Path) -> Path:
    """A pretrained-style encoder state dict (timm names) of a tiny ViT at 32 px."""
    torch.manual_seed(123)
    vit = build_vit(
        'tiny', embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16
    )
    path = tmp_path / 'encoder.pth'
    torch.save(vit.state_dict(), path)
    return path


def _task(**kwargs: Any) -> XScaleSegmentationTask:
    args: dict[str, Any] = {
        'backbone': 'xscale_vit_tiny',
        'backbone_options': TINY,
        'decoder_channels': 32,
        'num_classes': 6,
        'ignore_index': 0,
        'eval_window': 64,
        'lr': 1e-3,
    }
    return XScaleSegmentationTask(**{**args, **kwargs})


def _trainer(root: Path, **kwargs: Any) -> Trainer:
    args = {
        'max_epochs': 1,
        'accelerator': 'cpu',
        'default_root_dir': str(root),
        'enable_progress_bar': False,
        'enable_model_summary': False,
        'num_sanity_val_steps': 0,
        'log_every_n_steps': 1,
    }
    return Trainer(**{**args, **kwargs})


# ------------------------------------------------------------------ the encoder
def test_pyramid_block_indices() -> None:
    assert pyramid_block_indices(12) == (3, 5, 7, 11)
    assert pyramid_block_indices(24) == (7, 11, 15, 23)
    assert pyramid_block_indices(2) == (0, 0, 0, 1)


@pytest.mark.parametrize('size', list(VIT_SIZES))
def test_smp_encoder_shapes_every_size(size: str) -> None:
    dim = VIT_SIZES[size][0]
    with torch.device('meta'):  # real code path, no compute: shapes only
        model = smp.UPerNet(
            encoder_name=f'xscale_vit_{size}',
            encoder_weights=None,
            in_channels=4,
            classes=6,
        )
        x = torch.empty(2, 4, 64, 96)
        features = model.encoder(x)
        logits = model(x)
    assert isinstance(model.encoder, XScaleViTEncoder)
    assert model.encoder.out_channels == [4, 0, dim, dim, dim, dim]
    assert [tuple(f.shape) for f in features] == [
        (2, 4, 64, 96),
        (2, 0, 32, 48),
        (2, dim, 16, 24),
        (2, dim, 8, 12),
        (2, dim, 4, 6),
        (2, dim, 2, 3),
    ]
    assert logits.shape == (2, 6, 64, 96)


def test_encoder_real_forward_any_size() -> None:
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder('xscale_vit_tiny', in_channels=3)
    assert encoder.grid_size == (14, 14)
    for h, w in ((64, 64), (96, 32)):
        features = encoder(torch.randn(1, 3, h, w))
        assert features[-1].shape == (1, 192, h // 32, w // 32)
        assert all(torch.isfinite(f).all() for f in features)
    with pytest.raises(ValueError, match='divisible by the patch size 16'):
        encoder(torch.randn(1, 3, 40, 64))
    with pytest.raises(ValueError, match='output_stride=16'):
        XScaleViTEncoder('tiny', output_stride=16)


def test_smp_and_torchgeo_build_upernet() -> None:
    name = register_encoder('xscale_vit_test', 'tiny', **TINY)
    model = smp.UPerNet(
        encoder_name=name, encoder_weights=None, classes=6, decoder_channels=32
    )
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6, 64, 64)
    task = SemanticSegmentation(
        model='upernet', backbone=name, num_classes=6, in_channels=5
    )
    assert task(torch.randn(2, 5, 64, 32)).shape == (2, 6, 64, 32)


def test_pretrained_weights_are_used(encoder_weights: Path) -> None:
    saved = torch.load(encoder_weights, weights_only=True)
    torch.manual_seed(0)
    random = upernet('xscale_vit_tiny', in_channels=4, decoder_channels=32, **TINY)
    torch.manual_seed(0)
    loaded = upernet(
        'xscale_vit_tiny',
        in_channels=4,
        decoder_channels=32,
        weights=encoder_weights,
        **TINY,
    )
    enc = loaded.encoder
    torch.testing.assert_close(
        enc.blocks[1].mlp.fc2.weight, saved['blocks.1.mlp.fc2.weight']
    )
    # 3 -> 4 bands: repeated and scaled by 3/4, as TorchGeo/timm adapt input convs
    w = saved['patch_embed.proj.weight']
    torch.testing.assert_close(enc.patch_embed.proj.weight[:, :3], w * 0.75)
    torch.testing.assert_close(enc.patch_embed.proj.weight[:, 3], w[:, 0] * 0.75)
    assert enc.pos_embed.shape == (1, 1 + 16, 32)  # refitted from the 2x2 grid to 4x4
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        ours, theirs = enc(x)[-1], random.encoder(x)[-1]
    assert not torch.allclose(ours, theirs, atol=1e-3)
    # the same weights give the same ViT features (stride 16: the identity level)
    torch.manual_seed(5)
    again = upernet(
        'xscale_vit_tiny',
        in_channels=4,
        decoder_channels=32,
        weights=encoder_weights,
        **TINY,
    )
    with torch.no_grad():
        torch.testing.assert_close(again.encoder(x)[4], enc(x)[4])


def test_mismatched_weights_fail_clearly(encoder_weights: Path) -> None:
    with pytest.raises(ValueError, match='do not fit XScaleViTEncoder'):
        upernet(
            'xscale_vit_tiny',
            weights=encoder_weights,
            embed_dim=48,
            vit_depth=2,
            num_heads=2,
        )


def test_full_encoder_state_dict_roundtrip() -> None:
    a = upernet('xscale_vit_tiny', decoder_channels=32, **TINY).encoder
    b = upernet('xscale_vit_tiny', decoder_channels=32, **TINY).encoder
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[3], b(x)[3])


# ------------------------------------------------------------------ the recipe
def test_warmup_poly() -> None:
    assert warmup_poly(0, 10, 110) == pytest.approx(0.1)
    assert warmup_poly(9, 10, 110) == pytest.approx(1.0)
    assert warmup_poly(60, 10, 110) == pytest.approx(0.5)
    assert warmup_poly(110, 10, 110, min_factor=0.01) == pytest.approx(0.01)


def test_layer_wise_lr_decay_groups() -> None:
    task = _task(lr=1e-4, layer_decay=0.5, weight_decay=0.05)
    groups = task.param_groups()
    by_param = {id(p): g for g in groups for p in g['params']}
    enc = task.model.encoder
    assert by_param[id(enc.patch_embed.proj.weight)]['lr'] == pytest.approx(
        1e-4 * 0.5**3
    )
    assert by_param[id(enc.blocks[0].attn.qkv.weight)]['lr'] == pytest.approx(
        1e-4 * 0.5**2
    )
    assert by_param[id(enc.blocks[1].attn.qkv.weight)]['lr'] == pytest.approx(
        1e-4 * 0.5
    )
    assert by_param[id(enc.neck.levels[0][0].weight)]['lr'] == pytest.approx(1e-4)
    head = task.model.segmentation_head[0]
    assert by_param[id(head.weight)] == {
        **by_param[id(head.weight)],
        'lr': 1e-4,
        'weight_decay': 0.05,
    }
    assert by_param[id(head.bias)]['weight_decay'] == 0.0
    assert by_param[id(enc.cls_token)]['weight_decay'] == 0.0
    assert id(enc.pos_embed) not in by_param  # fixed sin-cos
    trainable = {id(p) for p in task.parameters() if p.requires_grad}
    assert trainable == set(by_param)


def test_plot_segmentation() -> None:
    masks = [torch.randint(0, 6, (16, 16)) for _ in range(2)]
    fig = plot_segmentation(
        [torch.randn(3, 16, 16)] * 2, masks, masks, COLORS, ['a'] * 6
    )
    assert len(fig.axes) == 6


def test_datamodule_scale_protocol(vaihingen: Path) -> None:
    dm = ScaledVaihingen2DDataModule(
        root=str(vaihingen),
        batch_size=2,
        patch_size=64,
        val_split_pct=0.5,
        samples_per_tile=3,
        scale_ratio=0.25,
        mean=[10.0, 20.0, 30.0],
        std=[2.0],
    )
    dm.setup('fit')
    assert len(dm.train_dataset) == 2 * 3
    sample = dm.train_dataset[0]
    assert sample['image'].shape == (3, 64, 64) and sample['mask'].shape == (64, 64)
    assert set(sample['mask'].unique().tolist()) <= set(range(6))
    batch = next(iter(dm.val_dataloader()))
    assert (
        batch['image'].shape[0] == 1
        and batch['image'].shape[-2:] == batch['mask'].shape[-2:]
    )
    assert batch['image'].shape[-2:] in [torch.Size(s) for s in SIZES]  # a whole tile
    dm.trainer = Trainer(accelerator='cpu', logger=False)
    dm.trainer.state.stage = RunningStage.VALIDATING
    image = batch['image'].clone()
    out = dm.on_after_batch_transfer(dict(batch), 0)
    mean = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    expected = scale_to_ratio((image - mean) / 2.0, 0.25)
    torch.testing.assert_close(out['image'], expected)
    torch.testing.assert_close(out['mask'], batch['mask'])


@pytest.mark.parametrize(
    'scale',
    [
        pytest.param(0.25, marks=pytest.mark.slow),
        pytest.param(0.5, marks=pytest.mark.slow),
        1.0,
    ],
)
@pytest.mark.parametrize('dataset', ['potsdam', 'vaihingen'])
def test_two_training_steps(dataset: str, scale: float, tmp_path: Path) -> None:
    if dataset == 'potsdam':
        root = make_potsdam(tmp_path / 'potsdam')
        dm: Any = ScaledPotsdam2DDataModule
        bands = 4
    else:
        root = make_vaihingen(tmp_path / 'vaihingen')
        dm, bands = ScaledVaihingen2DDataModule, 3
    datamodule = dm(
        root=str(root),
        batch_size=2,
        patch_size=64,
        val_split_pct=0.5,
        samples_per_tile=2,
        scale_ratio=scale,
    )
    task = _task(
        in_channels=bands, labels=['clutter', 'imp', 'bld', 'low', 'tree', 'car']
    )
    before = task.model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    trainer = _trainer(tmp_path / 'run', limit_val_batches=1)
    trainer.fit(task, datamodule)
    assert trainer.global_step == 2
    assert not torch.equal(before, task.model.encoder.blocks[0].attn.qkv.weight)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics['train_loss']) and 'train_loss_aux' in metrics
    assert 0 <= float(metrics['val_AverageJaccardIndex']) <= 1
    assert 'val_ClasswiseJaccardIndex_car' in metrics
    assert (Path(trainer.log_dir) / 'predictions' / 'epoch_0000.png').exists()


def test_batch_size_one_is_a_clear_error(vaihingen: Path, tmp_path: Path) -> None:
    datamodule = ScaledVaihingen2DDataModule(
        root=str(vaihingen), batch_size=1, patch_size=64
    )
    with pytest.raises(ValueError, match='at least 2 samples'):
        _trainer(tmp_path / 'run').fit(_task(), datamodule)
    task = _task()
    with pytest.raises(ValueError, match='batch size is 1'):
        task.training_step(
            {
                'image': torch.randn(1, 3, 64, 64),
                'mask': torch.zeros(1, 64, 64, dtype=torch.long),
            },
            0,
        )


def test_write_scale_table(tmp_path: Path) -> None:
    rows = [
        {
            'scale': s,
            'miou': 0.5 + s / 10,
            'overall_accuracy': 0.8,
            'iou': [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        }
        for s in (0.25, 0.5, 1.0)
    ]
    csv_path, md_path = write_scale_table(
        rows, tmp_path, 'vaihingen', list('abcdef'), ignore_index=0
    )
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert [r['scale'] for r in table] == ['0.25', '0.5', '1.0']
    assert table[0]['paper_miou'] == '0.7163' and table[2]['iou_f'] == '0.5000'
    text = Path(md_path).read_text()
    assert '| 25 % | 50 % | 100 % |' in text and '0.7603' in text
    assert '| a | - | - | - |' in text  # the ignored class


# ------------------------------------------------------ the commands, end to end
def _tiny_overrides(root: Path, run: Path, weights: Path) -> list[str]:
    return [
        '--data.root',
        str(root),
        '--data.batch_size',
        '2',
        '--data.patch_size',
        '64',
        '--data.samples_per_tile',
        '2',
        '--data.val_split_pct',
        '0.5',
        '--data.num_workers',
        '0',
        '--model.init_args.backbone',
        'xscale_vit_tiny',
        '--model.init_args.backbone_options',
        '{embed_dim: 32, vit_depth: 2, num_heads: 2, img_size: 64}',
        '--model.init_args.decoder_channels',
        '32',
        '--model.init_args.eval_window',
        '64',
        '--model.init_args.weights',
        str(weights),
        '--trainer.max_epochs',
        '1',
        '--trainer.precision',
        '32-true',
        '--trainer.accelerator',
        'cpu',
        '--trainer.enable_progress_bar',
        'false',
        '--trainer.check_val_every_n_epoch',
        '1',
        '--trainer.default_root_dir',
        str(run),
    ]


@pytest.mark.slow
@pytest.mark.parametrize('dataset', ['potsdam', 'vaihingen'])
def test_xscale_fit_config_then_segment(
    dataset: str, tmp_path: Path, encoder_weights: Path, make_geotiff
) -> None:
    root = (make_potsdam if dataset == 'potsdam' else make_vaihingen)(
        tmp_path / dataset
    )
    run = tmp_path / 'run'
    xscale(
        [
            'fit',
            '--config',
            str(CONFIGS / f'{dataset}.yaml'),
            *_tiny_overrides(root, run, encoder_weights),
        ]
    )
    ckpt = next(run.rglob('last.ckpt'))
    state = torch.load(ckpt, weights_only=False)
    meta = state['xscale_segmentation']
    assert meta['colormap'][2] == [0, 0, 255] or tuple(meta['colormap'][2]) == (
        0,
        0,
        255,
    )
    assert len(meta['mean']) == 3 and meta['patch_size'] == (64, 64)
    # trained from the pretrained encoder (few small steps away from it)
    saved = torch.load(encoder_weights, weights_only=True)['blocks.0.attn.qkv.weight']
    tuned = state['state_dict']['model.encoder.blocks.0.attn.qkv.weight']
    assert (tuned - saved).abs().max() < 0.01 < saved.abs().max()
    image = make_geotiff(
        tmp_path / 'scene.tif',
        bands=4,
        width=150,
        height=100,
        nodata=0,
        nodata_region=(0, 10, 0, 20),
    )
    out = tmp_path / 'scene_mask.tif'
    assert (
        xscale(
            [
                'segment',
                '--checkpoint',
                str(ckpt),
                '--input',
                str(image),
                '--output',
                str(out),
                '--chunk-size',
                '256',
            ]
        )
        == 0
    )
    with rasterio.open(image) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (
            src.crs,
            src.transform,
            src.shape,
        )
        labels = dst.read(1)
    assert (labels[:10, :20] == 255).all() and (labels[10:] < 6).all()


@pytest.mark.slow
def test_scale_study_writes_table(
    tmp_path: Path, vaihingen: Path, encoder_weights: Path
) -> None:
    out = tmp_path / 'study'
    args = [
        'scale-study',
        '--config',
        str(CONFIGS / 'vaihingen.yaml'),
        '--output',
        str(out),
    ]
    assert (
        xscale(args + _tiny_overrides(vaihingen, tmp_path / 'run', encoder_weights))
        == 0
    )
    with open(out / 'scale_study.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['scale'] for r in rows] == ['0.25', '0.5', '1.0']
    assert all(0 <= float(r['miou']) <= 1 for r in rows)
    assert rows[1]['paper_miou'] == '0.7354'
    assert 'iou_building' in rows[0]
    assert 'Table 4' in (out / 'scale_study.md').read_text()
    assert {p.name for p in out.glob('predictions_*.png')} == {
        'predictions_25.png',
        'predictions_50.png',
        'predictions_100.png',
    }
