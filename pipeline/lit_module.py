"""Lightning's side of the train stage: the LightningModule that trains any plain ``nn.Module`` for its
output kind, a dataset as a LightningDataModule, and the Trainer with its checkpoints and loggers. Only the
train stage imports this module (Lightning takes seconds to import)."""
import inspect
import io
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from pipeline import disk, tasks
from pipeline.atomic import write_with
from pipeline.errors import PipelineError
from pipeline.runtimes.torch_runtime import flatten_outputs


class TaskModule(pl.LightningModule):
    def __init__(self, net: nn.Module, output: str, optimizer: Callable, scheduler: Callable | None = None):
        super().__init__()
        self.net = net
        self.output = tasks.check_output_kind(output)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, x) -> torch.Tensor:
        # several named inputs come as a dict, in the dataset's (and the export's) input order
        return self.net(*x.values()) if isinstance(x, dict) else self.net(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        out = flatten_outputs(self(x))[0]  # several outputs: the first is the task's, as in parity
        loss = tasks.loss(self.output, out, y)
        metric = tasks.training_metric(self.output, out, y)
        name = "acc" if tasks.is_classifier(self.output) else "mse"
        on_step = split == "train"
        # sync_dist: metrics are averaged over ranks under DDP.
        self.log(f"{split}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{split}_{name}", metric, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = build_scheduler(self.scheduler_factory, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_scheduler(factory: Callable, optimizer, total_steps: int):
    """OneCycle-style schedulers need the run's length, which only the trainer knows."""
    target = getattr(factory, "func", factory)
    try:
        needs_total = "total_steps" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        needs_total = False
    return factory(optimizer, **({"total_steps": total_steps} if needs_total else {}))


class DatasetModule(pl.LightningDataModule):
    """Lightning's view of a pipeline dataset (``pipeline.datasets.base.DatasetApi``, which is not a
    LightningDataModule so that runs without training never import Lightning): its set-up and loaders."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.data.setup(stage)

    def train_dataloader(self):
        return self.data.train_dataloader()

    def val_dataloader(self):
        return self.data.val_dataloader()

    def test_dataloader(self):
        return self.data.test_dataloader()

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.data.on_before_batch_transfer(batch, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.data.on_after_batch_transfer(batch, dataloader_idx)


def build_trainer(ctx) -> pl.Trainer:
    """The run's Trainer from trainer.*, with its checkpoints, loggers and atomic checkpoint writes."""
    folder = ctx.run_dir / "checkpoints"
    # One rolling checkpoints/last.ckpt, rewritten at every epoch end.
    callbacks = [ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False),
                 # On an interrupt, keep the exact state reached so that from_run resumes from it.
                 OnExceptionCheckpoint(dirpath=folder, filename="interrupted")]
    loggers = _loggers(ctx)
    try:
        return instantiate(ctx.cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(ctx.run_dir),
                           plugins=[AtomicCheckpointIO(ctx.run_dir)])
    except InstantiationException as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        trainer = ctx.cfg.trainer
        raise PipelineError(f"The trainer could not be set up from trainer.* (accelerator={trainer.accelerator}, "
                            f"devices={trainer.devices}, strategy={trainer.strategy}, "
                            f"precision={trainer.precision}): {reason}",
                            "Pick settings this machine supports: trainer=default runs on the CPU.") from exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: serialised in memory, written under a temporary name, renamed
    (Lightning's own rewrites last.ckpt in place, so a full disk or a kill left it truncated for the resume).
    Loaded as tensors and plain containers only; a damaged one is named as such."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        try:
            write_with(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
        except OSError as exc:
            if disk.is_full(exc):
                raise disk.full_error(path.parent, f"the train stage wrote {path.name}",
                                      needed=buffer.getbuffer().nbytes, run_dir=self.run_dir) from exc
            raise
        return None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            where = {} if map_location is None else {"map_location": map_location}
            return super().load_checkpoint(path, weights_only=True, **where)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise PipelineError(f"The checkpoint {path} is damaged or not a Lightning checkpoint "
                                f"({type(exc).__name__}: {str(exc).strip()[:200]}), so training cannot resume "
                                "from it.",
                                "Resume from another run, or train anew (a new run without from_run).") from exc


def _loggers(ctx) -> list:
    """metrics.csv in the run dir always (the plots read it), plus the ``logger=`` choice if any."""
    loggers = [CSVLogger(save_dir=str(ctx.run_dir), name="", version="")]
    if ctx.cfg.get("logger"):
        try:
            loggers.append(instantiate(ctx.cfg.logger))
        except Exception as exc:
            reason = exc.__cause__ or exc  # instantiate() wraps the logger's own error
            raise PipelineError(f"logger={ctx.cfg.logger._target_.rsplit('.', 1)[-1]} could not start: {reason}",
                                "Install its package (pip install -e '.[mlflow]' for MLflow) or drop logger=.") from exc
    return loggers
