"""Checks that a Lightning checkpoint is one of the task it is given to.

Lightning loads a checkpoint into whatever model it is handed, and its CLI replaces the
command line's model arguments with the checkpoint's when ``--ckpt_path`` is given:
a checkpoint of another model size, band count or task would then either crash deep
in ``load_state_dict`` or silently train the checkpoint's model instead of the
requested one. These helpers name the difference in one line instead:

* :func:`task_class_path` tells which task wrote a checkpoint;
* :func:`hparam_conflicts` and :func:`describe_conflicts` compare requested
  hyper-parameters with stored ones (used by ``xscale fit --ckpt_path``);
* :func:`check_resume` (``xscale fit --ckpt_path``) refuses a checkpoint whose task
  class or hyper-parameters contradict what the command line asks for;
* :func:`check_checkpoint_fits` (called from the tasks' ``on_load_checkpoint``)
  refuses a checkpoint of another task, or whose weights do not fit the model.
"""

import importlib
import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..renames import RENAMED_ARGS, upgrade_renamed

__all__ = (
    'CheckpointMismatchError',
    'check_checkpoint_fits',
    'check_resume',
    'describe_conflicts',
    'hparam_conflicts',
    'load_checkpoint',
    'plain',
    'same_class',
    'task_class_path',
)

#: Keys Lightning's CLI adds to the stored hyper-parameters.
_CLI_KEYS = ('_class_path', '_instantiator')


class CheckpointMismatchError(ValueError):
    """A checkpoint contradicts the task or hyper-parameters asked for."""


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (tensors only, memory-mapped, on the CPU).

    Args:
        path: Checkpoint file.

    Returns:
        The checkpoint dict.

    Raises:
        ValueError: If the file cannot be read as a checkpoint (names the file).
    """
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a bad file
        msg = f'{os.fspath(path)}: not a readable checkpoint ({type(err).__name__}: {err})'
        raise ValueError(msg.splitlines()[0]) from err
    if not isinstance(checkpoint, dict):
        msg = f'{os.fspath(path)}: not a Lightning checkpoint (a {type(checkpoint).__name__})'
        raise ValueError(msg)
    return checkpoint


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition('.')
    return getattr(importlib.import_module(module), name)


def same_class(class_path: str, cls: type) -> bool:
    """Whether *class_path* names *cls* (under any module path that exports it).

    Args:
        class_path: Dotted path, e.g. ``torchgeo_xscale.tasks.CrossScaleMAETask``.
        cls: The class.

    Returns:
        True if importing *class_path* gives *cls*.
    """
    try:
        return bool(_import(class_path) is cls)
    except (ImportError, AttributeError, ValueError):
        return False


def _arguments(cls: type) -> set[str]:
    """Names of the arguments of ``cls.__init__``."""
    return set(inspect.signature(cls.__init__).parameters) - {'self'}  # type: ignore[misc]


def task_class_path(
    checkpoint: Mapping[str, Any], candidates: Iterable[type] = ()
) -> str | None:
    """The dotted path of the task that wrote *checkpoint*, when it can be told.

    Checkpoints written through the CLI store it (``_class_path``); otherwise the
    first of *candidates* whose ``__init__`` accepts every stored hyper-parameter
    is taken.

    Args:
        checkpoint: A Lightning checkpoint.
        candidates: Task classes to recognise.

    Returns:
        The class path, or None if unknown.
    """
    hparams = checkpoint.get('hyper_parameters') or {}
    if hparams.get('_class_path'):
        return str(hparams['_class_path'])
    keys = set(hparams) - set(_CLI_KEYS)
    for cls in candidates:
        if keys and keys <= _arguments(cls):
            return f'{cls.__module__}.{cls.__qualname__}'
    return None


def plain(value: Any) -> Any:
    """*value* with namespaces as dicts and tuples as lists, for comparisons.

    Args:
        value: A hyper-parameter value (jsonargparse ``Namespace``, tuple...).

    Returns:
        The same value in plain Python containers.
    """
    if hasattr(value, 'as_dict'):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


#: Hyper-parameters renamed since checkpoints were written: old name -> new name
#: (:data:`torchgeo_xscale.renames.RENAMED_ARGS`).
RENAMED_HPARAMS: dict[str, str] = RENAMED_ARGS


def upgrade_hparams(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters with the old names of :data:`RENAMED_HPARAMS`.

    ``CrossScaleMAETask`` took the band count as ``in_chans`` (timm's name) before
    it took ``in_channels`` (TorchGeo's); a checkpoint storing the old name reads as
    if it stored the new one (when the new name holds no value).

    Args:
        stored: The checkpoint's ``hyper_parameters``.

    Returns:
        A copy with the old names renamed.
    """
    return upgrade_renamed(stored)[0]


