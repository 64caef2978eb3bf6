"""Semantic segmentation with UPerNet on our ViTs: TorchGeo's task plus the MAE recipe.

:class:`XScaleSegmentationTask` is :class:`torchgeo.tasks.SemanticSegmentation` (same
arguments, losses and torchmetrics: overall accuracy, mIoU, per-class IoU) with what
the MAE/UPerNet fine-tuning recipe adds: an auxiliary FCN head (weight 0.4), AdamW with
layer-wise lr decay, a warm-up + poly schedule, sliding-window evaluation of whole
tiles, a clear error for training batches of one sample (BatchNorm), a figure of
image / label / prediction for a few validation tiles every epoch, and the GSD range of
its training tiles in every checkpoint (``checkpoint['xscale_gsd']``, which
``xscale segment --gsd auto`` resamples its input to).
"""

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks import SemanticSegmentation
from torchvision.models._api import WeightsEnum

from ..checkpoints import (
    apply_structure,
    load_pretrained_encoder,
    model_structure,
    upernet,
)
from ..gsd import GSDRecorder, declared_gsd
from ..inference import sliding_window_probs
from ..models.segmentation import ENCODER_PREFIX, FCNHead
from ..plotting import to_display
from .checkpoint import check_checkpoint_fits
from .figures import log_figure, resolve_log_dir

__all__ = ('XScaleSegmentationTask', 'plot_segmentation', 'warmup_poly')

#: Key of the checkpoint entry with what inference needs besides the weights.
META_KEY = 'xscale_segmentation'


