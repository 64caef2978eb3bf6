"""Training tiles from many native grids, in an order that resumes exactly.

* :class:`ExactPatchSampler` is TorchGeo's
  :class:`~torchgeo.samplers.RandomPatchSampler` with an exact footprint erosion.
* :class:`GroupedPatchSampler` draws the tiles of every epoch from several
  datasets on their own grids (one :class:`ExactPatchSampler` per group, a group
  per tile drawn with a seeded generator) and yields ``(group, GeoSlice)`` for
  :class:`~torchgeo_xscale.datasets.GroupedGeoTIFFDataset`. The tiles of training
  batch *i* on rank *r* are a pure function of ``(seed, i, r)``: epoch ``e`` is drawn
  from ``(seed, e)`` alone and split between ranks, and the sampler starts wherever
  its :attr:`~GroupedPatchSampler.position` says, whatever Lightning's epoch counter
  or ``set_epoch`` calls do.
* :class:`ResumableDataLoader` counts the batches it hands out (not the ones its
  workers prefetch) into the sampler's position, and exposes ``state_dict`` /
  ``load_state_dict``: Lightning saves it in every checkpoint (``loops`` state,
  ``combined_loader``) and restores it before the first batch of a resumed run, so
  a run killed at step N and resumed computes what the uninterrupted run computed.
"""

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from geopandas import GeoSeries
from torch.utils.data import DataLoader, DistributedSampler
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import RandomPatchSampler

__all__ = (
    'ExactPatchSampler',
    'GroupedPatchSampler',
    'ResumableDataLoader',
    'flush_starts',
    'grid_tiles',
)

logger = logging.getLogger(__name__)

#: ``(group, GeoSlice)``: a tile of one group of a grouped dataset.
GroupedSlice = tuple[int, GeoSlice]


def flush_starts(
    low: float, high: float, size: int, stride: int | None = None
) -> list[int]:
    """Tile starts (pixels) every *stride* from *low*, the last one flush with *high*.

    As TorchGeo's :class:`~torchgeo.samplers.GridGeoSampler` lays its chips, plus a
    last one moved back to end at *high* instead of overhanging it. The one 1-D grid
    of the package's tile grids (:func:`grid_tiles`,
    :func:`torchgeo_xscale.evaluation.datasets.tile_grid`).

    Args:
        low: Start of the range in pixels (rounded up to a whole pixel).
        high: End of the range in pixels (rounded down).
        size: Tile side in pixels.
        stride: Step in pixels (default *size*: tiles side by side).

    Returns:
        The starts; empty when no whole tile fits.
    """
    first, last = math.ceil(low - 0.01), math.floor(high + 0.01) - size
    if last < first:
        return []
    starts = list(range(first, last + 1, stride or size))
    if starts[-1] != last:
        starts.append(last)
    return starts


def grid_tiles(
    dataset: GeoDataset,
    size: int,
    bounds: tuple[float, float, float, float] | None = None,
) -> list[tuple[slice, slice]]:
    """A grid of whole tiles on *dataset*'s pixel grid, the last one flush with each edge.

    The grid starts at the region's top-left whole pixel of the dataset's grid
    (whose origin is the top-left corner of the dataset's bounds) and, as TorchGeo's
    :class:`~torchgeo.samplers.GridGeoSampler` does, ends with a tile flush with the
    far edge, so every tile lies inside the region, no tile is resampled and the
    region is covered. Tiles that miss the dataset's footprint are left out.

    Args:
        dataset: The dataset (its grid and footprint).
        size: Tile side in pixels.
        bounds: ``(xmin, ymin, xmax, ymax)`` of the region (default the dataset's).

    Returns:
        The tiles' ``(x, y)`` slices, row by row from the top.
    """
    xres, yres = dataset.res
    x, y, _ = dataset.bounds
    xmin, ymin, xmax, ymax = bounds or (x.start, y.start, x.stop, y.stop)
    cols = flush_starts((xmin - x.start) / xres, (xmax - x.start) / xres, size)
    rows = flush_starts(
        (y.stop - ymax) / yres, (y.stop - ymin) / yres, size
    )  # from the top
    footprint = dataset.index.geometry.union_all()
    tiles = []
    for row in rows:
        for col in cols:
            x0, y1 = x.start + col * xres, y.stop - row * yres
            tile = (slice(x0, x0 + size * xres), slice(y1 - size * yres, y1))
            box = shapely.box(tile[0].start, tile[1].start, tile[0].stop, tile[1].stop)
            if footprint.intersects(box) and not footprint.touches(box):
                tiles.append(tile)
    return tiles


