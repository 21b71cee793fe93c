"""Runtime adapters, one module per runtime, each declaring a ``RuntimeSpec`` (found on first use: a new
runtime is one new module). Each takes inputs and returns outputs by ONNX tensor name, in the ONNX
model's own layout (PyTorch's): an artifact stored in another layout (a Keras model taking NHWC)
records its per-tensor axis orders, and the adapter transposes on the way in and out.

A target names the runtime that runs its artifact in parity (``pipeline.targets``); a runtime declared
``alternative_to`` another runs the same artifacts too (an onnxruntime execution provider, a TFLite
delegate), in parity when ``parity.runtimes`` names it.
"""
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.registry import Registry

# What the reference and the exported model run on: the names parity reports them under.
REFERENCE = "torch"
ONNX_RUNTIME = "onnxruntime"


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    # ``load(artifact, inputs, outputs, **options) -> Adapter``; options: threads, input_perms, output_perms
    load: Callable
    needs_tensorflow: bool = False  # loads TensorFlow or LiteRT (prepared first: pipeline.tf_env)
    alternative_to: str | None = None  # runs what that runtime runs, when parity.runtimes names it
    # The output names an artifact has, in its own order, read from the artifact (the diagnosis asks a copy
    # with extra outputs); None: the artifact records them (output_perms).
    output_names: Callable[[Path], list[str]] | None = None
    # its interpreter plans memory across calls: the convert stage calls an artifact twice and compares
    # (pipeline/repeat_calls.py); the others compute each call afresh
    reuses_memory: bool = False


RUNTIMES: Registry[RuntimeSpec] = Registry("runtime", __name__)


def register(spec: RuntimeSpec) -> RuntimeSpec:
    return RUNTIMES.add(spec)


def check_alternatives(chosen) -> None:
    """parity.runtimes names runtimes that run another's artifacts."""
    from pipeline.errors import PipelineError

    valid = [name for name, spec in RUNTIMES.items() if spec.alternative_to]
    unknown = [name for name in chosen if name not in valid]
    if unknown:
        raise PipelineError(f"parity.runtimes={list(chosen)}: {', '.join(unknown)} "
                            f"{'is' if len(unknown) == 1 else 'are'} not an alternative runtime.",
                            f"Valid choices: {', '.join(valid)}." if valid else
                            "None is registered: a runtime module in pipeline/runtimes declares one "
                            "(RuntimeSpec(alternative_to=...)); or drop parity.runtimes.")


def alternatives(runtime: str, chosen) -> list[RuntimeSpec]:
    """The runtimes named in ``chosen`` (parity.runtimes) that run what ``runtime`` runs."""
    return [RUNTIMES[name] for name in chosen if RUNTIMES[name].alternative_to == runtime]


class OutputMismatch(ValueError):
    """A runtime returned outputs that do not fit the ONNX model's (their number or rank)."""


class Adapter:
    """Base: ``predict({input name: array}) -> {output name: array}`` around the runtime's ``run``.

    ``input_perms``/``output_perms`` give, per tensor, the ONNX axis each axis of the runtime's tensor
    holds (absent: the ONNX layout itself).
    """

    name = ""

    def __init__(self, inputs: list[str], outputs: list[str], input_perms: dict | None = None,
                 output_perms: dict | None = None):
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.input_perms, self.output_perms = dict(input_perms or {}), dict(output_perms or {})

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [to_layout(feeds[name], self.input_perms.get(name)) for name in self.inputs]
        results = [np.asarray(r) for r in self.run(arrays)]
        if len(results) != len(self.outputs):
            raise OutputMismatch(f"{self.name} returned {len(results)} output(s); the ONNX model has "
                                 f"{len(self.outputs)} ({', '.join(self.outputs)}).")
        return {name: from_layout(result, self.output_perms.get(name), name, self.name)
                for name, result in zip(self.outputs, results, strict=True)}

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    # Latency is the runtime's own call on inputs already in its layout and dtype: a deployed model gets
    # them so, and the transposes (and int8 I/O's quantizing) done here for parity are not its cost.
    def prepare(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [to_layout(feeds[name], self.input_perms.get(name)) for name in self.inputs]

    def invoke(self, prepared: list[np.ndarray]) -> list:
        return self.run(prepared)


def signature_key(name: str) -> str:
    """A tensor name as a TensorFlow signature argument (letters, digits, underscores)."""
    key = re.sub(r"\W", "_", name).strip("_") or "input"
    return f"t_{key}" if key[0].isdigit() else key


def feed_keys(names: list[str], available: list[str]) -> list[str]:
    """The signature's keys for the ONNX tensor ``names``: the names themselves, their sanitised form,
    or, for a single tensor, whatever the signature calls it."""
    for candidate in (list(names), [signature_key(n) for n in names]):
        if set(candidate) <= set(available):
            return candidate
    if len(names) == len(available) == 1:
        return list(available)
    raise OutputMismatch(f"the signature has {sorted(available)}; the ONNX model's tensors are {names}.")


def to_layout(array: np.ndarray, perm) -> np.ndarray:
    if not perm or list(perm) == list(range(len(perm))):
        return array
    return np.ascontiguousarray(np.transpose(array, perm))


def from_layout(array: np.ndarray, perm, name: str = "", runtime: str = "") -> np.ndarray:
    if not perm or list(perm) == list(range(len(perm))):
        return array
    if array.ndim != len(perm):
        raise OutputMismatch(f"{runtime} output {name} has rank {array.ndim}; its recorded layout has "
                             f"{len(perm)} axes.")
    return np.ascontiguousarray(np.transpose(array, np.argsort(perm)))


# Adapters kept by ``load(..., keep=True)`` for the next load of the same artifact file with the same options:
# convert verifies each artifact and parity runs it next, so a SavedModel or a .keras file is read (and its
# graph traced) once per run. Handed over once; ``forget()`` drops the rest when the run ends.
_kept: dict[tuple, Adapter] = {}


def load(name: str, artifact, inputs: list[str], outputs: list[str], keep: bool = False, **options) -> Adapter:
    """Load ``artifact`` (a path, or the network for torch) into the runtime adapter ``name``; ``keep``: hold
    it for the next load of the same file (unchanged since: same inode and modification time)."""
    key = _artifact_key(name, artifact, inputs, outputs, options)
    if key in _kept:
        return _kept.pop(key)
    spec = RUNTIMES[name]
    if spec.needs_tensorflow:
        from pipeline import tf_env

        tf_env.prepare()
    adapter = spec.load(artifact, inputs, outputs, **options)
    if keep and key is not None:
        _kept[key] = adapter
    return adapter


def forget() -> None:
    """Drop the adapters kept for a later load (the run that kept them has ended)."""
    _kept.clear()


def _artifact_key(name: str, artifact, inputs: list[str], outputs: list[str], options: dict) -> tuple | None:
    if not isinstance(artifact, str | Path):
        return None  # the torch network itself: nothing to load
    try:
        stat = Path(artifact).stat()
    except OSError:
        return None
    return (name, str(Path(artifact).resolve()), stat.st_ino, stat.st_mtime_ns, tuple(inputs), tuple(outputs),
            repr(sorted(options.items())))
