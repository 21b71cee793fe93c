"""The LightningModule that trains any plain ``nn.Module`` for its output kind."""
import inspect
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from pipeline import tasks
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
