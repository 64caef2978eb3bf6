"""Tile embeddings as GeoParquet, written row group by row group.

The layout (one row per tile) is described in :mod:`torchgeo_xscale.embed`. The
geometry column is WKB in the inputs' CRS; the file's ``geo`` metadata follows
GeoParquet 1.1 (PROJJSON CRS), so :func:`geopandas.read_parquet` restores the
:class:`~geopandas.GeoDataFrame` with its CRS; ``embedding``, ``centre_lon``,
``centre_lat`` and ``timestamp`` are the columns TorchGeo's
:class:`~torchgeo.datasets.EarthEmbeddings` reads.
"""

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer
from torch import Tensor

from .tiles import Tile

__all__ = ('ROWS_PER_GROUP', 'GeoParquetWriter', 'geo_metadata')

#: Rows per Parquet row group (what is held in memory before a write).
ROWS_PER_GROUP = 1024


def geo_metadata(crs: Any) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata of a WKB polygon column named ``geometry``.

    Args:
        crs: The geometries' CRS (anything :class:`pyproj.CRS` reads).

    Returns:
        The metadata (JSON-serialisable).
    """
    return {
        'version': '1.1.0',
        'primary_column': 'geometry',
        'columns': {
            'geometry': {
                'encoding': 'WKB',
                'geometry_types': ['Polygon'],
                'crs': CRS.from_user_input(crs).to_json_dict(),
            }
        },
    }


def _schema(dim: int, metadata: dict[bytes, bytes]) -> pa.Schema:
    fields = [
        ('source', pa.string()),
        ('row', pa.int32()),
        ('col', pa.int32()),
        ('pixel_bbox', pa.list_(pa.int32(), 4)),
        ('valid_fraction', pa.float32()),
        ('gsd', pa.float32()),
        ('centre_lon', pa.float64()),
        ('centre_lat', pa.float64()),
        ('timestamp', pa.timestamp('us', tz='UTC')),
        ('embedding', pa.list_(pa.float32(), dim)),
        ('geometry', pa.binary()),
    ]
    return pa.schema(fields, metadata=metadata)


class GeoParquetWriter:
    """Queue tile rows and write them in row groups of :data:`ROWS_PER_GROUP`.

    Attributes:
        written: Rows written so far.
        dim: Embedding length (0 before the first row).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        crs: Any,
        metadata: dict[str, Any],
        timestamp: Any = None,
    ) -> None:
        """Prepare the file (created at the first row group).

        Args:
            path: Destination (the caller makes it atomic).
            crs: CRS of the tile geometries.
            metadata: JSON stored under the file's ``xscale`` metadata key.
            timestamp: Value of the ``timestamp`` column (aware datetime or None).
        """
        self.path = os.fspath(path)
        self.crs = crs
        self.metadata = metadata
        self.timestamp = timestamp
        self.to_lonlat = Transformer.from_crs(crs, 'EPSG:4326', always_xy=True)
        self.writer: pq.ParquetWriter | None = None
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self.dim = 0

    def add(
        self, source: str, tiles: Sequence[Tile], features: Tensor, tile_size: int
    ) -> None:
        """Queue one row per tile (written when a row group is full).

        Args:
            source: The tiles' file.
            tiles: The tiles.
            features: Their embeddings ``(B, D)``.
            tile_size: Tile side in pixels.
        """
        xs = [t.centre[0] for t in tiles]
        ys = [t.centre[1] for t in tiles]
        lons, lats = (np.atleast_1d(v) for v in self.to_lonlat.transform(xs, ys))
        vectors = features.float().cpu().numpy()
        for k, tile in enumerate(tiles):
            c, r = tile.col_off, tile.row_off
            self.rows.append(
                {
                    'source': source,
                    'row': tile.row,
                    'col': tile.col,
                    'pixel_bbox': [c, r, c + tile_size, r + tile_size],
                    'valid_fraction': tile.valid_fraction,
                    'gsd': tile.gsd,
                    'centre_lon': float(lons[k]),
                    'centre_lat': float(lats[k]),
                    'timestamp': self.timestamp,
                    'embedding': vectors[k],
                    'geometry': shapely.to_wkb(shapely.Polygon(tile.corners)),
                }
            )
        if len(self.rows) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one row group (the file is created first)."""
        if not self.rows:
            return
        self.dim = int(self.rows[0]['embedding'].shape[0])
        if self.writer is None:
            metadata = {
                b'geo': json.dumps(geo_metadata(self.crs)).encode(),
                b'xscale': json.dumps({**self.metadata, 'dim': self.dim}).encode(),
            }
            self.writer = pq.ParquetWriter(self.path, _schema(self.dim, metadata))
        schema = self.writer.schema
        columns: dict[str, pa.Array] = {}
        for name in schema.names:
            values = [row[name] for row in self.rows]
            if name == 'embedding':
                flat = pa.array(np.concatenate(values), pa.float32())
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, self.dim)
            else:
                columns[name] = pa.array(values, schema.field(name).type)
        self.writer.write_table(pa.table(columns, schema=schema))
        self.written += len(self.rows)
        self.rows = []

    def close(self) -> None:
        """Write the queued rows and the file footer."""
        self.flush()
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        """Drop the queued rows and close the file (the caller discards it)."""
        self.rows = []
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
