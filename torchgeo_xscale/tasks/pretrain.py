"""Cross-Scale MAE pretraining task, in the style of :class:`torchgeo.tasks.MAE`."""

import inspect
import logging
import math
import os
import zlib
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm.optim import param_groups_weight_decay
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks.base import BaseTask

from ..models.cross_scale_mae import CrossScaleMAE, CrossScaleMAEOutput
from ..models.vit import resize_pos_embed

logger = logging.getLogger(__name__)

#: Task arguments that are CrossScaleMAE's constructor arguments.
MODEL_ARGS = tuple(inspect.signature(CrossScaleMAE.__init__).parameters)[1:]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up, then half-cosine decay to 0.

    Args:
        step: Current optimiser step.
        warmup_steps: Steps of linear warm-up.
        total_steps: Total steps of the run.

    Returns:
        Factor in [0, 1] applied to the peak learning rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class CrossScaleMAETask(BaseTask):
    """Self-supervised pretraining with Cross-Scale MAE.

    Batches come from a datamodule that already made the scale views (keys ``views``,
    ``view_gsd``, ``view_valid``, ``sample_weight``, as
    :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` does in its
    ``on_after_batch_transfer``); a batch with only ``image`` (any TorchGeo
    datamodule) gets its views made here with default
    :class:`~torchgeo_xscale.transforms.ScaleViews` settings.

    With ``loss_cc=False, loss_cp=False`` and one view it is a plain MAE on the same
    code, for equal-budget comparisons.
    """

    monitor = 'train_loss'

    #: Nothing is ignored: ``weights`` is a path or name, kept in the hyper-parameters.
    ignore = None

    def __init__(
        self,
        size: str = 'base',
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_keep: float = 1.0,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        mask_strategy: str = 'random',
        mask_options: dict[str, Any] | None = None,
        view_masks: str = 'independent',
        norm_pix_loss: bool = False,
        loss_re: bool = True,
        loss_cc: bool = True,
        loss_cp: bool = True,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        cc_negatives: bool = True,
        cp_negatives: bool = False,
        cp_stop_grad: bool = False,
        temperature: float = 0.5,
        cc_pool: str = 'mean',
        projection_dim: int = 256,
        projection_hidden_dim: int = 2048,
        predictor_hidden_dim: int = 2048,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 1.0,
        attention: str = 'sdpa',
        attention_options: dict[str, Any] | None = None,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        compile: bool = False,
        weights: str | None = None,
        lr: float | None = None,
        base_lr: float = 1.5e-4,
        batch_size: int | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40,
        log_image_every_n_steps: int = 500,
        nonfinite: str = 'raise',
        max_nonfinite_skips: int = 10,
        seed: int = 0,
    ) -> None:
        """Initialise the task.

        Model arguments (``size`` ... ``grad_checkpointing``) are those of
        :class:`~torchgeo_xscale.models.CrossScaleMAE`; see there.

        Args:
            size: Encoder size.
            img_size: View size in pixels.
            patch_size: Patch size.
            in_chans: Input bands.
            embed_dim: Encoder width override.
            depth: Encoder depth override.
            num_heads: Encoder heads override.
            decoder_embed_dim: Decoder width.
            decoder_depth: Decoder blocks.
            decoder_num_heads: Decoder heads.
            decoder_keep: Fraction of each view's reconstruction targets the
                decoder reconstructs in a training step (partial reconstruction;
                1.0 decodes all; validation always decodes all).
            mlp_ratio: MLP ratio.
            mask_ratio: Masked fraction per view.
            mask_strategy: Masking strategy name.
            mask_options: Masking strategy options.
            view_masks: ``independent`` or ``consistent``.
            norm_pix_loss: Normalise target patches.
            loss_re: Enable L_re.
            loss_cc: Enable L_cc.
            loss_cp: Enable L_cp.
            loss_weights: Weights of (L_re, L_cc, L_cp).
            cc_negatives: Negatives in L_cc.
            cp_negatives: Negatives in L_cp.
            cp_stop_grad: Stop-gradient on the L_cp target.
            temperature: InfoNCE temperature.
            cc_pool: ``mean`` or ``cls``.
            projection_dim: g_f output size (0: no head).
            projection_hidden_dim: g_f hidden size.
            predictor_hidden_dim: g_p hidden size.
            gsd_pos_embed: GSD positional embeddings.
            reference_gsd: Reference GSD in metres.
            attention: Attention backend.
            attention_options: Backend options.
            drop_path_rate: Stochastic depth.
            grad_checkpointing: Activation checkpointing.
            compile: Compile the model with :func:`torch.compile` (the whole
                Cross-Scale MAE step is one graph).
            weights: Optional encoder weights to start from: a file path, or a
                weights entry name (resolved by :func:`torchgeo.models.get_weight`).
            lr: Peak learning rate; None computes ``base_lr * global_batch / 256``.
            base_lr: Learning rate per 256 samples.
            batch_size: Per-device batch size for the lr rule; None reads the
                datamodule's ``batch_size``.
            weight_decay: AdamW weight decay (not on biases, norms, tokens).
            betas: AdamW betas.
            warmup_epochs: Epochs of linear warm-up (fractions allowed), then cosine.
            log_image_every_n_steps: Save a reconstruction figure of both views every
                N training steps (0: never). With partial reconstruction the masked
                patches that step did not decode stay blank.
            nonfinite: What a non-finite loss does: ``raise`` (stop with the batch's
                files and bounds; on an accelerator checked one step later, and
                always before a checkpoint is written, so the step has no
                host-device sync) or ``skip`` (warn and skip the step, at most
                *max_nonfinite_skips* times; reads the loss every step).
            max_nonfinite_skips: Skips allowed before raising anyway.
            seed: Seed of the masks, drawn per step from (seed, rank, step), so that
                a resumed run is exact.

        Raises:
            ValueError: If *nonfinite* is not ``raise`` or ``skip``.
        """
        if nonfinite not in ('raise', 'skip'):
            msg = f"nonfinite={nonfinite!r}; expected 'raise' or 'skip'"
            raise ValueError(msg)
        super().__init__()
        self.nonfinite_skips = 0
        self._pending: tuple[Tensor, dict[str, Any], int] | None = None
        self._val_batches = 0
        self._scale_views: torch.nn.Module | None = None

    def configure_models(self) -> None:
        """Build Cross-Scale MAE and load starting weights if given."""
        self.model = CrossScaleMAE(**{k: self.hparams[k] for k in MODEL_ARGS})
        if self.hparams['weights']:
            from ..models.convert import set_residual_norm_style

            state_dict, info = load_encoder_state_dict(self.hparams['weights'])
            state_dict = resize_pos_embed(state_dict, self.model.encoder)
            check_compatible(state_dict, self.model.encoder, self.hparams['weights'])
            self.model.encoder.load_state_dict(state_dict, strict=True)
            # The authors' released blocks are post-norm: keep computing what they did.
            style = info.get('residual_norm_style', 'pre')
            set_residual_norm_style(self.model.encoder, style)
        if self.hparams['compile']:
            self.model.compile()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW with the linear-scaling rule, warm-up then cosine, per step.

        Returns:
            Optimiser and per-step scheduler.
        """
        lr = (
            self.hparams['lr']
            or self.hparams['base_lr'] * self.global_batch_size() / 256
        )
        groups = param_groups_weight_decay(self.model, self.hparams['weight_decay'])
        # The fused AdamW kernel exists for CUDA and CPU tensors.
        fused = self.device.type in ('cuda', 'cpu')
        optimizer = torch.optim.AdamW(
            groups, lr=lr, betas=self.hparams['betas'], fused=fused
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = (
            self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 1
        )
        warmup = int(total * min(1.0, self.hparams['warmup_epochs'] / max(1, epochs)))
        warmup = max(1, warmup)
        scheduler = LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }

    def global_batch_size(self) -> int:
        """Samples per optimiser step over all devices (for the lr rule).

        Returns:
            ``batch_size * world_size * accumulate_grad_batches``.
        """
        batch = self.hparams['batch_size']
        datamodule = getattr(self.trainer, 'datamodule', None)
        if batch is None:
            batch = getattr(datamodule, 'batch_size', None) or 256
        trainer = self.trainer
        return int(batch) * trainer.world_size * trainer.accumulate_grad_batches

    # ----------------------------------------------------------------- steps
    def make_views(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ensure the batch has scale views (made here if the datamodule did not).

        Args:
            batch: Collated batch on the device.

        Returns:
            The batch with ``views`` and ``view_gsd``.
        """
        if 'views' in batch:
            return batch
        if self._scale_views is None:
            from ..transforms import ScaleViews

            num_views = 2 if (self.hparams['loss_cc'] or self.hparams['loss_cp']) else 1
            self._scale_views = ScaleViews(
                size=self.hparams['img_size'], num_views=num_views
            )
        image = batch['image'].float()
        batch.setdefault('valid', torch.isfinite(image).all(1, keepdim=True))
        batch['image'] = torch.nan_to_num(image)
        gsd = batch.get('gsd', torch.ones(image.shape[0], device=image.device))
        batch['gsd'] = torch.as_tensor(gsd, device=image.device, dtype=torch.float32)
        return self._scale_views(batch)

    def mask_generator(
        self, device: torch.device, stage: str
    ) -> torch.Generator | None:
        """Generator of this step's masks, seeded by (seed, rank, step, stage).

        Masks then depend only on the step, so a run resumed from a checkpoint draws
        the masks the uninterrupted run drew, and validation masks are the same
        every time.

        Args:
            device: Device of the masks.
            stage: ``train`` or ``val``.

        Returns:
            The generator (None without a trainer).
        """
        trainer = self._trainer
        if trainer is None:
            return None
        key = f'{self.hparams["seed"]}/{trainer.global_rank}/{trainer.global_step}/{stage}'
        if stage != 'train':
            key += f'/{self._val_batches}'
            self._val_batches += 1
        return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))

    def on_validation_epoch_start(self) -> None:
        """Restart the validation mask sequence."""
        self._val_batches = 0

    def shared_step(self, batch: dict[str, Any], stage: str) -> CrossScaleMAEOutput:
        """Run the model on a batch and log the loss parts.

        Args:
            batch: Collated batch.
            stage: ``train`` or ``val``.

        Returns:
            The model output.
        """
        batch = self.make_views(batch)
        views = batch['views']
        out: CrossScaleMAEOutput = self.model(
            views,
            gsd=batch.get('view_gsd'),
            valid=batch.get('view_valid'),
            sample_weight=batch.get('sample_weight'),
            generator=self.mask_generator(views.device, stage),
        )
        b = views.shape[0]
        on_step = stage == 'train'
        self.log(
            f'{stage}_loss',
            out.loss.detach(),
            on_step=on_step,
            on_epoch=True,
            batch_size=b,
            prog_bar=True,
            sync_dist=not on_step,
        )
        for name, value in out.parts.items():
            self.log(
                f'{stage}_loss_{name}',
                value,
                on_step=on_step,
                on_epoch=True,
                batch_size=b,
                sync_dist=not on_step,
            )
        if 'sample_weight' in batch:
            skipped = 1.0 - batch['sample_weight'].float().mean()
            self.log(
                f'{stage}_skipped_tiles',
                skipped,
                on_step=False,
                on_epoch=True,
                batch_size=b,
            )
        return out

    def check_finite(self, loss: Tensor, batch: dict[str, Any]) -> bool:
        """Stop (or skip) on a non-finite loss, naming the batch's files and bounds.

        Args:
            loss: The total loss.
            batch: The batch that produced it.

        Returns:
            True if the loss is finite, False if the step is to be skipped.

        Raises:
            FloatingPointError: If the loss is not finite and skipping is not allowed
                (or has been used up).
        """
        if bool(torch.isfinite(loss)):
            return True
        return self._nonfinite(loss, batch, self.global_step)

    def _nonfinite(self, loss: Tensor, batch: dict[str, Any], step: int) -> bool:
        """Warn and skip, or raise, for the non-finite *loss* of *batch*."""
        files = batch.get('files', '?')
        bounds = batch.get('bounds')
        if isinstance(bounds, Tensor):
            bounds = bounds.tolist()
        msg = (
            f'non-finite loss {loss.item()} at step {step} '
            f'for batch files={files} bounds={bounds}'
        )
        self.nonfinite_skips += 1
        allowed = self.hparams['max_nonfinite_skips']
        if self.hparams['nonfinite'] == 'skip' and self.nonfinite_skips <= allowed:
            logger.warning(
                '%s; skipping the step (%d of %d allowed)',
                msg,
                self.nonfinite_skips,
                allowed,
            )
            return False
        raise FloatingPointError(msg + " (set nonfinite='skip' to skip such steps)")

    def _check_pending(self) -> None:
        """Raise for the deferred loss check of an earlier step, if it failed.

        On an accelerator in ``raise`` mode, reading the loss right after the step
        would make the host wait for the device every step. The loss and the
        batch's file names and bounds are kept instead and checked here: at the
        start of the next step, before a checkpoint is written and at the end of
        training, so a non-finite model is never saved.
        """
        pending, self._pending = self._pending, None
        if pending is not None and not bool(torch.isfinite(pending[0])):
            self._nonfinite(*pending)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the last step's loss before its weights are saved.

        Args:
            checkpoint: The checkpoint being written.
        """
        self._check_pending()

    def on_train_end(self) -> None:
        """Check the last step's loss."""
        self._check_pending()

    def training_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor | None:
        """One optimisation step.

        Args:
            batch: Collated batch.
            batch_idx: Index of the batch.
            dataloader_idx: Index of the dataloader.

        Returns:
            The loss, or None to skip the step.
        """
        self._check_pending()
        out = self.shared_step(batch, 'train')
        if self.hparams['nonfinite'] == 'raise' and out.loss.device.type != 'cpu':
            # No host-device sync in the step: checked at the next one (see
            # _check_pending). Skipping must decide now, so it reads the loss.
            meta: dict[str, Any] = {
                k: batch[k] for k in ('files', 'bounds') if k in batch
            }
            self._pending = (out.loss.detach(), meta, self.global_step)
        elif not self.check_finite(out.loss, batch):
            return None
        every = self.hparams['log_image_every_n_steps']
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.save_reconstruction(batch, out)
        return out.loss

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Validation losses.

        Args:
            batch: Collated batch.
            batch_idx: Index of the batch.
            dataloader_idx: Index of the dataloader.
        """
        self.shared_step(batch, 'val')

    def save_reconstruction(
        self, batch: dict[str, Any], out: CrossScaleMAEOutput
    ) -> None:
        """Write a figure of both views: input / masked / reconstruction.

        Saved as ``<log_dir>/reconstructions/step_<N>.png`` and, with a TensorBoard
        logger, added to it.

        Args:
            batch: The batch (with ``views``).
            out: The model output for it.
        """
        if out.pred is None or out.mask is None:
            return
        from ..plotting import plot_reconstruction, save_figure

        fig = plot_reconstruction(
            batch['views'],
            out.pred,
            out.mask,
            self.model.patch_size,
            gsd=batch.get('view_gsd'),
            norm_pix=self.model.norm_pix_loss,
        )
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        path = os.path.join(
            log_dir, 'reconstructions', f'step_{self.global_step:07d}.png'
        )
        experiment: Any = getattr(self.logger, 'experiment', None)
        if hasattr(experiment, 'add_figure'):
            experiment.add_figure('reconstruction', fig, self.global_step, close=False)
        save_figure(fig, path)


def check_compatible(
    state_dict: dict[str, Tensor], model: torch.nn.Module, source: str
) -> None:
    """Raise one clear line if *state_dict* does not fit *model*.

    Args:
        state_dict: Encoder weights.
        model: The encoder they are for.
        source: Where they came from (named in the message).

    Raises:
        ValueError: On missing/unexpected keys or a shape mismatch (e.g. the
            checkpoint of another model size), naming the first difference.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k = shapes[0]
        what = f'{k} has shape {tuple(state_dict[k].shape)}, the model {tuple(own[k].shape)}'
    elif missing:
        what = f'{len(missing)} missing keys (first {missing[0]})'
    else:
        what = f'{len(unexpected)} unexpected keys (first {unexpected[0]})'
    msg = (
        f'weights={source!r} do not fit this encoder: {what}; expected weights of the '
        'same size (size/embed_dim/depth/patch_size/in_chans)'
    )
    raise ValueError(msg)


def load_encoder_state_dict(weights: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load encoder weights from a file or a weights entry name.

    Args:
        weights: Path to a weights file, a Lightning checkpoint of this task, one of
            the authors' checkpoints, or an entry name such as
            ``CrossScaleMAEBase16_Weights.FMOW_RGB``.

    Returns:
        The encoder state dict (timm names) and its description (e.g.
        ``residual_norm_style``).
    """
    from ..models.weights import load_weights

    return load_weights(weights)
