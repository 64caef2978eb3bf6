"""Writing files so that nothing is ever half-written under its final name."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = '') -> Iterator[str]:
    """Yield a temporary path beside *path*; rename it to *path* on success.

    On any exception the temporary file is removed and *path* is left as it was
    (a previous version stays valid).

    Args:
        path: Final destination.
        suffix: Suffix of the temporary name (some writers infer the format from it).

    Yields:
        The temporary path to write to.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f'.{os.path.basename(path)}.', suffix=f'.part{suffix}'
    )
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save`` to a temporary file, then rename into place.

    Args:
        obj: What to save.
        path: Destination.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return os.fspath(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary name and renames.

    A run killed while saving leaves the previous checkpoint file intact.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Save *checkpoint* atomically to *path*.

        Args:
            checkpoint: The checkpoint dict.
            path: Destination (local path).
            storage_options: Unsupported, as in :class:`TorchCheckpointIO`.
        """
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
