"""ONNX -> ONNX rewrites that keep a model's outputs but bring its graph within a converter's reach.

- ``drop_zero_initial_states``: torch exports a recurrent layer's zero initial state as a chain
  sized by the batch (Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape(0) -> Slice).
  ONNX reads an omitted initial state as zeros, so the input is dropped and the chain pruned.
- ``unroll_lstm``: each LSTM node becomes the per-time-step MatMul/Add/Sigmoid/Tanh/Mul it stands
  for, for backends whose LSTM does not work (onnx-tf builds it from TF1 rnn cells, gone in Keras 3).

Each returns a new model; the input model is left as it is.
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

# The initial-state inputs of the recurrent ops (initial_h, then initial_c for LSTM).
STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
# Ops that keep an all-zero data input (their first) all zeros.
ZERO_PRESERVING = {"Slice", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Identity", "Transpose", "Cast", "Gather",
                   "Tile"}


class RewriteError(ValueError):
    """The graph is outside what a rewrite handles; ``op`` names the op."""

    def __init__(self, op: str, message: str):
        super().__init__(message)
        self.op = op


def constants(graph) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs, by tensor name."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = helper.get_attribute_value(node.attribute[0])
            values[node.output[0]] = numpy_helper.to_array(value) if hasattr(value, "dims") else np.array(value)
    return values


def drop_zero_initial_states(model: onnx.ModelProto) -> onnx.ModelProto:
    model = _copy(model)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    values = constants(graph)
    for node in graph.node:
        for index in STATE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and _all_zero(node.input[index], producers, values):
                node.input[index] = ""
        while node.input and not node.input[-1]:  # trailing omitted inputs may just be left out
            del node.input[-1]
    prune_dead_nodes(graph)
    return model


def _all_zero(name: str, producers: dict, values: dict) -> bool:
    if name in values:
        return not np.any(values[name])
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value is None or not np.any(numpy_helper.to_array(value))  # the default value is 0
    return node.op_type in ZERO_PRESERVING and _all_zero(node.input[0], producers, values)


def prune_dead_nodes(graph) -> None:
    """Remove the nodes no graph output depends on, and the initializers only they read."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            needed.update(_subgraph_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    produced = {name for node in graph.node for name in node.output}
    stale = [info for info in graph.value_info if info.name not in produced]
    for info in stale:
        graph.value_info.remove(info)


def _subgraph_reads(node) -> set[str]:
    """Names read inside If/Loop/Scan bodies, which may come from the outer graph."""
    reads = set()
    for attr in node.attribute:
        for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in body.node:
                reads.update(inner.input)
                reads.update(_subgraph_reads(inner))
    return reads


