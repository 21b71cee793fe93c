"""Run the ONNX model once in onnxruntime with every tensor marked as an output, at two batch sizes.

The probe tells the converter, for every tensor: its static shape (an axis whose size changes with
the batch, or with a free axis of ``export.dynamic_axes``, grown 2x in the second run, is dynamic),
and, for values computed from constants and shapes only, whether they are constants (the same in both
runs) or depend on the batch. It also gives the reference value of every intermediate tensor, which
the divergence diagnosis compares against.
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
    feeds[1] = _free_axes_grown(model, feeds[1])
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


def resolve_branches(model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, Probe]:
    """The model with every ``If`` whose condition the probe measures to be a constant replaced by the
    branch it takes, and the probe of that model.

    The exporter writes shape-dependent Python branches as ``If`` on a shape (``squeeze`` of a dimension
    that may be 1, in ``F.local_response_norm``); its branches read the data from the enclosing graph,
    which no converter could see through the ``If``. Inlined, their nodes convert like any other.
    """
    probe = run(model, sample)
    for _ in range(16):  # nested branches surface one level per round
        chosen = {}
        for index, node in enumerate(model.graph.node):
            if node.op_type == "If" and node.input[0] in probe.values:
                condition = probe.constant(node.input[0])
                if condition is not None and condition.size == 1:
                    taken = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
                    chosen[index] = next(a.g for a in node.attribute if a.name == taken)
        if not chosen:
            return model, probe
        model = _inline(model, chosen)
        probe = run(model, sample)
    return model, probe


def _inline(model: onnx.ModelProto, chosen: dict) -> onnx.ModelProto:
    inlined = onnx.ModelProto()
    inlined.CopyFrom(model)
    nodes = []
    for index, node in enumerate(model.graph.node):
        branch = chosen.get(index)
        if branch is None:
            nodes.append(node)
            continue
        inlined.graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        nodes.extend(onnx.helper.make_node("Identity", [inner.name], [outer], name=f"{node.name or 'If'}_{outer}")
                     for inner, outer in zip(branch.output, node.output, strict=True) if outer)
    del inlined.graph.node[:]
    inlined.graph.node.extend(nodes)
    return inlined


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


def _free_axes_grown(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The second probe's inputs with every free axis (export.dynamic_axes) at twice its size: a tensor
    whose size follows a free axis is then dynamic (None) too, like one that follows the batch."""
    from pipeline import free_axes

    free = free_axes.of_onnx(model)
    if not free:
        return feeds
    shapes = {name: tuple(value.shape) for name, value in feeds.items()}
    grown = {name: tuple(d * 2 if axis in free.get(name, {}) else d for axis, d in enumerate(shape))
             for name, shape in shapes.items()}
    return free_axes.feeds_at(feeds, grown)


def _batch_of(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The first ``size`` rows of every input, repeating the sample if it has fewer rows."""
    return {name: np.resize(value, (size, *value.shape[1:])).astype(value.dtype) for name, value in sample.items()}
