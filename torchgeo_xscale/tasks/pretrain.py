"""Cross-Scale MAE pretraining task, in the style of :class:`torchgeo.tasks.MAE`."""

import inspect
import logging
import math
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from timm.optim import param_groups_weight_decay
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks.base import BaseTask

from ..checkpoints import STRUCTURE_KEY, load_into, model_structure, resolve
from ..gsd import GSDRecorder, declared_gsd
from ..models.cross_scale_mae import CrossScaleMAE, CrossScaleMAEOutput
from ..plotting import plot_reconstruction
from ..renames import renamed_message
from ..seeding import key_seed
from .checkpoint import check_checkpoint_fits
from .figures import log_figure, resolve_log_dir

logger = logging.getLogger(__name__)

#: Default floor of ``train_cp_target_std`` (per-channel std of L_cp's target
#: features across tokens and samples; about 1 when the features vary freely, about
#: 0.1 for the collapsed target of the paper-literal L_cp at the study's scale).
COLLAPSE_FLOOR = 0.2

#: CrossScaleMAE's constructor arguments (each is a task argument, see MODEL_ARG_NAMES).
MODEL_ARGS = tuple(inspect.signature(CrossScaleMAE.__init__).parameters)[1:]

#: Model arguments the task names otherwise: the band count is ``in_channels`` in
#: TorchGeo's tasks (``tasks.MAE``, ours), ``in_chans`` in timm's models (ours).
MODEL_ARG_NAMES: dict[str, str] = {'in_chans': 'in_channels'}  # see ..renames

#: What the message on the task's old ``in_chans`` adds (:func:`renamed_message`):
#: how to load a checkpoint written before the rename.
OLD_CHECKPOINT_NOTE = (
    'a checkpoint from before the rename: load_from_checkpoint(path, in_chans=None, '
    'in_channels={value}), or xscale ... --ckpt_path, which maps it'
)


