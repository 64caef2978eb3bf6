"""Ground sample distance (GSD) in metres per pixel from a raster's georeferencing.

A projected CRS gives the pixel size in its linear unit (metres, feet, ...), so the GSD
is the pixel size times that unit's length in metres. A geographic CRS gives the pixel
size in degrees, so the GSD depends on where the pixel is: one degree of latitude is the
meridian arc length and one degree of longitude the parallel arc length at that
latitude, both on the CRS's ellipsoid (WGS84 when it declares none). Anisotropic pixels
are summarised by the geometric mean of the x and y sizes.

Projected sizes are nominal: the projection's own scale distortion is not removed
(negligible for UTM, but Web Mercator's nominal metres are ``1 / cos(latitude)`` times
the true ground distance).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from affine import Affine
from pyproj import CRS
from torch import Tensor

__all__ = (
    'MAX_LATITUDE',
    'GSDRecorder',
    'GroundUnits',
    'declared_gsd',
    'gsd_from_transform',
    'tile_gsd',
)

#: Largest absolute latitude (degrees) at which a geographic GSD is computed; nearer
#: the poles a degree of longitude shrinks to nothing and the GSD stops meaning much.
MAX_LATITUDE = 89.9

_WGS84_SEMI_MAJOR = 6378137.0
_WGS84_INVERSE_FLATTENING = 298.257223563


@dataclass(frozen=True)
class GroundUnits:
    """How one CRS unit translates into metres on the ground.

    Build it once per CRS with :meth:`from_crs` (parsing a CRS is slow) and call
    :meth:`gsd` per tile.

    Attributes:
        geographic: True if coordinates are angles (longitude, latitude).
        factor: metres per unit (projected) or radians per unit (geographic).
        semi_major: semi-major axis of the ellipsoid in metres.
        inverse_flattening: inverse flattening of the ellipsoid (0 for a sphere).
        name: the CRS's name, for error messages.
    """

    geographic: bool
    factor: float
    semi_major: float = _WGS84_SEMI_MAJOR
    inverse_flattening: float = _WGS84_INVERSE_FLATTENING
    name: str = ''

    @classmethod
    def from_crs(cls, crs: Any) -> 'GroundUnits':
        """Read the unit and ellipsoid of a CRS.

        Args:
            crs: anything :meth:`pyproj.CRS.from_user_input` accepts (a pyproj or
                rasterio CRS, ``'EPSG:32633'``, a WKT string, an EPSG code).

        Returns:
            The CRS's ground units.

        Raises:
            ValueError: If *crs* is None, unparsable, or neither projected nor
                geographic.
        """
        if crs is None:
            raise ValueError('crs is None; expected a projected or geographic CRS')
        try:
            parsed = CRS.from_user_input(crs)
        except Exception as err:
            msg = f'crs {crs!r} cannot be parsed ({err}); expected e.g. "EPSG:32633"'
            raise ValueError(msg) from err
        if parsed.is_compound:
            parsed = parsed.sub_crs_list[0]
        if parsed.is_geographic:
            geographic = True
        elif parsed.is_projected:
            geographic = False
        else:
            msg = (
                f'crs {parsed.name!r} is neither projected nor geographic; expected a '
                'CRS whose axes are in metres/feet or degrees'
            )
            raise ValueError(msg)
        factor = float(parsed.axis_info[0].unit_conversion_factor)
        ellipsoid = parsed.ellipsoid
        if ellipsoid is None:
            return cls(geographic, factor, name=parsed.name)
        return cls(
            geographic,
            factor,
            semi_major=float(ellipsoid.semi_major_metre),
            inverse_flattening=float(ellipsoid.inverse_flattening),
            name=parsed.name,
        )

    def gsd(self, xres: float, yres: float, latitude: float | None = None) -> float:
        """Ground sample distance of a pixel.

        Args:
            xres: pixel width in CRS units (sign ignored).
            yres: pixel height in CRS units (sign ignored).
            latitude: latitude in degrees of the pixel; required for geographic CRS,
                ignored for projected ones.

        Returns:
            Metres per pixel (geometric mean of the x and y sizes).

        Raises:
            ValueError: If a size is zero or not finite, or a geographic CRS gets no
                latitude or one beyond :data:`MAX_LATITUDE`.
        """
        xres, yres = abs(float(xres)), abs(float(yres))
        if not (math.isfinite(xres) and math.isfinite(yres) and xres > 0 and yres > 0):
            msg = f'pixel size ({xres}, {yres}) is invalid; expected finite sizes > 0'
            raise ValueError(msg)
        if not self.geographic:
            return math.sqrt(xres * yres) * self.factor
        if latitude is None or not math.isfinite(latitude):
            msg = (
                f'latitude {latitude!r} given for geographic crs {self.name!r}; '
                'expected the latitude in degrees of the pixels'
            )
            raise ValueError(msg)
        if abs(latitude) > MAX_LATITUDE:
            msg = (
                f'latitude {latitude} is beyond +-{MAX_LATITUDE} degrees; a geographic '
                'pixel has no meaningful GSD that near a pole (reproject to a polar '
                'projection)'
            )
            raise ValueError(msg)
        phi = math.radians(latitude)
        flattening = 1.0 / self.inverse_flattening if self.inverse_flattening else 0.0
        e2 = flattening * (2.0 - flattening)
        w = math.sqrt(1.0 - e2 * math.sin(phi) ** 2)
        meridian = self.semi_major * (1.0 - e2) / w**3  # radius of curvature, N-S
        normal = self.semi_major / w  # radius of curvature, prime vertical
        dy_m = meridian * yres * self.factor
        dx_m = normal * math.cos(phi) * xres * self.factor
        return math.sqrt(dx_m * dy_m)


def gsd_from_transform(
    transform: Affine, crs: Any, latitude: float | None = None
) -> float:
    """Ground sample distance of a raster's pixels.

    Args:
        transform: north-up affine transform of the raster (``b == d == 0``).
        crs: the raster's CRS (anything :meth:`pyproj.CRS.from_user_input` accepts).
        latitude: latitude in degrees where the GSD is wanted; required for a
            geographic CRS (e.g. the tile centre), ignored for a projected one.

    Returns:
        Metres per pixel.

    Raises:
        ValueError: If the transform is rotated or sheared, or as
            :meth:`GroundUnits.gsd` and :meth:`GroundUnits.from_crs`.
    """
    a, b, _, d, e, _ = tuple(transform)[:6]
    scale = max(abs(a), abs(e), 1e-300)
    if abs(b) > 1e-9 * scale or abs(d) > 1e-9 * scale:
        msg = (
            f'transform {tuple(transform)[:6]} is rotated or sheared (b={b}, d={d}); '
            'expected a north-up transform with b == d == 0 (warp the raster first)'
        )
        raise ValueError(msg)
    return GroundUnits.from_crs(crs).gsd(a, e, latitude)


def tile_gsd(bounds: Sequence[float], res: float | Sequence[float], crs: Any) -> float:
    """Ground sample distance of a tile, evaluated at its centre.

    Args:
        bounds: ``(xmin, ymin, xmax, ymax)`` of the tile in CRS units.
        res: pixel size ``xres`` or ``(xres, yres)`` in CRS units.
        crs: the tile's CRS or its precomputed :class:`GroundUnits`.

    Returns:
        Metres per pixel; for a geographic CRS at the latitude of the tile centre.
    """
    units = crs if isinstance(crs, GroundUnits) else GroundUnits.from_crs(crs)
    xres, yres = (res, res) if isinstance(res, int | float) else tuple(res)
    latitude = (bounds[1] + bounds[3]) / 2 if units.geographic else None
    return units.gsd(xres, yres, latitude)


class GSDRecorder:
    """The GSDs seen over a span of steps: exact min and max, a sample for the rest.

    :meth:`update` keeps everything on the values' device (no host-device sync per
    step); the first *max_values* values are kept as a sample (tiles come in random
    order, so it is a random sample) for the median and a histogram.

    Args:
        max_values: Size of the kept sample.
    """

    def __init__(self, max_values: int = 65536) -> None:
        """Initialize a new GSDRecorder instance."""
        self.max_values = max_values
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded."""
        self._parts: list[Tensor] = []
        self._kept = 0
        self._min: Tensor | None = None
        self._max: Tensor | None = None

    def __len__(self) -> int:
        """Number of values in the kept sample."""
        return self._kept

    def update(self, values: Tensor) -> None:
        """Record a batch of GSDs.

        Args:
            values: Tensor of GSDs in metres, any shape (e.g. ``view_gsd`` ``(B, V)``).
        """
        flat = values.detach().flatten().float()
        if flat.numel() == 0:
            return
        low, high = flat.min(), flat.max()
        self._min = low if self._min is None else self._min.minimum(low)
        self._max = high if self._max is None else self._max.maximum(high)
        if self._kept < self.max_values:
            flat = flat[: self.max_values - self._kept]
            self._parts.append(flat)
            self._kept += flat.numel()

    def values(self) -> Tensor | None:
        """The kept sample as one 1-D tensor (None if nothing was recorded).

        Returns:
            The sample.
        """
        if not self._parts:
            return None
        return torch.cat(self._parts)

    def summary(self) -> dict[str, float] | None:
        """``{'min', 'median', 'max'}`` in metres (min and max exact).

        Returns:
            The summary, or None if nothing was recorded.
        """
        sample = self.values()
        if sample is None or self._min is None or self._max is None:
            return None
        return {
            'min': float(self._min),
            'median': float(sample.median()),
            'max': float(self._max),
        }


def declared_gsd(source: Any) -> dict[str, float] | None:
    """The native GSD range a datamodule (or any object) declares for its training data.

    Args:
        source: An object with ``gsd_range`` (``{'min', 'median', 'max'}`` in metres,
            e.g. :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule`) or ``gsd``
            (one number in metres, e.g. the ISPRS datamodules), or None.

    Returns:
        ``{'min', 'median', 'max'}`` in metres, or None if *source* declares neither.
    """
    known = getattr(source, 'gsd_range', None)
    if isinstance(known, dict) and {'min', 'median', 'max'} <= set(known):
        return {k: float(known[k]) for k in ('min', 'median', 'max')}
    value = getattr(source, 'gsd', None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return {'min': float(value), 'median': float(value), 'max': float(value)}
    return None
