"""fMoW-RGB (Functional Map of the World, RGB JPEGs) with per-image GSD.

TorchGeo 0.10 has no fMoW dataset (its WILDS variant is a different layout), so
:class:`FMoWRGB` is a :class:`~torchgeo.datasets.NonGeoDataset` over the official
folder layout::

    <root>/<split>/<category>/<category>_<id>/<category>_<id>_<n>_rgb.jpg
    <root>/<split>/<category>/<category>_<id>/<category>_<id>_<n>_rgb.json

(``test``/``seq`` have no category level), or over a CSV index as SatMAE and the
Cross-Scale MAE code use (a category column, an image-path column; a ``gsd`` column,
when present, spares reading the JSON sidecars). Each sample carries the GSD of its
output pixels, so scale views and GSD positional embeddings work as on GeoTIFFs.

Images have varying sizes; each becomes a ``size x size`` tensor by cropping a
square (random or centred, ``crop_scale`` of the image area, at most the shorter
side) or by resizing the whole image, area-averaged, and the GSD follows:
``gsd_out = gsd_in * crop_side_px / size``. JPEGs are decoded at a reduced DCT scale
(PIL's ``draft``) when the crop is at least twice ``size``, which makes large images
cheap to load.
"""

import csv
import hashlib
import itertools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchgeo.datasets import NonGeoDataset

from ..io import atomic_path

__all__ = (
    'DEFAULT_INDEX_CACHE',
    'FMOW_CATEGORIES',
    'FMOW_RGB_MEAN',
    'FMOW_RGB_STD',
    'FMoWInputError',
    'FMoWRGB',
)

logger = logging.getLogger(__name__)

#: Per-channel mean of fMoW-RGB on [0, 1] (the Cross-Scale MAE code's values).
FMOW_RGB_MEAN = (0.4339, 0.4358, 0.4074)
#: Per-channel standard deviation of fMoW-RGB on [0, 1].
FMOW_RGB_STD = (0.1983, 0.1925, 0.1945)
#: Default folder of cached file indexes (one CSV per root, split and options).
DEFAULT_INDEX_CACHE = Path.home() / '.cache' / 'torchgeo_xscale' / 'fmow'

#: The 62 fMoW categories; ``label`` is the index into this tuple (-1 if unknown).
FMOW_CATEGORIES = (
    'airport', 'airport_hangar', 'airport_terminal', 'amusement_park', 'aquaculture',
    'archaeological_site', 'barn', 'border_checkpoint', 'burial_site',
    'car_dealership', 'construction_site', 'crop_field', 'dam', 'debris_or_rubble',
    'educational_institution', 'electric_substation', 'factory_or_powerplant',
    'fire_station', 'flooded_road', 'fountain', 'gas_station', 'golf_course',
    'ground_transportation_station', 'helipad', 'hospital', 'impoverished_settlement',
    'interchange', 'lake_or_pond', 'lighthouse', 'military_facility',
    'multi-unit_residential', 'nuclear_powerplant', 'office_building',
    'oil_or_gas_facility', 'park', 'parking_lot_or_garage', 'place_of_worship',
    'police_station', 'port', 'prison', 'race_track', 'railway_bridge',
    'recreational_facility', 'road_bridge', 'runway', 'shipyard', 'shopping_mall',
    'single-unit_residential', 'smokestack', 'solar_farm', 'space_facility', 'stadium',
    'storage_tank', 'surface_mine', 'swimming_pool', 'toll_booth', 'tower',
    'tunnel_opening', 'waste_disposal', 'water_treatment_facility', 'wind_farm', 'zoo',
)  # fmt: skip
_LABELS = {name: i for i, name in enumerate(FMOW_CATEGORIES)}
_PATH_COLUMNS = ('image_path', 'path', 'file', 'image', 'filename')
_SPLITS = ('train', 'val', 'test', 'seq')
_INDEX_VERSION = 1
# What a usable entry looks like, per skip reason (for on_error='raise' messages).
_EXPECTED = {
    'missing image': 'an image beside its JSON sidecar / at the CSV path',
    'missing JSON': 'a JSON sidecar beside the image (or a gsd column in the CSV)',
    'bad JSON': 'a JSON object with a {self.gsd_key!r} field',
    'bad gsd': 'a finite {self.gsd_key} > 0 in metres per pixel',
    'bad CSV row': 'as many fields as the header',
    'too small': 'images of at least min_image_size={self.min_image_size} px',
}


