"""Checkpoint files on disk: safe loading, our weights file, its metadata.

**Our weights file** is one ``torch.save`` of ``{'state_dict': encoder state dict,
'metadata': {...}}``, so the tensors and their description (architecture, residual
norm style, final norm, source, GSD) can never be of different models. timm reads the
``state_dict`` key (``timm.models.load_checkpoint``,
``pretrained_cfg_overlay=dict(file=...)``). A ``<file>.json`` copy of the metadata is
written beside it for people to read; it is never trusted over the embedded copy.
Both are written to temporary files first and renamed into place only when both are
complete, so a failed or interrupted write (a full disk, a read-only folder) leaves
the previous pair, never a mix. Files of the first format (a plain state dict and the
``.json`` beside it) still load.

Every file is unpickled with ``weights_only=True``; the only class allowed besides
tensors and plain containers is :class:`argparse.Namespace`, the ``args`` of the
authors' checkpoints. Tensors are checked to be finite when written and when read.
"""

import argparse
import contextlib
import errno
import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import torch
from torch import Tensor

from ..io import atomic_path
from ..progress import progress_bar

__all__ = (
    'METADATA_KEY',
    'WEIGHTS_FORMAT',
    'WeightsWriteError',
    'check_finite',
    'is_weights_file',
    'md5sum',
    'read_metadata',
    'read_sidecar',
    'safe_load',
    'save_weights',
)

#: Format tag of our weights files (``metadata['format']``).
WEIGHTS_FORMAT = 'torchgeo_xscale.weights/2'
#: Tag of the first format: a plain state dict, metadata only in the ``.json``.
_FORMAT_1 = 'torchgeo_xscale.weights/1'
#: Key of the metadata in a weights file.
METADATA_KEY = 'metadata'


class WeightsWriteError(OSError):
    """A weights file could not be written; the message names the final path."""

    def __str__(self) -> str:
        """The one-line message (without the ``[Errno N]`` prefix)."""
        return str(self.strerror)