def unroll_lstm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every LSTM node by its unrolled equations (static sequence length needed)."""
    model = _copy(model)
    graph = model.graph
    shapes = static_shapes(model)
    values = constants(graph)
    nodes = []
    for index, node in enumerate(graph.node):
        if node.op_type != "LSTM":
            nodes.append(node)
            continue
        builder = _Builder(f"{node.name or 'LSTM'}_unrolled_{index}")
        _unroll_one(node, builder, shapes, values)
        nodes += builder.nodes
        graph.initializer.extend(builder.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    prune_dead_nodes(graph)  # the LSTM weights, and the steps of an unused Y
    return model


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Inferred shapes by tensor name: an int per static axis, the symbol (or None) otherwise."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in info.type.tensor_type.shape.dim]
    return shapes


class _Builder:
    """Collects new nodes and initializers under one name prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.initializers, self._count = prefix, [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        full = f"{self.prefix}/{name}"
        self.initializers.append(numpy_helper.from_array(array, full))
        return full

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Add a node; returns its output's name (``output`` when given)."""
        self._count += 1
        name = f"{self.prefix}/{op_type}_{self._count}"
        output = output or f"{name}_output"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def plain_lstm_hidden_size(node, layouts: tuple[int, ...] = (0,)) -> int:
    """The hidden size of a plain LSTM node: forward, default activations, no clip, input_forget,
    sequence_lens or peepholes, and a layout in ``layouts``. Raises RewriteError otherwise."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    inputs = list(node.input) + [""] * (8 - len(node.input))
    unsupported = {
        "direction": attrs.get("direction", b"forward") not in (b"forward", "forward"),
        "layout": attrs.get("layout", 0) not in layouts,
        "clip": "clip" in attrs,
        "input_forget": attrs.get("input_forget", 0) != 0,
        "activations": [a.lower() for a in activations] not in ([], ["sigmoid", "tanh", "tanh"]),
        "sequence_lens": bool(inputs[4]),
        "peepholes (P)": bool(inputs[7]),
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise RewriteError("LSTM", f"LSTM with {', '.join(bad)} is not supported.")
    return int(attrs["hidden_size"])


def _unroll_one(node, b: _Builder, shapes: dict, values: dict) -> None:
    x, hidden = node.input[0], plain_lstm_hidden_size(node)
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if any(name and name not in values for name in inputs[1:4]):
        raise RewriteError("LSTM", "LSTM weights computed in the graph (not constants) are not supported.")
    steps = (shapes.get(x) or [None])[0]
    if not isinstance(steps, int) or steps <= 0:
        raise RewriteError("LSTM", f"LSTM over a sequence of unknown length ({x}): export with a fixed length.")
    w, r = values[inputs[1]][0], values[inputs[2]][0]  # [4H, F], [4H, H], gates i, o, f, c
    bias = values[inputs[3]][0] if inputs[3] else np.zeros(8 * hidden, w.dtype)
    # x_t W^T + Wb + Rb for every step at once: [T, N, 4H]
    projected = b.op("Add", [b.op("MatMul", [x, b.const("W_T", w.T.copy())]),
                             b.const("bias", bias[:4 * hidden] + bias[4 * hidden:])])
    cell = _Cell(b, r, hidden)
    # An omitted state is zeros: None keeps its terms out of the first step.
    h, c = (b.op("Gather", [name, b.const(f"first{i}", np.array(0, np.int64))], axis=0) if name else None
            for i, name in enumerate(inputs[5:7]))
    axes_y = b.const("axes_y", np.array([0, 1], np.int64))
    steps_out = []
    for t in range(steps):
        h, c = cell(b.op("Gather", [projected, b.const(f"t{t}", np.array(t, np.int64))], axis=0), h, c)
        steps_out.append(b.op("Unsqueeze", [h, axes_y]))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if outputs[0]:  # Y: [T, 1, N, H]
        b.op("Concat", steps_out, output=outputs[0], axis=0)
    axes = b.const("axes_state", np.array([0], np.int64))
    for state, name in ((h, outputs[1]), (c, outputs[2])):  # Y_h, Y_c: [1, N, H]
        if name:
            b.op("Unsqueeze", [state, axes], output=name)


class _Cell:
    """One LSTM step: i, o, f = sigmoid, g = tanh of the gates; c' = f c + i g; h' = o tanh(c')."""

    def __init__(self, b: _Builder, r: np.ndarray, hidden: int):
        self.b = b
        self.recurrent = b.const("R_T", r.T.copy())
        # Slices, not a Split: onnx-tf makes Split a SplitV with int64 sizes, which TFLite lacks.
        self.axis = b.const("axis", np.array([1], np.int64))
        self.bounds = [(b.const(f"start{k}", np.array([k * hidden], np.int64)),
                        b.const(f"end{k}", np.array([(k + 1) * hidden], np.int64))) for k in range(4)]

    def __call__(self, gates: str, h: str | None, c: str | None) -> tuple[str, str]:
        b = self.b
        if h is not None:
            gates = b.op("Add", [gates, b.op("MatMul", [h, self.recurrent])])
        i, o, f, g = (b.op("Slice", [gates, start, end, self.axis]) for start, end in self.bounds)
        i, o, f, g = b.op("Sigmoid", [i]), b.op("Sigmoid", [o]), b.op("Sigmoid", [f]), b.op("Tanh", [g])
        ig = b.op("Mul", [i, g])
        c = ig if c is None else b.op("Add", [b.op("Mul", [f, c]), ig])
        return b.op("Mul", [o, b.op("Tanh", [c])]), c


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
