"""ColorMAE masks: filtered random noise, thresholded to an exact visible count.

Hinojosa et al. (ECCV 2024) draw masks from noise of a given *colour* instead of
white noise. A bank of noise patterns is generated offline by filtering white noise;
each image takes a random pattern, a random crop of the patch-grid size and random
flips, and keeps the patches with the lowest values (their Algorithm 1, MAE's
convention), so every sample has exactly the same number of visible patches.

Colours and filters (supplement, Sec. 1), with Gaussian kernels ``G_sigma``:

- ``green`` band-pass ``G_0.5 - G_2.0`` (the paper's best),
- ``purple`` band-stop ``1 - (G_0.5 - G_2.0)``,
- ``red`` low-pass ``G_sigma``, sigma drawn per pattern from U[0.5, 2.0],
- ``blue`` high-pass ``1 - G_sigma``, sigma drawn per pattern from U[0.5, 2.0].

Choices where the paper is silent: one pattern pixel is one patch (sigma is in patch
units; the crop is ``(grid_h, grid_w)``); filtering is done in the Fourier domain with
Gaussian transfer functions, so patterns are periodic and crops wrap around without
edge effects; the bank is ``1024`` patterns of ``64 x 64`` (the paper: 3072 of
256 x 256; its Table 1b shows 64 patterns already work). The bank is a pure function
of its parameters and seed, generated on the CPU and cached under *cache_dir*.
"""

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..io import atomic_path
from .base import MaskInfo, mask_from_scores, num_visible, register_mask_strategy

__all__ = ('COLORS', 'ColorNoiseMasking', 'color_noise_bank', 'gaussian_transfer')

Color = Literal['green', 'blue', 'red', 'purple']

#: The four noise colours of ColorMAE.
COLORS: tuple[str, ...] = ('green', 'blue', 'red', 'purple')

#: Default folder of cached noise banks.
DEFAULT_CACHE_DIR = '~/.cache/torchgeo_xscale/colormae'

# Bump when the generation procedure changes, so old caches are not reused.
_BANK_VERSION = 1


def gaussian_transfer(size: int, sigma: Tensor) -> Tensor:
    """Fourier transfer function of a periodic Gaussian blur.

    Args:
        size: Side S of the square pattern.
        sigma: Standard deviations in pixels ``(M,)``.

    Returns:
        ``exp(-2 pi^2 sigma^2 |f|^2)`` on the FFT frequency grid ``(M, S, S)``.
    """
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    s2 = sigma.to(torch.float64).view(-1, 1, 1) ** 2
    return torch.exp(-2.0 * torch.pi**2 * s2 * f2)


def color_noise_bank(
    color: str,
    count: int = 1024,
    size: int = 64,
    sigmas: tuple[float, float] = (0.5, 2.0),
    seed: int = 0,
) -> Tensor:
    """Generate ColorMAE noise patterns by filtering white Gaussian noise.

    Deterministic given the arguments (CPU generator seeded with *seed*).

    Args:
        color: ``green``, ``blue``, ``red`` or ``purple``.
        count: Number of patterns M.
        size: Side S of each square pattern, in patches.
        sigmas: ``(sigma_1, sigma_2)``: the two Gaussians of green/purple, and the
            range sigma is drawn from per pattern for blue/red.
        seed: Seed of the noise.

    Returns:
        Patterns ``(M, S, S)`` float32, each with zero mean and unit variance.

    Raises:
        ValueError: If an argument is out of range.
    """
    if color not in COLORS:
        msg = f'color={color!r} is not a ColorMAE colour; expected one of {COLORS}'
        raise ValueError(msg)
    if count < 1 or size < 2:
        msg = f'count={count}, size={size}; expected count >= 1 and size >= 2'
        raise ValueError(msg)
    s1, s2 = (float(s) for s in sigmas)
    if not 0 < s1 < s2:
        msg = f'sigmas={tuple(sigmas)}; expected 0 < sigma_1 < sigma_2'
        raise ValueError(msg)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, size, size, generator=gen, dtype=torch.float64)
    if color in ('green', 'purple'):
        ones = torch.ones(1)
        h = gaussian_transfer(size, s1 * ones) - gaussian_transfer(size, s2 * ones)
        if color == 'purple':
            h = 1.0 - h
    else:
        sigma = s1 + (s2 - s1) * torch.rand(count, generator=gen, dtype=torch.float64)
        h = gaussian_transfer(size, sigma)
        if color == 'blue':
            h = 1.0 - h
    out = torch.fft.ifft2(torch.fft.fft2(noise) * h).real
    out = out - out.mean(dim=(1, 2), keepdim=True)
    out = out / out.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return out.float()


