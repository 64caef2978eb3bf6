"""Lightning tasks (TorchGeo ``BaseTask`` subclasses), by their short class paths.

``torchgeo_xscale.tasks.CrossScaleMAETask`` (pretraining) and
``torchgeo_xscale.tasks.XScaleSegmentationTask`` (fine-tuning, UPerNet) are what
configs name as ``model: class_path:``.
"""

from .checkpoint import CheckpointMismatchError
from .pretrain import CrossScaleMAETask
from .segmentation import XScaleSegmentationTask

__all__ = ('CheckpointMismatchError', 'CrossScaleMAETask', 'XScaleSegmentationTask')
