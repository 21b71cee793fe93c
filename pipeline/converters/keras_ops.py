"""The ONNX op converters we register in onnx2keras' converter table (``AVAILABLE_CONVERTERS``).

Each builds only built-in, serialisable Keras layers (no Lambda), so the saved ``.keras`` file loads
with ``safe_mode=True``:
- ``LogSoftmax`` (missing in onnx2keras), ``Softmax`` and ``Flatten`` (Lambdas there);
- 1-D ``Conv`` and ``MaxPool`` (onnx2keras builds Conv1d from a Lambda and has no MaxPool1D);
- for sequence models, ``LSTM`` and the ``Transpose``/``Squeeze``/``Gather`` torch puts around it.
  torch exports LSTMs time-major, but a Keras tensor always has the batch first, so these converters
  look up where the batch axis of each ONNX tensor is (``GraphFacts``, from ONNX shape inference) and
  hold every tensor with its batch axis moved to the front; a transpose that only moves the batch is free.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pipeline.converters import onnx_rewrites
from pipeline.errors import ConversionError


def _last_axis(node, params, rank_hint: int | None = None) -> bool:
    axis = params.get("axis", -1)
    return axis == -1 or (rank_hint is not None and axis == rank_hint - 1)


def convert_log_softmax(node, params, layers, lambda_func, node_name, keras_name):
    _activation("log_softmax", node, params, layers, node_name, keras_name)


def convert_softmax(node, params, layers, lambda_func, node_name, keras_name):
    _activation("softmax", node, params, layers, node_name, keras_name)


def _activation(name, node, params, layers, node_name, keras_name):
    import keras
    from onnx2keras.utils import ensure_tf_type

    x = ensure_tf_type(layers[node.input[0]], name=f"{keras_name}_const")
    if not _last_axis(node, params, len(x.shape)):
        raise ConversionError(f"onnx2keras: {node.op_type} over axis {params['axis']} (not the last) "
                              "is not supported.", "Apply it over the last axis in the model.")
    # Activation(...) serialises by name: no Lambda, so the file loads in safe mode.
    layers[node_name] = keras.layers.Activation(name, name=keras_name)(x)


def convert_flatten(node, params, layers, lambda_func, node_name, keras_name):
    """Flatten in PyTorch's (channels-first) element order, whatever the Keras layout."""
    import keras
    from onnx2keras.utils import ensure_tf_type

    x = ensure_tf_type(layers[node.input[0]], layers[list(layers)[0]], name=f"{keras_name}_const")
    if params["change_ordering"] and len(x.shape) in (3, 4):
        # onnx2keras rebuilds the graph channels-last and remaps a 3-D Permute's dims on the
        # way; (3, 1, 2) maps to itself, i.e. NHWC -> NCHW. A 2-D Permute is kept: NLC -> NCL.
        dims = (3, 1, 2) if len(x.shape) == 4 else (2, 1)
        x = keras.layers.Permute(dims, name=f"{keras_name}_to_channels_first")(x)
    layers[node_name] = keras.layers.Flatten(name=keras_name)(x)


# --- 1-D convolution and pooling (onnx2keras builds Conv1d from a Lambda, has no MaxPool1D) -----
# They are built channels-first like the rest of the first pass of onnx2keras; its channels-last
# clone then switches their ``data_format``.

