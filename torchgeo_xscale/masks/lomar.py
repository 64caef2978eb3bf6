"""LoMaR masks: masked reconstruction inside a few local windows.

Chen et al. (LoMaR) sample ``n`` windows of ``k x k`` patches per image (n = 4,
k = 7 at 224 px; n = 9 at 384 px), mask 80 % of the patches inside each window and
reconstruct them from the window's own visible patches.

This module is the minimal faithful version for an MAE-style encoder that sees only
visible tokens: in each window exactly ``int(k^2 (1 - window_ratio))`` patches are
visible (``ids_keep``, grouped window by window, their window in
:attr:`MaskInfo.groups`); the targets are the masked patches inside the windows
(``loss_weight`` 1 there, 0 outside). Differences from the paper, stated:

- The encoder runs on each window's tokens alone, as in LoMaR: ``groups`` makes
  every patch attend only to the visible patches of its own window (the CLS token
  reads all windows but no patch reads it), which equals encoding the windows
  separately. ``window_attention=False`` lets patches attend across windows (needed
  by ``attention='fourier'``, which cannot take an attention mask). LoMaR also
  feeds mask tokens to the encoder (SimMIM-style) and uses a relative position
  bias; here the encoder sees visible tokens only, with absolute positions (MAE's
  asymmetric design, so the decoder and losses stay those of Cross-Scale MAE).
- The paper's windows are independent crops and may overlap. Windows here share one
  token set per image, so they must not overlap for the per-window ratio to be
  exact: each window is placed uniformly at random among the positions that do not
  overlap those already placed; an image whose placement gets stuck falls back to a
  randomly shifted lattice of ``k x k`` cells.
- ``window_size=None`` takes the paper's 7, or the largest size at which
  ``num_windows`` non-overlapping windows fit the grid (e.g. 4 at an 8 x 8 grid).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MaskInfo, mask_from_scores, register_mask_strategy

__all__ = ('LocalWindowMasking', 'fit_window_size', 'place_windows')

#: LoMaR's defaults (paper and supplement): windows per image, window side, ratio.
LOMAR_NUM_WINDOWS = 4
LOMAR_WINDOW_SIZE = 7
LOMAR_WINDOW_RATIO = 0.8


def _lattice_capacity(grid_h: int, grid_w: int, size: int) -> int:
    return (grid_h // size) * (grid_w // size)


def fit_window_size(
    grid_h: int, grid_w: int, num_windows: int, size: int | None
) -> int:
    """Window side to use on a grid, checking that the windows fit without overlap.

    Args:
        grid_h: Patch grid rows.
        grid_w: Patch grid columns.
        num_windows: Windows per image n.
        size: Requested side k, or None for LoMaR's 7 shrunk until n windows fit.

    Returns:
        The window side k.

    Raises:
        ValueError: If *num_windows* windows of *size* do not fit the grid.
    """
    if size is None:
        size = min(LOMAR_WINDOW_SIZE, grid_h, grid_w)
        while size > 1 and _lattice_capacity(grid_h, grid_w, size) < num_windows:
            size -= 1
    if _lattice_capacity(grid_h, grid_w, size) < num_windows:
        msg = (
            f'lomar: num_windows={num_windows} windows of {size}x{size} patches do not '
            f'fit without overlap in a {grid_h}x{grid_w} patch grid; expected '
            f'num_windows <= {_lattice_capacity(grid_h, grid_w, size)} or a smaller '
            'window_size'
        )
        raise ValueError(msg)
    return size


def place_windows(
    batch_size: int,
    grid_h: int,
    grid_w: int,
    num_windows: int,
    window_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Top-left corners of non-overlapping windows, per sample (vectorised).

    Windows are placed one after the other, each uniformly among the positions that
    keep it inside the grid and off the windows before it. Samples for which no
    position is left get a randomly shifted lattice of cells of at least
    ``window_size`` instead, with one window per distinct cell.

    Args:
        batch_size: B.
        grid_h: Patch grid rows.
        grid_w: Patch grid columns.
        num_windows: n (must fit, see :func:`fit_window_size`).
        window_size: k.
        generator: Optional random generator (on *device*).
        device: Device of the result.

    Returns:
        ``(B, n, 2)`` long: (row, column) of each window's top-left patch.
    """
    b, n, k = batch_size, num_windows, window_size
    fit_window_size(grid_h, grid_w, n, k)
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    pos_h, pos_w = grid_h - k + 1, grid_w - k + 1
    occupied = torch.zeros(b, 1, grid_h, grid_w, device=device)
    placed = torch.zeros(b, n, 2, dtype=torch.long, device=device)
    ok = torch.ones(b, dtype=torch.bool, device=device)
    for j in range(n):  # a loop over windows, not over samples
        blocked = F.max_pool2d(occupied, k, stride=1).flatten(1) > 0  # (B, pos_h*pos_w)
        score = torch.rand(b, pos_h * pos_w, generator=generator, device=device)
        score = score + 2.0 * blocked
        best = score.argmin(dim=1)
        ok &= ~blocked.gather(1, best[:, None])[:, 0]
        r, c = best // pos_w, best % pos_w
        placed[:, j, 0], placed[:, j, 1] = r, c
        in_r = (rows >= r[:, None]) & (rows < r[:, None] + k)
        in_c = (cols >= c[:, None]) & (cols < c[:, None] + k)
        occupied = occupied.maximum(
            (in_r[:, :, None] & in_c[:, None, :])[:, None].float()
        )

    # Fallback: n distinct cells of a lattice, jittered inside cells, shifted globally.
    cells_h, cells_w = grid_h // k, grid_w // k
    cell_h, cell_w = grid_h // cells_h, grid_w // cells_w
    noise = torch.rand(b, cells_h * cells_w, generator=generator, device=device)
    cell = noise.argsort(dim=1)[:, :n]

    def rand_int(high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(high, shape, generator=generator, device=device)

    jitter_r = rand_int(cell_h - k + 1, (b, n))
    jitter_c = rand_int(cell_w - k + 1, (b, n))
    shift_r = rand_int(grid_h - cells_h * cell_h + 1, (b, 1))
    shift_c = rand_int(grid_w - cells_w * cell_w + 1, (b, 1))
    lattice = torch.stack(
        (
            shift_r + (cell // cells_w) * cell_h + jitter_r,
            shift_c + (cell % cells_w) * cell_w + jitter_c,
        ),
        dim=-1,
    )
    return torch.where(ok[:, None, None], placed, lattice)


class LocalWindowMasking:
    """LoMaR masking strategy (see module docstring); registered as ``lomar``."""

    def __init__(
        self,
        num_windows: int = LOMAR_NUM_WINDOWS,
        window_size: int | None = None,
        window_ratio: float | None = LOMAR_WINDOW_RATIO,
        window_attention: bool = True,
    ) -> None:
        """Initialise the strategy.

        Args:
            num_windows: Windows per image n (paper: 4 at 224 px, 9 at 384 px).
            window_size: Window side k in patches (paper: 7); None picks 7 or the
                largest size that fits (see :func:`fit_window_size`).
            window_ratio: Fraction masked inside each window (paper: 0.8); None uses
                the model's ``mask_ratio``.
            window_attention: Encode each window on its own (``groups`` set); False
                lets the encoder attend across windows.

        Raises:
            ValueError: If an option is out of range.
        """
        if num_windows < 1:
            raise ValueError(f'num_windows={num_windows}; expected >= 1')
        if window_size is not None and window_size < 1:
            raise ValueError(f'window_size={window_size}; expected >= 1 or None')
        if window_ratio is not None and not 0.0 <= window_ratio < 1.0:
            raise ValueError(f'window_ratio={window_ratio}; expected [0, 1) or None')
        self.num_windows = num_windows
        self.window_size = window_size
        self.window_ratio = window_ratio
        self.window_attention = window_attention

    def draw(
        self,
        batch_size: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[MaskInfo, Tensor, int]:
        """Draw masks and return the windows too.

        Args:
            batch_size: B.
            grid_h: Patch grid rows.
            grid_w: Patch grid columns.
            ratio: The model's mask ratio (used when ``window_ratio`` is None).
            generator: Optional random generator (on *device*).
            device: Device of the returned tensors.

        Returns:
            The :class:`MaskInfo`, the windows' top-left corners ``(B, n, 2)`` and
            the window side k.

        Raises:
            ValueError: If *ratio* is out of range or the windows do not fit.
        """
        r = ratio if self.window_ratio is None else self.window_ratio
        if not 0.0 <= r < 1.0:
            raise ValueError(f'lomar mask ratio {r}; expected [0, 1)')
        n = self.num_windows
        k = fit_window_size(grid_h, grid_w, n, self.window_size)
        tops = place_windows(batch_size, grid_h, grid_w, n, k, generator, device)
        dev = tops.device
        offs = torch.arange(k, device=dev)
        rows = tops[..., 0, None] + offs  # (B, n, k)
        cols = tops[..., 1, None] + offs
        window_ids = (rows[..., :, None] * grid_w + cols[..., None, :]).flatten(2)
        keep = max(1, int(k * k * (1.0 - r)))
        noise = torch.rand(batch_size, n, k * k, generator=generator, device=dev)
        local = noise.argsort(dim=-1)[..., :keep]
        ids_keep = window_ids.gather(2, local).reshape(batch_size, n * keep)
        # Scores: visible patches first, in window order; every other patch after.
        total = n * keep
        scores = torch.full((batch_size, grid_h * grid_w), 2.0, device=dev)
        order = torch.arange(total, device=dev, dtype=scores.dtype) / total
        scores.scatter_(1, ids_keep, order.expand(batch_size, -1).contiguous())
        info = mask_from_scores(scores, total)
        weight = torch.zeros_like(scores)
        weight.scatter_(1, window_ids.flatten(1), 1.0)
        info.loss_weight = weight
        if self.window_attention:
            groups = torch.arange(n, device=dev).repeat_interleave(keep)
            info.groups = groups.expand(batch_size, -1)
        return info, tops, k

    def num_targets(self, grid_h: int, grid_w: int, ratio: float) -> int:
        """Reconstruction targets per sample: the masked patches inside the windows.

        Args:
            grid_h: Patch grid rows.
            grid_w: Patch grid columns.
            ratio: The model's mask ratio (used when ``window_ratio`` is None).

        Returns:
            ``n * (k^2 - int(k^2 (1 - r)))``.
        """
        r = ratio if self.window_ratio is None else self.window_ratio
        k = fit_window_size(grid_h, grid_w, self.num_windows, self.window_size)
        return self.num_windows * (k * k - max(1, int(k * k * (1.0 - r))))

    def __call__(
        self,
        batch_size: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskInfo:
        """Draw LoMaR masks (see :meth:`draw`).

        Args:
            batch_size: B.
            grid_h: Patch grid rows.
            grid_w: Patch grid columns.
            ratio: The model's mask ratio (used when ``window_ratio`` is None).
            generator: Optional random generator (on *device*).
            device: Device of the returned tensors.

        Returns:
            The :class:`MaskInfo`: ``n * int(k^2 (1 - r))`` visible patches per
            sample, ``loss_weight`` 1 inside the windows and 0 outside.
        """
        return self.draw(batch_size, grid_h, grid_w, ratio, generator, device)[0]

    def __repr__(self) -> str:
        """Name and options."""
        return (
            f'LocalWindowMasking(num_windows={self.num_windows}, '
            f'window_size={self.window_size}, window_ratio={self.window_ratio})'
        )


@register_mask_strategy('lomar')
def _lomar_factory(**options: object) -> LocalWindowMasking:
    return LocalWindowMasking(**options)  # type: ignore[arg-type]
