"""torchgeo_xscale: Cross-Scale MAE as a first-class TorchGeo extension.

Importing the package registers its weights entries and builders with
:mod:`torchgeo.models` (``get_model``, ``get_weight``, ``list_models``) and its ViT
encoders with segmentation-models-pytorch (``xscale_vit_tiny`` ... ``xscale_vit_large``,
so ``smp.UPerNet(encoder_name='xscale_vit_base')`` and
``torchgeo.tasks.SemanticSegmentation(model='upernet', backbone='xscale_vit_base')``
build).
"""

__version__ = '0.1.0'

from . import checkpoints  # noqa: F401  (registers the weights with TorchGeo)
from .models import segmentation  # noqa: F401  (registers the SMP encoders)