def convert_conv(node, params, layers, lambda_func, node_name, keras_name):
    import keras
    from onnx2keras.convolution_layers import convert_conv as convert_conv_nd
    from onnx2keras.utils import ensure_tf_type, is_numpy

    weights = layers[node.input[1]]
    if not is_numpy(weights) or weights.ndim != 3:
        return convert_conv_nd(node, params, layers, lambda_func, node_name, keras_name)
    _require_explicit_padding(node, params)
    x = ensure_tf_type(layers[node.input[0]], layers[list(layers)[0]], name=f"{keras_name}_const")
    bias = layers[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    pads = params.get("pads", [0, 0])
    if any(pads):
        x = keras.layers.ZeroPadding1D(tuple(pads), data_format="channels_first", name=f"{keras_name}_pad")(x)
    filters, _, width = weights.shape
    conv = keras.layers.Conv1D(filters, width, strides=params.get("strides", [1])[0],
                               dilation_rate=params.get("dilations", [1])[0], groups=params.get("group", 1),
                               use_bias=bias is not None, data_format="channels_first", name=keras_name)
    layers[node_name] = conv(x)
    # ONNX [out, in / groups, width] -> Keras [width, in / groups, out]
    conv.set_weights([weights.transpose(2, 1, 0)] + ([bias] if bias is not None else []))


def convert_maxpool(node, params, layers, lambda_func, node_name, keras_name):
    import keras
    from onnx2keras.pooling_layers import convert_maxpool as convert_maxpool_nd
    from onnx2keras.utils import ensure_tf_type

    if len(params["kernel_shape"]) != 1:
        return convert_maxpool_nd(node, params, layers, lambda_func, node_name, keras_name)
    _require_explicit_padding(node, params)
    (size,), (stride,) = params["kernel_shape"], params.get("strides", [1])
    x = ensure_tf_type(layers[node.input[0]], layers[list(layers)[0]], name=f"{keras_name}_const")
    length = x.shape[2]
    partial_window = params.get("ceil_mode") and (length is None or (length - size) % stride)
    if any(params.get("pads", [0, 0])) or params.get("dilations", [1]) != [1] or partial_window:
        raise ConversionError("onnx2keras: a 1-D MaxPool with padding, dilation or ceil_mode is not supported.",
                              "Use an unpadded max_pool1d.", unsupported_op="MaxPool")
    pool = keras.layers.MaxPooling1D(size, strides=stride, padding="valid", data_format="channels_first",
                                     name=keras_name)
    layers[node_name] = pool(x)


def _require_explicit_padding(node, params) -> None:
    auto_pad = params.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET"):
        raise ConversionError(f"onnx2keras: {node.op_type} with auto_pad={auto_pad!r} is not supported.",
                              "Export with explicit pads.", unsupported_op=node.op_type)


# --- sequence models: LSTM and the ops torch puts around it --------------------------------------

@dataclass
class GraphFacts:
    """What the converters need to know about the graph beyond their node."""

    batch_axis: dict[str, int] = field(default_factory=dict)  # ONNX tensor -> its batch axis (absent: 0)
    consumed: set[str] = field(default_factory=set)  # tensors some node or the graph output reads


_facts = GraphFacts()


@contextmanager
def graph_facts(model):
    """Make ``model``'s facts visible to the converters for the duration of its conversion."""
    global _facts
    shapes = onnx_rewrites.static_shapes(model)
    batch = shapes.get(model.graph.input[0].name, [None])[0]
    batch_axis = {} if not isinstance(batch, str) else {
        name: shape.index(batch) for name, shape in shapes.items() if shape.count(batch) == 1}
    consumed = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    previous, _facts = _facts, GraphFacts(batch_axis, consumed)
    try:
        yield _facts
    finally:
        _facts = previous


def _keras_axes(name: str, rank: int) -> list[int]:
    """The ONNX axis each axis of the Keras tensor holds: the batch axis first, the rest in order."""
    batch = _facts.batch_axis.get(name, 0)
    return [batch] + [axis for axis in range(rank) if axis != batch]


def _batch_moves(node, params) -> bool:
    """Whether the node reads or writes a tensor whose batch axis is not the first."""
    moves = any(_facts.batch_axis.get(name, 0) for name in [*node.input, *node.output])
    if moves and params["change_ordering"]:
        raise ConversionError(f"onnx2keras: {node.op_type} moves the batch axis in a channels-last graph.",
                              "Keep the batch axis first.", unsupported_op=node.op_type)
    return moves


def _reshape_target(dims, node) -> tuple[int, ...]:
    if sum(d is None for d in dims) > 1:
        raise ConversionError(f"onnx2keras: {node.op_type} to a shape with several unknown axes ({dims}).",
                              "Export with static shapes except the batch.", unsupported_op=node.op_type)
    return tuple(-1 if d is None else int(d) for d in dims)


def convert_transpose(node, params, layers, lambda_func, node_name, keras_name):
    """A transpose on the Keras tensors (batch first), which is nothing when only the batch moves."""
    import keras
    from onnx2keras.reshape_layers import convert_transpose as convert_transpose_batch_first
    from onnx2keras.utils import is_numpy

    x = layers[node.input[0]]
    if is_numpy(x) or not _batch_moves(node, params):
        return convert_transpose_batch_first(node, params, layers, lambda_func, node_name, keras_name)
    perm = list(params["perm"])
    axes_in, axes_out = _keras_axes(node.input[0], len(perm)), _keras_axes(node.output[0], len(perm))
    keras_perm = [axes_in.index(perm[axis]) for axis in axes_out]
    if keras_perm == sorted(keras_perm):
        layers[node_name] = x
    else:
        layers[node_name] = keras.layers.Permute(keras_perm[1:], name=keras_name)(x)


def convert_squeeze(node, params, layers, lambda_func, node_name, keras_name):
    """A Reshape (onnx2keras' Squeeze is a Lambda)."""
    import keras
    from onnx2keras.utils import is_numpy, param_or_input

    x = layers[node.input[0]]
    axes = param_or_input(node, params, layers, "axes", 1, default=None)
    if is_numpy(x):
        layers[node_name] = np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))
        return
    rank = len(x.shape)
    onnx_axes = _keras_axes(node.input[0], rank)
    if axes is None:
        axes = [onnx_axes[i] for i in range(1, rank) if x.shape[i] == 1]
    axes = {int(a) % rank for a in axes}
    kept = [x.shape[i] for i in range(1, rank) if onnx_axes[i] not in axes]
    if onnx_axes[0] in axes or (params["change_ordering"] and len(kept) > 1):
        # The channels-last clone would reorder a Reshape's target: only a squeeze to [N, C] is safe.
        raise ConversionError("onnx2keras: Squeeze of the batch axis, or to rank 3+ in a channels-last graph, is "
                              "not supported.", "Flatten instead.", unsupported_op="Squeeze")
    layers[node_name] = keras.layers.Reshape(_reshape_target(kept, node), name=keras_name)(x)


