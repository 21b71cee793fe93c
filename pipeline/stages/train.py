"""train: PyTorch Lightning fits the network on the dataset, then evaluates it on the test split."""
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.loggers import CSVLogger

from pipeline import disk, tasks
from pipeline.atomic import write_with
from pipeline.context import RunContext
from pipeline.contracts import StageContract
from pipeline.datasets.base import length_of
from pipeline.errors import PipelineError, RunInterrupted
from pipeline.lit_module import TaskModule
from pipeline.preflight import check_finite_outputs
from pipeline.runtimes.torch_runtime import flatten_outputs

CONTRACT = StageContract("train", makes=("weights", "checkpoint"))


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    if ctx.data.spec().task is None:
        raise PipelineError("This dataset has no labels: there is nothing to train on.",
                            "Drop train from stages and give the weights: stages=[export,check,convert,parity] "
                            "model.weights=<state_dict or checkpoint> (model.weights=init: the constructor's own).")
    # The run dir is new (pipeline/run_dir.py), so Lightning's "logs directory exists ... will be deleted"
    # is a false alarm: the CSV logger shares the run dir with .hydra/ and pipeline.log.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    pl.seed_everything(cfg.seed, workers=True)
    net = ctx.net_to_train()  # the run's one network (preflight checked it), trained in place
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = TaskModule(net, ctx.output_kind, instantiate(cfg.optimizer), scheduler)
    trainer = _trainer(ctx)
    resume = ctx.results.resume_from
    try:
        trainer.fit(module, datamodule=ctx.data, ckpt_path=str(resume) if resume else None)
    except MisconfigurationException as exc:
        raise PipelineError(f"Lightning rejected the training setup: {exc}", "Adjust the trainer.* keys "
                            "(e.g. trainer.max_epochs above a resumed checkpoint's epoch).") from exc
    except SystemExit:
        # Lightning turns Ctrl+C (and our SIGTERM handler) into a graceful stop ending in sys.exit(1).
        if trainer.interrupted:
            raise RunInterrupted(_interrupted_message(ctx)) from None
        raise
    if trainer.world_size == 1:
        # Under DDP, Lightning's test loop would spawn the workers again and shard the test set with a
        # padding DistributedSampler; the report's metrics come from evaluate() below in any case.
        trainer.test(module, datamodule=ctx.data, verbose=False)
    if _casts_the_network(cfg.trainer.precision):
        # Lightning converted the network to float64/float16/bfloat16 for training; the data, the export and
        # every runtime are float32: the trained weights are kept in float32 (checkpoints keep their dtype).
        net.float()
    net.eval()
    predictions = predict(net, ctx.data.head("test")[0])
    ctx.report.data["metrics"].update(evaluate(ctx, net, predictions))
    last = ctx.run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        ctx.store.put("checkpoint", "train", last)
    check_converged(ctx, net)
    check_finite_outputs(cfg, {"output": predictions}, "test")  # finite metrics can hide NaN predictions
    ctx.net = net
    write_with(ctx.weights_path, lambda tmp: torch.save(net.state_dict(), tmp))
    ctx.store.put("weights", "train")
    ctx.report.data["trainer"] = {
        # Under ddp_spawn the loop state stays in the workers: a finished fit ran max_epochs.
        "epochs": trainer.current_epoch or int(cfg.trainer.max_epochs),
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "strategy": str(cfg.trainer.strategy),
        "strategy_class": type(trainer.strategy).__name__,
        "final": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }


def _casts_the_network(precision) -> bool:
    """Whether Lightning's precision plugin converts the network's parameters (``64``, ``*-true``), which
    ``*-mixed`` precision leaves in float32."""
    text = str(precision)
    return text in ("64", "64-true") or (text.endswith("-true") and text != "32-true")


def _trainer(ctx: RunContext) -> pl.Trainer:
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


def check_converged(ctx: RunContext, net: torch.nn.Module) -> None:
    """NaN or infinite weights or metrics mean training diverged: fail here, not later in check/parity."""
    bad_metrics = [k for k, v in ctx.report.data["metrics"].items() if not math.isfinite(v)]
    bad_weights = not all(torch.isfinite(p).all() for p in net.state_dict().values() if torch.is_floating_point(p))
    if bad_metrics or bad_weights:
        what = ", ".join(f"{k}={ctx.report.data['metrics'][k]}" for k in bad_metrics) or "the metrics are finite"
        raise PipelineError(f"Training diverged: {what}{'; the weights hold NaN or inf' if bad_weights else ''}. "
                            "model.pt was not written.",
                            "Lower optimizer.lr (or scheduler.max_lr), check the data for extreme values, or set "
                            "trainer.gradient_clip_val (e.g. 1.0); if model.net's forward itself returns NaN for some "
                            "inputs (a log or sqrt of a negative value), fix that.")


def _loggers(ctx: RunContext) -> list:
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


def _interrupted_message(ctx: RunContext) -> str:
    return (f"Training was interrupted; checkpoints are in {ctx.run_dir / 'checkpoints'}. "
            f"Resume with: python -m pipeline from_run={ctx.run_dir}")


def predict(net: torch.nn.Module, inputs, batch_size: int = 512) -> np.ndarray:
    """Run the PyTorch network in eval mode over ``inputs`` (a tensor, or a dict of them in input order) in
    batches."""
    net.eval()
    with torch.no_grad():  # not inference_mode: a tensor cached in forward must stay exportable afterwards
        # Copies: a network that changes its input in place must not change the test split.
        outs = [flatten_outputs(net(*_rows(inputs, i, i + batch_size)))[0]  # the task's output: the first
                for i in range(0, length_of(inputs), batch_size)]
    return torch.cat(outs).numpy()


def _rows(inputs, start: int, stop: int) -> list[torch.Tensor]:
    tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    return [t[start:stop].clone() for t in tensors]


def evaluate(ctx: RunContext, net: torch.nn.Module, predictions: np.ndarray | None = None) -> dict:
    x, y = ctx.data.head("test")
    predictions = predict(net, x) if predictions is None else predictions
    return tasks.evaluate(ctx.output_kind, predictions, y.numpy(), ctx.data.inverse)
