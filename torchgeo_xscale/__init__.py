"""torchgeo_xscale: Cross-Scale MAE as a first-class TorchGeo extension.

Public API, by short paths (as configs name them): :mod:`torchgeo_xscale.tasks`
(``CrossScaleMAETask``, ``XScaleSegmentationTask``), :mod:`torchgeo_xscale.datamodules`
(``GeoTIFFDataModule``, ``FMoWDataModule``, ``ScaledPotsdam2DDataModule``,
``ScaledVaihingen2DDataModule``), :mod:`torchgeo_xscale.models` (the ViT, Cross-Scale
MAE, attention backends, SMP encoder, and the weights builders), the ``xscale``
command in :mod:`torchgeo_xscale.cli`.

Registration side effects, all of them (this is the one place they are listed):

* ``import torchgeo_xscale`` registers the weights entries and builders with
  :mod:`torchgeo.models` (``get_model``, ``get_weight``, ``get_model_weights``,
  ``list_models``: ``crossscalemae_base_patch16`` ...,
  ``CrossScaleMAEBase16_Weights.FMOW_RGB`` ...), from
  :mod:`torchgeo_xscale.checkpoints`;
* it registers the ViT encoders with segmentation-models-pytorch
  (``xscale_vit_tiny`` ... ``xscale_vit_large``, so
  ``smp.UPerNet(encoder_name='xscale_vit_base')`` and
  ``torchgeo.tasks.SemanticSegmentation(model='upernet', backbone='xscale_vit_base')``
  build), from :mod:`torchgeo_xscale.models.segmentation`;
* importing :mod:`torchgeo_xscale.models` fills the attention-backend registry
  (``sdpa``, ``eager``, ``xformers``, ``local``, ``fourier``;
  :func:`~torchgeo_xscale.models.register_attention` adds one), and importing
  :mod:`torchgeo_xscale.masks` the mask-strategy registry (``random`` in
  :mod:`torchgeo_xscale.masks.base` and the strategies of the package;
  ``register_mask_strategy`` adds one);
  both are the package's own registries, nothing outside it changes;
* timm: nothing at import. :func:`torchgeo_xscale.models.timm_vit.register_timm_vit`
  registers a timm model name (``vit_xscale_e128_d4_h4_p8_64``...) when a
  ``torchgeo.tasks.MAE`` baseline of that shape is built or its checkpoint is loaded,
  since that task takes a timm model *name*.
"""

__version__ = '0.1.0'

from . import checkpoints  # noqa: F401  (registers the weights with TorchGeo)
from .models import segmentation  # noqa: F401  (registers the SMP encoders)
