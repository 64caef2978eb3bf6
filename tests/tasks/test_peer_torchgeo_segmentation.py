"""TorchGeo's segmentation-task contract, run with our encoder and our task.

Written from TorchGeo's ``tests/trainers/test_segmentation.py``
(``TestSemanticSegmentationTask``: ``test_trainer`` runs ``torchgeo fit``, ``test``
and ``predict`` from a config with ``fast_dev_run``; ``test_weight_file`` with a
checkpoint's ``model.*`` / ``model.backbone.model.*`` keys; ``test_no_plot_method``;
``test_freeze_backbone`` / ``test_freeze_decoder``), adapted only by parameter:
``model='upernet'`` with an ``xscale_vit_*`` backbone in
:class:`torchgeo.tasks.SemanticSegmentation`, and our
:class:`~torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask`; the ISPRS
Potsdam archive layout of TorchGeo's fixture with 64 px tiles (UPerNet needs sides
divisible by 32) and ``batch_size 2`` (BatchNorm in UPerNet's pyramid pooling), and
TorchGeo's own 2 x 2 px tiles for evaluation; ``num_classes=6`` where TorchGeo's
tests leave it unset (TorchGeo 0.10's metrics require it); ``checksum: false`` for
the generated archives.
"""

import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from lightning.pytorch import Trainer
from torchgeo.datamodules import MisconfigurationException, Potsdam2DDataModule
from torchgeo.main import main
from torchgeo.tasks import SemanticSegmentation

from torchgeo_xscale.models.segmentation import register_encoder
from torchgeo_xscale.models.vit import build_vit
from torchgeo_xscale.tasks.segmentation import XScaleSegmentationTask

OPTIONS = {'embed_dim': 32, 'vit_depth': 2, 'num_heads': 2, 'img_size': 64}
BACKBONE = register_encoder('xscale_vit_peer_seg', 'tiny', **OPTIONS)
TASKS = {
    'torchgeo': {
        'class_path': 'torchgeo.tasks.SemanticSegmentation',
        'init_args': {'model': 'upernet', 'backbone': BACKBONE},
    },
    'xscale': {
        'class_path': 'torchgeo_xscale.tasks.segmentation.XScaleSegmentationTask',
        'init_args': {
            'backbone': 'xscale_vit_tiny',
            'backbone_options': OPTIONS,
            'decoder_channels': 32,
            'plot_tiles': 1,
        },
    },
}


