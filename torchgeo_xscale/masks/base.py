"""The base of the masking strategies: :class:`MaskInfo`, the registry, random masking.

Which patches each sample's encoder sees. One interface for every strategy::

    mask = strategy(batch_size, grid_h, grid_w, ratio, generator=None, device=None)

returns a :class:`MaskInfo` with the indices of the visible patches per sample (the
same count for every sample, so the batch stays rectangular) and the indices that
restore the original patch order. Strategies are looked up by name with
:func:`build_mask_strategy` (options as keyword arguments, ``mask_options`` in
configs); new ones register with :func:`register_mask_strategy`, used as a
decorator in the strategy's own module (as timm's ``@register_model``), which
:mod:`torchgeo_xscale.masks` imports. This module imports none of them.

Registered strategies (details in :mod:`torchgeo_xscale.masks` and
``docs/masking.md``):

- ``random``: MAE's uniform random masking.
- ``colormae-green``, ``colormae-blue``, ``colormae-red``, ``colormae-purple``:
  ColorMAE's filtered-noise masks (:mod:`torchgeo_xscale.masks.colormae`).
- ``lomar``: LoMaR's local windows (:mod:`torchgeo_xscale.masks.lomar`).
- ``easy-first``: Efficient MAE's distance-based target dropping and weighting
  (:mod:`torchgeo_xscale.masks.easy_first`).

How the masks of Cross-Scale MAE's two views relate (``independent``, the default,
or ``consistent``) is the model's ``view_masks`` option and works with every
strategy.

Partial reconstruction (the model's ``decoder_keep``): :func:`num_targets` is the
number of reconstruction targets per sample (masked patches with a positive
``loss_weight``), a fixed function of the strategy, grid and ratio (static shapes);
:func:`choose_targets` picks the targets the decoder computes.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class MaskInfo:
    """Which patches are visible, per sample.

    Attributes:
        ids_keep: Flat indices of the visible patches ``(B, N_vis)``.
        ids_restore: Inverse permutation ``(B, N)``: position of each patch in the
            concatenation ``[visible, masked]``.
        mask: ``(B, N)`` float, 1 where the patch is masked (a reconstruction target),
            0 where visible.
        loss_weight: Optional per-patch weight of the reconstruction loss ``(B, N)``
            (e.g. easy-first weighting; 0 drops a target).
        groups: Optional group of each visible patch ``(B, N_vis)`` (LoMaR's window
            index); the encoder then lets each patch attend only within its group.
            None means one group (attention over all visible patches).
        ids_target: Optional flat indices of the targets the decoder reconstructs
            ``(B, K)`` (partial reconstruction, see :func:`choose_targets`); the
            decoder then sees the visible patches and K mask tokens only. None: the
            decoder predicts every patch.
    """

    ids_keep: Tensor
    ids_restore: Tensor
    mask: Tensor
    loss_weight: Tensor | None = None
    groups: Tensor | None = None
    ids_target: Tensor | None = None

    @property
    def num_visible(self) -> int:
        """Number of visible patches per sample."""
        return self.ids_keep.shape[1]


class MaskStrategy(Protocol):
    """Callable that draws masks for a batch."""

    def __call__(
        self,
        batch_size: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskInfo:
        """Draw one mask per sample (see module docstring)."""
        ...


def num_visible(num_patches: int, ratio: float) -> int:
    """Number of visible patches for a mask ratio (MAE's rounding).

    Args:
        num_patches: N.
        ratio: Fraction masked, in [0, 1).

    Returns:
        ``int(N * (1 - ratio))``, at least 1.

    Raises:
        ValueError: If *ratio* is outside [0, 1).
    """
    if not 0.0 <= ratio < 1.0:
        msg = f'mask_ratio={ratio} must be in [0, 1)'
        raise ValueError(msg)
    return max(1, int(num_patches * (1.0 - ratio)))


def mask_from_scores(scores: Tensor, keep: int) -> MaskInfo:
    """Keep the *keep* lowest-scoring patches of each sample.

    Args:
        scores: Per-patch scores ``(B, N)``; lower is kept first.
        keep: Number of visible patches per sample.

    Returns:
        The :class:`MaskInfo`.
    """
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones_like(scores)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return MaskInfo(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def random_masking(
    batch_size: int,
    grid_h: int,
    grid_w: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskInfo:
    """MAE's random masking: uniform noise per patch, keep the lowest.

    Args:
        batch_size: B.
        grid_h: Patch grid rows.
        grid_w: Patch grid columns.
        ratio: Fraction of patches masked.
        generator: Optional random generator (on *device*).
        device: Device of the returned tensors.

    Returns:
        The :class:`MaskInfo`.
    """
    n = grid_h * grid_w
    noise = torch.rand(batch_size, n, generator=generator, device=device)
    return mask_from_scores(noise, num_visible(n, ratio))


def num_targets(strategy: Any, grid_h: int, grid_w: int, ratio: float) -> int:
    """Reconstruction targets per sample of a strategy: masked, positive weight.

    A strategy with zero-weight targets (``easy-first``, ``lomar``) says how many
    targets it leaves with a ``num_targets(grid_h, grid_w, ratio)`` method; for any
    other it is every masked patch, ``N - num_visible(N, ratio)``. The count is the
    same for every sample and every draw, so it fixes the decoder's token count.

    Args:
        strategy: A mask strategy (see :class:`MaskStrategy`).
        grid_h: Patch grid rows.
        grid_w: Patch grid columns.
        ratio: Fraction of patches masked.

    Returns:
        T, at least 1.
    """
    count = getattr(strategy, 'num_targets', None)
    if count is not None:
        return max(1, int(count(grid_h, grid_w, ratio)))
    n = grid_h * grid_w
    return max(1, n - num_visible(n, ratio))


def num_kept_targets(keep: float, targets: int) -> int:
    """Targets the decoder reconstructs with partial reconstruction.

    Args:
        keep: Fraction of the targets, in (0, 1] (the model's ``decoder_keep``).
        targets: T, from :func:`num_targets`.

    Returns:
        ``round(keep * T)`` (halves up), at least 1.

    Raises:
        ValueError: If *keep* is outside (0, 1].
    """
    if not 0.0 < keep <= 1.0:
        msg = (
            f'decoder_keep={keep}; expected a fraction in (0, 1] of the masked patches'
        )
        raise ValueError(msg)
    return max(1, min(targets, math.floor(keep * targets + 0.5)))


def choose_targets(
    masks: MaskInfo,
    num_views: int,
    count: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The *count* targets of each view that the decoder reconstructs.

    Each view keeps a uniformly random subset of its own targets (masked patches
    with a positive ``loss_weight``; zero-weight ones are never kept), so L_re on
    the kept targets estimates L_re on all of them without bias, as in CrossMAE's
    partial reconstruction (Fu et al., "Rethinking Patch Dependence for Masked
    Autoencoders", 2024). The views of a sample share the random numbers (common
    random numbers): a patch that is a target in both views is kept in both unless
    it falls just at one view's cut, which maximises the patches that both views
    decode (where L_cp compares them) without biasing either view's subset. With
    ``consistent`` masks both views keep the same targets.

    Args:
        masks: Masks of all views, view-major ``(V * B, N)``.
        num_views: V.
        count: K, targets kept per sample (at most the targets per sample; more
            would keep non-targets, which then carry no L_re weight).
        generator: Random generator (the masks' own, so a resumed run is exact).

    Returns:
        Flat patch indices ``(V * B, K)``.
    """
    vb, n = masks.mask.shape
    targets = masks.mask > 0
    if masks.loss_weight is not None:
        targets = targets & (masks.loss_weight > 0)
    noise = torch.rand(
        vb // num_views, n, generator=generator, device=masks.mask.device
    ).repeat(num_views, 1)
    scores = noise + (~targets).to(noise.dtype) * 2.0  # non-targets last
    return torch.argsort(scores, dim=1)[:, :count]


_STRATEGIES: dict[str, Callable[..., MaskStrategy]] = {}


def register_mask_strategy(
    name: str,
) -> Callable[[Callable[..., MaskStrategy]], Callable[..., MaskStrategy]]:
    """Register a strategy factory under *name* (decorator).

    The factory takes keyword options and returns a :class:`MaskStrategy`.

    Args:
        name: Name used in configs (``mask_strategy=...``).

    Returns:
        The decorator.
    """

    def decorator(factory: Callable[..., MaskStrategy]) -> Callable[..., MaskStrategy]:
        _STRATEGIES[name] = factory
        return factory

    return decorator


@register_mask_strategy('random')
def _random_factory(**options: Any) -> MaskStrategy:
    if options:
        msg = f'mask strategy "random" takes no options, got {sorted(options)}'
        raise ValueError(msg)
    return random_masking


def list_mask_strategies() -> list[str]:
    """Names of the registered mask strategies.

    Returns:
        Sorted names.
    """
    return sorted(_STRATEGIES)


def build_mask_strategy(name: str, **options: Any) -> MaskStrategy:
    """Look up a masking strategy by name.

    Args:
        name: A registered name (see :func:`list_mask_strategies`).
        **options: Strategy options.

    Returns:
        The strategy callable.

    Raises:
        ValueError: If *name* is unknown.
    """
    if name not in _STRATEGIES:
        msg = f'mask_strategy={name!r} is unknown; expected one of {list_mask_strategies()}'
        raise ValueError(msg)
    return _STRATEGIES[name](**options)
