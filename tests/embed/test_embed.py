"""``xscale embed``: GeoParquet per tile, read back with geopandas, and the GeoTIFF."""

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from conftest import write_geotiff
from pyproj import Transformer
from torchgeo.datasets import EarthEmbeddings

from torchgeo_xscale.cli import main
from torchgeo_xscale.datasets import RasterInputError
from torchgeo_xscale.embed import embed_geotiffs, fit_pca, tile_starts
from torchgeo_xscale.evaluation.encoders import load_encoder
from torchgeo_xscale.models import CrossScaleMAEBase16_Weights

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def blocks_scene(side: int = 128, block: int = 32, seed: int = 0) -> np.ndarray:
    """3 bands, one distinct colour per *block* square plus fine texture, uint8."""
    rng = np.random.default_rng(seed)
    n = side // block
    colours = rng.integers(20, 235, (3, n, n))
    image = colours.repeat(block, 1).repeat(block, 2).astype(np.float64)
    y, x = np.mgrid[0:side, 0:side]
    image += 12 * np.sin(x / 3.0) * np.cos(y / 5.0) + rng.normal(0, 4, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    """Area down-sampling by 2 (the same scene at twice the GSD)."""
    c, h, w = image.shape
    return (
        image.reshape(c, h // 2, 2, w // 2, 2)
        .astype(np.float64)
        .mean((2, 4))
        .round()
        .astype(np.uint8)
    )


@pytest.fixture(scope='module')
def encoder():
    torch.manual_seed(0)
    return load_encoder('tiny', model_kwargs=VIT)


def test_tile_starts_follow_torchgeo_grid() -> None:
    assert tile_starts(100, 32, 32) == [0, 32, 64, 96]  # ceil((100-32)/32)+1
    assert tile_starts(64, 32, 32) == [0, 32]
    assert tile_starts(20, 32, 32) == [0]
    assert tile_starts(64, 32, 16) == [0, 16, 32]
    assert tile_starts(100, 32, 64) == [0, 64]  # TorchGeo's third chip is empty


def test_xscale_embed_geoparquet_reads_back(trained, tmp_path: Path, capfd) -> None:
    raster = write_geotiff(
        tmp_path / 'utm.tif',
        width=96,
        height=80,
        nodata=255,
        nodata_region=(0, 80, 0, 40),
    )
    out = tmp_path / 'emb.parquet'
    argv = [
        'embed',
        '--encoder',
        str(trained['cross_scale_mae']),
        '--input',
        str(raster),
    ]
    assert (
        main([*argv, '--output', str(out), '--timestamp', '2021-06-30T10:20:00']) == 0
    )
    captured = capfd.readouterr()
    assert '9/9' in captured.err  # the progress bar, on stderr
    assert 'GeoParquet written to' in captured.out
    frame = gpd.read_parquet(out)
    assert frame.crs.to_epsg() == 32633
    # grid 3 x 3 of 32 px; nodata in columns 0-39 (tile column 0 invalid, column 1
    # 3/4 valid) and the bottom row (rows 64-95 of 80) half outside the raster
    expected = [(0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert list(zip(frame['row'], frame['col'])) == expected
    with rasterio.open(raster) as src:
        for (_, tile), (r, c) in zip(frame.iterrows(), expected):
            box = shapely.box(*rasterio.windows.bounds(
                rasterio.windows.Window(32 * c, 32 * r, 32, 32), src.transform
            ))  # fmt: skip
            assert tile.geometry.equals(box)
            lon, lat = Transformer.from_crs(src.crs, 'EPSG:4326', always_xy=True).transform(
                box.centroid.x, box.centroid.y
            )  # fmt: skip
            assert (tile.centre_lon, tile.centre_lat) == pytest.approx((lon, lat))
    assert frame['gsd'].tolist() == [10.0] * 5
    assert frame['source'].tolist() == [str(raster)] * 5
    assert frame['pixel_bbox'].iloc[0].tolist() == [32, 0, 64, 32]
    assert frame['valid_fraction'].tolist() == [0.75, 1, 0.75, 1, 0.5]
    assert np.stack(frame['embedding']).shape == (5, 32)
    meta = json.loads(pq.read_schema(out).metadata[b'xscale'])
    assert (
        meta['tile_size'] == 32
        and meta['normalization']['source'] == 'input statistics'
    )
    # TorchGeo's EarthEmbeddings reads the same file
    sample = EarthEmbeddings(out)[0]
    assert sample['embedding'].shape == (32,)
    assert float(sample['x']) == pytest.approx(frame['centre_lon'].iloc[0])
    assert float(sample['t']) == pytest.approx(1625048400.0)  # 2021-06-30T10:20Z


def test_similarity_query_finds_the_same_place_at_another_scale(
    encoder, tmp_path: Path
) -> None:
    scene = blocks_scene()
    full = write_geotiff(tmp_path / 'full.tif', width=128, height=128, data=scene)
    coarse = write_geotiff(
        tmp_path / 'coarse.tif', width=64, height=64, res=20.0, data=halve(scene)
    )
    embed_geotiffs(full, tmp_path / 'full.parquet', encoder, progress=False)
    # 16 px tiles of the 20 m raster cover the same ground as 32 px tiles at 10 m
    embed_geotiffs(
        coarse, tmp_path / 'coarse.parquet', encoder, tile_size=16, progress=False
    )
    bank = gpd.read_parquet(tmp_path / 'full.parquet')
    queries = gpd.read_parquet(tmp_path / 'coarse.parquet')
    assert len(bank) == len(queries) == 16
    assert queries['gsd'].iloc[0] == 20.0
    # the docs' query: cosine similarity of L2-normalised embeddings
    a = np.stack(bank['embedding'])
    b = np.stack(queries['embedding'])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    nearest = (b @ a.T).argmax(axis=1)
    same_place = [
        bank.geometry.iloc[j].equals(queries.geometry.iloc[i])
        for i, j in enumerate(nearest)
    ]
    assert all(same_place)


def test_embedding_geotiff_grid_bands_and_nodata(encoder, tmp_path: Path) -> None:
    source = write_geotiff(
        tmp_path / 'in.tif',
        width=100,
        height=70,
        nodata=255,
        nodata_region=(0, 70, 0, 30),
    )
    pcs = tmp_path / 'pca.tif'
    result = embed_geotiffs(
        source, tmp_path / 'a.parquet', encoder, raster=pcs, pca=3,
        min_valid_fraction=0.0, progress=False,
    )  # fmt: skip
    assert result.raster == str(pcs) and result.written + result.skipped == result.tiles
    with rasterio.open(source) as src, rasterio.open(pcs) as dst:
        assert dst.count == 3 and dst.descriptions == ('pc1', 'pc2', 'pc3')
        assert dst.crs == src.crs
        assert (dst.width, dst.height) == (math.ceil(100 / 8), math.ceil(70 / 8))
        assert dst.transform == src.transform @ rasterio.Affine.scale(8)
        values = dst.read()
        pca = json.loads(dst.tags()['xscale_pca'])
    assert np.isnan(values[:, :, :3]).all()  # columns 0-23 of the input: nodata
    assert np.isfinite(values[:, :, 4:]).all()  # data everywhere else (any tile kept)
    assert len(pca['components']) == 3 and len(pca['components'][0]) == 32
    # one band per channel without --pca, overlapping tiles averaged
    channels = tmp_path / 'channels.tif'
    embed_geotiffs(
        source, tmp_path / 'b.parquet', encoder, raster=channels, stride=16,
        progress=False,
    )  # fmt: skip
    with rasterio.open(channels) as dst:
        assert dst.count == 32 and dst.descriptions[0] == 'dim0'


def test_fit_pca_matches_the_covariance() -> None:
    torch.manual_seed(0)
    x = torch.randn(500, 2) @ torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    pca = fit_pca(x, 1)
    torch.testing.assert_close(
        pca['components'].abs(), torch.tensor([[1.0, 0.0]]), atol=0.02, rtol=0
    )
    assert float(pca['explained_variance_ratio'][0]) > 0.95


def test_geographic_raster_and_entry_normalisation(encoder, tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / 'geo.tif', crs='EPSG:4326', width=64, height=64)
    out = tmp_path / 'geo.parquet'
    entry = 'CrossScaleMAEBase16_Weights.FMOW_RGB'
    result = embed_geotiffs(source, out, encoder, entry, progress=False)
    assert result.normalization == 'weights transforms'
    frame = gpd.read_parquet(out)
    assert frame.crs.to_epsg() == 4326
    centroids = frame.geometry.centroid
    assert frame['centre_lon'].tolist() == pytest.approx(centroids.x.tolist())
    assert frame['centre_lat'].tolist() == pytest.approx(centroids.y.tolist())
    assert 9.0 < frame['gsd'].iloc[0] < 10.0  # 0.0001 degree near 45 N
    # the first tile's embedding is the encoder on the entry's normalisation
    with rasterio.open(source) as src:
        tile = torch.from_numpy(src.read(window=((0, 32), (0, 32))).astype(np.float32))
    x = CrossScaleMAEBase16_Weights.FMOW_RGB.transforms(tile[None])
    gsd = torch.tensor([float(frame['gsd'].iloc[0])])
    expected = encoder(x, 1.0, gsd)[0].numpy()
    np.testing.assert_allclose(
        frame['embedding'].iloc[0], expected, rtol=1e-4, atol=1e-5
    )


def test_bad_inputs_fail_clearly_and_write_nothing(encoder, tmp_path: Path) -> None:
    a = write_geotiff(tmp_path / 'in' / 'a.tif')
    b = write_geotiff(tmp_path / 'in' / 'b.tif', crs='EPSG:4326')
    c = write_geotiff(tmp_path / 'in' / 'c.tif', seed=1)
    out, grid = tmp_path / 'out' / 'tiles.parquet', tmp_path / 'out' / 'grid.tif'
    with pytest.raises(RasterInputError, match=r'b\.tif: CRS EPSG:4326 differs'):
        embed_geotiffs([a, b], out, encoder, progress=False)
    with pytest.raises(ValueError, match='with 2 inputs; expected one input file'):
        embed_geotiffs([a, c], out, encoder, raster=grid, progress=False)
    with pytest.raises(ValueError, match='pca=3 without raster'):
        embed_geotiffs(a, out, encoder, pca=3, progress=False)
    with pytest.raises(ValueError, match='stride=12 must be multiples'):
        embed_geotiffs(a, out, encoder, raster=grid, stride=12, progress=False)
    four = write_geotiff(tmp_path / 'in' / 'four.tif', bands=4)
    with pytest.raises(RasterInputError, match=r'four\.tif: has 4 bands to read'):
        embed_geotiffs(four, out, encoder, progress=False)
    empty = write_geotiff(
        tmp_path / 'in' / 'empty.tif', nodata=0, nodata_region=(0, 64, 0, 64)
    )
    with pytest.raises(RasterInputError, match=r'empty\.tif: no tile of 32 px'):
        embed_geotiffs(empty, out, encoder, raster=grid, mean=[0] * 3, std=[1] * 3)
    assert list((tmp_path / 'out').iterdir()) == []  # nothing, not even temporaries