class ExactPatchSampler(RandomPatchSampler):
    """:class:`~torchgeo.samplers.RandomPatchSampler` with exact erosion.

    TorchGeo erodes the footprint by half the patch diagonal, which leaves nothing of
    a raster narrower than about 1.42 patches. Eroding by half a patch side (in pixel
    units, mitred corners) keeps every square patch inside the footprint and accepts
    any raster at least one patch wide.
    """

    def __init__(
        self, dataset: GeoDataset, size: int, length: int | None = None, seed: int = 0
    ) -> None:
        """Initialize a new ExactPatchSampler instance.

        Args:
            dataset: Dataset to sample from.
            size: Patch side in pixels.
            length: Patches per iteration (default: about the number of
                non-overlapping patches).
            seed: Seed of the generator.
        """
        super().__init__(dataset, size=size, length=length, generator=seed)
        xres, yres = self.res
        pixels = shapely.affinity.scale(
            self.geometry, 1 / xres, 1 / yres, origin=(0, 0)
        )
        margin = max(self.size[0] / yres, self.size[1] / xres) / 2 - 0.49
        inner = shapely.buffer(pixels, -margin, join_style='mitre')
        inner = shapely.affinity.scale(inner, xres, yres, origin=(0, 0))
        self.series = GeoSeries([inner])

    @property
    def empty(self) -> bool:
        """True if no whole patch fits in the footprint."""
        return bool(self.series.iloc[0].is_empty or self.series.area.iloc[0] <= 0)

    @property
    def capacity(self) -> float:
        """Area where a patch can be placed, in pixels of the dataset's grid."""
        xres, yres = self.res
        return float(self.series.area.iloc[0]) / (xres * yres)

    def draw(self, count: int, generator: np.random.Generator) -> list[GeoSlice]:
        """Draw *count* random patches with *generator*.

        Args:
            count: Number of patches.
            generator: The random generator (advanced).

        Returns:
            The patches' GeoSlices, snapped to the pixel grid.
        """
        if count <= 0:
            return []
        self.generator, self._length = generator, count
        return list(self)


