"""Typed schema of the project's config: a type and a range for every key, registered in Hydra's ConfigStore.

``conf/config.yaml`` lists ``schema`` first in its defaults, so Hydra checks every override against
it before any work starts: a wrong type (``trainer.max_epochs=abc``), an unknown key or a value not
in an Enum (``model.output=bogus``) fails with a message naming the key. Groups whose options differ
in keys (``dataset``, ``optimizer``, ``scheduler``) get one structured config per option, stored as
``schema/<group>/<option>`` and named first in that option's defaults (``/schema/dataset/mnist@_here_``).

Types alone cannot say ``parity.samples >= 1``: fields carry a ``check`` in their metadata
(``at_least``, ``between``, ...) and ``check_ranges(cfg)`` applies them to every typed node of the
composed config, naming the key, the value and the valid range. Unknown choices (``model=nope``) are
Hydra's own check, listing the options.
"""
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from pipeline.errors import PipelineError
from pipeline.ranges import (  # noqa: F401 - the checks are part of the schema's vocabulary
    MAX_EPOCHS,
    MAX_INT,
    MAX_STEPS,
    Check,
    a_path,
    at_least,
    batches_limit,
    between,
    devices,
    not_zero_steps,
    one_of,
    ranged,
)
from pipeline.targets import TARGETS, IOLayout
from pipeline.tasks import TASKS

# --- the schema ---

# What the network returns (model.output): one per task (pipeline/tasks.py), which picks the loss and metric.
OutputKind = StrEnum("OutputKind", {name: name for name in TASKS})


class MissingValues(StrEnum):
    """What a CSV series or table does with empty/NaN/"n/a" cells."""

    error = "error"  # refuse, naming the rows (the default: never guess silently)
    drop = "drop"  # leave them out; no window spans a gap (series), those rows (table)
    interpolate = "interpolate"  # linear between the neighbours; leading/trailing gaps are cut off


@dataclass
class ModelConfig:
    name: str | None = None  # defaults to the network's class name when model.net._target_ is overridden
    net: Any = MISSING  # {_target_: models.x.Class, ...constructor arguments}
    output: OutputKind = MISSING
    # Weights to start from instead of training's: a state_dict (.pt) or a Lightning checkpoint (.ckpt);
    # "init": the network as its constructor builds it. null: this run's train stage (or from_run).
    weights: str | None = ranged(None, a_path)
    # A checkpoint holding several networks (net.*, ema.*): the key prefix of the one to load (e.g. ema).
    weights_prefix: str | None = None


PRECISIONS = ("32-true", "32", 32, "64-true", "64", 64, "16-mixed", "bf16-mixed", "16-true", "bf16-true",
              "16", 16, "bf16")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