class FMoWInputError(ValueError):
    """An fMoW file or index is unusable; the message names it and what was expected."""


def _one_line(err: BaseException) -> str:
    return ' '.join((str(err) or type(err).__name__).split())


@dataclass
class _Record:
    """One image while indexing: path, category, GSD and size per its metadata."""

    path: str
    category: str
    gsd: float = math.nan
    width: int = 0
    height: int = 0
    gsd_text: str = ''


class FMoWRGB(NonGeoDataset):
    """fMoW-RGB images as fixed-size tensors with their GSD.

    Each sample holds:

    * ``image``: float32 ``(3, size, size)``, the raw 8-bit values (0-255; the
      datamodule normalises);
    * ``valid``: bool ``(1, size, size)``, all False for an image that failed to
      decode under ``on_error='skip'`` (the datamodule then gives it weight 0);
    * ``gsd``: float32 ``()``, metres per output pixel;
    * ``label``: int64 index into :data:`FMOW_CATEGORIES`, -1 if unknown;
    * ``index``: int64 position in the dataset; ``files``: the image path.

    Entries whose JSON is missing or invalid (no finite ``gsd_key`` > 0), whose image
    is missing, or whose side is below ``min_image_size`` are dropped when the index
    is built and counted in :attr:`skipped` (``on_error='skip'``), or raise
    :class:`FMoWInputError` naming the file (``on_error='raise'``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data/fmow-rgb',
        split: str = 'train',
        csv_path: str | os.PathLike[str] | None = None,
        size: int = 128,
        crop: Literal['random', 'center', 'resize'] = 'random',
        crop_scale: tuple[float, float] = (1.0, 1.0),
        gsd_key: str = 'gsd',
        image_suffix: str = '_rgb.jpg',
        min_image_size: int = 0,
        on_error: Literal['skip', 'raise'] = 'skip',
        index_cache: str | os.PathLike[str] | None = None,
        num_threads: int = 16,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Initialize a new FMoWRGB instance.

        Args:
            root: dataset root holding the split folders (CSV paths may be relative
                to it or to the CSV's folder).
            split: split folder (``train``, ``val``, ``test``, ``seq``) scanned when
                no *csv_path* is given.
            csv_path: CSV index instead of the folder scan (SatMAE format: category
                then image path; optional ``gsd`` column).
            size: side of the output images in pixels.
            crop: ``random`` or ``center`` square crops, or ``resize`` of the whole
                image (aspect not kept).
            crop_scale: ``(min, max)`` fraction of the image area a square crop
                covers (clipped to the shorter side); ``center`` uses *max*.
            gsd_key: JSON field with the GSD in metres (Scale-MAE reads
                ``pan_resolution_dbl``).
            image_suffix: image file suffix; the JSON sidecar replaces its extension.
            min_image_size: drop images whose shorter side (from the JSON) is smaller.
            on_error: ``skip`` (count and drop or zero-weight) or ``raise``.
            index_cache: folder caching the built index as CSV (None: no cache).
                Delete it after changing the data inside existing folders.
            num_threads: threads reading JSON sidecars while indexing.
            transforms: function applied to each finished sample.

        Raises:
            ValueError: If an argument is out of range.
            FileNotFoundError: If the split folder or CSV does not exist or holds no
                images.
            FMoWInputError: If ``on_error='raise'`` and an entry is unusable.
        """
        problems = {
            'crop': (crop, crop in ('random', 'center', 'resize'), "'random', 'center' or 'resize'"),
            'on_error': (on_error, on_error in ('skip', 'raise'), "'skip' or 'raise'"),
            'crop_scale': (crop_scale, 0 < crop_scale[0] <= crop_scale[1] <= 1, '0 < min <= max <= 1'),
            'size': (size, size >= 1, '>= 1'),
        }  # fmt: skip
        for name, (value, ok, expected) in problems.items():
            if not ok:
                raise ValueError(f'{name} {value!r} is invalid; expected {expected}')
        self.root = os.fspath(root)
        self.split = split
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.size = size
        self.crop = crop
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.gsd_key = gsd_key
        self.image_suffix = image_suffix
        self.min_image_size = min_image_size
        self.on_error = on_error
        self.num_threads = max(1, num_threads)
        self.transforms = transforms
        #: Entries dropped while indexing, by reason.
        self.skipped: dict[str, int] = {}
        #: Images that failed to decode in this process (``on_error='skip'``).
        self.load_errors = 0
        records = self._cached_index(index_cache)
        if not records:
            where = self.csv_path or os.path.join(self.root, split)
            msg = (
                f'{where}: no usable fMoW images (skipped: {self.skipped}); expected '
                f'<root>/<split>/<category>/<category>_<id>/*{image_suffix} with JSON '
                'sidecars, or a CSV index'
            )
            raise FileNotFoundError(msg)
        # numpy arrays, not lists of str: no copy-on-read growth in forked workers.
        self.files = np.array([r.path for r in records], dtype=np.bytes_)
        self.gsd = np.array([r.gsd for r in records], dtype=np.float64)
        self.labels = np.array(
            [_LABELS.get(r.category, -1) for r in records], dtype=np.int64
        )
        #: ``(N, 2)`` image width and height per the metadata (0: unknown).
        self.meta_size = np.array(
            [(r.width, r.height) for r in records], dtype=np.int64
        )

    # ------------------------------------------------------------------ index
    def _cached_index(self, cache_dir: str | os.PathLike[str] | None) -> list[_Record]:
        """Build the index, or read it from *cache_dir* (written after building)."""
        if cache_dir is None:
            return self._build_index()
        name = f'fmow-{self.split}-{self._cache_key()}.csv'
        cache = Path(cache_dir).expanduser() / name
        if cache.is_file():
            try:
                return self._read_csv(str(cache), check_files=False)
            except (OSError, ValueError) as err:
                logger.warning('ignoring unreadable index cache %s: %s', cache, err)
        records = self._build_index()
        try:
            with atomic_path(cache, '.csv') as tmp, open(tmp, 'w', newline='') as f:
                writer = csv.writer(f)
                writer.writerow(
                    ['category', 'image_path', 'gsd', 'img_width', 'img_height']
                )
                writer.writerows(
                    (r.category, r.path, repr(r.gsd), r.width, r.height)
                    for r in records
                )
        except OSError as err:
            logger.warning('could not write index cache %s: %s', cache, err)
        return records

    def _cache_key(self) -> str:
        """Hash of the index inputs: paths, mtimes (split and category folders), options."""
        stamps: list[Any] = []
        source = self.csv_path or os.path.join(self.root, self.split)
        if os.path.isdir(source):
            with os.scandir(source) as entries:
                stamps = sorted((e.name, e.stat().st_mtime_ns) for e in entries)
        if os.path.exists(source):
            stamps.append(os.stat(source).st_mtime_ns)
        options = (self.gsd_key, self.image_suffix, self.min_image_size, self.on_error)
        key = [_INDEX_VERSION, os.path.abspath(source), stamps, options]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]

    def _skip(self, reason: str, path: str, detail: str) -> None:
        """Count a dropped entry under *reason*, or raise if ``on_error='raise'``."""
        if self.on_error == 'raise':
            expected = _EXPECTED[reason].format(self=self)
            raise FMoWInputError(f'{path}: {reason} ({detail}); expected {expected}')
        if reason not in self.skipped:
            logger.warning(
                'skipping %s: %s (%s); more are counted', path, reason, detail
            )
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _build_index(self) -> list[_Record]:
        """Records of the usable images, from the CSV or the folder scan."""
        if self.csv_path is not None:
            records = self._read_csv(self.csv_path, check_files=True)
        else:
            records = self._scan_folder()
        if self.skipped:
            where = self.csv_path or os.path.join(self.root, self.split)
            logger.warning(
                'fMoW %s: %d images, skipped %s', where, len(records), self.skipped
            )
        return records

    def _scan_folder(self) -> list[_Record]:
        """Walk ``<root>/<split>`` for images and their JSON sidecars."""
        top = os.path.join(self.root, self.split)
        if not os.path.isdir(top):
            msg = f'{top}: no such folder; expected the fMoW split folder <root>/{self.split}'
            raise FileNotFoundError(msg)
        stem, ext = os.path.splitext(self.image_suffix)
        found: list[_Record] = []
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            parts = Path(folder).relative_to(top).parts
            category = parts[0] if len(parts) >= 2 else ''  # test/seq: no category
            for name in sorted(names):
                if name.endswith(self.image_suffix):
                    found.append(_Record(os.path.join(folder, name), category))
                elif name.endswith(stem + '.json') and name[:-5] + ext not in names:
                    image = os.path.join(folder, name[:-5] + ext)
                    self._skip('missing image', image, 'only its JSON exists')
        return self._with_metadata(found)

    def _read_csv(self, path: str, check_files: bool) -> list[_Record]:
        """Records from a CSV index (SatMAE's layout, or the index cache)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path}: no such CSV file; expected an fMoW index')
        with open(path, newline='') as f:
            header, *rows = list(csv.reader(f)) or [[]]
        header = [h.strip() for h in header]

        def column(names: Sequence[str], default: int = -1) -> int:
            return next((header.index(c) for c in names if c in header), default)

        path_col, cat_col = column(_PATH_COLUMNS, 1), column(('category',), 0)
        gsd_col = column(('gsd', self.gsd_key))
        size_cols = column(('img_width', 'width')), column(('img_height', 'height'))
        if not rows or len(header) <= max(path_col, cat_col):
            raise FMoWInputError(
                f'{path}: header {header} and {len(rows)} rows; expected a category '
                'column, an image path column and one row per image'
            )
        base = os.path.dirname(os.path.abspath(path))
        found = []
        for row in rows:
            if len(row) != len(header):
                self._skip('bad CSV row', path, f'{row} under {header}')
                continue
            record = _Record(
                self._resolve(row[path_col].strip(), base), row[cat_col].strip()
            )
            record.gsd_text = row[gsd_col] if gsd_col >= 0 else ''
            record.width, record.height = (
                int(row[c] or 0) if c >= 0 else 0 for c in size_cols
            )
            found.append(record)
        if check_files:
            with ThreadPoolExecutor(self.num_threads) as pool:
                exists = list(pool.map(os.path.isfile, [r.path for r in found]))
            for record in itertools.compress(found, [not ok for ok in exists]):
                self._skip('missing image', record.path, 'listed in the CSV')
            found = list(itertools.compress(found, exists))
        return self._with_metadata(found)

    def _resolve(self, name: str, base: str) -> str:
        """Image path of a CSV entry: absolute, or relative to the CSV or the root.

        An absolute path from another machine is re-rooted at its split folder.
        """
        if os.path.isabs(name):
            candidates = [name]
        else:
            candidates = [os.path.join(base, name), os.path.join(self.root, name)]
        parts = Path(name).parts
        for split in (s for s in _SPLITS if s in parts):
            candidates.append(os.path.join(self.root, *parts[parts.index(split) :]))
        return next((c for c in candidates if os.path.isfile(c)), candidates[0])

    def _read_metadata(self, record: _Record) -> tuple[str, str]:
        """Fill ``record.gsd`` (and size) from the CSV value or the JSON sidecar.

        Returns:
            ``('', '')`` if usable, else the skip reason and a detail.
        """
        meta_path = source = os.path.splitext(record.path)[0] + '.json'
        if record.gsd_text.strip():
            meta: Any = {self.gsd_key: record.gsd_text}
            source = 'the CSV gsd column'
        else:
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except FileNotFoundError:
                return 'missing JSON', meta_path
            except (OSError, ValueError) as err:
                return 'bad JSON', f'{meta_path}: {_one_line(err)}'
            if not isinstance(meta, dict) or self.gsd_key not in meta:
                return 'bad JSON', f'{meta_path}: no {self.gsd_key!r} field'
        try:
            record.gsd = float(meta[self.gsd_key])
            record.width = int(meta.get('img_width') or record.width)
            record.height = int(meta.get('img_height') or record.height)
        except (TypeError, ValueError):
            return 'bad gsd', f'{source}: {self.gsd_key}={meta[self.gsd_key]!r}'
        if not (math.isfinite(record.gsd) and record.gsd > 0):
            return 'bad gsd', f'{source}: {self.gsd_key}={record.gsd}'
        small = min(record.width, record.height) < self.min_image_size
        if record.width and record.height and small:
            return 'too small', f'{record.width}x{record.height} px'
        return '', ''

    def _with_metadata(self, found: list[_Record]) -> list[_Record]:
        """Read the metadata of *found* (threaded); keep the usable records."""
        with ThreadPoolExecutor(self.num_threads) as pool:
            problems = list(pool.map(self._read_metadata, found))
        root = os.path.abspath(self.root) + os.sep
        records = []
        for record, (reason, detail) in zip(found, problems):
            if reason:
                self._skip(reason, record.path, detail)
                continue
            full = os.path.abspath(record.path)  # stored relative to root if inside
            record.path = full.removeprefix(root)
            records.append(record)
        return records

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        """Number of images.

        Returns:
            Length of the dataset.
        """
        return len(self.files)

    def _crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Crop ``(left, top, right, bottom)`` in pixels of the full image."""
        if self.crop == 'resize':
            return 0.0, 0.0, float(width), float(height)
        low, high = self.crop_scale
        area = (
            high
            if self.crop == 'center'
            else low + (high - low) * torch.rand(()).item()
        )
        side = min(math.sqrt(area * width * height), width, height)
        if self.crop == 'center':
            left, top = (width - side) / 2, (height - side) / 2
        else:
            left, top = (
                torch.rand(2) * torch.tensor([width - side, height - side])
            ).tolist()
        return left, top, left + side, top + side

    def _load(self, path: str) -> tuple[np.ndarray, float, int, int]:
        """Decode, crop and resize one image to ``(size, size, 3)`` uint8.

        Returns:
            The pixels, the output-pixel side in file pixels (geometric mean), and
            the file's width and height.
        """
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        with img:
            width, height = img.size
            left, top, right, bottom = self._crop_box(width, height)
            spacing = math.sqrt((right - left) * (bottom - top)) / self.size
            # Decode at the smallest DCT scale that keeps >= size px across the crop.
            scale_w, scale_h = self.size / (right - left), self.size / (bottom - top)
            img.draft('RGB', (math.ceil(width * scale_w), math.ceil(height * scale_h)))
            # libjpeg reduces by 1, 2, 4 or 8 and rounds the size up: map exactly.
            reduce = 2 ** round(math.log2(width / img.size[0]))
            limits = (img.size[0], img.size[1]) * 2
            box = tuple(
                min(v / reduce, m) for v, m in zip((left, top, right, bottom), limits)
            )
            shrink = (box[2] - box[0]) >= self.size
            resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
            out = img.convert('RGB').resize((self.size, self.size), resample, box=box)
        return np.array(out), spacing, width, height

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load one image.

        Args:
            index: position in the dataset.

        Returns:
            The sample (see the class docstring for its keys).

        Raises:
            IndexError: If *index* is out of range.
            FMoWInputError: If the image cannot be decoded and ``on_error='raise'``.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} is out of range for {len(self)} images')
        path = os.path.join(self.root, self.files[index].decode())
        size = self.size
        gsd = float(self.gsd[index])
        try:
            pixels, spacing, width, height = self._load(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if self.on_error == 'raise':
                msg = f'{path}: cannot decode ({_one_line(err)}); expected a readable image'
                raise FMoWInputError(msg) from err
            self.load_errors += 1
            logger.warning(
                '%s: cannot decode (%s); zero-weighted', path, _one_line(err)
            )
            image = torch.zeros(3, size, size)
            valid = torch.zeros(1, size, size, dtype=torch.bool)
        else:
            meta_width, meta_height = self.meta_size[index]
            if meta_width and meta_height:  # a re-sized copy: scale the metadata's GSD
                gsd *= math.sqrt(meta_width * meta_height / (width * height))
            gsd *= spacing
            image = torch.from_numpy(pixels).permute(2, 0, 1).float()
            valid = torch.ones(1, size, size, dtype=torch.bool)
        sample: dict[str, Any] = {
            'image': image,
            'valid': valid,
            'gsd': torch.tensor(gsd, dtype=torch.float32),
            'label': torch.tensor(self.labels[index]),
            'index': torch.tensor(index % len(self)),
            'files': path,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
