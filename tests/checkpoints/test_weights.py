"""Weights entries: cache, download (file:// URLs), import, TorchGeo's API, builders, CLI."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from authors_checkpoints import (
    official_state_dict,
    reference_features,
    relative_error,
    write_official,
)
from conftest import TINY_MODEL
from lightning.pytorch import Trainer
from timm.models import adapt_input_conv
from torch import nn
from torch.utils.data import DataLoader
from torchgeo.models import api, get_model, get_model_weights, get_weight, list_models
from torchgeo.tasks import Classification
from torchvision.models._api import Weights

from torchgeo_xscale.checkpoints import (
    FMOW_RGB_MEAN,
    FMOW_RGB_STD,
    CrossScaleMAEBase16_Weights,
    CrossScaleMAELarge16_Weights,
    CrossScaleMAEWeightsEnum,
    WeightsNotAvailableError,
    build_encoder,
    crossscalemae_base_patch16,
    crossscalemae_large_patch16,
    export_lightning_checkpoint,
    md5sum,
    read_checkpoint,
    register_weights,
    resolve,
    save_weights,
)
from torchgeo_xscale.cli import main as xscale
from torchgeo_xscale.models import (
    CrossScaleMAEBase16_Weights as ReExported,
)
from torchgeo_xscale.models import (
    crossscalemae_base_patch16 as re_exported_builder,
)
from torchgeo_xscale.models.vit import PostNormBlock, build_vit
from torchgeo_xscale.tasks import CrossScaleMAETask

TINY = {**TINY_MODEL, 'depth': 2}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
VARIANT = 'official-xformers-post'  # the layout of the released files


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """torch hub's cache folder in tmp_path (torch.hub.set_dir, restored after)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints' / 'xscale'
    torch.hub.set_dir(old)


def release(tmp_path: Path) -> tuple[Path, dict]:
    """A stand-in release in the authors' layout and file structure (a small ViT)."""
    sd = official_state_dict(
        (32, 2, 2), VARIANT, img_size=32, patch_size=8, decoder=(16, 1, 2)
    )
    path = tmp_path / 'release' / 'checkpoint-399.pth'
    path.parent.mkdir(exist_ok=True)
    return write_official(path, sd, VARIANT), sd


def fake_entry(src: Path, md5: str | None = None) -> CrossScaleMAEWeightsEnum:
    class FakeTiny_Weights(CrossScaleMAEWeightsEnum):  # type: ignore[misc]
        TEST = Weights(
            url=src.as_uri(),
            transforms=None,
            meta={
                'md5': md5 or md5sum(src),
                'filename': 'fake-tiny.pth',
                'img_size': 64,
                'num_heads': 2,
                'release': 'https://example.org/release',
            },
        )

    return FakeTiny_Weights.TEST


def test_download_checks_converts_caches(tmp_path: Path, hub_dir: Path) -> None:
    src, sd = release(tmp_path)
    entry = fake_entry(src)
    with pytest.warns(UserWarning, match='post-norm'):
        state = entry.get_state_dict(progress=False, check_hash=True, weights_only=True)
    assert sorted(p.name for p in hub_dir.iterdir()) == [
        'fake-tiny.pth',
        'fake-tiny.pth.json',
    ]
    assert state['pos_embed'].shape == (1, 1 + 8 * 8, 32)  # for meta img_size 64
    assert 'norm.weight' not in state  # the authors' encoder has no final norm
    src.unlink()  # from now on, only the cache can serve it
    encoder = build_encoder('tiny', entry, img_size=32).eval()
    assert isinstance(encoder.blocks[0], PostNormBlock)
    assert isinstance(encoder.norm, nn.Identity)
    with torch.no_grad():
        ref = reference_features(sd, X, VARIANT, heads=2)
        assert relative_error(encoder.forward_features(X), ref) <= 1e-5
    wide = build_encoder('tiny', entry, img_size=32, in_chans=5)
    w = state['patch_embed.proj.weight']
    assert torch.equal(wide.patch_embed.proj.weight, adapt_input_conv(5, w))
    assert build_encoder('tiny', entry).patch_embed.img_size == (64, 64)
    assert resolve(entry).metadata['source']['md5_is_release'] is True


