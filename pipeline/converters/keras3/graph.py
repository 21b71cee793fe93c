"""The conversion driver: walks the ONNX graph once, in order, and builds a Keras functional model.

Every ONNX tensor becomes one of three things (``values``):
- a NumPy array: initializers, and every tensor computed from constants and shapes only whose value
  the probe measured to be the same at both batch sizes (shape arithmetic folds away here);
- a ``Dynamic``: such a value that changes with the batch size (ops that need it take their output
  shapes from the probe);
- a ``Tensor``: a Keras tensor, with its own axis order (see ``layout``).
Only tensors that depend on the input data reach an op converter (``ops``), one per ONNX op type.
"""
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.layout import Dynamic, Tensor
from pipeline.converters.keras3.probe import Probe
from pipeline.errors import ConversionError

# Ops whose outputs depend on their input's shape only, never on its values.
SHAPE_ONLY_OPS = {"Shape", "Size"}


@dataclass
class Conversion:
    """The built model, its inputs' and outputs' layouts, and every ONNX tensor's Keras counterpart."""

    model: object
    input_names: list[str]
    output_names: list[str]
    input_perms: list[tuple[int, ...]]
    output_perms: list[tuple[int, ...]]
    values: dict = field(default_factory=dict)  # ONNX tensor name -> Tensor | np.ndarray | Dynamic
    fused: dict = field(default_factory=dict)  # op pattern -> count (e.g. {"Gelu": 2})