def warmup_poly(
    step: int,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    min_factor: float = 0.0,
) -> float:
    """Learning-rate factor: linear warm-up, then polynomial decay.

    Args:
        step: Optimiser step.
        warmup_steps: Steps of linear warm-up.
        total_steps: Total steps.
        power: Exponent of ``1 - progress``.
        min_factor: Floor of the factor after warm-up.

    Returns:
        Factor of the peak learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * (1.0 - progress) ** power


def plot_segmentation(
    images: Sequence[Tensor],
    masks: Sequence[Tensor],
    predictions: Sequence[Tensor],
    colormap: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Rows of image / label / prediction.

    Args:
        images: ``(C, H, W)`` normalised images (first three bands shown, stretched).
        masks: ``(H, W)`` labels.
        predictions: ``(H, W)`` predicted classes.
        colormap: RGB (0-255) per class.
        class_names: Legend names.

    Returns:
        The figure.
    """
    palette = np.asarray(colormap, dtype=np.float32)[:, :3] / 255
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        panels = (
            to_display(images[i]),
            palette[masks[i].long().clamp(0, len(palette) - 1).cpu().numpy()],
            palette[predictions[i].long().clamp(0, len(palette) - 1).cpu().numpy()],
        )
        for ax, panel, title in zip(axes[i], panels, ('image', 'label', 'prediction')):
            ax.imshow(panel, cmap='gray', interpolation='nearest')
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    names = class_names or [str(k) for k in range(len(palette))]
    handles = [
        Patch(facecolor=palette[k], edgecolor='k', label=names[k])
        for k in range(len(palette))
    ]
    fig.legend(
        handles=handles, loc='lower center', ncol=min(6, len(handles)), fontsize=8
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


class XScaleSegmentationTask(SemanticSegmentation):
    """UPerNet segmentation fine-tuning of a Cross-Scale MAE encoder.

    With an ``xscale_vit_*`` backbone the model is :func:`~torchgeo_xscale.models.
    segmentation.upernet` and ``weights`` (a weights entry, its name, or a file with an
    encoder state dict / pretraining checkpoint) load into its encoder; other
    backbones build as in TorchGeo.
    """

    #: Hyper-parameters that ``xscale fit --ckpt_path`` takes from the command line
    #: when they differ from the checkpoint's (they do not change what is trained).
    resume_settings: ClassVar[tuple[str, ...]] = (
        'weights',
        'plot_tiles',
        'eval_window',
        'eval_overlap',
        'patience',
    )

    def __init__(
        self,
        model: Literal[
            'upernet', 'unet', 'deeplabv3+', 'fcn', 'segformer', 'dpt'
        ] = 'upernet',
        backbone: str = 'xscale_vit_base',
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 3,
        task: Literal['binary', 'multiclass', 'multilabel'] = 'multiclass',
        num_classes: int | None = None,
        num_labels: int | None = None,
        labels: list[str] | None = None,
        num_filters: int = 3,
        pos_weight: Tensor | None = None,
        loss: Literal['ce', 'bce', 'jaccard', 'focal', 'dice'] = 'ce',
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int | None = None,
        lr: float = 1e-4,
        patience: int = 10,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        backbone_options: dict[str, Any] | None = None,
        decoder_channels: int = 512,
        aux_weight: float = 0.4,
        layer_decay: float = 0.65,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        poly_power: float = 1.0,
        min_lr: float = 0.0,
        eval_window: int | None = None,
        eval_overlap: float = 1 / 3,
        plot_tiles: int = 4,
    ) -> None:
        """Initialise the task.

        Args:
            model: SMP model; ``upernet`` for ``xscale_vit_*`` backbones.
            backbone: Encoder name, e.g. ``xscale_vit_base``.
            weights: Pretrained encoder (see :func:`~torchgeo_xscale.models.
                segmentation.load_pretrained_encoder`); None for random.
            in_channels: Input bands (the patch embedding is adapted to them).
            task: ``multiclass`` (ISPRS), ``binary`` or ``multilabel``.
            num_classes: Classes K.
            num_labels: Labels (multilabel only).
            labels: Class names for the per-class metrics.
            num_filters: FCN filters (``model='fcn'`` only).
            pos_weight: Positive weight for ``bce``.
            loss: Loss name (TorchGeo's).
            class_weights: Per-class CE weights.
            ignore_index: Class ignored in loss and metrics (0 = ISPRS clutter).
            lr: Peak learning rate.
            patience: Unused (TorchGeo's plateau scheduler is replaced by poly).
            freeze_backbone: Freeze the encoder.
            freeze_decoder: Freeze the decoder.
            backbone_options: Encoder overrides (``img_size``, ``drop_path_rate``,
                ``embed_dim``, ``vit_depth``...).
            decoder_channels: UPerNet width.
            aux_weight: Weight of the auxiliary FCN head's loss (0: no head).
            layer_decay: Layer-wise lr decay of the ViT blocks (1: none).
            weight_decay: AdamW weight decay (not on biases/norms/tokens).
            betas: AdamW betas.
            warmup_epochs: Linear warm-up in epochs (fractions allowed).
            poly_power: Exponent of the poly schedule.
            min_lr: Learning rate floor at the end.
            eval_window: Sliding-window size for validation/test images larger than
                it (default: the datamodule's ``patch_size``).
            eval_overlap: Overlap of evaluation windows.
            plot_tiles: Validation tiles drawn (image / label / prediction) into
                ``<log_dir>/predictions/epoch_N.png`` each epoch (0: none).

        Raises:
            ValueError: If an ``xscale_vit_*`` backbone is used with another model or
                with ``weights=True``.
        """
        if backbone.startswith(ENCODER_PREFIX) and model != 'upernet':
            msg = (
                f"model={model!r} with backbone={backbone!r}; expected model='upernet'"
            )
            raise ValueError(msg)
        if backbone.startswith(ENCODER_PREFIX) and weights is True:
            msg = f'weights=True (ImageNet) with backbone={backbone!r}; expected a weights entry, its name or a file'
            raise ValueError(msg)
        self._plot_samples: list[tuple[Tensor, Tensor, Tensor]] = []
        self.last_figure: str | None = None
        self.segmentation_meta: dict[str, Any] = {}
        #: ``xscale_gsd`` of the checkpoint this task was loaded from (None if none).
        self.checkpoint_gsd: dict[str, float] | None = None
        self._tile_gsd = GSDRecorder()  # native GSD of the training tiles seen
        self._log_dir: str | None = None
        super().__init__(
            model=model,
            backbone=backbone,
            weights=weights,
            in_channels=in_channels,
            task=task,
            num_classes=num_classes,
            num_labels=num_labels,
            labels=labels,
            num_filters=num_filters,
            pos_weight=pos_weight,
            loss=loss,
            class_weights=class_weights,
            ignore_index=ignore_index,
            lr=lr,
            patience=patience,
            freeze_backbone=freeze_backbone,
            freeze_decoder=freeze_decoder,
        )

    def configure_models(self) -> None:
        """Build the model (UPerNet on our ViT), load weights, add the auxiliary head."""
        backbone: str = self.hparams['backbone']
        if not backbone.startswith(ENCODER_PREFIX):
            super().configure_models()
        else:
            self.model = upernet(
                backbone,
                num_classes=self.hparams['num_classes']
                or self.hparams['num_labels']
                or 1,
                in_channels=self.hparams['in_channels'],
                decoder_channels=self.hparams['decoder_channels'],
                **(self.hparams['backbone_options'] or {}),
            )
            if self.weights:
                load_pretrained_encoder(self.model.encoder, self.weights)
            if self.hparams['freeze_backbone']:
                self.model.encoder.requires_grad_(False)
            if self.hparams['freeze_decoder']:
                self.model.decoder.requires_grad_(False)
        self.aux_head: FCNHead | None = None
        encoder: Any = getattr(self.model, 'encoder', None)
        if self.hparams['aux_weight'] > 0 and hasattr(encoder, 'out_channels'):
            classes = self.hparams['num_classes'] or self.hparams['num_labels'] or 1
            self.aux_head = FCNHead(encoder.out_channels[-2], classes)

    # ------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: layer-decayed ViT layers, then everything else at full lr.

        Returns:
            Groups with ``lr`` (peak lr times the layer's scale) and ``weight_decay``.
        """
        lr, wd = self.hparams['lr'], self.hparams['weight_decay']
        encoder = getattr(self.model, 'encoder', None)
        groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        if isinstance(encoder, VisionTransformer):
            groups = param_groups_layer_decay(
                encoder,
                weight_decay=wd,
                no_weight_decay_list=list(encoder.no_weight_decay()),
                layer_decay=self.hparams['layer_decay'],
            )
            seen = {id(p) for p in encoder.parameters()}
        decay: list[Tensor] = []
        no_decay: list[Tensor] = []
        for name, p in self.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            (no_decay if p.ndim <= 1 or name.endswith('.bias') else decay).append(p)
        groups += [
            {'params': decay, 'weight_decay': wd, 'lr_scale': 1.0},
            {'params': no_decay, 'weight_decay': 0.0, 'lr_scale': 1.0},
        ]
        for group in groups:
            group['lr'] = lr * group.get('lr_scale', 1.0)
        return [g for g in groups if g['params']]

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW with layer-wise lr decay, linear warm-up then poly decay per step.

        Returns:
            Optimiser and per-step scheduler.
        """
        optimizer = torch.optim.AdamW(self.param_groups(), betas=self.hparams['betas'])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = (
            self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 1
        )
        warmup = max(
            1, int(total * min(1.0, self.hparams['warmup_epochs'] / max(1, epochs)))
        )
        power, floor = (
            self.hparams['poly_power'],
            self.hparams['min_lr'] / self.hparams['lr'],
        )
        scheduler = LambdaLR(
            optimizer, lambda s: warmup_poly(s, warmup, total, power, floor)
        )
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        """Resolve the log directory on every rank (a collective in DDP).

        The prediction figures are saved by rank 0 alone, without a collective call
        that the other ranks would never join.

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        self._log_dir = resolve_log_dir(self.trainer)

    def on_fit_start(self) -> None:
        """Fail early on a training batch size of 1.

        Raises:
            ValueError: If the datamodule's batch size is 1.
        """
        batch_size = getattr(
            getattr(self.trainer, 'datamodule', None), 'batch_size', None
        )
        if batch_size is not None:
            self._check_batch_size(int(batch_size))

    def _check_batch_size(self, batch_size: int) -> None:
        if batch_size < 2:
            msg = (
                f'training batch size is {batch_size}; UPerNet (BatchNorm in its pyramid '
                'pooling) needs at least 2 samples per device: set data batch_size >= 2'
            )
            raise ValueError(msg)

    def training_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """Main loss plus ``aux_weight`` times the auxiliary head's loss.

        Args:
            batch: ``image`` ``(B, C, H, W)`` and ``mask`` ``(B, H, W)``.
            batch_idx: Batch index.
            dataloader_idx: Dataloader index.

        Returns:
            The loss.
        """
        x, y = batch['image'], batch['mask']
        self._check_batch_size(x.shape[0])
        if isinstance(batch.get('gsd'), Tensor):
            self._tile_gsd.update(batch['gsd'])
        if self.aux_head is None:
            y_hat = self(x)
            aux_loss = None
        else:
            self.model.check_input_shape(x)
            features = self.model.encoder(x)
            y_hat = self.model.segmentation_head(self.model.decoder(features))
            aux = self.aux_head(features[-2])
            aux = F.interpolate(
                aux, size=x.shape[-2:], mode='bilinear', align_corners=False
            )
            aux_loss = self.criterion(aux, y)
        loss: Tensor = self.criterion(y_hat, y)
        self.train_metrics(y_hat, y)
        self.log('train_loss_main', loss, batch_size=x.shape[0])
        if aux_loss is not None:
            self.log('train_loss_aux', aux_loss, batch_size=x.shape[0])
            loss = loss + self.hparams['aux_weight'] * aux_loss
        self.log('train_loss', loss, batch_size=x.shape[0], prog_bar=True)
        return loss

    def predict_logits(self, x: Tensor) -> Tensor:
        """Logits of images of any size (sliding window above the eval window).

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, K, H, W)`` logits, or log-probabilities when windows were blended.
            Images up to the window are padded to a multiple of the encoder's
            stride by reflection, or by repeating the edge pixels when they are
            smaller than the padding.
        """
        window = self.hparams['eval_window'] or getattr(
            self._datamodule(), 'patch_size', None
        )
        if isinstance(window, Sequence):
            window = min(window)
        h, w = x.shape[-2:]
        if window and (h > window or w > window):
            probs = sliding_window_probs(
                self.model, x, int(window), self.hparams['eval_overlap']
            )
            return probs.clamp_min(1e-8).log()
        stride = getattr(getattr(self.model, 'encoder', None), 'output_stride', 32)
        pad_h, pad_w = -h % stride, -w % stride
        if pad_h or pad_w:
            # Reflection needs a pad smaller than the image (TorchGeo's ISPRS test
            # tiles are 2 x 2 px); smaller images repeat their edge pixels instead.
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            return self(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]
        return self(x)

    def _evaluate(self, batch: Any, stage: str) -> Tensor:
        x, y = batch['image'], batch['mask']
        y_hat = self.predict_logits(x)
        getattr(self, f'{stage}_metrics')(y_hat, y)
        # every rank evaluates the same number of batches: the epoch reduce is symmetric
        self.log(
            f'{stage}_loss',
            self.criterion(y_hat, y),
            batch_size=x.shape[0],
            sync_dist=True,
        )
        return y_hat

    def validation_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Loss and metrics on (whole) validation tiles; keep a few for the figure.

        Args:
            batch: ``image`` and ``mask``.
            batch_idx: Batch index.
            dataloader_idx: Dataloader index.
        """
        y_hat = self._evaluate(batch, 'val')
        if not self.trainer.sanity_checking:
            self._keep_for_plot(batch, y_hat)

    def _keep_for_plot(self, batch: Any, y_hat: Tensor) -> None:
        """Keep (image, label, prediction) of up to ``plot_tiles`` tiles, <= 512 px."""
        n = self.hparams['plot_tiles'] - len(self._plot_samples)
        step = max(1, -(-max(batch['image'].shape[-2:]) // 512))
        pred = y_hat.argmax(1)
        for i in range(min(max(n, 0), len(pred))):
            self._plot_samples.append(
                (
                    batch['image'][i, :, ::step, ::step].cpu(),
                    batch['mask'][i, ::step, ::step].cpu(),
                    pred[i, ::step, ::step].cpu(),
                )
            )

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss and metrics on (whole) test tiles.

        Args:
            batch: ``image`` and ``mask``.
            batch_idx: Batch index.
            dataloader_idx: Dataloader index.
        """
        self._keep_for_plot(batch, self._evaluate(batch, 'test'))

    def on_validation_epoch_end(self) -> None:
        """Log metrics; save ``predictions/epoch_N.png`` of this epoch's tiles."""
        super().on_validation_epoch_end()
        self._save_plot(f'epoch_{self.current_epoch:04d}.png')

    def on_test_epoch_end(self) -> None:
        """Log metrics; save ``predictions/test.png`` of the first test tiles."""
        super().on_test_epoch_end()
        self._save_plot('test.png')

    def _save_plot(self, name: str) -> None:
        """Save the kept tiles' figure under ``<log_dir>/predictions/`` (and TensorBoard)."""
        samples, self._plot_samples = self._plot_samples, []
        if not samples or not self.trainer.is_global_zero:
            return
        images, masks, preds = zip(*samples)
        fig = plot_segmentation(
            images, masks, preds, self.colormap(), self.hparams['labels']
        )
        if self._log_dir is None:  # not set up by a trainer: one process only
            self._log_dir = resolve_log_dir(self.trainer)
        self.last_figure = log_figure(
            self, fig, self._log_dir, f'predictions/{name}', f'predictions/{name}'
        )

    # -------------------------------------------------------------- metadata
    def _datamodule(self) -> Any:
        """The trainer's datamodule, or None outside a trainer."""
        return getattr(self._trainer, 'datamodule', None) if self._trainer else None

    def colormap(self) -> list[tuple[int, int, int]]:
        """Class colours: the datamodule's dataset's ``colormap``, else tab10.

        Returns:
            RGB (0-255) per class.
        """
        colormap = getattr(
            getattr(self._datamodule(), 'dataset_class', None), 'colormap', None
        )
        k = self.hparams['num_classes'] or self.hparams['num_labels'] or 2
        if colormap is not None and len(colormap) >= k:
            return [tuple(int(v) for v in c[:3]) for c in colormap]  # type: ignore[misc]
        tab = plt.get_cmap('tab10' if k <= 10 else 'tab20')
        return [tuple(int(255 * v) for v in tab(i % tab.N)[:3]) for i in range(k)]  # type: ignore[misc]

    def training_gsd(self) -> dict[str, float] | None:
        """Native GSD range (m) of the training tiles, for ``checkpoint['xscale_gsd']``.

        Pretrained weights pass on nothing: what counts is the data this task trains on.

        Returns:
            The min, median and max ``gsd`` of the training batches seen so far when
            they carry one, else the GSD the datamodule declares (``gsd`` of the ISPRS
            datamodules, see :func:`~torchgeo_xscale.gsd.declared_gsd`), else that
            of the checkpoint this task was loaded from; None if none is known.
        """
        recorded = self._tile_gsd.summary()
        if recorded is not None:
            return recorded
        known = declared_gsd(self._datamodule())
        return known if known is not None else self.checkpoint_gsd

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what ``xscale segment`` needs: normalisation, bands, scale, colours, GSD.

        Args:
            checkpoint: The checkpoint being saved (gets ``xscale_gsd``, see
                :meth:`training_gsd`, when known).
        """
        gsd = self.training_gsd()
        if gsd is not None:
            checkpoint['xscale_gsd'] = gsd
        datamodule = self._datamodule()
        meta: dict[str, Any] = {
            'colormap': self.colormap(),
            'classes': self.hparams['labels'],
        }
        for key in ('mean', 'std'):
            value = getattr(datamodule, key, None)
            if value is not None:
                meta[key] = (
                    torch.as_tensor(value, dtype=torch.float32).flatten().tolist()
                )
        for key in ('bands', 'scale_ratio', 'patch_size'):
            if getattr(datamodule, key, None) is not None:
                meta[key] = getattr(datamodule, key)
        meta.update(model_structure(self.model))  # residual norm style, final norm
        checkpoint[META_KEY] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint fits; restore post-norm blocks and a missing final norm.

        Args:
            checkpoint: The checkpoint being loaded.

        Raises:
            ValueError: If it is a checkpoint of another task, or of another model
                size, band count or number of classes.
        """
        # the structure first: without a final norm, its weights are not expected
        self.segmentation_meta = checkpoint.get(META_KEY, {})
        encoder = getattr(self.model, 'encoder', self.model)
        apply_structure(encoder, self.segmentation_meta)
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(
            self, self.hparams, checkpoint, source, strict=self.strict_loading
        )
        gsd = checkpoint.get('xscale_gsd')
        if isinstance(gsd, dict) and {'min', 'median', 'max'} <= set(gsd):
            self.checkpoint_gsd = {k: float(gsd[k]) for k in ('min', 'median', 'max')}
