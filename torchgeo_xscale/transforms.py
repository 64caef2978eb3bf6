"""Scale augmentation for Cross-Scale MAE: views of one tile at several GSDs.

:class:`ScaleViews` turns a collated batch of tiles into ``V`` views per tile on the
batch's device (GPU augmentation in the datamodule's ``on_after_batch_transfer``, as in
TorchGeo). Every view keeps its valid-pixel mask and its effective GSD, so that the
model knows the metres per pixel of each view.

:class:`PretrainAugmentation` is the whole device-side step of a pretraining batch, in
order: :func:`normalize` the raw pixels (per band, invalid pixels 0), make the views with
:class:`ScaleViews`, and weight out tiles with too few valid pixels (``sample_weight``).
The pretraining datamodules use it as their ``aug``.
"""

from collections.abc import Sequence
from typing import Any, Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.geometry.transform import crop_and_resize, resize
from torch import Generator, Tensor, nn

__all__ = ('PretrainAugmentation', 'ScaleViews', 'normalize', 'scale_to_ratio')

# Bilinear weights below this are floating-point noise, not a contributing pixel.
_EPS = 1e-5


def _resize_area(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(B, C, H, W)`` to *size*: box average when shrinking, else bilinear."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return resize(x, size, interpolation='area')
    return resize(x, size, interpolation='bilinear', align_corners=False)


def _resize_invalid(invalid: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a float 0/1 invalid mask ``(B, 1, H, W)``; any invalid source wins."""
    if tuple(invalid.shape[-2:]) == tuple(size):
        return invalid
    if size[0] <= invalid.shape[-2] and size[1] <= invalid.shape[-1]:
        return F.adaptive_max_pool2d(invalid, size)
    up = resize(invalid, size, interpolation='bilinear', align_corners=False)
    return (up > _EPS).to(invalid.dtype)


def scale_to_ratio(images: Tensor, ratio: float) -> Tensor:
    """Simulate a coarser GSD: area-downsample by *ratio*, then resize back.

    Used by the scale-robustness evaluations (ratios 0.125, 0.25, 0.5, 1.0).

    Args:
        images: ``(B, C, H, W)`` images.
        ratio: scale ratio in ``(0, 1]``; the GSD becomes ``gsd / ratio``.

    Returns:
        ``(B, C, H, W)`` images with the detail of ``round(H * ratio)`` pixels.

    Raises:
        ValueError: If *ratio* is outside ``(0, 1]``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f'ratio {ratio} is invalid; expected 0 < ratio <= 1')
    height, width = images.shape[-2:]
    low = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    if low == (height, width):
        return images
    small = resize(images, low, interpolation='area')
    return resize(small, (height, width), interpolation='bilinear', align_corners=False)


class ScaleViews(nn.Module):
    """Make ``num_views`` views per tile at different scales, sharing random flips.

    Input batch keys: ``image`` ``(B, C, H, W)``, ``gsd`` ``(B,)`` metres per pixel and
    optionally ``valid`` ``(B, 1, H, W)`` bool. Horizontal and vertical flips (random
    per sample) are applied to the tile first, so every view of a tile shares them;
    ``image`` and ``valid`` are replaced by the flipped tile. Added keys:

    * ``views`` ``(B, V, C, size, size)``, 0 where invalid;
    * ``view_valid`` ``(B, V, 1, size, size)`` bool: valid only where every source
      pixel is valid;
    * ``scale_ratio`` ``(B, V)``: ``r`` of each view, 1 for view 0;
    * ``view_gsd`` ``(B, V)``: ``gsd * H / size / r``, metres per view pixel.

    View 0 is the whole tile resized to ``size`` (area average when shrinking). The
    other views depend on *mode*:

    * ``'same_footprint'`` (the paper read literally): a per-sample ratio ``r``
      drawn from *scale_range*; the tile is area-downsampled to ``round(size * r)``
      pixels and resized back to ``size`` (bilinear). Same ground and pixel grid as
      view 0, less detail, so token ``i`` of every view covers the same ground. To
      avoid a Python loop over samples, ``scale_range`` is split into
      ``num_scale_bins`` equal bins, each sample draws a bin uniformly and uses its
      centre, and the loop runs over the distinct bins only. The reported
      ``scale_ratio`` is the ratio actually used, ``round(size * r) / size``.
    * ``'crop'`` (the public code's variant): a random square crop of *crop_area*
      of the tile's area, per sample, resized to ``size``; ``r = H / crop side``.

    Pass a :class:`torch.Generator` to :meth:`forward` for reproducible views.
    """

    def __init__(
        self,
        size: int = 128,
        scale_range: tuple[float, float] = (0.2, 0.8),
        num_views: int = 2,
        mode: Literal['same_footprint', 'crop'] = 'same_footprint',
        flips: bool = True,
        num_scale_bins: int = 16,
        crop_area: tuple[float, float] = (0.25, 0.75),
    ) -> None:
        """Initialize a new ScaleViews instance.

        Args:
            size: side of every view in pixels.
            scale_range: ``(r_min, r_max)`` of the low-scale views' ratio, in (0, 1].
            num_views: views per tile; 1 gives only the full-scale view (plain MAE).
            mode: ``'same_footprint'`` or ``'crop'`` (see the class docstring).
            flips: if True, random horizontal and vertical flips shared by all views.
            num_scale_bins: number of distinct ratios in ``'same_footprint'`` mode.
            crop_area: ``(min, max)`` fraction of the tile area kept in ``'crop'``.

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high <= 1:
            msg = f'scale_range {scale_range} is invalid; expected 0 < min <= max <= 1'
            raise ValueError(msg)
        if not 0 < crop_area[0] <= crop_area[1] <= 1:
            msg = f'crop_area {crop_area} is invalid; expected 0 < min <= max <= 1'
            raise ValueError(msg)
        if mode not in ('same_footprint', 'crop'):
            msg = f"mode {mode!r} is invalid; expected 'same_footprint' or 'crop'"
            raise ValueError(msg)
        for name, value in (('size', size), ('num_views', num_views)):
            if value < 1:
                raise ValueError(f'{name} {value} is invalid; expected >= 1')
        if num_scale_bins < 1:
            raise ValueError(
                f'num_scale_bins {num_scale_bins} is invalid; expected >= 1'
            )
        self.size = size
        self.scale_range = (float(low), float(high))
        self.num_views = num_views
        self.mode = mode
        self.flips = flips
        self.num_scale_bins = num_scale_bins
        self.crop_area = crop_area
        self.hflip = K.RandomHorizontalFlip(p=0.5)
        self.vflip = K.RandomVerticalFlip(p=0.5)
        centres = (
            low + (torch.arange(num_scale_bins) + 0.5) * (high - low) / num_scale_bins
        )
        # Pixel side of the low view for each bin (kept on the CPU: it drives a loop).
        self.bin_sizes = (centres * size).round().clamp(1, size).long()

    def _rand(self, shape: tuple[int, ...], generator: Generator | None) -> Tensor:
        device = generator.device if generator is not None else None
        return torch.rand(shape, generator=generator, device=device)

    def _flip(self, x: Tensor, generator: Generator | None) -> Tensor:
        """Flip ``(B, C, H, W)`` per sample with Kornia, the coin flips drawn here."""
        coins = self._rand((2, x.shape[0]), generator).to(x.device) < 0.5
        shape = torch.tensor(x.shape)
        x = self.hflip(x, params={'batch_prob': coins[0], 'forward_input_shape': shape})
        return self.vflip(
            x, params={'batch_prob': coins[1], 'forward_input_shape': shape}
        )

    def _same_footprint(
        self, x: Tensor, generator: Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Low-detail view of ``(B, C + 1, H, W)`` (last band: invalid) and ratio."""
        bins = (self._rand((x.shape[0],), generator) * self.num_scale_bins).long()
        low_sizes = self.bin_sizes[bins.cpu().clamp(max=self.num_scale_bins - 1)]
        out = x.new_empty((x.shape[0], x.shape[1], self.size, self.size))
        full = (self.size, self.size)
        for low in low_sizes.unique().tolist():
            idx = (low_sizes == low).nonzero().squeeze(1).to(x.device)
            tile = x[idx]
            image = _resize_area(tile[:, :-1], (low, low))
            invalid = _resize_invalid(tile[:, -1:], (low, low))
            out[idx, :-1] = _resize_area(image, full)
            out[idx, -1:] = _resize_invalid(invalid, full)
        return out, (low_sizes.to(x) / self.size)

    def _crop(self, x: Tensor, generator: Generator | None) -> tuple[Tensor, Tensor]:
        """Random square crop of ``(B, C + 1, H, W)`` resized to ``size``, and ratio."""
        batch, _, height, width = x.shape
        draws = self._rand((3, batch), generator)
        low, high = self.crop_area
        area = low + (high - low) * draws[0]
        side = (area.sqrt() * min(height, width)).round().clamp(1, min(height, width))
        x0 = (draws[1] * (width - side + 1)).floor()
        y0 = (draws[2] * (height - side + 1)).floor()
        x1, y1 = x0 + side - 1, y0 + side - 1
        boxes = torch.stack(
            [torch.stack(p, -1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1
        ).to(x)
        out = crop_and_resize(x, boxes, (self.size, self.size), align_corners=True)
        out[:, -1:] = (out[:, -1:] > _EPS).to(x)
        return out, (height / side).to(x)

    def forward(
        self, batch: dict[str, Any], generator: Generator | None = None
    ) -> dict[str, Any]:
        """Add ``views``, ``view_valid``, ``view_gsd`` and ``scale_ratio`` to *batch*.

        Args:
            batch: collated batch with ``image`` ``(B, C, H, W)``, ``gsd`` ``(B,)``
                and optionally ``valid`` ``(B, 1, H, W)``.
            generator: random generator for flips, ratios and crops (default: the
                global one); its device may differ from the batch's.

        Returns:
            The same dict with the added keys (and the flipped ``image``/``valid``).

        Raises:
            KeyError: If ``image`` or ``gsd`` is missing.
            ValueError: If ``image`` is not ``(B, C, H, W)``.
        """
        for key in ('image', 'gsd'):
            if key not in batch:
                raise KeyError(f'batch has no {key!r}; expected keys image, gsd, valid')
        image = batch['image']
        if image.ndim != 4:
            msg = f'image has shape {tuple(image.shape)}; expected (B, C, H, W)'
            raise ValueError(msg)
        batch_size, _, height, _ = image.shape
        valid = batch.get('valid')
        if valid is None:
            valid = torch.ones_like(image[:, :1], dtype=torch.bool)
        x = torch.cat([image.float(), (~valid).float()], dim=1)
        if self.flips:
            x = self._flip(x, generator)
        full = (self.size, self.size)
        views = [
            torch.cat(
                [_resize_area(x[:, :-1], full), _resize_invalid(x[:, -1:], full)], 1
            )
        ]
        ratios = [x.new_ones(batch_size)]
        make = self._crop if self.mode == 'crop' else self._same_footprint
        for _ in range(self.num_views - 1):
            view, ratio = make(x, generator)
            views.append(view)
            ratios.append(ratio)
        stacked = torch.stack(views, dim=1)  # (B, V, C + 1, size, size)
        view_valid = stacked[:, :, -1:] < 0.5
        scale_ratio = torch.stack(ratios, dim=1)
        gsd = batch['gsd'].to(x).reshape(batch_size, 1)
        batch['image'] = x[:, :-1].to(image.dtype)
        batch['valid'] = x[:, -1:] < 0.5
        batch['views'] = torch.where(view_valid, stacked[:, :, :-1], 0.0)
        batch['view_valid'] = view_valid
        batch['scale_ratio'] = scale_ratio
        batch['view_gsd'] = gsd * height / self.size / scale_ratio
        return batch


def normalize(
    image: Tensor, mean: Tensor, std: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Normalise raw pixels per band: ``(x - mean) / std``, 0 where invalid.

    Args:
        image: ``(B, C, H, W)`` or ``(C, H, W)`` raw pixel values.
        mean: ``(C,)`` per-band mean.
        std: ``(C,)`` per-band standard deviation (> 0).
        valid: bool mask broadcastable to *image* (e.g. ``(B, 1, H, W)``); None: all
            valid.

    Returns:
        The normalised image, float32, same shape.
    """
    shape = (-1, 1, 1)
    mean = mean.to(image.device, torch.float32).reshape(shape)
    std = std.to(image.device, torch.float32).reshape(shape)
    out = (image.float() - mean) / std
    return out if valid is None else torch.where(valid, out, 0.0)


class PretrainAugmentation(nn.Module):
    """Normalise, make scale views and weight tiles: one pretraining batch on its device.

    ``forward(batch, generator)`` takes a collated batch of raw tiles (``image``
    ``(B, C, H, W)``, ``gsd`` ``(B,)``, ``valid`` ``(B, 1, H, W)``) and returns it with
    ``image`` normalised (:func:`normalize`, invalid pixels 0), the keys of
    :class:`ScaleViews` and ``sample_weight`` ``(B,)``: 1.0 where the valid fraction of
    the tile reaches *min_valid_fraction*, else 0.0 (shapes stay static; the model
    zero-weights those tiles). A batch without ``valid`` counts non-finite pixels as
    invalid.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        views: ScaleViews,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        min_valid_fraction: float = 0.5,
    ) -> None:
        """Initialize a new PretrainAugmentation instance.

        Args:
            views: The scale views.
            mean: Per-band mean of the raw pixels (None: set later with
                :meth:`set_statistics`; until then pixels are not normalised).
            std: Per-band standard deviation.
            min_valid_fraction: Valid fraction below which a tile gets weight 0.

        Raises:
            ValueError: If *min_valid_fraction* is outside [0, 1] or the statistics
                are invalid.
        """
        super().__init__()
        if not 0 <= min_valid_fraction <= 1:
            msg = f'min_valid_fraction {min_valid_fraction} is invalid; expected [0, 1]'
            raise ValueError(msg)
        self.views = views
        self.min_valid_fraction = min_valid_fraction
        self.register_buffer('mean', torch.zeros(0), persistent=False)
        self.register_buffer('std', torch.zeros(0), persistent=False)
        if mean is not None or std is not None:
            self.set_statistics(mean, std)

    def set_statistics(
        self,
        mean: Sequence[float] | Tensor | None,
        std: Sequence[float] | Tensor | None,
    ) -> None:
        """Set the per-band normalisation.

        Args:
            mean: ``(C,)`` per-band mean.
            std: ``(C,)`` per-band standard deviation, all > 0.

        Raises:
            ValueError: If one is missing, their lengths differ or a std is <= 0.
        """
        if mean is None or std is None:
            raise ValueError('mean and std go together; expected both or neither')
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            msg = f'mean has {mean_t.numel()} values, std {std_t.numel()}; expected one per band each'
            raise ValueError(msg)
        if bool((std_t <= 0).any()):
            raise ValueError(f'std {std_t.tolist()} has values <= 0; expected > 0')
        self.mean, self.std = mean_t, std_t

    def forward(
        self, batch: dict[str, Any], generator: Generator | None = None
    ) -> dict[str, Any]:
        """Normalise, make the views and ``sample_weight``.

        Args:
            batch: Collated batch of raw tiles.
            generator: Random generator of the views (default: the global one).

        Returns:
            The batch with normalised ``image``, the views and ``sample_weight``.

        Raises:
            ValueError: If the batch has another band count than the statistics.
        """
        image = batch['image'].float()
        valid = batch.get('valid')
        if valid is None:
            valid = torch.isfinite(image).all(dim=1, keepdim=True)
        image = torch.nan_to_num(image)
        if self.mean.numel():
            if image.shape[1] != self.mean.numel():
                msg = (
                    f'image has {image.shape[1]} bands; expected {self.mean.numel()} '
                    'like the normalisation statistics'
                )
                raise ValueError(msg)
            image = normalize(image, self.mean, self.std, valid)
        else:
            image = torch.where(valid, image, 0.0)
        batch['image'], batch['valid'] = image, valid
        batch = self.views(batch, generator)
        fraction = batch['valid'].flatten(1).float().mean(dim=1)
        batch['sample_weight'] = (fraction >= self.min_valid_fraction).float()
        return batch
