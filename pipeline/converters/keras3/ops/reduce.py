"""Reductions and ops along one axis (softmax, argmax, cumsum, top-k): the axes map through the layout."""
import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import axis_list

REDUCTIONS = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min",
              "ReduceProd": "prod", "ReduceLogSumExp": "logsumexp"}
DERIVED = {"ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum"}


def _reduced_perm(perm, axes) -> list[int]:
    return [p - sum(a < p for a in axes) for p in perm if p not in axes]


@op(*REDUCTIONS, *DERIVED)
def reduce(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axes = ctx.attr("axes") if "axes" in ctx.attrs else ctx.const(1)
    if axes is None or np.size(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            ctx.set_value(x)
            return
        axes = list(range(x.rank))
    axes = axis_list(axes, x.rank)
    keep = bool(ctx.attr("keepdims", 1))
    keras_axes = tuple(sorted(x.keras_axis(a) for a in axes))
    value = x.keras
    if ctx.op_type == "ReduceL1":
        value, name = ops.abs(value), "sum"
    elif ctx.op_type in ("ReduceL2", "ReduceSumSquare"):
        value, name = ops.square(value), "sum"
    elif ctx.op_type == "ReduceLogSum":
        name = "sum"
    else:
        name = REDUCTIONS[ctx.op_type]
    result = getattr(ops, name)(value, axis=keras_axes, keepdims=keep)
    if ctx.op_type == "ReduceL2":
        result = ops.sqrt(result)
    elif ctx.op_type == "ReduceLogSum":
        result = ops.log(result)
    ctx.set(result, x.perm if keep else _reduced_perm(x.perm, axes))


@op("ArgMax", "ArgMin")
def argmax(ctx):
    """The first (or, with select_last_index, the last) position of the extreme value (``extreme_index``)."""
    from keras import ops

    x = ctx.tensor(0)
    axis = int(ctx.attr("axis", 0)) % x.rank
    if ctx.c.probe.shape(ctx.input_names[0])[axis] is None:
        raise ctx.fail("an arg-max/min along the batch axis is not supported.")
    keep = bool(ctx.attr("keepdims", 1))
    result = extreme_index(x.keras, x.keras_axis(axis), ctx.op_type == "ArgMax", keep,
                           last=bool(ctx.attr("select_last_index", 0)))
    ctx.set(ops.cast(result, "int64"), x.perm if keep else _reduced_perm(x.perm, [axis]))


def extreme_index(x, axis: int, largest: bool, keepdims: bool, last: bool = False):
    """The first (or last) index of the maximum (minimum) along ``axis``, as ONNX ArgMax/ArgMin define it:
    the extreme value, then the lowest (highest) index holding it. Not ``keras.ops.argmax``: for floats
    it tells -0.0 from 0.0 with a sign-bit test (BitwiseAnd, no TFLite builtin) and then ranks -0.0
    below 0.0, where PyTorch and onnxruntime take them as equal."""
    from keras import ops

    size = x.shape[axis]
    extreme = (ops.max if largest else ops.min)(x, axis=axis, keepdims=True)
    shape = [1] * len(x.shape)
    shape[axis] = size
    positions = np.arange(size, dtype=np.int32).reshape(shape)
    if last:
        return ops.max(ops.where(ops.equal(x, extreme), positions, np.int32(-1)), axis=axis, keepdims=keepdims)
    return ops.min(ops.where(ops.equal(x, extreme), positions, np.int32(size)), axis=axis, keepdims=keepdims)


@op("Softmax", "LogSoftmax")
def softmax(ctx):
    from keras import ops

    x = ctx.tensor(0)
    opset = next(o.version for o in ctx.c.model.opset_import if o.domain in ("", "ai.onnx"))
    axis = int(ctx.attr("axis", -1 if opset >= 13 else 1)) % x.rank
    function = ops.softmax if ctx.op_type == "Softmax" else ops.log_softmax
    if opset >= 13 or axis == x.rank - 1:
        result = function(x.keras, axis=x.keras_axis(axis))
        if ctx.op_type == "Softmax" and _nan_checked(ctx):
            result = _nan_on_masked_rows(x.keras, result, x.keras_axis(axis))
        ctx.set(result, x.perm)
        return
    # Before opset 13 the input is seen as 2-D: [prod(shape[:axis]), prod(shape[axis:])].
    shape = ctx.c.probe.shape(ctx.input_names[0])
    if any(d is None for d in shape[axis:]):
        raise ctx.fail("a pre-opset-13 softmax over a batch-sized axis is not supported.")
    flat = ops.reshape(ctx.to_perm(x, layout.identity(x.rank)), [-1, int(np.prod(shape[axis:]))])
    restored = ops.reshape(function(flat, axis=-1), [-1 if d is None else d for d in shape])
    ctx.set(restored, layout.identity(x.rank))


def _nan_checked(ctx) -> bool:
    """Whether the softmax's output goes into ``IsNaN``: PyTorch's ``scaled_dot_product_attention`` zeroes
    the NaN rows of fully masked queries (``where(isnan(p), 0, p)``, transformers' causal LMs with a padding
    mask), and TFLite's softmax returns a uniform row instead of NaN for a row of ``-inf``."""
    return any(consumer.op_type == "IsNaN" for consumer in ctx.c.consumers.get(ctx.node.output[0], []))


def _nan_on_masked_rows(x, result, axis: int):
    """ONNX's softmax of a row of ``-inf`` (every position masked): NaN, on every runtime. At or below the
    lowest finite float: TFLite may hold a ``-inf`` constant as that (``where(mask, 0, -inf)`` alone does)."""
    from keras import ops

    lowest = np.asarray(np.finfo(str(x.dtype)).min, dtype=str(x.dtype))
    masked = ops.less_equal(ops.max(x, axis=axis, keepdims=True), lowest)
    return ops.where(masked, np.asarray(np.nan, dtype=str(x.dtype)), result)


@op("Hardmax")
def hardmax(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axis = x.keras_axis(int(ctx.attr("axis", -1)))
    moved = [p for p in x.perm if p != x.perm[axis]] + [x.perm[axis]]
    stored = ctx.to_perm(x, moved)
    index = extreme_index(stored, len(moved) - 1, largest=True, keepdims=False)
    ctx.set(ops.one_hot(index, stored.shape[-1], dtype=str(stored.dtype)), moved)


@op("LpNormalization")
def lp_normalization(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axis = x.keras_axis(int(ctx.attr("axis", -1)))
    p = int(ctx.attr("p", 2))
    norm = ops.sqrt(ops.sum(ops.square(x.keras), axis=axis, keepdims=True)) if p == 2 else \
        ops.sum(ops.abs(x.keras), axis=axis, keepdims=True)
    ctx.set(x.keras / norm, x.perm)


@op("CumSum")
def cumsum(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axis = x.keras_axis(int(np.asarray(ctx.const(1))))
    value = ops.flip(x.keras, axis=axis) if ctx.attr("reverse", 0) else x.keras
    result = ops.cumsum(value, axis=axis)
    if ctx.attr("exclusive", 0):
        result = result - value
    ctx.set(ops.flip(result, axis=axis) if ctx.attr("reverse", 0) else result, x.perm)


@op("TopK")
def top_k(ctx):
    from keras import ops

    x = ctx.tensor(0)
    k = int(np.asarray(ctx.const(1)).reshape(-1)[0])
    axis = int(ctx.attr("axis", -1)) % x.rank
    moved = [p for p in x.perm if p != axis] + [axis]  # keras' top_k works on the last axis
    stored = ctx.to_perm(x, moved)
    largest = bool(ctx.attr("largest", 1))
    if not largest and "float" not in str(stored.dtype):
        raise ctx.fail("TopK with largest=0 (an ascending sort) of integers is not supported.")
    # The smallest k are the largest of -x (ties keep the lower index first, as ONNX asks, either way).
    values, indices = ops.top_k(stored if largest else ops.negative(stored), k, sorted=True)
    ctx.set(values if largest else ops.negative(values), moved, 0)
    if ctx.output_used(1):
        ctx.set(ops.cast(indices, "int64"), moved, 1)
