"""torchgeo_xscale: Cross-Scale MAE as a first-class TorchGeo extension.

Importing the package registers its weights entries and builders with
:mod:`torchgeo.models` (``get_model``, ``get_weight``, ``list_models``).
"""

__version__ = '0.1.0'

from . import models  # noqa: F401  (registers the weights with TorchGeo)