@dataclass
class TrainerConfig:
    """The pytorch_lightning.Trainer arguments the configs use; add more here when needed."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = ranged("cpu", one_of(*ACCELERATORS))
    devices: Any = ranged(1, devices)
    strategy: Any = "auto"
    num_nodes: int = ranged(1, at_least(1, integer=True))
    precision: Any = ranged("32-true", one_of(*PRECISIONS))
    # 0 would "train" nothing and export random weights
    max_epochs: int = ranged(2, at_least(1, integer=True, most=MAX_EPOCHS))
    max_steps: int = ranged(-1, not_zero_steps)
    deterministic: Any = ranged(True, one_of(True, False, "warn"))
    benchmark: bool | None = None
    log_every_n_steps: int = ranged(50, at_least(1, integer=True))
    enable_model_summary: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = ranged(2, at_least(-1, integer=True))
    check_val_every_n_epoch: int | None = ranged(1, at_least(1, integer=True))
    accumulate_grad_batches: int = ranged(1, at_least(1, integer=True))
    gradient_clip_val: float | None = ranged(None, at_least(0))
    limit_train_batches: Any = ranged(1.0, batches_limit(zero_ok=False))  # a fraction (float) or batches (int)
    limit_val_batches: Any = ranged(1.0, batches_limit(zero_ok=True))
    limit_test_batches: Any = ranged(1.0, batches_limit(zero_ok=True))


# torch.onnx's TorchScript exporter (the one used, see stages/export.py) writes opsets 7 to 20.
MIN_OPSET, MAX_OPSET = 7, 20


@dataclass
class VerifyConfig:
    """Each converted artifact against onnxruntime on a few held-out inputs, before parity: within
    rtol * max|onnx output| + atol, or ``auto`` tries the next backend."""

    samples: int = ranged(8, between(1, 10_000, integer=True))
    rtol: float = ranged(1e-3, at_least(0))
    atol: float = ranged(1e-6, at_least(0))


@dataclass
class ExportSettings:
    """export.*: the settings of every target (each target's own options are added by ``_with_targets``)."""

    opset: int = ranged(13, between(MIN_OPSET, MAX_OPSET, integer=True))  # the lowest tried (raised as needed)
    targets: dict[str, bool] = field(default_factory=dict)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # Training-split inputs that calibrate tflite_int8 and onnx_int8 (static): their activation ranges.
    calibration_samples: int = ranged(200, between(1, 100_000, integer=True))
    # Input axes besides the batch left free in every artifact (pipeline/free_axes.py): null (the batch
    # only), spatial, time, or {input: {axis: name}}.
    dynamic_axes: Any = None
    # The layout of the tensorflow and TFLite targets' inputs and outputs (export.<target>.layout overrides).
    layout: IOLayout = IOLayout.nchw


@dataclass
class TrainSettings:
    """train.*: how the train stage runs the network (trainer.* is Lightning's Trainer itself)."""

    # A network with 2-D convolutions trains with its 4-D weights channels-last (NHWC strides): oneDNN's
    # convolutions are faster so on CPUs. It is back in PyTorch's default layout before it is saved or exported.
    channels_last: bool = True


@dataclass
class QuantizedParityConfig:
    """How a quantized or half-precision target is judged (pipeline/quantized.py): by the task, not allclose."""

    max_accuracy_drop: float = ranged(0.01, between(0, 1))  # classifiers: PyTorch's accuracy minus its own
    min_top1_agreement: float = ranged(0.98, between(0, 1))  # classifiers: predictions equal to PyTorch's
    max_mse_increase: float = ranged(0.10, at_least(0))  # regressors: relative (0.10 = MSE at most 10 % higher)
    # every output after the first (the task's): its RMS error over PyTorch's RMS, at most this
    max_output_relative_rmse: float = ranged(0.20, at_least(0))


@dataclass
class ParityConfig:
    rtol: float = ranged(1e-3, at_least(0))
    atol: float = ranged(1e-5, at_least(0))
    min_top1_agreement: float = ranged(0.999, between(0, 1))
    # float32's own round-off (pipeline/compare.py): each output's atol is at least noise_multiple x PyTorch
    # float32's max abs error against a float64 copy of the model, on noise_samples held-out inputs
    noise_floor: bool = True
    noise_multiple: float = ranged(8.0, between(1, 1000))
    noise_samples: int = ranged(64, between(1, 100_000, integer=True))
    samples: int | None = ranged(None, at_least(1, integer=True))  # null: the whole test split
    batch_size: int = ranged(256, at_least(1, integer=True))  # at most the samples compared
    timing: bool = True  # false: outputs only, no latency or throughput
    latency_repeats: int = ranged(50, between(1, 100_000, integer=True))  # the most batch-1 calls timed
    latency_budget_s: float | None = ranged(1.0, at_least(0))  # per runtime; null: latency_repeats calls
    diagnose: bool | None = None  # locate the first diverging node: null = for drifting runtimes only
    diagnose_samples: int = ranged(4, between(1, 10_000, integer=True))
    # Other input sizes every runtime is run at too, with free axes (export.dynamic_axes): null = two derived
    # (the free axes at 2x and 3x), [] = none, or a list of per-sample shapes ([[3,48,64]] or [{ids: [40]}]).
    shapes: Any = None
    shapes_samples: int = ranged(16, between(1, 100_000, integer=True))  # held-out samples run at each
    quantized: QuantizedParityConfig = field(default_factory=QuantizedParityConfig)
    # Runtimes run besides each artifact's own (pipeline/runtimes: an alternative_to it), e.g. another
    # onnxruntime execution provider; reported as <target>@<runtime>.
    runtimes: list[str] = field(default_factory=list)


@dataclass
class LimitsConfig:
    """Sizes above which a file or a tensor it declares is refused before it is read (pipeline/limits.py)."""

    max_file_bytes: int = ranged(512 * 2**20, at_least(1, integer=True))  # one data file, decompressed
    max_tensor_bytes: int = ranged(2 * 2**30, at_least(1, integer=True))  # one tensor a file declares (ONNX)


# seed_everything takes an unsigned 32-bit seed (and silently picks a random one otherwise).
MAX_SEED = 2**32 - 1


@dataclass
class PipelineSettings:
    """The top-level keys but export (``_with_targets`` adds it, with an export.<target> per target)."""

    model: ModelConfig = MISSING
    dataset: Any = MISSING  # typed per option: schema/dataset/*
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: Any = MISSING  # typed per option: schema/optimizer/*
    scheduler: Any = None  # typed per option: schema/scheduler/*
    logger: Any = None
    train: TrainSettings = field(default_factory=TrainSettings)
    parity: ParityConfig = field(default_factory=ParityConfig)
    seed: int = ranged(42, between(0, MAX_SEED, integer=True))
    stages: list[str] = field(default_factory=lambda: ["train", "export", "check", "convert", "parity"])
    threads: int = ranged(0, between(0, 1024, integer=True))  # 0: the libraries' default
    print_config: bool = True
    from_run: str | None = ranged(None, a_path)
    # Adopt a from_run source's config even where it names classes or ${resolver:...} interpolations that this
    # project's configs do not (pipeline/foreign_config.py): only for a run dir whose author you trust.
    from_run_trust: bool = False
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    optimized_metric: str | None = None


# --- per-option schemas of the groups whose options have different keys ---

@dataclass
class DataConfig:
    """What every dataset takes (pipeline/datasets/base.py)."""

    _target_: str = MISSING
    batch_size: int = ranged(128, at_least(1, integer=True))
    val_fraction: float = ranged(0.1, between(0, 1, high_open=True))
    seed: int = ranged(0, between(0, MAX_SEED, integer=True))  # numpy's generators refuse negative seeds


@dataclass
class MnistDataConfig(DataConfig):
    _target_: str = "pipeline.datasets.mnist.MnistData"
    root: str = "data"
    download: bool = True
    mean: float = ranged(0.1307, between(-1e6, 1e6))
    std: float = ranged(0.3081, between(0, 1e6, low_open=True))


@dataclass
class ItalyPowerDataConfig(DataConfig):
    _target_: str = "pipeline.datasets.italy_power.ItalyPowerData"


@dataclass
class SyntheticTabularDataConfig(DataConfig):
    _target_: str = "pipeline.datasets.synthetic_tabular.SyntheticTabularData"
    samples: int = ranged(4000, between(20, 10_000_000, integer=True))  # held in memory
    features: int = ranged(20, between(1, 10_000, integer=True))
    informative: int = ranged(10, at_least(1, integer=True))  # and <= features (checked by the dataset)
    noise: float = ranged(0.5, at_least(0))
    test_fraction: float = ranged(0.2, between(0, 1, low_open=True, high_open=True))


@dataclass
class SeriesDataConfig(DataConfig):
    _target_: str = "pipeline.datasets.series.SeriesData"
    path: str | None = None  # a CSV file; null: aeon's bundled airline series
    column: str | None = None
    window: int = ranged(12, at_least(1, integer=True))
    test_fraction: float = ranged(0.15, between(0, 1, low_open=True, high_open=True))
    missing: MissingValues = MissingValues.error
    separator: str | None = None  # null: by extension, or the one the header holds (pipeline/datasets/delimited.py)
    decimal: str | None = None  # null: '.', or ',' for a column of decimal-comma numbers in a non-comma file
    encoding: str | None = None  # null: UTF-8, else Windows-1252


class Distribution(StrEnum):
    normal = "normal"  # mean, std
    uniform = "uniform"  # low, high
    integers = "integers"  # low <= id < high (token ids)


@dataclass
class SyntheticDataConfig(DataConfig):
    """Generated inputs (pipeline/datasets/synthetic.py): one ``shape``, or several named ``inputs``."""

    _target_: str = "pipeline.datasets.synthetic.SyntheticData"
    shape: list[int] = field(default_factory=lambda: [3, 64, 64])
    inputs: Any = None  # {name: {shape: [...], distribution: ..., ...}}
    distribution: Distribution = Distribution.normal
    mean: float = ranged(0.0, between(-1e9, 1e9))
    std: float = ranged(1.0, at_least(0))
    low: float = ranged(0.0, between(-1e9, 1e9))
    high: float = ranged(1.0, between(-1e9, 1e9))
    samples: int = ranged(256, between(1, 1_000_000, integer=True))
    num_classes: int | None = ranged(None, at_least(1, integer=True))


@dataclass
class ImageFolderDataConfig(DataConfig):
    """A folder of labelled images (pipeline/datasets/image_folder.py)."""

    _target_: str = "pipeline.datasets.image_folder.ImageFolderData"
    path: str | None = ranged(None, a_path)
    image_size: list[int] | None = None  # [H, W]
    channels: int | None = ranged(None, one_of(1, 3))
    augment: list[Any] = field(default_factory=list)  # torchvision.transforms.v2 configs, training only
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = ranged(2, between(0, 256, integer=True))
    skip_corrupt: bool = False
    test_fraction: float = ranged(0.2, between(0, 1, low_open=True, high_open=True))


class TableTask(StrEnum):
    auto = "auto"  # text, true/false or few distinct integers: classification; other numbers: regression
    classification = "classification"
    regression = "regression"


@dataclass
class TableDataConfig(DataConfig):
    """A CSV, TSV or Parquet table with a target column (pipeline/datasets/table.py)."""

    _target_: str = "pipeline.datasets.table.TableData"
    path: str | None = ranged(None, a_path)
    target: Any = None  # a column, or a list of them (0/1 flags: multi-label; numbers: one output each)
    features: list[str] | None = None  # null: every column but the target(s)
    categorical: list[str] = field(default_factory=list)  # columns read as categories even if they hold numbers
    task: TableTask = TableTask.auto
    missing: MissingValues = MissingValues.error
    test_fraction: float = ranged(0.2, between(0, 1, low_open=True, high_open=True))
    separator: str | None = None  # null: by extension, or the one the header holds (checked by TableData)
    decimal: str | None = None  # null: '.', or ',' for columns of decimal-comma numbers in a non-comma file
    encoding: str | None = None  # null: UTF-8, else Windows-1252 (pipeline/datasets/delimited.py)


@dataclass
class ArraysDataConfig(DataConfig):
    """Arrays in a .npz file (pipeline/datasets/arrays.py)."""

    _target_: str = "pipeline.datasets.arrays.ArraysData"
    path: str | None = ranged(None, a_path)
    x: Any = "x"  # a key, or a list of keys (several named inputs)
    y: str | None = "y"
    classes: list[str] | None = None  # class names in label order
    test_fraction: float = ranged(0.2, between(0, 1, low_open=True, high_open=True))


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True  # the train stage passes the parameters
    lr: float = ranged(1e-3, between(0, 10, low_open=True))  # lr=0 would train nothing
    weight_decay: float = ranged(0.0, at_least(0))


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = ranged(0.01, between(0, 10, low_open=True))
    momentum: float = ranged(0.0, between(0, 1, high_open=True))
    nesterov: bool = False


@dataclass
class OneCycleConfig:
    _target_: str = "pipeline.schedulers.OneCycleLR"
    _partial_: bool = True  # the train stage passes the optimizer and the run's total steps
    max_lr: float = ranged(5e-3, between(0, 10, low_open=True))
    pct_start: float = ranged(0.25, between(0, 1, low_open=True, high_open=True))


GROUP_SCHEMAS = {
    "dataset": {"mnist": MnistDataConfig, "italy_power": ItalyPowerDataConfig,
                "synthetic_tabular": SyntheticTabularDataConfig, "series": SeriesDataConfig,
                "synthetic": SyntheticDataConfig, "image_folder": ImageFolderDataConfig,
                "table": TableDataConfig, "arrays": ArraysDataConfig},
    "optimizer": {"adam": AdamConfig, "sgd": SGDConfig},
    "scheduler": {"onecycle": OneCycleConfig},
}


def _with_targets() -> tuple[type, type]:
    """ExportConfig and PipelineConfig for the targets registered now (pipeline.targets): adding a
    target adds export.<target> with its options."""
    export = make_dataclass("ExportConfig", [(name, spec.options, field(default_factory=spec.options))
                                             for name, spec in TARGETS.items()], bases=(ExportSettings,))
    pipeline = make_dataclass("PipelineConfig", [("export", export, field(default_factory=export))],
                              bases=(PipelineSettings,))
    return export, pipeline


ExportConfig, PipelineConfig = _with_targets()


def register() -> None:
    """The schema into Hydra's ConfigStore, for the targets registered by now."""
    global ExportConfig, PipelineConfig
    settings = {f.name for f in fields(ExportSettings)}
    if [f.name for f in fields(ExportConfig) if f.name not in settings] != list(TARGETS):
        ExportConfig, PipelineConfig = _with_targets()
    store = ConfigStore.instance()
    store.store(name="schema", node=PipelineConfig)
    for group, options in GROUP_SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


# --- applying the range checks ---

def check_ranges(cfg: DictConfig) -> None:
    """Raise a PipelineError for the first value outside its field's range, naming key and valid values."""
    for key, node in _typed_nodes(cfg, ""):
        schema = OmegaConf.get_type(node)
        for spec in fields(schema):
            check = spec.metadata.get("check")
            if check is None or spec.name not in node:
                continue
            full_key = f"{key}{spec.name}"
            try:
                value = node[spec.name]
            except Exception as exc:  # an interpolation that does not resolve
                raise PipelineError(f"{full_key} cannot be resolved: {exc}", f"Set {full_key} to a value.") from exc
            expected = check(value)
            if expected is not None:
                if spec.default is None:
                    expected += " (or null)"
                raise PipelineError(f"{full_key}={_show(value)} is out of range: it must be {expected}.",
                                    f"Set a value in that range, e.g. {full_key}={_show(spec.default)} (the default), "
                                    "or drop the override.")


def check_stages(stages) -> list[str]:
    """The selected stages in run order; unknown names, repeated names and an empty list are refused."""
    from pipeline.contracts import STAGES

    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"Unknown stage(s) {unknown} in stages={stages}.",
                            f"Valid stages, in run order: {', '.join(STAGES)}.")
    if not stages:
        raise PipelineError("stages=[] selects no stage: the run would do nothing.",
                            f"Name at least one, e.g. stages=[train,export,check]; in run order: {', '.join(STAGES)}.")
    repeated = sorted({s for s in stages if stages.count(s) > 1}, key=STAGES.index)
    if repeated:
        raise PipelineError(f"stages=[{','.join(stages)}] names {', '.join(repeated)} more than once; a run runs each "
                            "stage once, in run order.",
                            f"Name each stage once, e.g. stages=[{','.join(s for s in STAGES if s in stages)}].")
    return [s for s in STAGES if s in stages]


