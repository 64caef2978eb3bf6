import math
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from conftest import TINY_MODEL
from PIL import Image
from torchgeo.models.scale_mae import ScaleMAE
from torchgeo.tasks import MAE

from torchgeo_xscale.evaluation import (
    ClassFolder,
    FeatureEncoder,
    MAEReconstructor,
    build_classification_dataset,
    embed_at_scale,
    evaluate_knn,
    evaluate_linear_probe,
    evaluate_reconstruction,
    evaluate_retrieval,
    knn_predict,
    load_encoder,
    load_geotiff_tiles,
    load_reconstructor,
    prepare_classification,
    reconstruction_metrics,
    retrieval_scores,
    train_linear_probe,
)
from torchgeo_xscale.evaluation.encoders import register_timm_name, register_timm_vit
from torchgeo_xscale.evaluation.report import aggregate, markdown_table, write_report
from torchgeo_xscale.evaluation.retrieval import retrieval_ranks
from torchgeo_xscale.masks import mask_from_scores
from torchgeo_xscale.models import build_vit
from torchgeo_xscale.study import StudyConfig, build_task, run_study
from torchgeo_xscale.tasks import CrossScaleMAETask

TINY = TINY_MODEL
CLASSES = ('forest', 'lake', 'urban')
COLOURS = ((40, 140, 40), (30, 60, 200), (180, 170, 160))


def tiny_vit(**kw):
    return build_vit(
        'tiny', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, **kw
    )


def class_image(c: int, i: int, size: int = 40, bands: int = 3) -> np.ndarray:
    """(H, W, bands) uint8 image of class c: its colour plus noise."""
    rng = np.random.default_rng(100 * c + i)
    base = np.array((COLOURS[c] * 5)[:bands], dtype=float)
    return np.clip(base + rng.normal(0, 12, (size, size, bands)), 0, 255).astype(
        np.uint8
    )


def write_split_files(root: Path, names: dict[str, list[str]], pattern: str) -> None:
    for split, files in names.items():
        (root / pattern.format(split)).write_text('\n'.join(files) + '\n')


def fake_resisc45(root: Path, per_class: int = 4) -> Path:
    """NWPU-RESISC45/<class>/<class>_NNN.jpg + resisc45-{train,val,test}.txt."""
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(CLASSES):
        (root / 'NWPU-RESISC45' / cls).mkdir(parents=True)
        for i in range(per_class):
            name = f'{cls}_{i + 1:03d}.jpg'
            Image.fromarray(class_image(c, i)).save(
                root / 'NWPU-RESISC45' / cls / name, quality=95
            )
            names[
                'train'
                if i < per_class - 2
                else ('val' if i == per_class - 2 else 'test')
            ].append(name)
    write_split_files(root, names, 'resisc45-{}.txt')
    return root


def fake_ucmerced(root: Path, per_class: int = 3) -> Path:
    """UCMerced_LandUse/Images/<class>/<class>NN.tif + uc_merced-{split}.txt."""
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(CLASSES):
        folder = root / 'UCMerced_LandUse' / 'Images' / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            name = f'{cls}{i:02d}.tif'
            Image.fromarray(class_image(c, i, size=36)).save(folder / name)
            names[('train', 'val', 'test')[i % 3]].append(name)
    write_split_files(root, names, 'uc_merced-{}.txt')
    return root


def fake_eurosat(root: Path, per_class: int = 3) -> Path:
    """ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_N.tif (13 bands)."""
    base = (
        root
        / 'ds'
        / 'images'
        / 'remote_sensing'
        / 'otherDatasets'
        / 'sentinel_2'
        / 'tif'
    )
    names: dict[str, list[str]] = {'train': [], 'val': [], 'test': []}
    for c, cls in enumerate(('Forest', 'SeaLake', 'Residential')):
        (base / cls).mkdir(parents=True)
        for i in range(per_class):
            data = (
                class_image(c, i, size=16, bands=13)
                .transpose(2, 0, 1)
                .astype(np.uint16)
                * 10
            )
            with rasterio.open(
                base / cls / f'{cls}_{i + 1}.tif',
                'w',
                driver='GTiff',
                width=16,
                height=16,
                count=13,
                dtype='uint16',
            ) as dst:
                dst.write(data)
            names[('train', 'val', 'test')[i % 3]].append(
                f'{cls}_{i + 1}.jpg'
            )  # lists name .jpg
    write_split_files(root, names, 'eurosat-{}.txt')
    return root


