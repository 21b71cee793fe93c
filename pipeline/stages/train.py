"""train: PyTorch Lightning fits the network on the dataset, then evaluates it on the test split."""
import math
import warnings

import numpy as np
import torch
from hydra.utils import instantiate

from pipeline import tasks
from pipeline.atomic import write_with
from pipeline.context import RunContext
from pipeline.contracts import StageContract
from pipeline.datasets.base import length_of
from pipeline.errors import PipelineError, RunInterrupted
from pipeline.preflight import check_finite_outputs
from pipeline.runtimes.torch_runtime import flatten_outputs

CONTRACT = StageContract("train", makes=("weights", "checkpoint"))


def run(ctx: RunContext) -> None:
    # Lightning here, not at the top: every run reads this module's CONTRACT, and a run that does not train
    # (conversion only, from_run, the zoo) must not pay Lightning's 3 s of imports.
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from pipeline.lit_module import DatasetModule, TaskModule, build_trainer

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
    trainer = build_trainer(ctx)
    datamodule = DatasetModule(ctx.data)
    resume = ctx.results.resume_from
    # .get: a config saved before train.* existed (--config-path <run>/.hydra) has no such key
    channels_last = bool((cfg.get("train") or {}).get("channels_last", True)) and has_2d_convolutions(net)
    try:
        if channels_last:
            set_memory_format(net, torch.channels_last)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except MisconfigurationException as exc:
        raise PipelineError(f"Lightning rejected the training setup: {exc}", "Adjust the trainer.* keys "
                            "(e.g. trainer.max_epochs above a resumed checkpoint's epoch).") from exc
    except SystemExit:
        # Lightning turns Ctrl+C (and our SIGTERM handler) into a graceful stop ending in sys.exit(1).
        if trainer.interrupted:
            raise RunInterrupted(_interrupted_message(ctx)) from None
        raise
    finally:
        if channels_last:
            set_memory_format(net, torch.contiguous_format)
    if trainer.world_size == 1:
        # Under DDP, Lightning's test loop would spawn the workers again and shard the test set with a
        # padding DistributedSampler; the report's metrics come from evaluate() below in any case.
        trainer.test(module, datamodule=datamodule, verbose=False)
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


def has_2d_convolutions(net: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in net.modules())


def set_memory_format(net: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """The network's 4-D parameters and buffers in ``memory_format``, in place (the optimizer holds the
    parameters themselves); other ranks have no channels-last layout."""
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=memory_format)


def _casts_the_network(precision) -> bool:
    """Whether Lightning's precision plugin converts the network's parameters (``64``, ``*-true``), which
    ``*-mixed`` precision leaves in float32."""
    text = str(precision)
    return text in ("64", "64-true") or (text.endswith("-true") and text != "32-true")


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
