"""A from_run source's config is data, never code.

Its ``.hydra/config.yaml`` was written elsewhere (a colleague, a CI artifact, a download): adopting it
must not let it name the callables this run builds, nor read this machine's environment. Every
``_target_`` in what is adopted must be one the user could have picked here (``allowed_target``):

- a ``_target_`` written in this project's ``conf/`` files (models, datasets, optimizers, schedulers,
  loggers) or the schema's defaults;
- a function or class defined in one of the project's ``models/`` modules;
- a torch/torchvision class of the right kind: a ``torch.nn`` Module, a ``torch.optim`` Optimizer or
  learning-rate scheduler, a ``torchvision.models`` network or registered builder.

A ``${name:...}`` resolver interpolation (``oc.env``, ``oc.decode``...) is adopted only when the same text
is in ``conf/`` (``${oc.env:PIPELINE_MNIST_ROOT,data}``), so that it resolves as this project's own config
would; plain references to other keys (``${seed}``) are data. Anything else is refused, naming the key,
unless the command line gives that key again or opts in with ``from_run_trust=true``.

A source's SavedModel is a graph whose functions run when it is loaded and called: one holding ops that read
or write files or call Python (``check_saved_model``) is refused before it is copied.
"""
import functools
import importlib
import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig

from pipeline.errors import PipelineError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# ``${name:`` anywhere in a string: a resolver call (oc.env, oc.decode, hydra, now, ...).
RESOLVER_CALL = re.compile(r"\$\{\s*[A-Za-z_][\w.]*\s*:")
IDENTIFIER_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def check(config: DictConfig, keys: tuple[str, ...], overridden, source: str) -> None:
    """Refuse the first ``_target_`` or resolver interpolation under ``keys`` of a foreign ``config``
    that this project would not have written, unless ``overridden(key)`` (the command line gives it)."""
    for key in keys:
        if key not in config.keys():  # keys(): ``in`` would resolve an interpolated value
            continue
        for full_key, value in _leaves(config._get_node(key), key):
            if overridden(full_key):
                continue
            if full_key.endswith("._target_") or full_key == "_target_":
                _check_target(full_key, value, source)
            elif isinstance(value, str) and RESOLVER_CALL.search(value) and value not in conf_interpolations():
                raise PipelineError(
                    f"from_run={source}: its config sets {full_key}={value}, an interpolation that would be "
                    "resolved on this machine (its environment, files or resolvers); a run dir from elsewhere is "
                    "adopted as data only.",
                    f"Give {full_key} on the command line ({full_key}=<value>), or add from_run_trust=true if you "
                    "trust that run dir and want its config resolved here.")


def _check_target(key: str, target, source: str) -> None:
    if isinstance(target, str) and allowed_target(target):
        return
    raise PipelineError(
        f"from_run={source}: its config names {key}={target}, which is not a class this project's configs "
        "could pick (its models, datasets, optimizers, schedulers and loggers, or torch/torchvision classes); "
        "building it could run code from that run dir's author.",
        f"Give {key} on the command line (e.g. model=mnist_cnn or {key}=<class>), or add from_run_trust=true "
        "if you trust that run dir and its author.")