def convert_gather(node, params, layers, lambda_func, node_name, keras_name):
    """One index of a non-batch axis (``out[:, -1]``): Cropping1D down to it, then a Reshape."""
    import keras
    from onnx2keras.reshape_layers import convert_gather as convert_gather_constant
    from onnx2keras.utils import is_numpy

    data, indices = layers[node.input[0]], layers[node.input[1]]
    if is_numpy(data):
        return convert_gather_constant(node, params, layers, lambda_func, node_name, keras_name)
    rank = len(data.shape)
    onnx_axes = _keras_axes(node.input[0], rank)
    position = onnx_axes.index(params.get("axis", 0) % rank)
    size = data.shape[position]
    if (not is_numpy(indices) or np.ndim(indices) != 0 or position == 0 or rank < 3 or size is None
            or params["change_ordering"]):
        raise ConversionError("onnx2keras: Gather is supported as one constant index of a static, non-batch axis "
                              "of a rank 3+ tensor, in a sequence graph.", "Index the model's output differently.",
                              unsupported_op="Gather")
    index = int(indices) % size
    kept = [data.shape[i] for i in range(1, rank) if i != position]
    x = data
    if position != 1:  # bring the gathered axis next to the batch
        x = keras.layers.Permute([position] + [i for i in range(1, rank) if i != position],
                                 name=f"{keras_name}_axis_first")(x)
    if rank != 3:
        x = keras.layers.Reshape((size, -1), name=f"{keras_name}_to_3d")(x)
    x = keras.layers.Cropping1D((index, size - index - 1), name=f"{keras_name}_crop")(x)
    layers[node_name] = keras.layers.Reshape(_reshape_target(kept, node), name=keras_name)(x)


def convert_lstm(node, params, layers, lambda_func, node_name, keras_name):
    """keras.layers.LSTM over the batch-first [N, T, F] Keras tensor, weights mapped from W, R, B."""
    import keras
    from onnx2keras.utils import is_numpy

    name = keras_name[0] if isinstance(keras_name, list) else keras_name
    inputs = list(node.input) + [""] * (8 - len(node.input))
    outputs = list(node.output) + [""] * (3 - len(node.output))
    try:
        hidden = onnx_rewrites.plain_lstm_hidden_size(node, layouts=(0, 1))
    except onnx_rewrites.RewriteError as exc:
        raise ConversionError(f"onnx2keras: {exc}", "Use a plain forward LSTM.", unsupported_op="LSTM") from exc
    time_major = params.get("layout", 0) == 0
    if any(inputs[5:7]) or not all(is_numpy(layers[i]) for i in inputs[1:4] if i):
        raise ConversionError("onnx2keras: LSTM with a non-zero initial state or computed weights is not supported.",
                              "Start from zeros (PyTorch's default).", unsupported_op="LSTM")
    if _facts.batch_axis.get(inputs[0]) != (1 if time_major else 0):
        raise ConversionError("onnx2keras: the LSTM's input batch axis is not where ONNX's LSTM has it (is the model "
                              "batch-first, with a dynamic batch axis?).", "Use batch_first=True and export with a "
                              "dynamic batch axis.", unsupported_op="LSTM")
    x = layers[inputs[0]]  # [N, T, F] whatever the ONNX layout
    with_states = any(o in _facts.consumed for o in outputs[1:])
    lstm = keras.layers.LSTM(hidden, return_sequences=True, return_state=with_states, name=name)
    result = lstm(x)
    bias = layers[inputs[3]] if inputs[3] else None
    lstm.set_weights(_keras_lstm_weights(layers[inputs[1]], layers[inputs[2]], bias, hidden))
    sequence, *states = result if with_states else [result]
    # ONNX Y is [T, 1, N, H] (layout 0) or [N, T, 1, H]: batch first, both are [N, T, 1, H].
    steps = x.shape[1]
    layers[outputs[0]] = keras.layers.Reshape((steps or -1, 1, hidden), name=f"{name}_Y")(sequence)
    for output, state, label in zip(outputs[1:], states, ("Y_h", "Y_c"), strict=False):
        if output:  # [1, N, H] or [N, 1, H]: [N, 1, H] batch first
            layers[output] = keras.layers.Reshape((1, hidden), name=f"{name}_{label}")(state)