def check_keys(cfg: DictConfig) -> None:
    """Every top-level key is one of the schema's (``+foo=1`` adds a key that nothing reads), and the keys
    a run cannot do without are set (``model=null`` / ``~dataset`` remove them)."""
    known = {spec.name for spec in fields(PipelineConfig)} | {"hydra"}
    unknown = [str(key) for key in cfg.keys() if key not in known]
    if unknown:
        raise PipelineError(f"Unknown top-level key(s) {', '.join(unknown)}: nothing reads them, so the run would "
                            "ignore them silently.",
                            f"Check the spelling; the top-level keys are {', '.join(sorted(known - {'hydra'}))} "
                            "(see pipeline/schema.py).")
    # optimizer=null is fine without the train stage (pipeline/runner.py checks it for train).
    missing = []
    for key in cfg.keys():
        if key in ("hydra", "optimizer"):
            continue
        node = cfg._get_node(key)
        if node._is_missing():
            missing.append(str(key))
        elif isinstance(node, DictConfig) and not node._is_none():
            try:
                # missing_keys names a child node's keys from the root already (dataset._target_)
                missing += [k if k.startswith(f"{key}.") else f"{key}.{k}" for k in OmegaConf.missing_keys(node)]
            except Exception:  # noqa: BLE001 - an interpolation that does not resolve: check_ranges names it
                pass
    for key in ("model", "dataset"):
        if key not in missing and (key not in cfg or cfg._get_node(key)._is_none()):
            missing.append(key)
    if missing:
        groups = {"model": "model=mnist_cnn", "dataset": "dataset=mnist"}
        examples = [groups[k] for k in missing if k in groups] or [f"{missing[0]}=<value>"]
        raise PipelineError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the run needs "
                            f"{'it' if len(missing) == 1 else 'them'} (a group set to null or removed with ~ leaves "
                            "nothing).",
                            f"Pick a config group option or set the key, e.g. {' '.join(examples)}.")