def write_config(path: Path, task: str, root: Path, patch_size: int) -> Path:
    """TorchGeo's ``tests/conf/potsdam2d.yaml`` with our model."""
    model = TASKS[task]
    model['init_args'] |= {'in_channels': 4, 'num_classes': 6, 'loss': 'ce'}
    config = {
        'model': model,
        'data': {
            'class_path': 'Potsdam2DDataModule',
            'init_args': {
                'batch_size': 2,
                'patch_size': patch_size,
                'val_split_pct': 0.5,
            },
            'dict_kwargs': {'root': str(root), 'checksum': False},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cli_args(config: Path, run: Path) -> list[str]:
    return [
        '--config',
        str(config),
        '--trainer.accelerator',
        'cpu',
        '--trainer.fast_dev_run',
        'True',
        '--trainer.max_epochs',
        '1',
        '--trainer.log_every_n_steps',
        '1',
        '--trainer.default_root_dir',
        str(run),
    ]


@pytest.mark.parametrize('task', list(TASKS))
def test_trainer(task: str, tmp_path: Path) -> None:
    root = write_potsdam(tmp_path / 'potsdam', 64)
    args = cli_args(write_config(tmp_path / 'c.yaml', task, root, 64), tmp_path)
    main(['fit', *args])
    main(['test', *args])
    with pytest.raises(MisconfigurationException):  # Potsdam has no predict split
        main(['predict', *args])


#: ISPRS label colours (clutter, impervious, building, low vegetation, tree, car).
COLORS = np.array(
    [
        [255, 0, 0],
        [255, 255, 255],
        [0, 0, 255],
        [0, 255, 255],
        [0, 255, 0],
        [255, 255, 0],
    ],
    dtype=np.uint8,
)


def write_potsdam(root: Path, size: int) -> Path:
    """TorchGeo's ``tests/data/potsdam/data.py`` layout: four tiles of one size.

    ``4_Ortho_RGBIR.zip`` holds ``4_Ortho_RGBIR/<tile>_RGBIR.tif`` (4 bands) and
    ``5_Labels_all.zip`` ``<tile>_label.tif`` (RGB colours of the 6 classes).
    TorchGeo's own fixture has ``size=2``.
    """
    root.mkdir(parents=True, exist_ok=True)
    names = [
        'top_potsdam_2_10',
        'top_potsdam_2_11',
        'top_potsdam_5_15',
        'top_potsdam_6_15',
    ]
    rng = np.random.default_rng(0)
    with (
        zipfile.ZipFile(root / '4_Ortho_RGBIR.zip', 'w') as images,
        zipfile.ZipFile(root / '5_Labels_all.zip', 'w') as labels,
    ):
        for name in names:
            classes = rng.integers(0, 6, (size, size))
            image = (classes[None] * 40 + rng.integers(0, 20, (4, size, size))).astype(
                np.uint8
            )
            for data, archive, member in (
                (image, images, f'4_Ortho_RGBIR/{name}_RGBIR.tif'),
                (COLORS[classes].transpose(2, 0, 1), labels, f'{name}_label.tif'),
            ):
                path = root / Path(member).name
                with rasterio.open(
                    path, 'w', driver='GTiff', width=size, height=size,
                    count=data.shape[0], dtype='uint8',
                ) as dst:  # fmt: skip
                    dst.write(data)
                archive.write(path, member)
    return root


def test_evaluation_on_torchgeo_tiny_tiles(tmp_path: Path) -> None:
    root = write_potsdam(tmp_path / 'potsdam', 2)
    datamodule = Potsdam2DDataModule(
        batch_size=1, patch_size=2, val_split_pct=0.5, root=str(root), checksum=False
    )
    task = XScaleSegmentationTask(
        backbone='xscale_vit_tiny', backbone_options=OPTIONS, decoder_channels=32,
        in_channels=4, num_classes=6, plot_tiles=0,
    )  # fmt: skip
    trainer = Trainer(accelerator='cpu', fast_dev_run=True, default_root_dir=tmp_path)
    trainer.validate(task, datamodule)
    trainer.test(task, datamodule)


@pytest.fixture(params=['model', 'backbone'])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """TorchGeo's trainers/conftest.py checkpoint, holding an encoder of ours."""
    torch.manual_seed(0)
    vit = build_vit('tiny', embed_dim=32, depth=2, num_heads=2, img_size=64)
    prefix = 'model.' if request.param == 'model' else 'model.backbone.model.'
    state = OrderedDict((prefix + k, v) for k, v in vit.state_dict().items())
    path = tmp_path / f'model_{request.param}.ckpt'
    torch.save(
        {'hyper_parameters': {request.param: BACKBONE}, 'state_dict': state}, path
    )
    return str(path)


def test_weight_file(checkpoint: str) -> None:
    task = SemanticSegmentation(
        model='upernet', backbone=BACKBONE, weights=checkpoint, num_classes=6
    )
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    key = next(k for k in state if k.endswith('blocks.1.attn.qkv.weight'))
    assert torch.equal(task.model.encoder.blocks[1].attn.qkv.weight, state[key])


def test_weight_file_in_our_task(checkpoint: str) -> None:
    task = XScaleSegmentationTask(
        backbone='xscale_vit_tiny', backbone_options=OPTIONS, decoder_channels=32,
        weights=checkpoint, num_classes=6,
    )  # fmt: skip
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    key = next(k for k in state if k.endswith('blocks.1.attn.qkv.weight'))
    assert torch.equal(task.model.encoder.blocks[1].attn.qkv.weight, state[key])


def _task(kind: str, **kwargs: Any) -> Any:
    if kind == 'torchgeo':
        return SemanticSegmentation(model='upernet', backbone=BACKBONE, **kwargs)
    return XScaleSegmentationTask(
        backbone='xscale_vit_tiny', backbone_options=OPTIONS, decoder_channels=32,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize('kind', list(TASKS))
def test_freeze_backbone(kind: str) -> None:
    model = _task(kind, num_classes=6, freeze_backbone=True).model
    assert all(p.requires_grad is False for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.segmentation_head.parameters())


@pytest.mark.parametrize('kind', list(TASKS))
def test_freeze_decoder(kind: str) -> None:
    model = _task(kind, num_classes=6, freeze_decoder=True).model
    assert all(p.requires_grad is False for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.segmentation_head.parameters())
