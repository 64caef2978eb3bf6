"""One seeding scheme for everything random in a pretraining step.

Scale views (made by the datamodule) and masks (drawn by the task) take their random
numbers from generators seeded here, never from the global generator:

* training: from ``(seed, rank, step, purpose)``, so that a run resumed from a
  checkpoint at step N draws exactly what the uninterrupted run drew at step N, on
  every process, whatever the data-loader workers did before;
* validation: from ``(seed, purpose)`` and the batch's content (tile bounds, image
  indexes), so that the same validation tile gets the same views and masks every
  time.

The seed is the CRC-32 of the key written as text (``'0/1/250/views'``), so seeds do
not depend on Python's hash randomisation and are the same on every machine.
"""

import zlib

import torch
from torch import Tensor

__all__ = ('content_generator', 'key_seed', 'step_generator')


def key_seed(*key: object) -> int:
    """The 32-bit seed of a key.

    Args:
        *key: Parts of the key (ints, strings), e.g. ``(seed, rank, step, 'masks')``.

    Returns:
        ``crc32('/'.join(key))``.
    """
    return zlib.crc32('/'.join(str(part) for part in key).encode())


def step_generator(
    seed: int,
    rank: int,
    step: int,
    purpose: str,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """The generator of one training step's random draws of one kind.

    Args:
        seed: The run's seed (the datamodule's or the task's ``seed``).
        rank: Global rank of the process.
        step: Global step (optimiser steps so far).
        purpose: What is drawn, e.g. ``'views'`` or ``'masks/train'``; different
            purposes get independent streams.
        device: Device of the generator (default CPU).

    Returns:
        A generator seeded from ``(seed, rank, step, purpose)``.
    """
    generator = torch.Generator(device=device or 'cpu')
    return generator.manual_seed(key_seed(seed, rank, step, purpose))


def content_generator(
    seed: int,
    purpose: str,
    content: Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """A generator seeded by a batch's content (validation: same tiles, same draws).

    Args:
        seed: The run's seed.
        purpose: What is drawn, e.g. ``'views/val'``.
        content: A tensor identifying the batch (tile bounds ``(B, 4)``, image
            indexes ``(B,)``); None seeds from *seed* and *purpose* alone.
        device: Device of the generator (default CPU).

    Returns:
        The generator.
    """
    value = key_seed(seed, purpose)
    if content is not None:
        value = zlib.crc32(content.detach().cpu().contiguous().numpy().tobytes(), value)
    return torch.Generator(device=device or 'cpu').manual_seed(value)
