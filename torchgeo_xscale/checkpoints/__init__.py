"""Weights: file formats, layouts, TorchGeo entries, builders, one loading path.

* :mod:`~torchgeo_xscale.checkpoints.files`: safe loading, our weights file (state
  dict and metadata in one atomic file), finiteness checks;
* :mod:`~torchgeo_xscale.checkpoints.layouts`: every checkpoint layout (the authors'
  three, ours, ``torchgeo.tasks.MAE``) detected and converted to timm names;
* :mod:`~torchgeo_xscale.checkpoints.entries`: the ``WeightsEnum`` entries of the
  authors' released weights;
* :mod:`~torchgeo_xscale.checkpoints.loading`: :func:`resolve` (entry / name / file
  -> state dict + metadata), :func:`load_into` (into any timm-style ViT) and the
  MAEs of Lightning checkpoints (:func:`load_mae`: ``CrossScaleMAETask``'s
  :class:`~torchgeo_xscale.models.CrossScaleMAE` or ``torchgeo.tasks.MAE``);
* :mod:`~torchgeo_xscale.checkpoints.builders`: ``crossscalemae_*_patch16`` and
  ``upernet`` (registered with :mod:`torchgeo.models` on import), and
  :func:`checkpoint_encoder` (the encoder any resolved checkpoint holds).
"""

from .builders import (
    build_encoder,
    checkpoint_encoder,
    crossscalemae_base_patch16,
    crossscalemae_large_patch16,
    load_pretrained_encoder,
    upernet,
)
from .entries import (
    FMOW_RGB_MEAN,
    FMOW_RGB_STD,
    CrossScaleMAEBase16_Weights,
    CrossScaleMAELarge16_Weights,
    CrossScaleMAEWeightsEnum,
    WeightsNotAvailableError,
    find_entry,
    register_weights,
    registered_entries,
)
from .files import (
    WEIGHTS_FORMAT,
    WeightsWriteError,
    check_finite,
    md5sum,
    safe_load,
    save_weights,
)
from .layouts import (
    LAYOUTS,
    OFFICIAL_LAYOUTS,
    STRUCTURE_KEY,
    Conversion,
    convert_checkpoint,
    detect_layout,
    to_official,
)
from .loading import (
    ResolvedWeights,
    WeightsMismatchError,
    apply_structure,
    export_lightning_checkpoint,
    export_weights,
    load_cross_scale_mae,
    load_into,
    load_mae,
    load_torchgeo_mae,
    model_structure,
    read_checkpoint,
    resolve,
)

__all__ = (
    'FMOW_RGB_MEAN',
    'FMOW_RGB_STD',
    'LAYOUTS',
    'OFFICIAL_LAYOUTS',
    'STRUCTURE_KEY',
    'WEIGHTS_FORMAT',
    'Conversion',
    'CrossScaleMAEBase16_Weights',
    'CrossScaleMAELarge16_Weights',
    'CrossScaleMAEWeightsEnum',
    'ResolvedWeights',
    'WeightsMismatchError',
    'WeightsNotAvailableError',
    'WeightsWriteError',
    'apply_structure',
    'build_encoder',
    'check_finite',
    'checkpoint_encoder',
    'convert_checkpoint',
    'crossscalemae_base_patch16',
    'crossscalemae_large_patch16',
    'detect_layout',
    'export_lightning_checkpoint',
    'export_weights',
    'find_entry',
    'load_cross_scale_mae',
    'load_into',
    'load_mae',
    'load_pretrained_encoder',
    'load_torchgeo_mae',
    'md5sum',
    'model_structure',
    'read_checkpoint',
    'register_weights',
    'registered_entries',
    'resolve',
    'safe_load',
    'save_weights',
    'to_official',
    'upernet',
)