def fake_whu(root: Path, per_class: int = 5) -> Path:
    """WHU-RS19/<Class>/<class>_NN.jpg (no split files)."""
    for c, cls in enumerate(('Forest', 'Pond', 'Residential')):
        (root / 'WHU-RS19' / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(class_image(c, i, size=60)).save(
                root / 'WHU-RS19' / cls / f'{cls.lower()}_{i:02d}.jpg'
            )
    return root


# --------------------------------------------------------------------- kNN
def brute_force_knn(train, labels, test, c, k, t):
    preds = []
    for q in test:
        sims = [
            float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x))) for x in train
        ]
        order = sorted(range(len(train)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * c
        for j in order:
            votes[int(labels[j])] += math.exp(sims[j] / t)
        preds.append(int(np.argmax(votes)))
    return preds


@pytest.mark.parametrize('k', [1, 3, 20, 50])
def test_knn_matches_brute_force(k) -> None:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    test = torch.randn(25, 6, generator=g)
    pred, votes = knn_predict(
        train, labels, test, 4, k=k, temperature=0.07, chunk_size=7
    )
    ref = brute_force_knn(
        train.numpy(), labels.numpy(), test.numpy(), 4, min(k, 40), 0.07
    )
    assert pred.tolist() == ref
    assert votes.shape == (25, 4)


def test_knn_hand_made_features() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    # with k = 5, class 1 has three votes but class 0's two are much closer: exp(sim/T)
    pred, votes = knn_predict(train, labels, test, 2, k=5, temperature=0.07)
    assert pred.tolist() == [0, 1]
    assert votes[0, 0] > votes[0, 1]
    with pytest.raises(ValueError, match='k=0'):
        knn_predict(train, labels, test, 2, k=0)


# --------------------------------------------------------------- retrieval
def test_retrieval_identity_encoder_identical_views_is_perfect() -> None:
    images = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    identity = FeatureEncoder(torch.nn.Flatten(), img_size=32, name='identity')
    rows = evaluate_retrieval(identity, images, scales=(1.0, 0.5))
    full = rows[0]
    assert full['top1'] == 1.0 and full['mean_rank'] == 1.0 and full['mrr'] == 1.0
    assert full['own_sim'] == pytest.approx(1.0) and full['other_sim'] < 0.2
    assert rows[1]['top1'] <= 1.0 and rows[1]['mean_rank'] >= 1.0


class RandomFeatures(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.randn(x.shape[0], 16, generator=self.g)


def test_retrieval_random_encoder_is_near_chance() -> None:
    images = torch.zeros(400, 3, 8, 8)
    random = FeatureEncoder(RandomFeatures(), img_size=8)
    row = evaluate_retrieval(random, images, scales=(1.0,), batch_size=1000)[0]
    assert row['chance_mean_rank'] == pytest.approx(200.5)
    assert abs(row['mean_rank'] - 200.5) < 25  # ~ N/sqrt(12*N) = 5.8 std
    assert row['top1'] < 0.02
    # a constant encoder ties everything: exactly chance, never 1.0
    const = retrieval_scores(torch.ones(10, 4), torch.ones(10, 4))
    assert const['top1'] == 0.0 and const['mean_rank'] == pytest.approx(5.5)


def test_retrieval_ranks_hand_made() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # q0 -> own key first; q1 ([1,0]) ranks k0, k2 above its own k1; q2 exact
    assert retrieval_ranks(queries, keys).tolist() == [1.0, 3.0, 1.0]


# ---------------------------------------------------------------- encoders
def test_feature_encoder_pools_and_is_frozen() -> None:
    vit = tiny_vit()
    enc = FeatureEncoder(vit, pool='mean')
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.forward_features(x)
    assert torch.allclose(enc(x), tokens[:, 1:].mean(1), atol=1e-6)
    assert torch.allclose(FeatureEncoder(vit, pool='cls')(x), tokens[:, 0], atol=1e-6)
    enc.train()
    assert not enc.model.training and not any(p.requires_grad for p in enc.parameters())
    assert (enc.img_size, enc.in_chans) == (32, 3)
    with pytest.raises(ValueError, match='pool'):
        FeatureEncoder(vit, pool='max')  # type: ignore[arg-type]


def test_gsd_aware_encoders_get_gsd_over_ratio() -> None:
    x = torch.randn(2, 3, 32, 32)
    ours = FeatureEncoder(tiny_vit(gsd_pos_embed=True, reference_gsd=10.0))
    assert not torch.allclose(
        ours(x, 1.0, torch.full((2,), 10.0)), ours(x, 0.25, torch.full((2,), 10.0))
    )
    assert torch.allclose(
        ours(x, 0.5, torch.full((2,), 10.0)), ours(x, 1.0, torch.full((2,), 20.0))
    )
    scale_mae = ScaleMAE(
        res=2.0,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=0,
    )
    enc = FeatureEncoder(scale_mae)
    out = enc(x, 0.5)
    assert scale_mae.res == 2.0  # restored
    scale_mae.res = 4.0
    assert torch.allclose(out, FeatureEncoder(scale_mae)(x, 1.0), atol=1e-6)
    mixed = FeatureEncoder(
        ScaleMAE(res=1.0, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    )
    per_sample = mixed(x, 1.0, torch.tensor([1.0, 3.0]))
    mixed.model.res = 3.0
    assert torch.allclose(per_sample[1], mixed(x[1:], 1.0)[0], atol=1e-6)


def test_load_encoder_from_names_and_files(tmp_path) -> None:
    vit = tiny_vit()
    path = tmp_path / 'enc.pth'
    torch.save(vit.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    ref = FeatureEncoder(vit)(x)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    assert torch.allclose(
        load_encoder('tiny', str(path), model_kwargs=kwargs)(x), ref, atol=1e-5
    )
    assert torch.allclose(
        load_encoder(str(path), model_kwargs={'num_heads': 2})(x), ref, atol=1e-5
    )
    # the same weights in timm's ViT (timm names)
    timm_enc = load_encoder('vit_tiny_patch16_224', str(path), model_kwargs=kwargs)
    assert isinstance(timm_enc.model, timm.models.VisionTransformer)
    assert torch.allclose(timm_enc(x), ref, atol=1e-5)
    assert load_encoder(vit, name='mine').name == 'mine'
    with pytest.raises(ValueError, match='not a file'):
        load_encoder('no_such_model_xyz')
    with pytest.raises(ValueError, match='do not fit'):
        load_encoder('vit_small_patch16_224', str(path), model_kwargs={'img_size': 32})


def test_load_encoder_from_lightning_checkpoints(trained) -> None:
    x = torch.randn(2, 3, 32, 32)
    ours = load_encoder(str(trained['cross_scale_mae']))
    task = trained['cross_scale_mae_task']
    assert torch.allclose(ours(x), FeatureEncoder(task.model.encoder)(x), atol=1e-5)
    peer = load_encoder(str(trained['torchgeo_mae']))
    assert torch.allclose(
        peer(x), FeatureEncoder(trained['torchgeo_mae_task'].backbone.vit)(x), atol=1e-5
    )
    # a registered crossscalemae_* builder takes our checkpoint as weights
    built = load_encoder('crossscalemae_base_patch16', str(trained['cross_scale_mae']))
    assert torch.allclose(built(x), ours(x), atol=1e-5)


def test_register_timm_vit() -> None:
    name = register_timm_vit(24, 1, 2, 4, 16)
    assert name == 'vit_xscale_e24_d1_h2_p4_16' and register_timm_name(name)
    model = timm.create_model(name, num_classes=0)
    assert model.embed_dim == 24 and model.patch_embed.img_size == (16, 16)
    assert not register_timm_name('vit_nothing_like_this')


# ---------------------------------------------------------------- datasets
def test_torchgeo_datasets_in_their_layouts(tmp_path) -> None:
    resisc = build_classification_dataset(
        'resisc45', fake_resisc45(tmp_path / 'r'), 'train', 32
    )
    assert len(resisc) == 6 and resisc.classes == sorted(CLASSES)
    sample = resisc[0]
    assert (
        sample['image'].shape == (3, 32, 32) and sample['image'].dtype == torch.float32
    )
    assert (
        len(build_classification_dataset('resisc45', tmp_path / 'r', 'test', 32)) == 3
    )
    uc = build_classification_dataset(
        'ucmerced', fake_ucmerced(tmp_path / 'u'), 'test', 32
    )
    assert len(uc) == 3 and uc[0]['image'].shape == (3, 32, 32)
    euro = build_classification_dataset(
        'eurosat', fake_eurosat(tmp_path / 'e'), 'train', 32, in_chans=3
    )
    assert len(euro) == 3 and euro[0]['image'].shape == (3, 32, 32)
    assert build_classification_dataset('eurosat', tmp_path / 'e', 'train', 16)[0][
        'image'
    ].shape == (13, 16, 16)
    with pytest.raises(ValueError, match='dataset='):
        build_classification_dataset('mnist', tmp_path, 'train', 32)


def test_class_folder_split_and_whu(tmp_path) -> None:
    root = fake_whu(tmp_path)
    train = build_classification_dataset('whu-rs19', root, 'train', 32)
    test = build_classification_dataset('whu-rs19', root, 'test', 32)
    assert len(train) == 12 and len(test) == 3  # 4 + 1 of 5 per class
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert train.classes == ['Forest', 'Pond', 'Residential']
    again = ClassFolder(root / 'WHU-RS19', 'train', seed=0)
    assert [p for p, _ in again.samples] == [p for p, _ in train.samples]
    with pytest.raises(ValueError, match='split'):
        ClassFolder(root, 'val')
    for split in ('train', 'test'):  # explicit split folders win
        for c in ('a', 'b'):
            (tmp_path / 'f' / split / c).mkdir(parents=True)
            Image.fromarray(class_image(0, 0)).save(
                tmp_path / 'f' / split / c / 'x.png'
            )
    assert len(ClassFolder(tmp_path / 'f', 'test')) == 2


def test_prepare_classification_checks_bands(tmp_path) -> None:
    fake_eurosat(tmp_path)
    splits = prepare_classification('eurosat', tmp_path, 32, in_chans=3)
    assert splits.num_classes == 3 and splits.mean.shape == (3,)
    with pytest.raises(ValueError, match='13 bands'):
        prepare_classification('eurosat', tmp_path, 32, in_chans=4)


def test_knn_and_linear_probe_end_to_end(tmp_path) -> None:
    splits = prepare_classification(
        'resisc45', fake_resisc45(tmp_path, per_class=8), 32, 3
    )
    torch.manual_seed(0)
    enc = FeatureEncoder(tiny_vit(), name='tiny')
    rows = evaluate_knn(enc, splits, scales=(0.25, 1.0), k=3)
    assert [r['scale'] for r in rows] == [0.25, 1.0]
    assert rows[1]['n_train'] == 18 and rows[1]['n_test'] == 3
    assert rows[1]['top1'] == 1.0  # colour classes are separable even for a random ViT
    probe = evaluate_linear_probe(enc, splits, scales=(1.0,), epochs=10, lr=3e-2)
    assert probe[0]['train_top1'] == 1.0 and probe[0]['top5'] == 1.0


def test_train_linear_probe_separable() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    feats = (
        torch.randn(60, 8, generator=g) * 0.1
        + torch.nn.functional.one_hot(labels, 8).float() * 3
    )
    probe = train_linear_probe(feats, labels, 3, epochs=20, lr=3e-2, batch_size=32)
    assert (probe(feats).argmax(1) == labels).all()
    with pytest.raises(ValueError, match='labels'):
        train_linear_probe(feats, labels[:5], 3)


def test_embed_at_scale_uses_scale_to_ratio() -> None:
    images = torch.randn(3, 3, 32, 32)
    identity = FeatureEncoder(torch.nn.Flatten(), img_size=32)
    full, _ = embed_at_scale(identity, images, 1.0)
    low, _ = embed_at_scale(identity, images, 0.25)
    assert torch.allclose(full, images.flatten(1))
    blocks = low.view(3, 3, 32, 32)
    assert blocks.std() < images.std()  # detail removed


def test_geotiff_tiles_stay_in_the_held_out_strip(make_geotiff, tmp_path) -> None:
    raster = make_geotiff(
        tmp_path / 'r.tif',
        width=160,
        height=64,
        nodata=255,
        nodata_region=(0, 64, 152, 160),
    )
    tiles = load_geotiff_tiles(
        raster,
        16,
        stride=8,
        holdout_fraction=0.25,
        holdout_patch_size=32,
        stats_cache=tmp_path / 'stats',
    )
    with rasterio.open(raster) as src:
        cut = (
            src.bounds.right - 32 * src.res[0]
        )  # round(0.25 * 160 / 32) = 1 patch held out
    assert len(tiles) > 0 and all(b[0] >= cut - 1e-6 for b in tiles.bounds)
    assert bool(
        tiles.valid.all()
    )  # the nodata columns were dropped (min_valid_fraction=1)
    assert tiles.images.shape[1:] == (3, 16, 16) and tiles.gsd.shape == (len(tiles),)
    everything = load_geotiff_tiles(
        raster,
        16,
        holdout_fraction=0.0,
        min_valid_fraction=0.0,
        max_tiles=5,
        stats_cache=tmp_path / 'stats',
    )
    assert len(everything) == 5
    with pytest.raises(ValueError, match='too small'):
        load_geotiff_tiles(
            raster,
            16,
            holdout_fraction=0.6,
            holdout_patch_size=64,
            stats_cache=tmp_path / 'stats',
        )


# ----------------------------------------------------------- reconstruction
def test_reconstruction_metrics_perfect_and_wrong() -> None:
    images = torch.rand(2, 3, 32, 32)
    from torchgeo_xscale.losses import patchify

    mask = mask_from_scores(torch.rand(2, 16), 4).mask
    mse, ssim, recon = reconstruction_metrics(images, patchify(images, 8), mask, 8)
    assert torch.allclose(mse, torch.zeros(2)) and torch.allclose(
        ssim, torch.ones(2), atol=1e-4
    )
    assert torch.equal(recon, images)
    mse, ssim, _ = reconstruction_metrics(images, torch.zeros(2, 16, 192), mask, 8)
    assert (mse > 0).all() and (ssim < 0.9).all()


def test_reconstructors_agree_with_the_models(trained) -> None:
    images = torch.randn(2, 3, 32, 32)
    masks = mask_from_scores(
        torch.rand(2, 16, generator=torch.Generator().manual_seed(0)), 4
    )
    ours = load_reconstructor(str(trained['cross_scale_mae']))
    model = trained['cross_scale_mae_task'].model
    with torch.no_grad():
        expected = model.decoder_pred(
            model.forward_decoder(model.forward_encoder(images, masks), masks)
        )
    assert torch.allclose(ours(images, masks), expected, atol=1e-5)
    peer = load_reconstructor(str(trained['torchgeo_mae']))
    task = trained['torchgeo_mae_task']
    masked = masks.mask.bool()
    idx_mask = torch.stack([torch.nonzero(m).squeeze(1) for m in masked]) + 1
    keep = torch.cat([torch.zeros(2, 1, dtype=torch.long), masks.ids_keep + 1], 1)
    with torch.no_grad():
        direct = task(images, keep, idx_mask)
    pred = peer(images, masks)
    assert torch.allclose(pred[masked].view(2, -1, 192), direct, atol=1e-5)
    assert (pred[~masked] == 0).all()
    with pytest.raises(TypeError, match='not a CrossScaleMAE'):
        MAEReconstructor(torch.nn.Linear(2, 2))


def test_evaluate_reconstruction_is_deterministic(trained) -> None:
    ours = MAEReconstructor(trained['cross_scale_mae_task'], 'ours')
    peer = MAEReconstructor(trained['torchgeo_mae_task'], 'peer')
    tiles = torch.randn(5, 3, 48, 48)
    from torchgeo_xscale.evaluation.datasets import TileSet

    tileset = TileSet(
        tiles,
        torch.ones(5, 1, 48, 48, dtype=torch.bool),
        torch.full((5,), 10.0),
        [(0, 0, 1, 1)] * 5,
    )
    models = [ours, peer]
    rows, examples = evaluate_reconstruction(
        models, tileset, (0.25, 1.0), repeats=2, batch_size=3
    )
    again, _ = evaluate_reconstruction(
        models, tileset, (0.25, 1.0), repeats=2, batch_size=3
    )
    assert rows == again and len(rows) == 4 and all(r['n'] == 10 for r in rows)
    assert set(examples) == {'ours', 'peer'}
    assert examples['ours'][0.25].shape == (3, 3, 32, 32)
    # both models saw the same crop and the same mask
    assert torch.equal(examples['ours'][1.0][1], examples['peer'][1.0][1])
    crop, crop_examples = evaluate_reconstruction(
        [ours], tileset, (0.25,), repeats=1, mode='crop'
    )
    assert crop[0]['mode'] == 'crop' and crop[0]['n'] == 5
    # a 25 % crop zoomed to 32 px is another image than the same-footprint 25 % view
    assert not torch.equal(crop_examples['ours'][0.25][0], examples['ours'][0.25][0])
    with pytest.raises(ValueError, match='mode'):
        evaluate_reconstruction([ours], tileset, mode='zoom')  # type: ignore[arg-type]


# ------------------------------------------------------------------ report
def test_report_files_and_aggregate(tmp_path) -> None:
    rows = [
        {'model': 'a', 'scale': s, 'top1': t, 'seed': i}
        for i, (s, t) in enumerate([(0.5, 0.2), (1.0, 0.4), (0.5, 0.4), (1.0, 0.6)])
    ]
    summary = aggregate(rows, ('model', 'scale'), ('top1',))
    assert summary[0]['top1'] == pytest.approx(0.3) and summary[0][
        'top1_std'
    ] == pytest.approx(math.sqrt(0.02))
    assert summary[0]['n'] == 2
    from torchgeo_xscale.evaluation.report import plot_vs_scale

    paths = write_report(
        summary,
        tmp_path / 'out',
        'knn_x',
        'Title',
        plot_vs_scale(summary, 'top1'),
        notes='cmd',
    )
    assert set(paths) == {'csv', 'md', 'png'} and all(
        os.path.getsize(p) > 0 for p in paths.values()
    )
    text = Path(paths['md']).read_text()
    assert (
        text.startswith('# Title')
        and '| model | scale | top1 |' in text
        and 'knn_x.png' in text
    )
    assert markdown_table([{'a': 1.23456789}]).splitlines()[2] == '| 1.235 |'
    assert not [
        f for f in os.listdir(tmp_path / 'out') if f.startswith('.')
    ]  # no temporaries


# ------------------------------------------------------------------- study
@pytest.mark.slow
def test_study_ablations_switch_losses_off() -> None:
    config = StudyConfig(model=dict(TINY))
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
    config = StudyConfig(model=dict(TINY))
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