def _leaves(node, prefix: str):
    """(dotted key, raw value) for every leaf under ``node``, interpolations as written (never resolved)."""
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            yield prefix, node._value()
            return
        for key in node.keys():
            yield from _leaves(node._get_node(key), f"{prefix}.{key}")
    elif isinstance(node, ListConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            yield prefix, node._value()
            return
        for index in range(len(node)):
            yield from _leaves(node._get_node(index), f"{prefix}.{index}")
    else:
        yield prefix, node._value() if hasattr(node, "_value") else node


# --- what the user could have picked here ---

def allowed_target(target: str) -> bool:
    if target in conf_targets():
        return True
    if not IDENTIFIER_PATH.match(target):
        return False
    parts = target.split(".")
    if parts[0] == "models":
        return _project_model(parts)
    if parts[0] in ("torch", "torchvision"):
        return _torch_class(target)
    return False


@functools.cache
def conf_targets() -> frozenset[str]:
    """Every ``_target_`` in conf/ and in the schema's defaults."""
    from dataclasses import fields

    from pipeline import schema

    found = {value for key, value in _conf_values() if key == "_target_" and isinstance(value, str)}
    for dataclass in [schema.TrainerConfig, *[s for options in schema.GROUP_SCHEMAS.values()
                                              for s in options.values()]]:
        found |= {f.default for f in fields(dataclass) if f.name == "_target_" and isinstance(f.default, str)}
    return frozenset(found)


@functools.cache
def conf_interpolations() -> frozenset[str]:
    """The resolver interpolations written in conf/ (``${oc.env:PIPELINE_MNIST_ROOT,data}``)."""
    return frozenset(value for _, value in _conf_values() if isinstance(value, str) and RESOLVER_CALL.search(value))


def _conf_values():
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        yield from _yaml_leaves(document)


def _yaml_leaves(node, key=None):
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _yaml_leaves(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from _yaml_leaves(child, key)
    else:
        yield key, node


def _project_model(parts: list[str]) -> bool:
    """``models.<module>.<name>``: a function or class defined in that module of this project."""
    if len(parts) != 3 or not (MODELS_DIR / f"{parts[1]}.py").is_file():
        return False
    module = importlib.import_module(f"models.{parts[1]}")  # the project's own code
    found = getattr(module, parts[2], None)
    return callable(found) and getattr(found, "__module__", None) == module.__name__


def _torch_class(target: str) -> bool:
    """A torch.nn Module, torch.optim Optimizer or scheduler, or a torchvision.models network/builder."""
    import torch

    try:
        from hydra._internal.utils import _locate

        found = _locate(target)  # imports torch/torchvision modules only (checked by the caller)
    except Exception:  # noqa: BLE001 - not there: not a class the user could pick
        return False
    if target.startswith("torch.nn.") and isinstance(found, type):
        return issubclass(found, torch.nn.Module)
    if target.startswith("torch.optim.") and isinstance(found, type):
        return issubclass(found, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                                  torch.optim.lr_scheduler.ReduceLROnPlateau))
    if target.startswith("torchvision.models."):
        if isinstance(found, type):
            return issubclass(found, torch.nn.Module)
        import torchvision

        name = target.rsplit(".", 1)[-1]
        return callable(found) and name in torchvision.models.list_models()
    return False


# --- a SavedModel from elsewhere: a graph whose functions run when it loads and is called ---

# TensorFlow ops that read or write files, or call Python, by a path or function named in the graph itself. A
# model converted by this pipeline never holds them (the loader restores its variables itself).
FILE_OR_PYTHON_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2", "LMDBReader", "TextLineDataset",
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset",
    "SnapshotDatasetV2", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "CreateSummaryFileWriter", "DebugIdentityV2", "DebugIdentityV3",
    "PrintV2", "DecodeProtoV2", "EncodeProto",
})


def saved_model_ops(path: Path) -> set[str]:
    """The op types of a SavedModel's graph and of every function in its library."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        ops |= {node.op for node in graph.node}
        for function in graph.library.function:
            ops |= {node.op for node in function.node_def}
    return ops


def check_saved_model(path: Path, key: str) -> None:
    """Refuse a SavedModel whose graph reads or writes files or calls Python (it would run on load or call)."""
    try:
        found = sorted(saved_model_ops(path) & FILE_OR_PYTHON_OPS)
    except Exception as exc:  # noqa: BLE001 - a damaged saved_model.pb: named here, never loaded
        raise PipelineError(f"{key}: its saved_model.pb is unreadable ({type(exc).__name__}: "
                            f"{str(exc).strip()[:200]}).",
                            "Pick another run dir, or convert again (add convert to stages=[...]).") from None
    if found:
        raise PipelineError(f"{key}: its graph holds {', '.join(found)}, ops that read or write files or call "
                            "Python when the model is loaded or run; a model converted by this pipeline never does, "
                            "and a model from elsewhere is never run with them.",
                            "Convert again here (add convert to stages=[...]) instead of taking that run's SavedModel.")
