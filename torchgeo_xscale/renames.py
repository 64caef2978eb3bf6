"""Arguments renamed to TorchGeo's names: the old name is refused in one line.

**The band count is** ``in_channels`` **wherever a TorchGeo user configures it**:
the tasks (:class:`~torchgeo_xscale.tasks.CrossScaleMAETask`, as
:class:`torchgeo.tasks.MAE` and our segmentation task), the datasets and
datamodules (:class:`~torchgeo_xscale.datasets.GeoTIFFDataset`,
:class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule`), the evaluation dataset
builders, and the ``model:`` / ``data:`` sections of the configs with their
command-line options (``--model.init_args.in_channels``,
``--data.init_args.in_channels``). The timm-facing model builders
(:func:`~torchgeo_xscale.models.vit.build_vit`, the ``xscale_vit_*`` builders,
``timm.create_model`` keyword arguments, ``--model-kwargs`` of ``xscale eval`` and
``xscale embed``) keep timm's ``in_chans``, as :mod:`torchgeo.models` builders
forward ``**kwargs`` to timm.

Each renamed argument keeps its old keyword, which raises a one-line
:class:`ValueError` naming the new key (:func:`refuse_renamed`); hyper-parameters
saved under the old name in checkpoints are read as the new one
(:func:`renamed_overrides`, :func:`upgrade_renamed`).
"""

from collections.abc import Mapping
from typing import Any

__all__ = (
    'RENAMED_ARGS',
    'refuse_renamed',
    'renamed_message',
    'renamed_overrides',
    'upgrade_renamed',
)

#: Arguments renamed since release: old name -> new name.
RENAMED_ARGS: dict[str, str] = {'in_chans': 'in_channels'}


def renamed_message(
    old: str, value: Any, section: str | None = None, note: str = ''
) -> str:
    """The one-line message when the old name *old* is given *value*.

    Args:
        old: The old name (a key of :data:`RENAMED_ARGS`).
        value: The value given to it.
        section: The config section the argument belongs to (``model``, ``data``)
            to name its command-line option; None: a Python argument only.
        note: More advice, appended after the Python form (``; ...``).

    Returns:
        ``in_chans was renamed in_channels (TorchGeo's name); expected
        --data.init_args.in_channels 3 (in Python: in_channels=3)`` and the like.
    """
    new = RENAMED_ARGS[old]
    head = f"{old} was renamed {new} (TorchGeo's name); expected "
    if section is None:
        return f'{head}{new}={value}{note and f" ({note})"}'
    note = note and f'; {note}'
    return f'{head}--{section}.init_args.{new} {value} (in Python: {new}={value}{note})'


def refuse_renamed(
    old: str, value: Any, section: str | None = None, note: str = ''
) -> None:
    """Raise if the old name *old* was given (*value* not None).

    Args:
        old: The old name (a key of :data:`RENAMED_ARGS`).
        value: What was given to it (None: not given).
        section: As :func:`renamed_message`.
        note: As :func:`renamed_message`.

    Raises:
        ValueError: One line naming the new key (:func:`renamed_message`).
    """
    if value is not None:
        raise ValueError(renamed_message(old, value, section, note))


def renamed_overrides(
    stored: Mapping[str, Any], given: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Arguments that read the old names of saved arguments as the new names.

    An old name is read as the new one when it holds a value and the new name holds
    none (a checkpoint written after the rename stores the old name as None).

    Args:
        stored: Saved arguments (a checkpoint's hyper-parameters).
        given: Arguments given explicitly, which win: a saved old name whose new
            name is given is only cleared.

    Returns:
        ``{old: None, new: value}`` for each such argument (to override the saved
        ones), and one line per argument read so (for a warning).
    """
    given = given or {}
    overrides: dict[str, Any] = {}
    notes = []
    for old, new in RENAMED_ARGS.items():
        value = stored.get(old)
        if value is None or stored.get(new) is not None or old in given:
            continue
        overrides[old] = None
        if new not in given:
            overrides[new] = value
            notes.append(
                f'stores {old}={value!r} (written before {old} was renamed {new}); '
                f'read as {new}={value!r}'
            )
    return overrides, notes


def upgrade_renamed(stored: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Saved arguments with the old names of :data:`RENAMED_ARGS` renamed.

    Args:
        stored: Saved arguments (a checkpoint's hyper-parameters).

    Returns:
        A copy with the old names renamed (the old keys removed) as
        :func:`renamed_overrides` reads them, and its lines.
    """
    overrides, notes = renamed_overrides(stored)
    upgraded = {**stored, **overrides}
    for old in RENAMED_ARGS:
        if old in overrides:
            del upgraded[old]
    return upgraded, notes
