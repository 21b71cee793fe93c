"""What the stages share: config, run dir, report, data and the trained network."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline import weights
from pipeline.artifacts import ArtifactStore
from pipeline.errors import PipelineError
from pipeline.onnx_model import io_names
from pipeline.report import Report, sha256_of
from pipeline.results import RunResults

# model.weights=init: the network as its constructor builds it (random, or weights it loads itself).
INIT_WEIGHTS = "init"
TRAINED = "trained"  # what the shared network holds once the train stage has had it


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    report: Report
    # Intra-op threads for torch/onnxruntime/TensorFlow (0 = library default); see pipeline.threads.
    threads: int = 0
    # What one stage hands the next (pipeline.results): the only mutable state besides the report.
    results: RunResults = field(default_factory=RunResults)
    _data: object = None
    _net: torch.nn.Module | None = None
    # model.net as constructed: once per run, shared by the parameter count, preflight, train and the later
    # stages (a large network is built, warmed up and held in memory once). ``_built_holds`` says whose
    # weights it holds now: INIT_WEIGHTS (the constructor's), a weights file's resolved path, TRAINED, or
    # None while a load is under way (a failed load leaves it unknown).
    _built: torch.nn.Module | None = None
    _built_holds: str | None = None
    _rng_after_build: torch.Tensor | None = None  # torch's random state right after the construction
    _onnx_io: tuple | None = None
    _samples: object = None

    @property
    def output_kind(self) -> str:
        return str(self.cfg.model.output)  # a plain string: it is pickled into DDP workers

    def __post_init__(self):
        self.store = ArtifactStore(self.run_dir, self.report.data["artifacts"])

    @property
    def onnx_path(self) -> Path:
        return self.store.path("onnx")

    @property
    def weights_path(self) -> Path:
        return self.store.path("weights")

    @property
    def data(self):
        """The dataset (``pipeline.datasets.base.DatasetApi``), built once on first use; a LightningDataModule
        of the user's own is read through its loaders (``pipeline.datasets.datamodule``)."""
        if self._data is None:
            from pipeline.datasets.base import DatasetApi

            data = _build(self.cfg.dataset, "dataset")
            if not isinstance(data, DatasetApi):
                from pipeline.datasets.datamodule import as_dataset  # imports Lightning: only when needed

                data = as_dataset(data)
            data.setup("fit")
            self.report.data["environment"]["data_files"] = {
                str(Path(path).resolve()): sha256_of(path) for path in data.files()}
            self.report.data["data"] = {**data.spec().read_as(self.output_kind).as_report(), **data.report()}
            self._data = data  # only once it reads: a data error is raised again by the next stage that asks
        return self._data

    @property
    def data_spec(self):
        """The dataset's spec as ``model.output`` reads its targets (``DataSpec.read_as``)."""
        return self.data.spec().read_as(self.output_kind)

    @property
    def data_loaded(self) -> bool:
        return self._data is not None

    def new_net(self) -> torch.nn.Module:
        """model.net with its constructor's weights: the run's one construction (``_construct``), shared;
        built again only if the shared one holds other weights by now (no stage of a run asks for that)."""
        if self._built is None or self._built_holds != INIT_WEIGHTS:
            self._built, self._built_holds = self._construct(), INIT_WEIGHTS
        return self._built

    def _construct(self) -> torch.nn.Module:
        """model.net built (seeded), with the arguments the data determines (``pipeline.network``), behind
        the dataset's preprocessing (``pipeline.preprocessing``) when it has one."""
        from pipeline import network
        from pipeline.preprocessing import attach

        net_cfg = self.cfg.model.net
        filled = network.from_data(net_cfg, self.data_spec, self.output_kind)
        if filled:
            self.report.data["model"]["from_data"] = filled
        # Seeded on every build, so that random weights (model.weights=init, a run without train)
        # are the same in every run of this config; the train stage seeds the same value first.
        torch.manual_seed(int(self.cfg.seed))
        pre = self.data.preprocessing()
        try:
            net = attach(_build(network.net_config(net_cfg, filled), "model.net"), pre)
        except PipelineError as exc:
            if not filled or "could not be built" not in str(exc):
                raise
            raise self._does_not_fit(filled, exc) from exc
        if pre is not None:
            self.report.data["data"]["preprocessing"] = pre.describe()
        if any(torch.nn.parameter.is_lazy(t) for t in [*net.parameters(), *net.buffers()]):
            self._materialize(net)
        self._rng_after_build = torch.get_rng_state()
        return net

    def _does_not_fit(self, filled: dict, exc: PipelineError) -> PipelineError:
        """A network that cannot be built with the arguments the data gave it: the data is named."""
        from pipeline.network import dataset_name, model_hint

        dataset = dataset_name(self.cfg)
        given = ", ".join(f"model.net.{k}={v}" for k, v in filled.items())
        return PipelineError(f"model={self.cfg.model.name} cannot take dataset={dataset}'s input: built with the "
                             f"arguments the data gives it ({given}), {str(exc.message)[0].lower()}"
                             f"{str(exc.message)[1:]}",
                             f"For dataset={dataset}, {model_hint(self.cfg)}, or set those model.net.* keys yourself.")

    def _materialize(self, net: torch.nn.Module) -> None:
        """Lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``...) take their shapes on a first forward: one
        training sample in eval mode, right after the seeded build, so that every build of this config has
        the same weights and no stage meets an uninitialised parameter (counting, the optimizer, the export).
        A forward that fails is left to the preflight check, which names the input it could not take."""
        sample = self.data.head("train", 1)[0]
        training = net.training
        try:
            with torch.no_grad():
                net.eval()(**sample) if isinstance(sample, dict) else net.eval()(sample)
        except Exception:  # noqa: BLE001, S110 - preflight runs the same forward and reports it
            pass
        net.train(training)

    def net_to_train(self) -> torch.nn.Module:
        """``initial_net()`` for the train stage, which changes its weights in place: from here on the shared
        network holds the trained weights (preflight is done with it; the later stages export those)."""
        net = self.initial_net().train()  # preflight left it in eval mode, and so does a weights load
        self._built_holds = TRAINED
        # Training draws (shuffling, dropout) from the random state right after the seeded build, as when the
        # train stage built the network itself: a config trains to the same weights as before the build moved.
        torch.set_rng_state(self._rng_after_build)
        return net

    def initial_net(self) -> torch.nn.Module:
        """The network before this run trains it: built, with ``model.weights`` loaded when given."""
        given = self.cfg.model.get("weights")
        if not given or given == INIT_WEIGHTS:
            return self.new_net()
        path = Path(given).expanduser()
        fix = ("Point model.weights at a state_dict (.pt) or a Lightning checkpoint (.ckpt), "
               f"or use model.weights={INIT_WEIGHTS} for the network as its constructor builds it.")
        if path.is_dir():
            raise PipelineError(f"model.weights={given!r} is a directory, not a weights file.", fix)
        if path.exists() and not path.is_file():
            raise PipelineError(f"model.weights={given!r} is not a regular file (a device, a pipe or a socket).", fix)
        if not path.is_file():
            raise PipelineError(f"model.weights={given!r}: no such file.", fix)
        return self.load_weights(path, key=f"model.weights={given}")

    @property
    def net(self) -> torch.nn.Module:
        """The network to export: from the train stage, this run dir's weights, or ``model.weights``."""
        if self._net is None:
            trained = self.weights_path.is_file() or not self.cfg.model.get("weights")
            copied = (self.store.records.get("weights") or {}).get("copied_from")
            key = f"from_run={self.cfg.get('from_run')}'s {Path(copied).name}" if copied else None
            self._net = self.load_weights(self.weights_path, key) if trained else self.initial_net().eval()
        return self._net

    @net.setter
    def net(self, value: torch.nn.Module) -> None:
        self._net = value

    def load_weights(self, path: Path, key: str | None = None) -> torch.nn.Module:
        """The network with the weights in ``path`` (``key``: the config key that named the file)."""
        if not path.is_file():
            raise PipelineError(
                f"No trained weights at {path}.",
                "Run the train stage (add 'train' to stages), start from a finished run (from_run=...), or give "
                "model.weights=<state_dict or Lightning checkpoint> (model.weights=init: the constructor's own).",
            )
        what = key or f"The weights file {path}"
        if key is None:
            fix = "re-run the train stage if it is this pipeline's own."
        elif key.startswith("from_run"):
            fix = "that run's weights are damaged: pick another from_run, or add train to stages."
        else:
            fix = f"model.weights={INIT_WEIGHTS} takes the network as its constructor builds it."
        fix = "Give a state_dict (torch.save(net.state_dict(), path)) or a Lightning checkpoint (.ckpt); " + fix
        weights.check_file(path, what, fix)
        holds = str(path.resolve())
        if self._built is not None and self._built_holds == holds:
            return self._built.eval()  # loaded once: preflight's network is the one train and export get
        net = self._built if self._built is not None else self.new_net()
        self._built_holds = None  # a load that fails half way leaves weights of neither kind
        # model.weights_prefix picks a network of model.weights' file; the pipeline's own model.pt has one.
        prefix = self.cfg.model.get("weights_prefix") if key and key.startswith("model.weights") else None
        model = f"model={self.cfg.model.name} ({self.cfg.model.net.get('_target_')})"
        weights.load_into(net, path, what, fix, prefix, model)
        self._built_holds = holds
        return net.eval()

    # --- the ONNX model's inputs and outputs, and real inputs for them ---------------------------------

    def _io(self) -> tuple[list[str], list[str]]:
        if self._onnx_io is None:
            self._onnx_io = io_names(self.onnx_path)
        return self._onnx_io

    @property
    def input_names(self) -> list[str]:
        return self._io()[0]

    @property
    def output_names(self) -> list[str]:
        return self._io()[1]

    @property
    def samples(self):
        """Real inputs for the runtimes, by ONNX input name (``pipeline.samples``)."""
        if self._samples is None:
            from pipeline.samples import Samples

            self._samples = Samples(self.data, self.input_names, int(self.cfg.seed))
        return self._samples


