"""torchgeo_xscale: Cross-Scale MAE as a first-class TorchGeo extension."""

__version__ = '0.1.0'
