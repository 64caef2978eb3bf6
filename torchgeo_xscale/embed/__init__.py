"""Per-tile embeddings of GeoTIFFs as GeoParquet, and an embedding GeoTIFF (``xscale embed``).

:func:`embed_geotiffs` cuts every input raster into a grid of square tiles
(:mod:`.tiles`), runs a frozen encoder
(:func:`~torchgeo_xscale.evaluation.encoders.load_encoder`) on batches of them and
writes one GeoParquet row per tile (:mod:`.geoparquet`):

==================  =========================================================
column              content
==================  =========================================================
``source``          the input file
``row``, ``col``    the tile's position in its file's grid
``pixel_bbox``      ``[col_start, row_start, col_end, row_end]`` in file pixels
``valid_fraction``  share of the tile's pixels that hold data
``gsd``             metres per input pixel (geographic CRS: at the tile centre)
``centre_lon``,     tile centre in WGS84 degrees (the names of TorchGeo's
``centre_lat``      ``EarthEmbeddings`` and of Major TOM)
``timestamp``       acquisition time given as ``timestamp=`` (UTC), else null
``embedding``       the encoder's feature, ``float32[D]``
``geometry``        tile polygon in the **input CRS** (WKB; the CRS is recorded as
                    PROJJSON in the GeoParquet ``geo`` metadata)
==================  =========================================================

The file's ``xscale`` metadata (JSON) records the encoder, tiling and normalisation.

**Grid and nodata.** The grid is TorchGeo's
:class:`~torchgeo.samplers.GriddedPatchSampler`'s: tiles start at multiples of
``stride`` from the top-left corner; the last row and column of tiles reach past the
raster's edge. Pixels outside the raster, nodata, NaN and +-Inf are invalid and set
to the band mean (0 after normalisation). A tile with no valid pixel or a valid
fraction below ``min_valid_fraction`` is **skipped**: no row, counted in
:attr:`EmbedResult.skipped`. Kept tiles carry their ``valid_fraction``.

**Normalisation.** ``mean``/``std`` if given; else the ``transforms`` of the TorchGeo
weights entry the encoder comes from (e.g. ``CrossScaleMAEBase16_Weights.FMOW_RGB``);
else per-band statistics of the inputs
(:func:`~torchgeo_xscale.datasets.compute_band_stats`, as
:class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` normalises for pretraining:
checkpoints do not record their normalisation). Tiles are resized to the encoder's
input size when ``tile_size`` differs; GSD-aware encoders get the resized GSD.

**Embedding GeoTIFF.** With ``raster=`` the patch tokens of the (single) input are
also written at patch resolution (:mod:`.raster`): one band per channel, or per
principal component with ``pca=K`` (fit on the valid patch tokens of up to
``pca_fit_tiles`` evenly spaced tiles).

**Memory and files.** Tiles are read window by window, rows go to pyarrow's
:class:`~pyarrow.parquet.ParquetWriter` in row groups, the GeoTIFF strip by strip, so
memory does not grow with the raster's height (the GeoTIFF's strip grows with its
width). Both files are written under temporary names and renamed when complete
(:func:`~torchgeo_xscale.io.atomic_path`).
"""

from .export import FORMAT_VERSION, EmbedResult, embed_geotiffs, load_embedding_encoder
from .geoparquet import GeoParquetWriter
from .raster import EmbeddingRasterWriter, fit_pca, open_embedding_raster
from .tiles import tile_starts

__all__ = (
    'FORMAT_VERSION',
    'EmbedResult',
    'EmbeddingRasterWriter',
    'GeoParquetWriter',
    'embed_geotiffs',
    'fit_pca',
    'load_embedding_encoder',
    'open_embedding_raster',
    'tile_starts',
)