class ColorNoiseMasking:
    """ColorMAE masking strategy (see module docstring).

    Registered as ``colormae-green``, ``colormae-blue``, ``colormae-red`` and
    ``colormae-purple``.

    The bank is loaded (or generated and cached) on the first call and kept on each
    device it is used on.
    """

    def __init__(
        self,
        color: Color = 'green',
        bank_size: int = 1024,
        pattern_size: int = 64,
        sigmas: tuple[float, float] = (0.5, 2.0),
        seed: int = 0,
        flips: bool = True,
        cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    ) -> None:
        """Initialise the strategy (the bank itself is made lazily).

        Args:
            color: Noise colour.
            bank_size: Number of patterns in the bank (paper: 3072).
            pattern_size: Side of each pattern in patches; the largest patch grid
                this strategy can mask.
            sigmas: Gaussian standard deviations in patches (paper: 0.5 and 2.0).
            seed: Seed of the bank (not of the per-batch crops, which use the
                generator passed at call time).
            flips: Random horizontal and vertical flips of each crop.
            cache_dir: Folder of cached banks; None generates the bank in memory.

        Raises:
            ValueError: If an option is out of range.
        """
        if color not in COLORS:
            msg = f'color={color!r} is not a ColorMAE colour; expected one of {COLORS}'
            raise ValueError(msg)
        if bank_size < 1:
            raise ValueError(f'bank_size={bank_size}; expected >= 1')
        if pattern_size < 2:
            raise ValueError(f'pattern_size={pattern_size}; expected >= 2')
        s1, s2 = (float(s) for s in sigmas)
        if not 0 < s1 < s2:
            raise ValueError(f'sigmas={tuple(sigmas)}; expected 0 < sigma_1 < sigma_2')
        self.color = color
        self.bank_size = bank_size
        self.pattern_size = pattern_size
        self.sigmas = (s1, s2)
        self.seed = seed
        self.flips = flips
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._banks: dict[torch.device, Tensor] = {}

    @property
    def cache_path(self) -> Path | None:
        """File of the cached bank (named by a hash of its parameters), or None."""
        if self.cache_dir is None:
            return None
        params = {
            'version': _BANK_VERSION,
            'color': self.color,
            'count': self.bank_size,
            'size': self.pattern_size,
            'sigmas': self.sigmas,
            'seed': self.seed,
        }
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f'{self.color}-{digest[:16]}.pt'

    def bank(self, device: torch.device | str | None = None) -> Tensor:
        """The noise bank on *device*, loaded from the cache or generated.

        A cached file with the wrong shape or that cannot be read is regenerated.

        Args:
            device: Device of the returned bank.

        Returns:
            Patterns ``(M, S, S)``.
        """
        device = torch.device('cpu' if device is None else device)
        if device in self._banks:
            return self._banks[device]
        cpu = self._banks.get(torch.device('cpu'))
        if cpu is None:
            cpu = self._load_or_generate()
            self._banks[torch.device('cpu')] = cpu
        self._banks[device] = cpu.to(device)
        return self._banks[device]

    def _load_or_generate(self) -> Tensor:
        shape = (self.bank_size, self.pattern_size, self.pattern_size)
        path = self.cache_path
        if path is not None and path.is_file():
            try:
                bank = torch.load(path, map_location='cpu', weights_only=True)
                if isinstance(bank, Tensor) and tuple(bank.shape) == shape:
                    return bank
            except (
                OSError,
                RuntimeError,
                EOFError,
                ValueError,
                pickle.UnpicklingError,
            ):
                pass
        bank = color_noise_bank(
            self.color, self.bank_size, self.pattern_size, self.sigmas, self.seed
        )
        if path is not None:
            with atomic_path(path) as tmp:
                torch.save(bank, tmp)
        return bank

    def scores(
        self,
        batch_size: int,
        grid_h: int,
        grid_w: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Per-sample noise values: a random pattern, crop and flip per sample.

        Args:
            batch_size: B.
            grid_h: Patch grid rows.
            grid_w: Patch grid columns.
            generator: Optional random generator (on *device*).
            device: Device of the result.

        Returns:
            ``(B, grid_h * grid_w)``.

        Raises:
            ValueError: If the grid is larger than the patterns.
        """
        s = self.pattern_size
        if grid_h > s or grid_w > s:
            msg = (
                f'patch grid {grid_h}x{grid_w} is larger than the ColorMAE patterns '
                f'({s}x{s}); expected pattern_size >= {max(grid_h, grid_w)}'
            )
            raise ValueError(msg)
        bank = self.bank(device)
        dev = bank.device

        def draw(high: int) -> Tensor:
            return torch.randint(high, (batch_size,), generator=generator, device=dev)

        idx, off_r, off_c = draw(self.bank_size), draw(s), draw(s)
        rows = torch.arange(grid_h, device=dev).expand(batch_size, -1)
        cols = torch.arange(grid_w, device=dev).expand(batch_size, -1)
        if self.flips:
            rows = torch.where(draw(2).bool()[:, None], grid_h - 1 - rows, rows)
            cols = torch.where(draw(2).bool()[:, None], grid_w - 1 - cols, cols)
        rows = (rows + off_r[:, None]) % s
        cols = (cols + off_c[:, None]) % s
        crops = bank[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        return crops.reshape(batch_size, grid_h * grid_w)

    def __call__(
        self,
        batch_size: int,
        grid_h: int,
        grid_w: int,
        ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskInfo:
        """Draw one ColorMAE mask per sample, keeping the lowest noise values.

        Args:
            batch_size: B.
            grid_h: Patch grid rows.
            grid_w: Patch grid columns.
            ratio: Fraction of patches masked (paper: 0.75).
            generator: Optional random generator (on *device*).
            device: Device of the returned tensors.

        Returns:
            The :class:`MaskInfo`; exactly ``int(N * (1 - ratio))`` visible patches
            per sample.
        """
        keep = num_visible(grid_h * grid_w, ratio)
        scores = self.scores(batch_size, grid_h, grid_w, generator, device)
        return mask_from_scores(scores, keep)

    def __repr__(self) -> str:
        """Name and options."""
        return (
            f'ColorNoiseMasking(color={self.color!r}, bank_size={self.bank_size}, '
            f'pattern_size={self.pattern_size}, sigmas={self.sigmas}, seed={self.seed})'
        )


def _factory(color: Color) -> None:
    @register_mask_strategy(f'colormae-{color}')
    def build(**options: object) -> ColorNoiseMasking:
        if 'color' in options:
            msg = (
                f'mask strategy "colormae-{color}" sets color itself; got color option'
            )
            raise ValueError(msg)
        return ColorNoiseMasking(color=color, **options)  # type: ignore[arg-type]


for _color in COLORS:
    _factory(_color)  # type: ignore[arg-type]