def in_chans_renamed(value: Any) -> str:
    """The one-line message when the task is given the old ``in_chans``.

    Args:
        value: The value given.

    Returns:
        The message naming ``--model.init_args.in_channels`` and the value.
    """
    note = OLD_CHECKPOINT_NOTE.format(value=value)
    return renamed_message('in_chans', value, 'model', note)


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
    ``view_gsd``, ``view_valid``, ``sample_weight``), as
    :class:`~torchgeo_xscale.datamodules.GeoTIFFDataModule` and
    :class:`~torchgeo_xscale.datamodules.FMoWDataModule` do in their
    ``on_after_batch_transfer``; the task never makes views. Any other TorchGeo
    datamodule works once :class:`~torchgeo_xscale.datamodules.PretrainDataModuleMixin`
    is mixed into it; a batch without views stops with an error saying so.

    Each training epoch it logs the range of view GSDs the model saw
    (``view_gsd_min``, ``view_gsd_median``, ``view_gsd_max``, and a TensorBoard
    histogram ``view_gsd``), and every checkpoint records the native GSD range of the
    training tiles as ``checkpoint['xscale_gsd'] = {'min', 'median', 'max'}`` (metres
    per pixel).

    With ``loss_cc=False, loss_cp=False`` and one view it is a plain MAE on the same
    code, for equal-budget comparisons.
    """

    monitor = 'train_loss'

    #: Nothing is ignored: ``weights`` is a path or name, kept in the hyper-parameters.
    ignore = None

    #: Hyper-parameters that ``xscale fit --ckpt_path`` takes from the command line
    #: when they differ from the checkpoint's (they do not change what is trained);
    #: any other difference is refused.
    resume_settings: ClassVar[tuple[str, ...]] = (
        'weights',
        'compile',
        'grad_checkpointing',
        'log_image_every_n_steps',
        'nonfinite',
        'max_nonfinite_skips',
    )

    def __init__(
        self,
        size: str = 'base',
        img_size: int = 128,
        patch_size: int = 16,
        in_channels: int = 3,
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
        cp_stop_grad: bool = True,
        cp_target: str = 'instance_norm',
        cp_positions: str = 'masked',
        temperature: float = 0.2,
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
        cp_collapse_floor: float = COLLAPSE_FLOOR,
        seed: int = 0,
        in_chans: int | None = None,
    ) -> None:
        """Initialise the task.

        Model arguments (``size`` ... ``grad_checkpointing``) are those of
        :class:`~torchgeo_xscale.models.CrossScaleMAE`; see there.

        Args:
            size: Encoder size.
            img_size: View size in pixels.
            patch_size: Patch size.
            in_channels: Input bands (TorchGeo's name; the model's ``in_chans``).
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
            cp_target: Features L_cp compares (``decoder_norm``, ``block`` or
                ``standardized``).
            cp_positions: Tokens L_cp counts (``all`` or ``masked``).
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
                *max_nonfinite_skips* times; reads the loss every step; single
                process only, as Lightning cannot skip a step in distributed
                training). In multi-process runs all processes stop together.
            max_nonfinite_skips: Skips allowed before raising anyway.
            cp_collapse_floor: Floor of the L_cp collapse signal: at the end of
                every training epoch, if the epoch mean of ``train_cp_target_std``
                (logged every step) is below it, a warning says that L_cp's target
                features have collapsed (0 disables the check).
            seed: Seed of the masks, drawn per step from (seed, rank, step), so that
                a resumed run is exact.

            in_chans: Renamed *in_channels* (TorchGeo's name); giving it raises.

        Raises:
            ValueError: If *nonfinite* is not ``raise`` or ``skip``, or *in_chans*
                is given.
        """
        if in_chans is not None:
            raise ValueError(in_chans_renamed(in_chans))
        if nonfinite not in ('raise', 'skip'):
            msg = f"nonfinite={nonfinite!r}; expected 'raise' or 'skip'"
            raise ValueError(msg)
        super().__init__()
        self.nonfinite_skips = 0
        self._pending: tuple[Tensor, dict[str, Any], int] | None = None
        self._val_batches = 0
        self._view_gsd = GSDRecorder()  # this epoch's views
        self._tile_gsd = GSDRecorder()  # every training tile so far
        self._log_dir: str | None = None

    def configure_models(self) -> None:
        """Build Cross-Scale MAE and load starting weights if given."""
        self.model = CrossScaleMAE(
            **{k: self.hparams[MODEL_ARG_NAMES.get(k, k)] for k in MODEL_ARGS}
        )
        if self.hparams['weights']:
            # post-norm blocks and no final norm for the authors' weights, as theirs;
            # the bands must match (the reconstruction target is per band)
            state_dict, metadata = resolve(self.hparams['weights'])
            load_into(self.model.encoder, state_dict, metadata, adapt_channels=False)
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
    def setup(self, stage: str) -> None:
        """Check the set-up before step 0 and resolve the log directory.

        The log directory is resolved on every rank (a collective in DDP); figures
        are then saved by rank 0 alone without a collective call, which would wait
        forever for ranks busy in the gradient all-reduce.

        Args:
            stage: 'fit', 'validate', 'test' or 'predict'.

        Raises:
            ValueError: If the datamodule's tiles have another band count than the
                model, naming a file and what to set; for ``nonfinite='skip'`` with
                more than one process.
        """
        self._log_dir = resolve_log_dir(self.trainer)
        world = self.trainer.world_size
        if stage == 'fit' and self.hparams['nonfinite'] == 'skip' and world > 1:
            msg = (
                f"nonfinite='skip' with {world} processes: Lightning cannot skip a "
                "step in distributed training; expected nonfinite='raise' (all "
                'processes stop at a non-finite loss) or a single process'
            )
            raise ValueError(msg)
        datamodule = getattr(self._trainer, 'datamodule', None)
        bands = getattr(datamodule, 'num_bands', None)
        in_channels = self.hparams['in_channels']
        if isinstance(bands, int) and bands != in_channels:
            source = (
                getattr(datamodule, 'band_source', None) or type(datamodule).__name__
            )
            msg = (
                f'{source}: the data has {bands} bands to read, the model in_channels='
                f'{in_channels}; expected --model.init_args.in_channels {bands} (or '
                f'--data.init_args.bands with {in_channels} bands)'
            )
            raise ValueError(msg)

    @staticmethod
    def require_views(batch: dict[str, Any]) -> Tensor:
        """The batch's scale views, or a clear error if the datamodule made none.

        Args:
            batch: Collated batch on the device.

        Returns:
            ``views`` ``(B, V, C, H, W)``.

        Raises:
            KeyError: If the batch has no ``views``.
        """
        if 'views' not in batch:
            msg = (
                f'the batch has no scale views (keys {sorted(batch)}); expected a '
                'pretraining datamodule that makes them on the device: '
                'torchgeo_xscale.datamodules.GeoTIFFDataModule or FMoWDataModule, or a '
                'TorchGeo datamodule with PretrainDataModuleMixin mixed in'
            )
            raise KeyError(msg)
        views: Tensor = batch['views']
        return views

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
        key: list[object] = [self.hparams['seed'], trainer.global_rank]
        key += [trainer.global_step, f'masks/{stage}']
        if stage != 'train':
            key.append(self._val_batches)
            self._val_batches += 1
        return torch.Generator(device=device).manual_seed(key_seed(*key))

    def on_validation_epoch_start(self) -> None:
        """Restart the validation mask sequence."""
        self._val_batches = 0

    def on_train_start(self) -> None:
        """Keep the epoch count when resuming an epoch-end checkpoint with ``max_steps``.

        A checkpoint written at the end of an epoch records it as processed, not
        yet completed. With ``max_steps`` set, Lightning 2.6 restarts such a
        checkpoint as unfinished: it finishes that epoch a second time (with no
        batch) and counts it as processed again, so a run that also has
        ``max_epochs`` stops one epoch, and its steps, early. Un-counting the
        epoch here makes the second finish count it once.
        """
        loop = self.trainer.fit_loop
        if loop.restarted_on_epoch_end and self.trainer.max_steps != -1:
            progress: Any = loop.epoch_progress.current  # a _ProcessedTracker
            if progress.processed > progress.completed:
                progress.processed -= 1

    def on_train_epoch_start(self) -> None:
        """Start this epoch's record of view GSDs."""
        self._view_gsd.reset()

    def on_train_epoch_end(self) -> None:
        """Log the epoch's view GSDs and check L_cp for collapse."""
        self._log_view_gsd()
        self._check_cp_collapse()

    def _log_view_gsd(self) -> None:
        """Log the epoch's view GSDs: min, median, max and a histogram.

        The scalars are reduced over processes (min, mean of the medians, max); the
        TensorBoard histogram ``view_gsd`` holds rank 0's views.
        """
        summary = self._view_gsd.summary()
        if summary is None:
            return
        for name, reduce in (('min', 'min'), ('median', 'mean'), ('max', 'max')):
            value = torch.tensor(summary[name], device=self.device)
            self.log(f'view_gsd_{name}', value, sync_dist=True, reduce_fx=reduce)
        experiment: Any = getattr(self.logger, 'experiment', None)
        values = self._view_gsd.values()
        if self.trainer.is_global_zero and hasattr(experiment, 'add_histogram'):
            assert values is not None
            experiment.add_histogram('view_gsd', values.cpu(), self.global_step)

    def training_gsd(self) -> dict[str, float] | None:
        """Native GSD range (m) of the training tiles, for ``checkpoint['xscale_gsd']``.

        Returns:
            The GSD the datamodule declares (its ``gsd_range`` or ``gsd``, see
            :func:`~torchgeo_xscale.gsd.declared_gsd`), else the min, median and
            max ``gsd`` of the training tiles seen so far; None if neither is known.
        """
        known = declared_gsd(getattr(self._trainer, 'datamodule', None))
        return known if known is not None else self._tile_gsd.summary()

    def shared_step(self, batch: dict[str, Any], stage: str) -> CrossScaleMAEOutput:
        """Run the model on a batch and log the loss parts.

        Args:
            batch: Collated batch.
            stage: ``train`` or ``val``.

        Returns:
            The model output.
        """
        views = self.require_views(batch)
        if stage == 'train':
            for recorder, key in (
                (self._view_gsd, 'view_gsd'),
                (self._tile_gsd, 'gsd'),
            ):
                if isinstance(batch.get(key), Tensor):
                    recorder.update(batch[key])
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
        for name, value in out.stats.items():  # the collapse signal of L_cp
            self.log(
                f'{stage}_{name}',
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
                # every rank logs it at every step, so the epoch-end reduce is symmetric
                sync_dist=True,
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
        if self._finite_on_every_rank(bool(torch.isfinite(loss))):
            return True
        return self._nonfinite(loss, batch, self.global_step)

    def _finite_on_every_rank(self, finite: bool) -> bool:
        """Whether the loss is finite on every process (one tiny all-reduce in DDP).

        Processes skip or stop together: one skipping its backward alone would leave
        the others waiting in the gradient all-reduce forever.
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return finite
        return bool(trainer.strategy.reduce_boolean_decision(finite, all=True))

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
        if bool(torch.isfinite(loss)):  # finite here: another process's is not
            msg = f'non-finite loss in another process at step {step}'
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
        if self._trainer is None or self._trainer.world_size == 1:
            msg += " (set nonfinite='skip' to skip such steps)"
        raise FloatingPointError(msg)

    def _check_pending(self) -> None:
        """Raise for the deferred loss check of an earlier step, if it failed.

        On an accelerator in ``raise`` mode, reading the loss right after the step
        would make the host wait for the device every step. The loss and the
        batch's file names and bounds are kept instead and checked here: at the
        start of the next step, before a checkpoint is written and at the end of
        training, so a non-finite model is never saved.
        """
        pending, self._pending = self._pending, None
        # every process has a pending loss at the same points, so the reduce in
        # _finite_on_every_rank is called symmetrically
        if pending is not None and not self._finite_on_every_rank(
            bool(torch.isfinite(pending[0]))
        ):
            self._nonfinite(*pending)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another task, model size or band count in one line.

        Args:
            checkpoint: The checkpoint being loaded (before its weights are).

        Raises:
            ValueError: If the checkpoint does not fit this task.
        """
        source = self._trainer.ckpt_path if self._trainer is not None else None
        check_checkpoint_fits(
            self, self.hparams, checkpoint, source, strict=self.strict_loading
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the last step's loss before its weights are saved; record the GSDs.

        Args:
            checkpoint: The checkpoint being written (gets ``xscale_gsd``, see
                :meth:`training_gsd`, when known).
        """
        self._check_pending()
        checkpoint[STRUCTURE_KEY] = model_structure(self.model.encoder)
        gsd = self.training_gsd()
        if gsd is not None:
            checkpoint['xscale_gsd'] = gsd

    def on_train_end(self) -> None:
        """Check the last step's loss."""
        self._check_pending()

    def _check_cp_collapse(self) -> None:
        """Warn if L_cp's target features collapsed during the epoch.

        Reads the epoch mean of ``train_cp_target_std`` (one host-device sync per
        epoch, none per step) and compares it with ``cp_collapse_floor``.
        """
        floor = self.hparams['cp_collapse_floor']
        value = self.trainer.callback_metrics.get('train_cp_target_std_epoch')
        if not floor or value is None:
            return
        spread = float(value)
        if spread < floor:
            logger.warning(
                'L_cp collapse: train_cp_target_std %.4f < cp_collapse_floor %.4f in '
                'epoch %d (the target decoder features of all tokens are nearly the '
                'same vector, so L_cp is satisfied without the low-scale view '
                "predicting anything); the default L_cp (cp_target='instance_norm', cp_positions='masked', cp_stop_grad=True) avoids it",
                spread,
                floor,
                self.current_epoch,
            )

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
        logger, added to it. Called on rank 0 only: nothing on its way is collective
        (the log directory was resolved in :meth:`setup` on every rank).

        Args:
            batch: The batch (with ``views``).
            out: The model output for it.
        """
        if out.pred is None or out.mask is None:
            return
        fig = plot_reconstruction(
            batch['views'],
            out.pred,
            out.mask,
            self.model.patch_size,
            gsd=batch.get('view_gsd'),
            norm_pix=self.model.norm_pix_loss,
        )
        if self._log_dir is None:  # not set up by a trainer: one process only
            self._log_dir = resolve_log_dir(self.trainer)
        log_figure(
            self,
            fig,
            self._log_dir,
            f'reconstructions/step_{self.global_step:07d}.png',
            'reconstruction',
        )
