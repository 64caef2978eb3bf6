"""XScaleSegmentationTask (tasks/segmentation.py): the recipe (warm-up, layer-wise lr
decay, figures) and ``xscale fit`` / ``segment`` / ``scale-study`` end to end."""

import csv
from pathlib import Path

import pytest
import rasterio
import torch
from isprs_layout import (
    COLORS,
    make_potsdam,
    make_vaihingen,
    tiny_overrides,
    tiny_task,
)

from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.tasks.segmentation import (
    plot_segmentation,
    warmup_poly,
)

CONFIGS = Path(__file__).parents[2] / 'configs' / 'segmentation'


# ------------------------------------------------------------------ the recipe
def test_warmup_poly() -> None:
    assert warmup_poly(0, 10, 110) == pytest.approx(0.1)
    assert warmup_poly(9, 10, 110) == pytest.approx(1.0)
    assert warmup_poly(60, 10, 110) == pytest.approx(0.5)
    assert warmup_poly(110, 10, 110, min_factor=0.01) == pytest.approx(0.01)


def test_layer_wise_lr_decay_groups() -> None:
    task = tiny_task(lr=1e-4, layer_decay=0.5, weight_decay=0.05)
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


# ------------------------------------------------------ the commands, end to end
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
            *tiny_overrides(root, run, encoder_weights),
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
    # the datamodule's native GSD (ISPRS: 5 cm Potsdam, 9 cm Vaihingen)
    gsd = {'potsdam': 0.05, 'vaihingen': 0.09}[dataset]
    assert state['xscale_gsd'] == {'min': gsd, 'median': gsd, 'max': gsd}
    # a scene at twice that GSD: segmented at the model's (2x up), written on its grid
    image = make_geotiff(
        tmp_path / 'scene.tif',
        bands=4,
        width=150,
        height=100,
        nodata=0,
        nodata_region=(0, 10, 0, 20),
        res=2 * gsd,
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
        xscale(args + tiny_overrides(vaihingen, tmp_path / 'run', encoder_weights)) == 0
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