def _build(node, key: str):
    """instantiate() with the config key named in the error, and our own errors passed through."""
    target = node.get("_target_") if hasattr(node, "get") else None
    try:
        built = instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, PipelineError):
            raise cause from None
        if "Error locating target" in str(exc):
            root = _root_cause(cause) if cause else exc
            raise PipelineError(f"{key}._target_={target} cannot be imported ({_describe(root)}).",
                                "Check the module path and class name; the module must be importable from where "
                                "the pipeline runs (e.g. models.mnist_cnn.MnistCNN).") from exc
        reason = _describe(cause) if cause else _first_line(exc)
        raise PipelineError(f"{key} could not be built from {target} ({reason}).",
                            f"Check the {key}.* keys against that class's arguments.") from exc
    except SystemExit as exc:  # user code calling sys.exit() / exit() while it is built
        raise PipelineError(f"{key}._target_={target} called sys.exit({exc.code!r}) while it was built.",
                            f"Remove the exit from that code, or point {key}._target_ at another class.") from None
    if key == "model.net" and not isinstance(built, torch.nn.Module):
        raise PipelineError(f"model.net._target_={target} built a {type(built).__module__}.{type(built).__qualname__}"
                            ", not a torch.nn.Module.",
                            "Point model.net._target_ at a torch.nn.Module subclass (or a function returning one), "
                            "e.g. models.mnist_cnn.MnistCNN.")
    return built


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: Hydra wraps the module's own ImportError/SyntaxError."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