@pytest.mark.parametrize('kind', ['md5', 'truncated', 'pickle'])
def test_bad_downloads_fail_and_leave_no_file(
    tmp_path: Path, hub_dir: Path, kind: str
) -> None:
    src, _ = release(tmp_path)
    if kind == 'pickle':
        torch.save({'model': {}, 'hook': print}, src)
    if kind == 'truncated':
        src.write_bytes(src.read_bytes()[:1000])
    entry = fake_entry(src, md5='0' * 32 if kind == 'md5' else None)
    match = {
        'md5': 'has md5 .* not the published 0{32}',
        'truncated': 'truncated or corrupt',
        'pickle': 'not a tensors-only checkpoint.*print',
    }[kind]
    with pytest.raises(ValueError, match=match):
        entry.get_state_dict(progress=False)
    assert list(hub_dir.iterdir()) == []


def test_not_available_offline(tmp_path: Path, hub_dir: Path) -> None:
    entry = CrossScaleMAEBase16_Weights.FMOW_RGB
    with pytest.raises(
        WeightsNotAvailableError, match=r'not available offline.*xscale weights import'
    ):
        entry.get_state_dict(url=(tmp_path / 'missing.pth').as_uri())
    assert list(hub_dir.iterdir()) == []


def test_entries_in_torchgeo_api() -> None:
    assert ReExported is CrossScaleMAEBase16_Weights
    assert re_exported_builder is crossscalemae_base_patch16
    assert {'crossscalemae_base_patch16', 'crossscalemae_large_patch16'} <= set(
        list_models()
    )
    base = get_weight('CrossScaleMAEBase16_Weights.FMOW_RGB')
    assert base is CrossScaleMAEBase16_Weights.FMOW_RGB
    assert (
        get_model_weights('crossscalemae_base_patch16') is CrossScaleMAEBase16_Weights
    )
    assert (
        get_model_weights(crossscalemae_large_patch16) is CrossScaleMAELarge16_Weights
    )
    assert base.meta['md5'] == '0c33995da85c112d9602f89d5b186bbc'
    large = CrossScaleMAELarge16_Weights.FMOW_RGB
    assert large.meta['md5'] == 'e6e4f58c07bbbc4c4dd63fa26c644dd4'
    for key in ('dataset', 'in_chans', 'img_size', 'model', 'publication', 'bands'):
        assert key in base.meta
    assert 'CC-BY-NC' in base.meta['license']
    assert 'aicip/Cross-Scale-MAE' in base.meta['repo']


def test_transforms_take_a_sample_dict_or_a_tensor() -> None:
    """As TorchGeo 0.10's own entries: ``{'image': x}`` or ``x``, RGB in [0, 255]."""
    transforms = CrossScaleMAEBase16_Weights.FMOW_RGB.transforms
    x = torch.full((2, 3, 4, 4), 255.0)
    expected = (1 - torch.tensor(FMOW_RGB_MEAN)) / torch.tensor(FMOW_RGB_STD)
    assert torch.allclose(transforms(x)[1, :, 2, 2], expected)
    assert transforms(x[0]).shape == (3, 4, 4)
    mask = torch.ones(2, 4, 4, dtype=torch.long)
    sample = transforms({'image': x, 'mask': mask})
    assert torch.allclose(sample['image'][1, :, 2, 2], expected)
    assert torch.equal(sample['mask'], mask)  # only the image is normalised
    assert torch.equal(x, torch.full((2, 3, 4, 4), 255.0))  # the input is untouched
    scale_mae = get_weight('ScaleMAELarge16_Weights.FMOW_RGB').transforms
    assert set(scale_mae({'image': x.clone()})) == set(transforms({'image': x}))


