"""Elementwise ops with NumPy broadcasting: operands meet in one layout, the output keeps it."""
import functools

import numpy as np

from pipeline.converters.keras3.arith import add
from pipeline.converters.keras3.layout import Tensor
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import onnx_dtype, operands

BINARY = {
    "Sub": "subtract", "Mul": "multiply", "Pow": "power",
    "Equal": "equal", "Less": "less", "LessOrEqual": "less_equal", "Greater": "greater",
    "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
}
VARIADIC = {"Max": "maximum", "Min": "minimum"}
UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Abs": "abs", "Neg": "negative", "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign",
    "Sin": "sin", "Cos": "cos", "Reciprocal": "reciprocal", "Erf": "erf", "Softplus": "softplus",
    "Not": "logical_not", "Atan": "arctan", "Tan": "tan", "Asin": "arcsin", "Acos": "arccos",
    "Sinh": "sinh", "Cosh": "cosh", "Asinh": "arcsinh", "Acosh": "arccosh", "Atanh": "arctanh",
}


@op("Add")
def add_op(ctx):
    (a, b), perm = operands(ctx)
    ctx.set(add(a, b), perm)


@op(*BINARY)
def binary(ctx):
    from keras import ops

    (a, b), perm = operands(ctx)
    if ctx.op_type == "Pow" and isinstance(b, np.ndarray) and b.size == 1 and float(b) == 2.0:
        ctx.set(ops.square(a), perm)
        return
    ctx.set(getattr(ops, BINARY[ctx.op_type])(a, b), perm)


@op("Div")
def div(ctx):
    from keras import ops

    (a, b), perm = operands(ctx)
    integer = all(np.dtype(getattr(x, "dtype", "float32")).kind in "iu" for x in (a, b))
    if integer:  # ONNX integer division truncates; floor_divide matches for non-negative values only
        raise ctx.fail("integer division of data-dependent values is not supported.")
    ctx.set(ops.divide(a, b), perm)


@op(*VARIADIC, "Sum", "Mean")
def variadic(ctx):
    from keras import ops

    values, perm = operands(ctx)
    function = add if ctx.op_type in ("Sum", "Mean") else getattr(ops, VARIADIC[ctx.op_type])
    result = functools.reduce(function, values)
    if ctx.op_type == "Mean":
        result = result / np.float32(len(values))
    ctx.set(result, perm)


@op("Where")
def where(ctx):
    from keras import ops

    (condition, a, b), perm = operands(ctx)
    ctx.set(ops.where(condition, a, b), perm)


@op("Mod")
def mod(ctx):
    from keras import ops

    (a, b), perm = operands(ctx)
    if ctx.attr("fmod", 0):  # C fmod: the sign of the dividend
        ctx.set(a - ops.trunc(a / b) * b, perm)
    else:
        ctx.set(ops.mod(a, b), perm)


@op(*UNARY)
def unary(ctx):
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(getattr(ops, UNARY[ctx.op_type])(x.keras), x.perm)


def _unwidened(ctx, index: int):
    """Input ``index``, or what it was before a float -> double Cast: ``torch.nan_to_num`` casts to
    float64 before IsInf, which TFLite cannot run; widening keeps every inf and NaN as it was."""
    from onnx import TensorProto

    producer = ctx.c.producers.get(ctx.input_names[index])
    if producer is not None and producer.op_type == "Cast" and \
            any(a.name == "to" and a.i == TensorProto.DOUBLE for a in producer.attribute):
        source = ctx.c.values.get(producer.input[0])
        if isinstance(source, Tensor) and str(source.keras.dtype) in ("float16", "bfloat16", "float32"):
            return source
    return ctx.tensor(index)


@op("IsInf")
def is_inf(ctx):
    """As comparisons with infinity (TFLite has no IsInf kernel; ``torch.nan_to_num`` exports it)."""
    from keras import ops

    x = _unwidened(ctx, 0)
    positive, negative = bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1))
    inf = np.asarray(np.inf, dtype=str(x.keras.dtype))
    if positive and negative:
        found = ops.equal(ops.abs(x.keras), inf)
    elif positive:
        found = ops.equal(x.keras, inf)
    elif negative:
        found = ops.equal(x.keras, -inf)
    else:
        found = ops.zeros_like(x.keras, dtype="bool")
    ctx.set(found, x.perm)


@op("IsNaN")
def is_nan(ctx):
    """``x != x`` (TFLite has no IsNan kernel)."""
    from keras import ops

    x = _unwidened(ctx, 0)
    ctx.set(ops.not_equal(x.keras, x.keras), x.perm)


@op("Identity", "Dropout")
def identity(ctx):
    if ctx.op_type == "Dropout" and ctx.output_used(1):
        raise ctx.fail("the dropout mask output is not supported (it is all ones at inference).")
    ctx.set_value(ctx.value(0))


@op("Cast", "CastLike")
def cast(ctx):
    from keras import ops

    x = ctx.tensor(0)
    dtype = onnx_dtype(ctx.attr("to")) if ctx.op_type == "Cast" else _dtype_of(ctx.data(1))
    ctx.set(ops.cast(x.keras, dtype), x.perm)


def _dtype_of(value) -> str:
    return np.dtype(value.dtype).name if isinstance(value, np.ndarray) else str(value.keras.dtype)


@op("Clip")
def clip(ctx):
    from keras import ops

    x = ctx.tensor(0)
    low = ctx.attr("min") if "min" in ctx.attrs else ctx.const(1)
    high = ctx.attr("max") if "max" in ctx.attrs else ctx.const(2)
    # Bounds in the tensor's own dtype: integer ids clamped into a table (``ids.clamp(0, n - 1)``) stay
    # integers, and TensorFlow's Minimum/Maximum take no float bound for them.
    dtype = np.dtype(str(x.keras.dtype))
    low = None if low is None else np.asarray(low).astype(dtype).reshape(())
    high = None if high is None else np.asarray(high).astype(dtype).reshape(())
    if dtype.kind == "f" and low == 0.0 and high == 6.0:
        ctx.set(ops.relu6(x.keras), x.perm)
    elif low is not None and high is not None:
        ctx.set(ops.minimum(ops.maximum(x.keras, low), high), x.perm)
    elif low is not None:
        ctx.set(ops.maximum(x.keras, low), x.perm)
    elif high is not None:
        ctx.set(ops.minimum(x.keras, high), x.perm)
    else:
        ctx.set_value(x)