def validate(cfg: DictConfig) -> None:
    """Every check that needs only the composed config (no data, no network): before any work."""
    check_keys(cfg)
    check_ranges(typed(cfg))
    check_stages(cfg.stages)
    check_interpolations(cfg)


def check_interpolations(cfg: DictConfig) -> None:
    """Every ``${...}`` resolves (``dataset.path=${oc.env:DATA}`` with DATA unset would fail mid-run)."""
    from omegaconf.errors import OmegaConfBaseException

    for key in cfg.keys():
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        if node._is_missing():  # ??? (optimizer=null): check_keys and the runner say what a run needs
            continue
        try:
            if isinstance(node, DictConfig | ListConfig):
                OmegaConf.to_container(node, resolve=True)
            else:
                cfg[key]  # noqa: B018 - resolves it
        except OmegaConfBaseException as exc:
            if "HydraConfig was not set" in str(exc):  # ${hydra:...} before the job starts: checked in the job
                continue
            full_key = getattr(exc, "full_key", None) or str(key)
            text = " ".join(str(exc).split("\n")[0].split())
            raise PipelineError(f"{full_key} cannot be resolved: {text}",
                                f"Set {full_key} to a value, or define what its ${{...}} refers to (an environment "
                                "variable for oc.env).") from exc


def typed(cfg: DictConfig) -> DictConfig:
    """``cfg`` under the schema. A saved ``.hydra/config.yaml`` re-run with ``--config-name`` is plain
    YAML, without the schema's types and ranges: checked through a typed copy."""
    if OmegaConf.get_type(cfg) is PipelineConfig:
        return cfg
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    try:
        for group in GROUP_SCHEMAS:
            if isinstance(plain.get(group), dict):
                plain[group] = typed_option(group, plain[group])
        return OmegaConf.merge(OmegaConf.structured(PipelineConfig), plain)
    except Exception as exc:  # a wrong type or an unknown key: OmegaConf names it
        raise PipelineError(f"The config does not fit the schema: {exc}".replace("\n", " "),
                            "Fix or remove that key (see pipeline/schema.py for the valid keys).") from exc


def _typed_nodes(node: DictConfig, prefix: str):
    """(key prefix, node) for every structured (dataclass-typed) node, the hydra section left out."""
    if is_dataclass(OmegaConf.get_type(node)):
        yield prefix, node
    for key in node.keys():
        if key == "hydra" and not prefix:
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _typed_nodes(child, f"{prefix}{key}.")


def _show(value) -> str:
    if isinstance(value, str) and not value.strip():
        return repr(value)  # '' or spaces: visible
    return "null" if value is None else str(value)


def typed_option(group: str, value: dict) -> Any:
    """``value`` (a plain dict, e.g. from a saved config) under the schema of its group's option, if it has one.

    The option is recognised by its ``_target_``; a value of another class stays untyped."""
    for schema in GROUP_SCHEMAS.get(group, {}).values():
        target = next((f.default for f in fields(schema) if f.name == "_target_"), None)
        if target == value.get("_target_"):
            return OmegaConf.merge(OmegaConf.structured(schema), value)
    return value