def hparam_conflicts(
    requested: Mapping[str, Any], stored: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Requested hyper-parameters whose value differs from the stored one.

    Args:
        requested: Hyper-parameters asked for (e.g. on the command line).
        stored: The checkpoint's ``hyper_parameters``.

    Returns:
        ``{name: (stored value, requested value)}`` for names in both that differ.
    """
    return {
        key: (stored[key], value)
        for key, value in requested.items()
        if key in stored and key not in _CLI_KEYS and plain(value) != plain(stored[key])
    }


def describe_conflicts(conflicts: Mapping[str, tuple[Any, Any]]) -> str:
    """``a=1 in the checkpoint, 2 requested; ...`` for :func:`hparam_conflicts`.

    Args:
        conflicts: Output of :func:`hparam_conflicts`.

    Returns:
        One line.
    """
    return '; '.join(
        f'{key}={plain(old)!r} in the checkpoint, {plain(new)!r} requested'
        for key, (old, new) in conflicts.items()
    )


def check_checkpoint_fits(
    task: nn.Module,
    hparams: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    source: Any = None,
    strict: bool = True,
) -> None:
    """Raise one clear line if *checkpoint* is not one of *task*'s kind and size.

    Called from ``on_load_checkpoint``, before Lightning loads the weights.

    Args:
        task: The task being restored.
        hparams: Its hyper-parameters.
        checkpoint: The checkpoint.
        source: The checkpoint's path, named in the message (None: unknown).
        strict: Also refuse missing and unexpected weights (Lightning's
            ``strict_loading``), not only shape mismatches.

    Raises:
        ValueError: If the checkpoint was written by another task class, or its
            weights do not fit the model (another size or band count), naming the
            differing hyper-parameters.
    """
    cls = type(task)
    name = f'--ckpt_path {os.fspath(source)}' if source else 'the checkpoint'
    stored = upgrade_hparams(checkpoint.get('hyper_parameters') or {})
    written_by = task_class_path(checkpoint)
    foreign = set(stored) - set(_CLI_KEYS) - _arguments(cls)
    if (written_by and '_class_path' in stored and not same_class(written_by, cls)) or (
        stored and foreign
    ):
        what = written_by or f'a task with {", ".join(sorted(foreign)[:4])}'
        msg = (
            f'{name} is a checkpoint of {what}, not of {cls.__qualname__}; expected a '
            f'checkpoint written by {cls.__qualname__}'
        )
        raise ValueError(msg)
    weights = checkpoint.get('state_dict')
    if not isinstance(weights, Mapping):
        return
    own = task.state_dict()
    shapes = [
        k
        for k in own
        if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)
    ]
    missing = sorted(set(own) - set(weights)) if strict else []
    unexpected = sorted(set(weights) - set(own)) if strict else []
    if not (shapes or missing or unexpected):
        return
    if shapes:
        k = shapes[0]
        first = f'{k} is {tuple(weights[k].shape)} there, {tuple(own[k].shape)} here'
    elif missing:
        first = f'{len(missing)} weights missing (first {missing[0]})'
    else:
        first = f'{len(unexpected)} unexpected weights (first {unexpected[0]})'
    conflicts = describe_conflicts(hparam_conflicts(hparams, stored))
    msg = (
        f'{name} does not fit this {cls.__qualname__}: '
        f'{conflicts or "same hyper-parameters"} ({first}); expected the '
        "checkpoint's hyper-parameters (e.g. load_from_checkpoint), or pass it as "
        'weights to start a new run from it'
    )
    raise ValueError(msg)


def check_resume(
    ckpt_path: str | os.PathLike[str], requested: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Refuse a ``--ckpt_path`` that contradicts the model the command line asks for.

    Lightning's CLI replaces the model arguments by the checkpoint's hyper-parameters
    when ``--ckpt_path`` is given. Arguments *not* given on the command line or in a
    config file may come from the checkpoint; an argument that *was* given and differs
    from the checkpoint's is refused, except for the task's ``resume_settings`` (e.g.
    ``log_image_every_n_steps``, which do not change what is trained): for these the
    requested value is kept.

    Args:
        ckpt_path: The checkpoint.
        requested: The model as given explicitly (``class_path`` and ``init_args``
            / ``dict_kwargs``; no defaults), or None.

    Returns:
        The requested ``resume_settings`` that differ from the checkpoint's, to be
        applied over them.

    Raises:
        CheckpointMismatchError: If the checkpoint was written by another task class,
            or a requested hyper-parameter (model size, band count...) differs from
            the checkpoint's; one line naming the checkpoint, the values and what to do.
    """
    model = plain(requested) if requested else {}
    if not model:
        return {}
    checkpoint = load_checkpoint(ckpt_path)
    stored = upgrade_hparams(checkpoint.get('hyper_parameters') or {})
    if not stored:
        return {}
    name = f'--ckpt_path {os.fspath(ckpt_path)}'
    args = {**(model.get('init_args') or {}), **(model.get('dict_kwargs') or {})}
    cls: Any = None
    if model.get('class_path'):
        cls = _import(model['class_path'])
        written_by = stored.get('_class_path')
        foreign = set(stored) - set(_CLI_KEYS) - _arguments(cls)
        if (written_by and not same_class(written_by, cls)) or (
            not written_by and foreign
        ):
            what = written_by or f'another task (with {", ".join(sorted(foreign)[:4])})'
            msg = (
                f'{name} is a checkpoint of {what}; the command line asks for '
                f'{model["class_path"]}: use the checkpoint with the config of its own '
                'run (the config.yaml saved in its log folder), or give a checkpoint '
                f'of {cls.__qualname__}'
            )
            raise CheckpointMismatchError(msg)
    conflicts = hparam_conflicts(args, stored)
    settings = set(getattr(cls, 'resume_settings', ()))
    hard = {k: v for k, v in conflicts.items() if k not in settings}
    if hard:
        msg = (
            f"{name}: the checkpoint's hyper-parameters contradict the command line: "
            f'{describe_conflicts(hard)}. To resume that run, drop these arguments '
            "or give the checkpoint's values; to train the requested model from its "
            f'weights, pass --model.init_args.weights {os.fspath(ckpt_path)} instead '
            'of --ckpt_path'
        )
        raise CheckpointMismatchError(msg)
    return {k: args[k] for k in conflicts if k in settings}
