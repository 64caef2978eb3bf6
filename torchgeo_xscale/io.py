"""Writing files so that nothing is ever half-written under its final name.

A file is written under a hidden temporary name beside it,
``.<name>.<host>-p<pid>.<random>.part<suffix>``, and renamed into place when complete.
A process killed meanwhile (SIGKILL, power loss) leaves its temporary behind; the
next write of the same file removes the temporaries whose writer is gone (same host,
pid no longer running) and never those of a live process.
"""

import contextlib
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    """A short tag of this host (temporaries on a shared disk name their host)."""
    return f'{zlib.crc32(socket.gethostname().encode()):08x}'


def _temp_prefix(path: str) -> str:
    """The temporary-name prefix of *path*'s writer: ``.<name>.<host>-p<pid>.``."""
    return f'.{os.path.basename(path)}.{_host_tag()}-p{os.getpid()}.'


def _process_gone(pid: int) -> bool:
    """Whether no process *pid* runs on this host (a zombie counts as gone)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except (OSError, IndexError):
        return False


def stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Temporaries of *path* left by writers of this host that no longer run.

    Args:
        path: A file written with :func:`atomic_path`.

    Returns:
        Paths of the leftover temporaries (none of a live process).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(
        rf'\.{re.escape(os.path.basename(path))}\.{_host_tag()}-p(\d+)\.[^.]*\.part'
    )
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [
        os.path.join(directory, name)
        for name in sorted(names)
        if (match := pattern.match(name)) and _process_gone(int(match.group(1)))
    ]


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Remove what :func:`stale_temporaries` finds for *path*.

    Args:
        path: A file written with :func:`atomic_path`.

    Returns:
        The paths removed.
    """
    removed = []
    for tmp in stale_temporaries(path):
        with contextlib.suppress(FileNotFoundError):  # another rerun was quicker
            os.remove(tmp)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = '') -> Iterator[str]:
    """Yield a temporary path beside *path*; rename it to *path* on success.

    On any exception the temporary file is removed and *path* is left as it was
    (a previous version stays valid). Temporaries of *path* left by killed writers
    are removed first (:func:`remove_stale_temporaries`).

    Args:
        path: Final destination.
        suffix: Suffix of the temporary name (some writers infer the format from it).

    Yields:
        The temporary path to write to.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=_temp_prefix(path), suffix=f'.part{suffix}'
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