class Converter:
    def __init__(self, model: onnx.ModelProto, probe: Probe, extra_outputs: list[str] | None = None,
                 loops: bool = False):
        self.extra_outputs = list(extra_outputs or [])  # intermediate tensors to expose too (diagnosis)
        self.loops = loops  # recurrent layers that are not unrolled as TFLite-runnable while loops (SavedModel)
        self.model = model
        self.graph = model.graph
        self.probe = probe
        self.values: dict = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.data_dependent: dict[str, bool] = {name: False for name in self.values}
        self.consumers = _consumers(self.graph)
        self.producers = {name: node for node in self.graph.node for name in node.output}
        self._names: set[str] = set()
        self.inputs: list = []  # Keras Input tensors, in ONNX input order
        self.fused: dict[str, int] = {}
        self.skip: set[int] = set()  # nodes folded into a fused pattern
        self.replacements: dict[int, tuple] = {}  # node index -> (op_type, inputs, attrs) of a fused pattern

    # --- the walk ---------------------------------------------------------------------------------

    def convert(self) -> Conversion:
        import keras

        from pipeline.converters.keras3 import ops, patterns

        data_inputs = [i for i in self.graph.input if i.name not in self.values]
        uses_spatial = {node.op_type for node in self.graph.node} & ops.SPATIAL_OPS
        input_perms = []
        for info in data_inputs:
            shape = self.probe.shape(info.name)
            perm = layout.channels_last(len(shape)) if _channels_last_input(shape, uses_spatial) else \
                layout.identity(len(shape))
            keras_shape = tuple(shape[axis] for axis in perm)
            tensor = keras.Input(shape=keras_shape[1:], name=self.unique_name(info.name),
                                 dtype=_numpy_dtype(info.type.tensor_type.elem_type))
            self.inputs.append(tensor)
            self.values[info.name] = Tensor(tensor, perm)
            self.data_dependent[info.name] = True
            input_perms.append(perm)
        patterns.fuse(self)
        for index, node in enumerate(self.graph.node):
            if index in self.skip:
                continue
            op_type, inputs, attrs = self.replacements.get(index, (node.op_type, list(node.input), None))
            dependent = node.op_type not in SHAPE_ONLY_OPS and any(self.data_dependent.get(i, False) for i in
                                                                   [*inputs, *_outer_names(node)])
            for name in node.output:
                self.data_dependent[name] = dependent
            if not dependent:
                self._fold(node)
                continue
            handler = ops.HANDLERS.get(op_type)
            if handler is None:
                raise ConversionError(f"keras3: no converter for ONNX op {op_type} (node {node.name or index}).",
                                      "Pick another backend or target, or change the model around this op.",
                                      unsupported_op=op_type)
            handler(NodeContext(self, node, op_type, inputs, attrs))
        return self._finish(keras, input_perms)

    def _fold(self, node) -> None:
        for name in node.output:
            if not name:
                continue
            if name not in self.probe.values:
                raise ConversionError(f"keras3: {node.op_type} output {name} was not measured by the probe.",
                                      "Re-export the model.", unsupported_op=node.op_type)
            value = self.probe.constant(name)
            self.values[name] = value if value is not None else Dynamic(name, self.probe.values[name])

    def _finish(self, keras, input_perms) -> Conversion:
        outputs, output_perms, names = [], [], []
        image_input = any(len(p) >= 4 and p == layout.channels_last(len(p)) for p in input_perms)
        for info in self.graph.output:
            value = self.values.get(info.name)
            if not isinstance(value, Tensor):
                raise ConversionError(f"keras3: the model output {info.name} does not depend on the input.",
                                      "Export a model whose outputs are computed from its inputs.")
            # Images in, images out: a 4-D/5-D output keeps channels last, like the input; others as ONNX.
            perm = layout.channels_last(value.rank) if image_input and value.rank >= 4 else layout.identity(value.rank)
            tensor = keras.layers.Identity(name=self.unique_name(info.name))(self.to_perm(value, perm))
            outputs.append(tensor)
            output_perms.append(perm)
            names.append(info.name)
        for name in self.extra_outputs:  # as stored: the recorded perm tells the reader the axis order
            value = self.values.get(name)
            if isinstance(value, Tensor) and name not in names:
                outputs.append(keras.layers.Identity(name=self.unique_name(f"debug_{name}"))(value.keras))
                output_perms.append(value.perm)
                names.append(name)
        model = keras.Model(self.inputs, outputs, name="converted")
        data_inputs = [i.name for i in self.graph.input if isinstance(self.values.get(i.name), Tensor)]
        return Conversion(model, data_inputs, names, input_perms, output_perms, self.values, self.fused)

    # --- helpers for the op converters --------------------------------------------------------------

    def unique_name(self, base: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "node"
        candidate, count = name, 1
        while candidate in self._names:
            count += 1
            candidate = f"{name}_{count}"
        self._names.add(candidate)
        return candidate

    def to_perm(self, tensor: Tensor, perm) -> object:
        """The Keras tensor holding ``tensor`` with its axes in ``perm`` order."""
        from keras import ops

        perm = tuple(perm)
        if tensor.perm == perm:
            return tensor.keras
        relative = [tensor.perm.index(axis) for axis in perm]
        onnx_shape = tensor.onnx_shape()
        target = [onnx_shape[axis] for axis in perm]
        if layout.move_only_unit_axes(tensor.perm, perm, onnx_shape) and sum(d is None for d in target) <= 1:
            return ops.reshape(tensor.keras, [-1 if d is None else d for d in target])
        return ops.transpose(tensor.keras, relative)

    def batch_ones(self, onnx_shape, dtype: str = "float32") -> object:
        """A Keras tensor of ones with ``onnx_shape`` whose one dynamic axis takes the batch size.

        Used where ONNX broadcasts a constant up to the batch (Expand, ConstantOfShape, Tile): the
        batch size is read off the first model input, the only place a Keras graph knows it.
        """
        from keras import ops

        dynamic = [axis for axis, d in enumerate(onnx_shape) if d is None]
        if len(dynamic) != 1:
            raise ConversionError(f"keras3: a constant broadcast to shape {tuple(onnx_shape)}: exactly one "
                                  "batch-sized axis is supported.", "Keep the batch axis the only dynamic one.")
        source = self._first_input()
        other = [axis for axis in range(source.rank) if axis != source.perm.index(0)]
        ones = ops.cast(ops.ones_like(source.keras), dtype)
        column = ops.max(ones, axis=other) if other else ones  # [N]
        shape = [1] * len(onnx_shape)
        shape[dynamic[0]] = -1
        return ops.reshape(column, shape) * np.ones([1 if d is None else int(d) for d in onnx_shape], dtype)

    def _first_input(self) -> Tensor:
        first = next(i.name for i in self.graph.input if isinstance(self.values.get(i.name), Tensor))
        return self.values[first]



class NodeContext:
    """What an op converter sees: its node's attributes and inputs, the probe's output shapes, and helpers."""

    def __init__(self, converter: Converter, node, op_type: str, inputs: list[str], attrs: dict | None):
        self.c = converter
        self.node = node
        self.op_type = op_type
        self.input_names = inputs
        self.attrs = attrs if attrs is not None else {
            a.name: _decode(helper.get_attribute_value(a)) for a in node.attribute}

    # inputs
    def has(self, index: int) -> bool:
        return index < len(self.input_names) and bool(self.input_names[index])

    def value(self, index: int):
        return self.c.values[self.input_names[index]] if self.has(index) else None

    def data(self, index: int):
        """An input as an op computes with it: a Keras ``Tensor`` or a NumPy constant (None when omitted).
        A batch-dependent value that is not data (a constant expanded to the batch and what is computed
        from it alone, e.g. a decoder's learned queries) becomes a Keras tensor sized by the batch."""
        value = self.value(index)
        if isinstance(value, Dynamic):
            from pipeline.converters.keras3.ops.common import materialize

            return materialize(self, index)
        return value

    def tensor(self, index: int) -> Tensor:
        value = self.data(index)
        if not isinstance(value, Tensor):
            raise self.fail(f"input {index} was expected to depend on the model input.")
        return value

    def const(self, index: int, default=None) -> np.ndarray | None:
        """A constant input (None when omitted); refuses a data- or batch-dependent one."""
        value = self.value(index)
        if value is None:
            return default
        if not isinstance(value, np.ndarray):
            raise self.fail(f"input {index} ({self.input_names[index]}) must be a constant here.")
        return value

    def in_shape(self, index: int) -> tuple:
        """The ONNX shape of input ``index``: a constant's own, or the probe's (None for the batch axis)."""
        value = self.value(index)
        if isinstance(value, np.ndarray):
            return tuple(value.shape)
        return self.c.probe.shape(self.input_names[index])

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    # outputs
    def out_shape(self, index: int = 0) -> tuple:
        return self.c.probe.shape(self.node.output[index])

    def set(self, tensor, perm, index: int = 0) -> None:
        self.c.values[self.node.output[index]] = Tensor(tensor, tuple(perm))

    def set_value(self, value, index: int = 0) -> None:
        self.c.values[self.node.output[index]] = value

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and bool(self.node.output[index]) and (
            self.node.output[index] in self.c.consumers or
            self.node.output[index] in {o.name for o in self.c.graph.output})

    # helpers
    def name(self, suffix: str = "") -> str:
        return self.c.unique_name((self.node.name or self.op_type) + (f"_{suffix}" if suffix else ""))

    def to_perm(self, tensor: Tensor, perm):
        return self.c.to_perm(tensor, perm)

    def fail(self, message: str, hint: str = "") -> ConversionError:
        """The refusal to raise: what this op cannot do exactly, naming the op."""
        return ConversionError(f"keras3: {self.op_type} ({self.node.name}): {message}",
                               hint or "Pick another backend or target, or change the model around this op.",
                               unsupported_op=self.op_type)


def _consumers(graph) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _outer_names(node) -> list[str]:
    """The enclosing graph's tensors that a node's subgraphs (If/Loop/Scan bodies) read."""
    names = []
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            inner = {i.name for i in graph.initializer} | {i.name for i in graph.input}
            for sub in graph.node:
                names += [name for name in [*sub.input, *_outer_names(sub)] if name and name not in inner]
                inner.update(sub.output)
    return names


def _channels_last_input(shape, spatial_ops: set) -> bool:
    """Images (rank 4, 5) always; a rank-3 input only when the graph has 1-D convolutions or pools."""
    return len(shape) >= 4 or (len(shape) == 3 and bool(spatial_ops))


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _numpy_dtype(elem_type: int) -> str:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
