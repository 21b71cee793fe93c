"""Conv and ConvTranspose as Keras layers on channels-last tensors (Keras' CPU kernels need them)."""
import math

import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.arith import add
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import const_in_perm


def spatial_pads(ctx, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) zero padding per spatial axis, from ``pads`` or ``auto_pad``."""
    n = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * 2 * n))
        return [(int(pads[i]), int(pads[i + n])) for i in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    result = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        if size is None:
            raise ctx.fail("auto_pad over a dynamic spatial axis is not supported.")
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        result.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return result


def is_same_padding(pads, in_sizes, kernel, strides, dilations) -> bool:
    """Whether explicit ``pads`` are what Keras' ``padding="same"`` pads: then no separate Pad op."""
    for (begin, end), size, k, s, d in zip(pads, in_sizes, kernel, strides, dilations, strict=True):
        if size is None:
            return False
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        if (begin, end) != (total // 2, total - total // 2):
            return False
    return True


def zero_pad(ctx, x, pads, value: float = 0.0):
    """Pad the spatial axes of a channels-last tensor."""
    from keras import ops

    if not any(b or e for b, e in pads):
        return x
    return ops.pad(x, [(0, 0), *pads, (0, 0)], mode="constant", constant_values=value)


def _conv_inputs(ctx):
    """The data, weight and bias of a (transposed) convolution, and its kernel and strides."""
    x, weight = ctx.tensor(0), ctx.const(1)
    bias = ctx.const(2) if ctx.has(2) else None
    n = x.rank - 2
    if n not in (1, 2, 3):
        raise ctx.fail(f"a {n}-D convolution is not supported.")
    return x, weight, bias, n, list(weight.shape[2:]), list(ctx.attr("strides", [1] * n))


@op("Conv")
def conv(ctx):
    x, weight, bias, n, kernel, strides = _conv_inputs(ctx)
    dilations = list(ctx.attr("dilations", [1] * n))
    in_shape = ctx.c.probe.shape(ctx.input_names[0])
    pads = spatial_pads(ctx, in_shape[2:], kernel, strides, dilations)
    # Keras refuses strides and dilation together: stride 1, then keep every s-th output.
    subsample = strides if any(s > 1 for s in strides) and any(d > 1 for d in dilations) else None
    same = not subsample and any(b or e for b, e in pads) and \
        is_same_padding(pads, in_shape[2:], kernel, strides, dilations)
    source = ctx.to_perm(x, layout.channels_last(x.rank))
    source = source if same else zero_pad(ctx, source, pads)
    layer, kernel_value = _conv_layer(ctx, weight, int(ctx.attr("group", 1)), n, {
        "strides": [1] * n if subsample else strides, "padding": "same" if same else "valid",
        "dilation_rate": dilations, "use_bias": bias is not None, "name": ctx.name()})
    result = layer(source)
    layer.set_weights([kernel_value.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
    if subsample:
        result = result[(slice(None), *(slice(None, None, s) for s in subsample), slice(None))]
    ctx.set(result, layout.channels_last(x.rank))


def _conv_layer(ctx, weight: np.ndarray, group: int, n: int, options: dict):
    """A depthwise layer when every channel is its own group, else a (grouped) ConvND; and its kernel."""
    import keras

    kernel = list(weight.shape[2:])
    channels_in, channels_out = weight.shape[1] * group, weight.shape[0]
    if group == channels_in and group > 1 and n in (1, 2):
        multiplier = channels_out // channels_in
        layer_class = keras.layers.DepthwiseConv2D if n == 2 else keras.layers.DepthwiseConv1D
        # ONNX [C * mult, 1, k...] -> Keras [k..., C, mult]; output channel c * mult + j in both
        return (layer_class(kernel, depth_multiplier=multiplier, **options),
                weight.reshape(channels_in, multiplier, *kernel).transpose(*range(2, 2 + n), 0, 1))
    layer_class = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[n]
    # ONNX [out, in / g, k...] -> Keras [k..., in / g, out]
    return layer_class(channels_out, kernel, groups=group, **options), weight.transpose(*range(2, 2 + n), 1, 0)


@op("ConvTranspose")
def conv_transpose(ctx):
    x, weight, bias, n, _, strides = _conv_inputs(ctx)
    dilations = list(ctx.attr("dilations", [1] * n))
    in_sizes = ctx.c.probe.shape(ctx.input_names[0])[2:]
    kernel = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dilations, strict=True)]
    pads = spatial_pads(ctx, in_sizes, kernel, strides, [1] * n) if "output_shape" not in ctx.attrs else None
    source = ctx.to_perm(x, layout.channels_last(x.rank))
    result = transposed_conv(ctx, source, weight, bias, strides, dilations, pads, in_sizes, ctx.out_shape()[2:],
                             int(ctx.attr("group", 1)))
    ctx.set(result, layout.channels_last(x.rank))


def transposed_conv(ctx, source, weight, bias, strides, dilations, pads, in_sizes, out_sizes, group: int = 1):
    """ONNX ConvTranspose on channels-last ``source``; ``pads`` None: centred on ``out_sizes``."""
    import keras
    from keras import ops

    n = len(strides)
    kernel = list(weight.shape[2:])
    if any(d != 1 for d in dilations):  # a dilated kernel is the kernel with zeros between its taps
        dilated = np.zeros((*weight.shape[:2], *((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))),
                           weight.dtype)
        dilated[(slice(None), slice(None), *(slice(None, None, d) for d in dilations))] = weight
        weight, kernel = dilated, list(dilated.shape[2:])
    layer_class = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
                   3: keras.layers.Conv3DTranspose}[n]
    # Keras' transposed convolutions take no groups: one layer per group on its slice of the channels.
    parts = ops.split(source, group, axis=-1) if group > 1 else [source]
    per_group = weight.shape[0] // group
    results = []
    for g, part in enumerate(parts):
        layer = layer_class(weight.shape[1], kernel, strides=strides, padding="valid", use_bias=False,
                            name=ctx.name(f"group{g}" if group > 1 else ""))
        results.append(layer(part))
        # ONNX [in, out / group, k...] -> Keras [k..., out / group, in / group]
        kernel_value = weight[g * per_group:(g + 1) * per_group]
        layer.set_weights([kernel_value.transpose(*range(2, 2 + n), 1, 0).astype(np.float32)])
    result = ops.concatenate(results, axis=-1) if group > 1 else results[0]
    index, extra = [slice(None)], []
    for axis, (size, k, s, out) in enumerate(zip(in_sizes, kernel, strides, out_sizes, strict=True)):
        if size is None or out is None:  # a free axis: Keras' output minus what ONNX crops, for any size
            begin, tail = _free_transposed_crop(ctx, axis, k, s, pads)
            index.append(slice(begin, -tail if tail > 0 else None))
            extra.append((0, max(-tail, 0)))
            continue
        keras_size = size * s + max(k - s, 0)
        begin = pads[axis][0] if pads else max((size - 1) * s + k - out, 0) // 2
        index.append(slice(begin, min(begin + out, keras_size)))
        extra.append((0, max(begin + out - keras_size, 0)))  # output_padding past Keras' output
    result = result[(*index, slice(None))]
    if any(e for _, e in extra):
        result = ops.pad(result, [(0, 0), *extra, (0, 0)])
    if bias is not None:
        result = add(result, const_in_perm(bias.reshape(1, -1, *[1] * n), n + 2, layout.channels_last(n + 2)))
    return result