@pytest.mark.slow  # builds a full ViT-B through torchgeo.tasks.Classification
def test_released_entry_from_cache_through_torchgeo(hub_dir: Path) -> None:
    """As after `xscale weights import`: our weights file is in the hub cache."""
    entry = CrossScaleMAEBase16_Weights.FMOW_RGB
    torch.manual_seed(0)
    ours = build_vit('base', img_size=224, depth=1, final_norm=False)
    metadata = {
        'layout': 'official-xformers-pre',
        'residual_norm_style': 'pre',
        'final_norm': False,
        'model': {'depth': 1, 'embed_dim': 768, 'num_heads': 12, 'img_size': 224},
    }
    save_weights(ours.state_dict(), entry.cache_path(), metadata)
    model = get_model('crossscalemae_base_patch16', weights=entry, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    ref = build_vit('base', img_size=32, depth=1, final_norm=False)
    ref.load_state_dict({**ours.state_dict(), 'pos_embed': ref.pos_embed}, strict=True)
    with torch.no_grad():
        assert torch.allclose(
            model.forward_features(x), ref.eval().forward_features(x), atol=1e-5
        )
    task = Classification(
        model='vit_base_patch16_224',
        weights='CrossScaleMAEBase16_Weights.FMOW_RGB',
        in_channels=3,
        num_classes=2,
    )
    loaded = task.model.state_dict()
    key = 'blocks.0.attn.qkv.weight'
    assert torch.equal(loaded[key], ours.state_dict()[key])
    assert torch.equal(loaded['pos_embed'], ours.pos_embed)
    # TorchGeo's SemanticSegmentation loads the entry into our SMP encoder (UPerNet)
    from torchgeo.tasks import SemanticSegmentation

    from torchgeo_xscale.models.segmentation import register_encoder

    backbone = register_encoder(
        'xscale_vit_base_1block', 'base', vit_depth=1, img_size=64
    )
    seg = SemanticSegmentation(
        model='upernet',
        backbone=backbone,
        weights='CrossScaleMAEBase16_Weights.FMOW_RGB',
        in_channels=3,
        num_classes=4,
    )
    assert torch.equal(seg.model.encoder.state_dict()[key], ours.state_dict()[key])
    assert isinstance(seg.model.encoder.norm, nn.Identity)  # none in the weights
    assert seg(torch.randn(2, 3, 64, 64)).shape == (2, 4, 64, 64)


def test_lightning_checkpoint_loads_through_the_builders_and_timm(
    tmp_path: Path,
) -> None:
    task = CrossScaleMAETask(**TINY, log_image_every_n_steps=0)
    g = torch.Generator().manual_seed(0)
    data = [
        {
            'views': torch.randn(2, 3, 32, 32, generator=g),
            'view_gsd': torch.tensor([1.0, 2.0]),
        }
        for _ in range(4)
    ]
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=DataLoader(data, batch_size=2))
    ckpt = tmp_path / 'last.ckpt'
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    saved['xscale_gsd'] = {'min': 0.3, 'max': 2.5, 'median': 1.0}  # the datamodule's
    torch.save(saved, ckpt)
    with torch.no_grad():
        ref = task.model.encoder.eval().forward_features(X)
        assert torch.equal(
            crossscalemae_base_patch16(weights=str(ckpt)).forward_features(X), ref
        )
        out = tmp_path / 'encoder.pth'
        export_lightning_checkpoint(ckpt, out)
        assert torch.equal(
            crossscalemae_base_patch16(weights=out).forward_features(X), ref
        )
        metadata = resolve(out).metadata
        assert metadata['gsd'] == {'min': 0.3, 'max': 2.5, 'median': 1.0}
        assert metadata['final_norm'] is True and metadata['layout'] == 'lightning'
        # the exported encoder loads into timm unchanged (issue 20 (f))
        dims = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
        vit = timm.create_model(
            'vit_base_patch16_224',
            num_classes=0,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(out)),
            **dims,
        )
        assert torch.allclose(vit.eval().forward_features(X), ref, atol=1e-5)
        again = timm.create_model('vit_base_patch16_224', num_classes=0, **dims)
        timm.models.load_checkpoint(again, str(out))
        assert torch.allclose(again.eval().forward_features(X), ref, atol=1e-5)


def test_authors_weights_exported_load_into_timm_without_final_norm(
    tmp_path: Path,
) -> None:
    variant = 'official-timm'  # timm's pre-norm blocks (post-norm needs ours)
    sd = official_state_dict(
        (32, 2, 2), variant, img_size=32, patch_size=8, decoder=(16, 1, 2)
    )
    src = write_official(tmp_path / 'checkpoint-399.pth', sd, variant)
    assert xscale(['weights', 'export', str(src), str(tmp_path / 'enc.pth')]) == 0
    vit = timm.create_model(
        'vit_base_patch16_224',
        num_classes=0,
        final_norm=False,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'enc.pth')),
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=8,
        img_size=32,
    )
    with torch.no_grad():
        ref = reference_features(sd, X, variant, heads=2)
        assert relative_error(vit.eval().forward_features(X), ref) <= 1e-5