def _keras_lstm_weights(w, r, b, hidden: int) -> list[np.ndarray]:
    """ONNX W [1, 4H, F], R [1, 4H, H], B [1, 8H] (gates i, o, f, c) -> Keras kernel [F, 4H],
    recurrent kernel [H, 4H] and bias [4H] (gates i, f, c, o; one bias, so Wb + Rb)."""
    def keras_gate_order(m):
        i, o, f, c = np.split(m, 4)
        return np.concatenate([i, f, c, o])

    bias = np.zeros(4 * hidden, w.dtype) if b is None else b[0][:4 * hidden] + b[0][4 * hidden:]
    return [keras_gate_order(w[0]).T, keras_gate_order(r[0]).T, keras_gate_order(bias)]


# Ops whose converters above hold tensors with the batch axis moved first; every other converter
# (onnx2keras') must only see tensors whose batch axis already is the first.
BATCH_AWARE_OPS = {"Transpose", "Squeeze", "Gather", "LSTM"}


# --- a tensor times or plus one constant value (the preprocessing in front of a grey image model) ---------

def convert_mul(node, params, layers, lambda_func, node_name, keras_name):
    _affine_or_default("Mul", node, params, layers, lambda_func, node_name, keras_name)


def convert_add(node, params, layers, lambda_func, node_name, keras_name):
    _affine_or_default("Add", node, params, layers, lambda_func, node_name, keras_name)


def _affine_or_default(op: str, node, params, layers, lambda_func, node_name, keras_name):
    """A tensor times or plus a constant with a single value as Keras' built-in ``Rescaling`` (onnx2keras
    makes the constant a Lambda layer, which safe_mode refuses); anything else as onnx2keras does it."""
    import keras
    from onnx2keras.elementwise_layers import convert_elementwise_add, convert_elementwise_mul
    from onnx2keras.utils import is_numpy

    a, b = (layers[name] for name in node.input)
    constant, tensor = (a, b) if is_numpy(a) and not is_numpy(b) else (b, a) if is_numpy(b) and not is_numpy(a) \
        else (None, None)
    if constant is None or constant.size == 0 or not np.all(constant == constant.flat[0]) \
            or constant.ndim > len(tensor.shape):  # a constant that broadcasts the tensor to more axes
        default = convert_elementwise_mul if op == "Mul" else convert_elementwise_add
        return default(node, params, layers, lambda_func, node_name, keras_name)
    value = float(constant.flat[0])
    scale, offset = (value, 0.0) if op == "Mul" else (1.0, value)
    layers[node_name] = keras.layers.Rescaling(scale, offset=offset, name=keras_name)(tensor)


EXTRA_CONVERTERS = {
    "Mul": convert_mul,
    "Add": convert_add,
    "LogSoftmax": convert_log_softmax,
    "Softmax": convert_softmax,
    "Flatten": convert_flatten,
    "Conv": convert_conv,
    "MaxPool": convert_maxpool,
    "Transpose": convert_transpose,
    "Squeeze": convert_squeeze,
    "Gather": convert_gather,
    "LSTM": convert_lstm,
}


def register_converters() -> None:
    from onnx2keras.layers import AVAILABLE_CONVERTERS

    AVAILABLE_CONVERTERS.update(EXTRA_CONVERTERS)


def check_batch_first(model) -> None:
    """onnx2keras' own converters assume the batch axis first: refuse a graph that moves it elsewhere."""
    for node in model.graph.node:
        moved = [n for n in [*node.input, *node.output] if _facts.batch_axis.get(n, 0)]
        if node.op_type not in BATCH_AWARE_OPS and moved:
            raise ConversionError(f"onnx2keras: {node.op_type} on {moved[0]}, whose batch axis is not the first, is "
                                  "not supported.", "Keep the batch axis first around this op.",
                                  unsupported_op=node.op_type)