def _free_transposed_crop(ctx, axis: int, k: int, s: int, pads) -> tuple[int, int]:
    """(begin, end) to crop from Keras' transposed output along a free axis (negative end: to pad). Keras
    gives size * s + max(k - s, 0); ONNX (size - 1) * s + k + output_padding - pads: the difference does
    not depend on the size."""
    if pads is None:
        raise ctx.fail("a transposed convolution with output_shape over a free axis (export.dynamic_axes) is "
                       "not supported.", "Give ConvTranspose padding/output_padding instead of output_size.")
    output_padding = list(ctx.attr("output_padding", [0] * len(pads)))[axis]
    begin, end = pads[axis]
    return begin, s + max(k - s, 0) - k - output_padding + end


@op("Col2Im")
def col2im(ctx):
    """``nn.Fold``: [N, C * prod(block), L] columns summed back into an image. That is a transposed
    convolution of the columns (as [N, C * prod(block), L1, L2...]) with a 0/1 kernel that sends column
    channel ``c * prod(block) + tap`` to channel ``c`` at kernel tap ``tap``: exact, and a TFLite builtin."""
    from keras import ops

    x = ctx.tensor(0)
    image, block = [int(v) for v in ctx.const(1)], [int(v) for v in ctx.const(2)]
    n = len(block)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads = list(ctx.attr("pads", [0] * 2 * n))
    taps, rows = math.prod(block), ctx.c.probe.shape(ctx.input_names[0])[1]
    if rows is None or rows % taps:
        raise ctx.fail(f"columns of shape {ctx.c.probe.shape(ctx.input_names[0])} for block {block} are not supported.")
    channels = rows // taps
    blocks = [(size + pads[i] + pads[i + n] - d * (k - 1) - 1) // s + 1
              for i, (size, k, s, d) in enumerate(zip(image, block, strides, dilations, strict=True))]
    weight = np.zeros((rows, channels, *block), np.float32)
    for c in range(channels):
        for tap, position in enumerate(np.ndindex(*block)):
            weight[(c * taps + tap, c, *position)] = 1.0
    columns = ops.reshape(ctx.to_perm(x, (0, 2, 1)), [-1, *blocks, rows])  # [N, L, rows] -> channels-last grid
    result = transposed_conv(ctx, columns, weight, None, strides, dilations, [(pads[i], pads[i + n]) for i in range(n)],
                             blocks, image)
    ctx.set(result, layout.channels_last(n + 2))
