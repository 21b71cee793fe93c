"""Run the ONNX model once in onnxruntime with every tensor marked as an output, at two batch sizes.

The probe tells the converter, for every tensor: its static shape (an axis whose size changes with
the batch is dynamic), and, for values computed from constants and shapes only, whether they are
constants (the same at both batch sizes) or depend on the batch. It also gives the reference value
of every intermediate tensor, which the divergence diagnosis compares against.
"""
from dataclasses import dataclass

import numpy as np
import onnx

from pipeline.errors import ConversionError

PROBE_BATCHES = (2, 3)


@dataclass
class Probe:
    values: dict[str, tuple[np.ndarray, np.ndarray]]
    batches: tuple[int, int] = PROBE_BATCHES

    def shape(self, name: str) -> tuple:
        """The ONNX shape of ``name``: an int per static axis, None for an axis that follows the batch."""
        a, b = (np.shape(v) for v in self.values[name])
        if len(a) != len(b):
            raise ConversionError(f"{name} changes rank with the batch size ({a} vs {b}).",
                                  "Export with a fixed rank.")
        return tuple(x if x == y else None for x, y in zip(a, b, strict=True))

    def batch_axes(self, name: str) -> list[int]:
        """Axes of ``name`` whose size is the batch size itself (not a multiple of it)."""
        a, b = (np.shape(v) for v in self.values[name])
        return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if (x, y) == self.batches]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is the same at both batch sizes, else None."""
        a, b = self.values[name]
        if np.shape(a) == np.shape(b) and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            return a
        return None


def run(model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> Probe:
    feeds = [_batch_of(sample, size) for size in PROBE_BATCHES]
    try:
        runs = [intermediates(model, feed) for feed in feeds]
    except Exception as exc:
        if not _runs(model, sample):  # not about the batch size: onnxruntime cannot run this model at all
            raise ConversionError(f"onnxruntime cannot run the ONNX model: {exc}",
                                  "The exported model itself is invalid for onnxruntime (see the onnxruntime "
                                  "parity entry); change the model around the node named.") from exc
        raise ConversionError(f"onnxruntime could not run the model at batch sizes {PROBE_BATCHES}: {exc}",
                              "Export with a dynamic batch axis (the batch size must not be hard-coded).") from exc
    values = {name: (feeds[0][name], feeds[1][name]) for name in sample}
    values.update({name: (a, runs[1][name]) for name, a in runs[0].items()})
    return Probe(values)


def _runs(model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> bool:
    """Whether onnxruntime runs ``model`` on ``sample`` as it is (its own batch size)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, sample)
    except Exception:  # noqa: BLE001 - any failure means no
        return False
    return True


def intermediates(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor a node of ``model`` computes on ``feeds``, by name, as onnxruntime computes it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Node outputs as the graph names them: no fusion may swallow an intermediate tensor.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_mark_all_outputs(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _mark_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    known = {o.name for o in marked.graph.output}
    for node in marked.graph.node:
        for name in node.output:
            if name and name not in known:
                marked.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    return marked


def _batch_of(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The first ``size`` rows of every input, repeating the sample if it has fewer rows."""
    return {name: np.resize(value, (size, *value.shape[1:])).astype(value.dtype) for name, value in sample.items()}