def md5sum(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file, read in chunks.

    Args:
        path: The file.

    Returns:
        32 hex characters.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with (
        open(path, 'rb') as f,
        progress_bar(
            total=os.path.getsize(path),
            desc=f'md5 {os.path.basename(path)}',
            unit='B',
            unit_scale=True,
            unit_divisor=1024,
        ) as bar,
    ):
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def safe_load(path: str | os.PathLike[str], mmap: bool = False) -> Any:
    """``torch.load`` a checkpoint with ``weights_only=True``, failing clearly.

    Only tensors, plain containers and :class:`argparse.Namespace` (the ``args`` of
    the authors' checkpoints) are unpickled; nothing that could run code.

    Args:
        path: The file.
        mmap: Map the tensors instead of reading them (cheap when only a few are
            used, e.g. to read a weights file's metadata).

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: If *path* does not exist.
        ValueError: If the file is truncated, not a PyTorch file, or needs more than
            tensors to unpickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        msg = f'checkpoint {path!r} does not exist'
        raise FileNotFoundError(msg)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln]
        reason = (why or lines[-1:] or ['?'])[0]
        msg = (
            f'{path} is not a tensors-only checkpoint; refusing to unpickle it with '
            f'weights_only=True ({reason}). Re-save its state dict from a trusted '
            'environment, or check that the download is not a web page.'
        )
        raise ValueError(msg) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        msg = f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}'
        raise ValueError(msg) from err


def check_finite(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise one line naming *source* and its first tensor with NaN or Inf.

    Args:
        state_dict: The tensors.
        source: The file (or entry) they belong to, for the message.

    Raises:
        ValueError: If a floating-point tensor has a non-finite value.
    """
    for key, value in state_dict.items():
        if not value.is_floating_point() or not value.numel():
            continue
        low, high = torch.aminmax(value.detach())  # NaN/Inf show in the extremes
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            bad = int((~torch.isfinite(value)).sum())
            msg = (
                f'{source}: tensor {key!r} {tuple(value.shape)} has {bad} non-finite '
                'values (NaN/Inf); expected finite weights (was the run diverging?)'
            )
            raise ValueError(msg)


def is_weights_file(obj: Any) -> bool:
    """Whether a loaded object is one of our weights files (format 2).

    Args:
        obj: What :func:`safe_load` returned.

    Returns:
        True for ``{'state_dict': ..., 'metadata': {'format': WEIGHTS_FORMAT...}}``.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get(METADATA_KEY), dict):
        return False
    return obj[METADATA_KEY].get('format') == WEIGHTS_FORMAT and isinstance(
        obj.get('state_dict'), dict
    )


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``.json`` written beside a weights file (the only metadata of format 1).

    Args:
        path: The weights file.

    Returns:
        The metadata, or ``{}`` if there is none (or it is not readable JSON).
    """
    side = os.fspath(path) + '.json'
    try:
        with open(side) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _write(file: IO[bytes], data: bytes) -> int:
    """The one low-level write of our files (tests make it fail midway)."""
    return file.write(data)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of one of our weights files, without reading its tensors.

    Args:
        path: The weights file.

    Returns:
        The embedded metadata; for the first format, the ``.json`` beside it.

    Raises:
        ValueError: If the file cannot be read.
    """
    obj = safe_load(path, mmap=True)
    if is_weights_file(obj):
        return dict(obj[METADATA_KEY])
    return read_sidecar(path)


class _Sink:
    """A file object whose ``write`` records the first OS error.

    ``torch.save`` into a file object turns a failing ``write`` into an unrelated
    ``RuntimeError`` of its zip writer; the recorded error says what happened.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        """Write *data*, recording an OS error."""
        try:
            return _write(self.file, data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        """Flush the file."""
        self.file.flush()


@contextlib.contextmanager
def _sink(path: str) -> Iterator[_Sink]:
    """Open *path* for writing as a :class:`_Sink`; raise the first OS error."""
    with open(path, 'wb') as f:
        sink = _Sink(f)
        try:
            yield sink
            sink.flush()
            os.fsync(f.fileno())
        except Exception as err:
            if sink.error is not None and sink.error is not err:
                raise sink.error from err
            raise


def _json_safe(obj: Any) -> Any:
    """*obj* with tuples as lists (round-trips through JSON and ``weights_only``)."""
    return json.loads(json.dumps(obj))


def save_weights(
    state_dict: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
) -> str:
    """Write our weights file (state dict + embedded metadata) and its ``.json``.

    Both are written to temporary files beside *path*, then renamed: the weights
    file first, then the ``.json``. A write that fails (full disk, read-only
    folder) removes the temporaries and leaves the previous pair untouched.

    Args:
        state_dict: Encoder state dict (timm names).
        path: Destination ``.pth``.
        metadata: JSON-serialisable description (architecture, residual norm
            style, final norm, source...); ``format`` is added.

    Returns:
        The destination path.

    Raises:
        ValueError: If a tensor is not finite (named with *path*).
        WeightsWriteError: If the files cannot be written (names *path*).
    """
    path = os.fspath(path)
    check_finite(state_dict, f'refusing to write {path}')
    meta = _json_safe({**metadata, 'format': WEIGHTS_FORMAT})
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    text = json.dumps(meta, indent=1, sort_keys=True).encode()
    try:
        with atomic_path(path + '.json') as tmp_json:
            with atomic_path(path) as tmp:
                with _sink(tmp) as sink:
                    torch.save({'state_dict': tensors, METADATA_KEY: meta}, sink)  # type: ignore[arg-type]
                with _sink(tmp_json) as sink:
                    sink.write(text)
    except OSError as err:
        code = err.errno or errno.EIO
        why = err.strerror or str(err)
        raise WeightsWriteError(code, f'cannot write {path}: {why}') from err
    return path