def test_builder_errors(tmp_path: Path) -> None:
    vit = build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=40, depth=1, num_heads=5
    )
    torch.save(vit.state_dict(), tmp_path / 'plain.pth')
    with pytest.raises(
        ValueError,
        match=r'plain\.pth have width 40 and no recorded num_heads; pass num_heads',
    ):
        crossscalemae_base_patch16(weights=tmp_path / 'plain.pth')
    out = crossscalemae_base_patch16(weights=tmp_path / 'plain.pth', num_heads=5)
    assert out.num_features == 40 and out.patch_embed.img_size == (32, 32)
    with pytest.raises(ValueError, match=r'do not fit CrossScaleViT.*shape mismatches'):
        crossscalemae_base_patch16(
            weights=tmp_path / 'plain.pth', num_heads=4, embed_dim=64
        )
    with pytest.raises(
        FileNotFoundError, match='neither a file nor a known weights entry'
    ):
        crossscalemae_base_patch16(weights='NoSuch_Weights.X')


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[tuple[CrossScaleMAEWeightsEnum, Path]]:
    src, _ = release(tmp_path)
    entry = fake_entry(src)

    def fake_tiny(weights: object = None, **kwargs: object) -> nn.Module:
        return build_encoder('tiny', weights, **kwargs)  # type: ignore[arg-type]

    register_weights('fake_tiny', fake_tiny, type(entry))
    assert get_model_weights(fake_tiny) is type(entry)
    yield entry, src
    del api._model['fake_tiny'], api._model_weights['fake_tiny']
    del api._model_weights[fake_tiny]


def test_cli_import_list_export(
    tmp_path: Path, registered: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    entry, src = registered
    cache = tmp_path / 'cache'
    assert xscale(['weights', 'list', '--model-dir', str(cache)]) == 0
    assert 'FakeTiny_Weights.TEST' in capsys.readouterr().out
    (tmp_path / 'other.pth').write_bytes(b'not the release')
    other = [
        'weights',
        'import',
        str(tmp_path / 'other.pth'),
        '--model-dir',
        str(cache),
    ]
    assert xscale(other) == 1
    assert 'matches no released checkpoint' in capsys.readouterr().err
    assert xscale([*other, '--weights', str(entry)]) == 1
    assert 'not the published' in capsys.readouterr().err
    assert xscale([*other, '--weights', 'Nope.X']) == 1
    assert "--weights 'Nope.X' is not one of" in capsys.readouterr().err
    assert not cache.exists() or list(cache.iterdir()) == []
    assert xscale(['weights', 'import', str(src), '--model-dir', str(cache)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f'md5 {src.name}' in captured.err  # the progress bar, on stderr
    assert 'official-xformers-post layout, post-norm blocks, no final norm' in out
    assert entry.cache_path(cache).is_file()
    xscale(['weights', 'list', '--model-dir', str(cache)])
    assert f'cached   {entry.cache_path(cache)}' in capsys.readouterr().out
    assert xscale(['weights', 'export', str(src), str(tmp_path / 'out.pth')]) == 0
    assert 'official-xformers-post' in capsys.readouterr().out
    exported = read_checkpoint(tmp_path / 'out.pth')
    assert exported.metadata['residual_norm_style'] == 'post'
    assert 'cls_token' in exported.state_dict
    # a user's own run of the authors' code: filed under the entry, MD5 not checked
    mine = write_official(
        tmp_path / 'mine.pth',
        official_state_dict((32, 2, 2), VARIANT, 7, 32, 8, decoder=(16, 1, 2)),
        VARIANT,
    )
    args = ['weights', 'import', str(mine), '--model-dir', str(cache)]
    capsys.readouterr()
    assert xscale([*args, '--weights', str(entry), '--no-check-md5', '--quiet']) == 0
    assert capsys.readouterr().err == ''  # --quiet: no progress bar
    cached = read_checkpoint(entry.cache_path(cache))
    assert cached.metadata['source']['md5'] == md5sum(mine)
    assert cached.metadata['source']['md5_is_release'] is False
