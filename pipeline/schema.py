"""Typed schema of the project's config, registered in Hydra's ConfigStore as ``schema``.

``conf/config.yaml`` lists it first in its defaults, so Hydra checks every override against it
before any work starts: a wrong type (``trainer.max_epochs=abc``) or an unknown key fails with a
message naming the key. Unknown choices (``model=nope``) are Hydra's own check, listing the options.
"""
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.converters import TARGETS


@dataclass
class ModelConfig:
    name: str | None = None  # defaults to the network's class name when model.net._target_ is overridden
    net: Any = MISSING  # {_target_: models.x.Class, ...constructor arguments}
    output: str = MISSING  # log_probs | logits | probability | value
    # Weights to start from instead of training's: a state_dict (.pt) or a Lightning checkpoint (.ckpt);
    # "init": the network as its constructor builds it. null: this run's train stage (or from_run).
    weights: str | None = None


@dataclass
class TrainerConfig:
    """The pytorch_lightning.Trainer arguments the configs use; add more here when needed."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: int = 2
    max_steps: int = -1
    deterministic: Any = True
    benchmark: bool | None = None
    log_every_n_steps: int = 50
    enable_model_summary: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 2
    check_val_every_n_epoch: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    limit_train_batches: Any = 1.0  # a fraction (float) or a number of batches (int)
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0


@dataclass
class TargetOptions:
    backend: str = "auto"  # auto: the target's backends in order (pipeline/converters/backends), or one by name


@dataclass
class VerifyConfig:
    """Each converted artifact against onnxruntime on a few held-out inputs, before parity: within
    rtol * max|onnx output| + atol, or ``auto`` tries the next backend."""

    samples: int = 8
    rtol: float = 1e-3
    atol: float = 1e-6


# export.<target> for every registered target: adding a target adds its options.
_ExportBase = make_dataclass("_ExportBase", [(name, TargetOptions, field(default_factory=TargetOptions))
                                             for name in TARGETS])


@dataclass
class ExportConfig(_ExportBase):
    opset: int = 13
    targets: dict[str, bool] = field(default_factory=dict)
    verify: VerifyConfig = field(default_factory=VerifyConfig)


@dataclass
class ParityConfig:
    rtol: float = 1e-3
    atol: float = 1e-5
    min_top1_agreement: float = 0.999
    samples: int | None = None
    batch_size: int = 256
    latency_repeats: int = 50
    diagnose: bool | None = None  # locate the first diverging node: null = for drifting runtimes only
    diagnose_samples: int = 4


@dataclass
class PipelineConfig:
    model: ModelConfig = MISSING
    dataset: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: Any = MISSING
    scheduler: Any = None
    logger: Any = None
    export: ExportConfig = field(default_factory=ExportConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    seed: int = 42
    stages: list[str] = field(default_factory=lambda: ["train", "export", "check", "convert", "parity"])
    threads: int = 0
    print_config: bool = True
    from_run: str | None = None
    optimized_metric: str | None = None


def register() -> None:
    ConfigStore.instance().store(name="schema", node=PipelineConfig)