class GroupedPatchSampler(DistributedSampler):  # type: ignore[type-arg]
    """Random tiles from several groups (grids), per rank, from a resumable position.

    Each epoch, *length* tiles are drawn: for each tile a group (with probability
    *weights*, from ``numpy.random.default_rng([seed, epoch])``), then each group's
    tiles by its :class:`ExactPatchSampler` (from ``[seed, epoch, group]``). The epoch's
    list is padded cyclically to a multiple of *num_replicas* and rank *r* takes
    every *num_replicas*-th tile from *r* (as :class:`~torch.utils.data.DistributedSampler`
    does). Only whole batches are used (``len(self)`` is a multiple of *batch_size*).

    Iterating starts at batch :attr:`position` of this rank's stream of batches and
    yields one epoch's worth of batches, continuing into the next epoch's tiles when
    the position is mid-epoch. :class:`ResumableDataLoader` advances the position by
    the batches actually consumed. It is a
    :class:`~torch.utils.data.DistributedSampler` so that Lightning keeps it under DDP
    instead of wrapping it in another sharding sampler; ``set_epoch`` has no effect.
    """

    def __init__(
        self,
        samplers: Sequence[ExactPatchSampler],
        length: int,
        batch_size: int,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        """Initialize a new GroupedPatchSampler instance.

        Args:
            samplers: One sampler per group.
            length: Tiles per epoch over all ranks.
            batch_size: Tiles per batch and rank.
            weights: Probability of each group per tile (default: each group's
                :attr:`~ExactPatchSampler.capacity`); normalised here.
            seed: Seed of the tiles.
            num_replicas: Number of ranks.
            rank: This process's rank.

        Raises:
            ValueError: If an argument is out of range, or *length* gives fewer
                tiles per rank than one batch.
        """
        if not samplers:
            raise ValueError('samplers is empty; expected one sampler per group')
        for name, value in (('length', length), ('batch_size', batch_size)):
            if value < 1:
                raise ValueError(f'{name}={value} is invalid; expected >= 1')
        super().__init__(
            range(length),  # type: ignore[arg-type]  # only its length is used
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
        )
        raw = [s.capacity for s in samplers] if weights is None else list(weights)
        if len(raw) != len(samplers) or min(raw) < 0 or sum(raw) <= 0:
            msg = f'weights={raw} are invalid; expected {len(samplers)} values >= 0, not all 0'
            raise ValueError(msg)
        self.samplers = list(samplers)
        self.weights = np.asarray(raw, dtype=np.float64) / sum(raw)
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.per_rank = -(-length // num_replicas)
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch < 1:
            msg = (
                f'length={length} gives {self.per_rank} tiles per device for '
                f'{num_replicas} device(s); expected length >= batch_size x devices '
                f'= {batch_size * num_replicas}'
            )
            raise ValueError(msg)
        #: Batches of this rank's stream consumed so far (all epochs).
        self.position = 0
        self._cache: dict[int, list[GroupedSlice]] = {}

    @property
    def current_epoch(self) -> int:
        """The epoch of the next batch (``set_epoch`` does not change it)."""
        return self.position // self.batches_per_epoch

    def epoch_tiles(self, epoch: int, count: int | None = None) -> list[GroupedSlice]:
        """Every rank's tiles of one epoch, in order.

        Args:
            epoch: The epoch.
            count: Draw only this many tiles the same way (a sample of the epoch's
                distribution; the epoch's own tiles when *count* >= *length*).

        Returns:
            *length* (or *count*) ``(group, GeoSlice)`` pairs.
        """
        size = self.length if count is None else min(count, self.length)
        rng = np.random.default_rng([self.seed, epoch])
        groups = rng.choice(len(self.samplers), size=size, p=self.weights)
        drawn = []
        for g, sampler in enumerate(self.samplers):
            rng_g = np.random.default_rng([self.seed, epoch, g])
            drawn.append(iter(sampler.draw(int((groups == g).sum()), rng_g)))
        return [(int(g), next(drawn[g])) for g in groups]

    def rank_tiles(self, epoch: int) -> list[GroupedSlice]:
        """This rank's tiles of one epoch (every whole batch of them).

        Args:
            epoch: The epoch.

        Returns:
            ``batches_per_epoch * batch_size`` pairs.
        """
        if epoch not in self._cache:
            tiles = self.epoch_tiles(epoch)
            total = self.per_rank * self.num_replicas
            padded = (tiles * (-(-total // len(tiles))))[:total]
            mine = padded[self.rank :: self.num_replicas]
            self._cache = {epoch: mine[: self.batches_per_epoch * self.batch_size]}
        return self._cache[epoch]

    def __iter__(self) -> Iterator[GroupedSlice]:  # type: ignore[override]
        """Yield one epoch's worth of tiles from :attr:`position` on.

        Yields:
            ``(group, GeoSlice)`` per tile.
        """
        start, size = self.position, self.batch_size
        for batch in range(start, start + self.batches_per_epoch):
            epoch, index = divmod(batch, self.batches_per_epoch)
            yield from self.rank_tiles(epoch)[index * size : (index + 1) * size]

    def __len__(self) -> int:
        """Tiles per epoch on this rank (whole batches).

        Returns:
            ``batches_per_epoch * batch_size``.
        """
        return self.batches_per_epoch * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler is, and what defines its stream.

        Returns:
            ``position`` and the settings it depends on.
        """
        return {
            'position': self.position,
            'length': self.length,
            'batch_size': self.batch_size,
            'num_replicas': self.num_replicas,
            'seed': self.seed,
            'groups': len(self.samplers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position.

        With other settings (devices, batch size, length, seed or groups) the saved
        batch position does not exist in this stream: the sampler starts at the
        beginning of the saved epoch instead, and says so.

        Args:
            state: A :meth:`state_dict`.
        """
        saved = {k: state.get(k) for k in self.state_dict() if k != 'position'}
        position = int(state.get('position', 0))
        current = {k: v for k, v in self.state_dict().items() if k != 'position'}
        if saved == current:
            self.position = position
            return
        old_batches = -(-int(saved['length'] or 1) // int(saved['num_replicas'] or 1))
        old_batches //= max(1, int(saved['batch_size'] or 1))
        epoch = position // max(1, old_batches)
        self.position = epoch * self.batches_per_epoch
        logger.warning(
            "the checkpoint's sampler had %s, this run %s: starting the tiles of "
            'epoch %d from its beginning (not an exact resume)',
            saved,
            current,
            epoch,
        )


class _CountingIterator:
    """Iterate a data loader's batches, advancing the sampler's position per batch."""

    def __init__(self, iterator: Iterator[Any], sampler: GroupedPatchSampler) -> None:
        self.iterator, self.sampler = iterator, sampler

    def __iter__(self) -> '_CountingIterator':
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.sampler.position += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader):  # type: ignore[type-arg]
    """A :class:`~torch.utils.data.DataLoader` whose position Lightning checkpoints.

    With a :class:`GroupedPatchSampler`, every batch handed out advances the sampler's
    :attr:`~GroupedPatchSampler.position` (batches prefetched by workers do not
    count), and :meth:`state_dict` / :meth:`load_state_dict` (Lightning's stateful
    data-loader protocol) save and restore it. Lightning then also no longer warns
    that the data loader is not resumable. With any other sampler it is a plain
    data loader with an empty state.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """Iterate the batches from the sampler's position.

        Returns:
            The batch iterator.
        """
        iterator = super().__iter__()
        if isinstance(self.sampler, GroupedPatchSampler):
            return _CountingIterator(iterator, self.sampler)
        return iterator

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position (Lightning saves it in checkpoints).

        Returns:
            The sampler's state, or ``{}``.
        """
        if isinstance(self.sampler, GroupedPatchSampler):
            return {'sampler': self.sampler.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sampler's position (Lightning calls it when resuming).

        Args:
            state: A :meth:`state_dict`.
        """
        if isinstance(self.sampler, GroupedPatchSampler) and 'sampler' in state:
            self.sampler.load_state_dict(state['sampler'])
