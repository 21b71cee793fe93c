"""Normalisation layers, on whichever axes the layout holds the normalised ONNX axes."""
import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.arith import add
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import const_in_perm


@op("BatchNormalization")
def batch_norm(ctx):
    import keras

    x = ctx.tensor(0)
    if ctx.attr("training_mode", 0) or ctx.output_used(1):
        raise ctx.fail("training-mode batch normalisation is not supported (export in eval mode).")
    scale, bias, mean, var = (ctx.const(i).astype(np.float32) for i in range(1, 5))
    layer = keras.layers.BatchNormalization(axis=x.keras_axis(1), epsilon=float(ctx.attr("epsilon", 1e-5)),
                                            name=ctx.name())
    result = layer(x.keras)
    layer.set_weights([scale, bias, mean, var])
    ctx.set(result, x.perm)


@op("LayerNormalization")
def layer_norm(ctx):
    import keras

    x = ctx.tensor(0)
    axis = int(ctx.attr("axis", -1)) % x.rank
    if ctx.output_used(1) or ctx.output_used(2):
        raise ctx.fail("the mean and inverse-deviation outputs are not supported.")
    shape = ctx.c.probe.shape(ctx.input_names[0])
    normalised = list(range(axis, x.rank))
    if any(shape[a] is None for a in normalised):
        raise ctx.fail("normalising over a batch-sized axis is not supported.")
    keras_axes = sorted(x.keras_axis(a) for a in normalised)
    order = [x.perm[k] - axis for k in keras_axes]  # the normalised ONNX axes, in storage order
    full = [shape[a] for a in normalised]
    gamma = np.broadcast_to(ctx.const(1), full).transpose(order)
    beta = np.broadcast_to(ctx.const(2, np.zeros(())), full).transpose(order)
    layer = keras.layers.LayerNormalization(axis=keras_axes, epsilon=float(ctx.attr("epsilon", 1e-5)),
                                            name=ctx.name())
    result = layer(x.keras)
    layer.set_weights([gamma.astype(np.float32), beta.astype(np.float32)])
    ctx.set(result, x.perm)


def _normalise(x, axes, epsilon: float):
    from keras import ops

    mean, variance = ops.moments(x, axes=axes, keepdims=True)
    return (x - mean) / ops.sqrt(variance + np.float32(epsilon))


@op("InstanceNormalization")
def instance_norm(ctx):
    x = ctx.tensor(0)
    axes = [x.keras_axis(a) for a in range(2, x.rank)]
    result = _normalise(x.keras, axes, float(ctx.attr("epsilon", 1e-5)))
    scale, bias = (np.reshape(ctx.const(i), (1, -1) + (1,) * (x.rank - 2)).astype(np.float32) for i in (1, 2))
    ctx.set(add(result * const_in_perm(scale, x.rank, x.perm), const_in_perm(bias, x.rank, x.perm)), x.perm)


@op("GroupNormalization")
def group_norm(ctx):
    """Channels-last input: the channel axis splits into [groups, channels per group] in place (a group's
    channels are consecutive), no transpose; any other layout goes to ONNX order, [N, groups, rest]."""
    from keras import ops

    x = ctx.tensor(0)
    groups = int(ctx.attr("num_groups"))
    shape = ctx.c.probe.shape(ctx.input_names[0])
    channels = shape[1]
    if channels is None or any(d is None for d in shape[2:]) or channels % groups:
        raise ctx.fail(f"group normalisation of shape {shape} in {groups} groups is not supported.")
    epsilon = float(ctx.attr("epsilon", 1e-5))
    stored = [shape[p] for p in x.perm]
    if x.perm[-1] == 1:
        split = ops.reshape(x.keras, [-1, *stored[1:-1], groups, channels // groups])
        normalised = _normalise(split, [*range(1, x.rank - 1), x.rank], epsilon)
        result, perm = ops.reshape(normalised, [-1, *stored[1:]]), x.perm
    else:
        flat = ops.reshape(ctx.to_perm(x, layout.identity(x.rank)), [-1, groups, int(np.prod(shape[1:])) // groups])
        result, perm = ops.reshape(_normalise(flat, [2], epsilon), [-1, *shape[1:]]), layout.identity(x.rank)
    scale, bias = ctx.const(1), ctx.const(2)
    if scale.size == groups and groups != channels:  # opset 18: one scale per group
        scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
    scale, bias = (np.reshape(v, (1, channels) + (1,) * (x.rank - 2)).astype(np.float32) for v in (scale, bias))
    ctx.set(add(result * const_in_perm(scale, x.rank, perm), const_in_perm(bias, x.rank, perm)), perm)
