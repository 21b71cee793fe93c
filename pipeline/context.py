"""What the stages share: config, run dir, report, data and the trained network."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from pipeline.errors import PipelineError
from pipeline.report import Report, sha256_of

ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "model.pt"


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    report: Report
    # Intra-op threads for torch/onnxruntime/TensorFlow (0 = library default); see pipeline.threads.
    threads: int = 0
    # Converted artifacts that parity runs: target name -> path.
    converted: dict[str, Path] = field(default_factory=dict)
    # A checkpoint of an unfinished run to resume training from (from_run).
    resume_from: Path | None = None
    # Parity's outputs on the held-out data, per runtime ("torch" is the reference), and its targets.
    outputs: dict = field(default_factory=dict)
    held_out_targets: object = None
    _data: object = None
    _net: torch.nn.Module | None = None

    @property
    def output_kind(self) -> str:
        return str(self.cfg.model.output)  # a plain string: it is pickled into DDP workers

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / ONNX_NAME

    @property
    def weights_path(self) -> Path:
        return self.run_dir / WEIGHTS_NAME

    @property
    def data(self):
        """The dataset module, loaded once on first use."""
        if self._data is None:
            self._data = _build(self.cfg.dataset, "dataset")
            self.report.data["environment"]["data_files"] = {
                str(Path(path).resolve()): sha256_of(path) for path in self._data.splits.files}
        return self._data

    def new_net(self) -> torch.nn.Module:
        return _build(self.cfg.model.net, "model.net")

    @property
    def net(self) -> torch.nn.Module:
        """The trained network: from the train stage, or its saved weights in this run dir."""
        if self._net is None:
            self._net = self.load_weights(self.weights_path)
        return self._net

    @net.setter
    def net(self, value: torch.nn.Module) -> None:
        self._net = value

    def load_weights(self, path: Path) -> torch.nn.Module:
        if not path.is_file():
            raise PipelineError(
                f"No trained weights at {path}.",
                "Run the train stage (add 'train' to stages) or start from a finished run.",
            )
        net = self.new_net()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(
                f"The weights file {path} is unreadable or does not fit model={self.cfg.model.name} "
                f"({type(exc).__name__}: {first_line.rstrip(':')}).",
                "Re-run the train stage, or check that model= matches the run that produced it "
                "(with from_run, drop model= to use that run's model).",
            ) from exc
        return net.eval()


def _build(node, key: str):
    """instantiate() with the config key named in the error, and our own errors passed through."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, PipelineError):
            raise cause from None
        target = node.get("_target_")
        reason = f"{type(cause).__name__}: {_first_line(cause)}" if cause else _first_line(exc)
        if "Error locating target" in str(exc):
            raise PipelineError(f"{key}._target_={target} cannot be imported ({reason}).",
                                "Check the module path and class name; the module must be importable from where "
                                "the pipeline runs (e.g. models.mnist_cnn.MnistCNN).") from exc
        raise PipelineError(f"{key} could not be built from {target} ({reason}).",
                            f"Check the {key}.* keys against that class's arguments.") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
