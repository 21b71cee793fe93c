"""Pooling: Keras pooling layers on explicitly padded channels-last tensors, ONNX's edge rules kept exactly."""
import functools

import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.conv import is_same_padding, spatial_pads, zero_pad


def _window(ctx, x):
    n = x.rank - 2
    kernel = list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    in_sizes = ctx.c.probe.shape(ctx.input_names[0])[2:]
    out_sizes = ctx.out_shape()[2:]
    if None in in_sizes or None in out_sizes:
        return _free_window(ctx, kernel, strides, dilations)
    pads = spatial_pads(ctx, in_sizes, kernel, strides, dilations)
    # ceil_mode: windows may run past the end padding; pad far enough for the measured output size.
    full = [(b, max(e, (o - 1) * s + (k - 1) * d + 1 - i - b)) for (b, e), i, o, s, k, d in
            zip(pads, in_sizes, out_sizes, strides, kernel, dilations, strict=True)]
    return kernel, strides, dilations, in_sizes, out_sizes, pads, full


def _free_window(ctx, kernel, strides, dilations):
    """A window over a free axis (export.dynamic_axes). Keras' valid pooling is ONNX's for any size when
    nothing is padded (floor mode, no dilation); a max pool's padding is too, as copies of the edge (exact
    while every window that reaches a padded position also holds the edge: pads below the kernel, as
    PyTorch's). Average pools' padded windows, ceil_mode and dilation depend on the size: refused."""
    n = len(kernel)
    pads = list(ctx.attr("pads", [0] * 2 * n))
    full = [(int(pads[i]), int(pads[i + n])) for i in range(n)]
    padded_max = ctx.op_type == "MaxPool" and all(max(b, e) < k for (b, e), k in zip(full, kernel, strict=True))
    if (any(pads) and not padded_max) or ctx.attr("ceil_mode", 0) or \
            ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "") or any(d != 1 for d in dilations):
        raise ctx.fail("pooling over a free axis (export.dynamic_axes) is supported without ceil_mode and dilation, "
                       "and padded for max pooling only: the windows at the edges depend on the size.",
                       "Pool without ceil_mode (and, for an average, without padding), or leave that axis out "
                       "of export.dynamic_axes.")
    none = [None] * n
    return kernel, strides, dilations, none, none, full, full


def _repeat_edge_slices(source, full):
    """Each spatial axis of a channels-last tensor extended by copies of its first and last slice, taken by
    slicing from the ends, so that any size works."""
    from keras import ops

    for axis, (begin, end) in enumerate(full, start=1):
        first = source[(slice(None),) * axis + (slice(0, 1),)]
        last = source[(slice(None),) * axis + (slice(-1, None),)]
        source = ops.concatenate([*[first] * begin, source, *[last] * end], axis=axis) if begin or end else source
    return source


def _taps(x, kernel, strides, dilations, out_sizes):
    """A window as one strided slice per kernel tap (of a padded channels-last tensor): the window's
    elements for every output position at once. For what Keras' pooling layers cannot do (dilation) and
    what TFLite has no kernel for (3-D pooling)."""
    for offsets in np.ndindex(*kernel):
        yield x[(slice(None), *(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in
                                zip(offsets, dilations, out_sizes, strides, strict=True)), slice(None))]


def _by_taps(dilations) -> bool:
    return any(d != 1 for d in dilations) or len(dilations) == 3


def _pool_layer(n: int, kind: str):
    import keras

    return getattr(keras.layers, f"{kind}Pooling{n}D")


@op("MaxPool")
def max_pool(ctx):
    from keras import ops

    x = ctx.tensor(0)
    if ctx.output_used(1):
        raise ctx.fail("MaxPool's Indices output is not supported.")
    kernel, strides, dilations, in_sizes, out_sizes, _, full = _window(ctx, x)
    n = x.rank - 2
    source = ctx.to_perm(x, layout.channels_last(x.rank))
    if _by_taps(dilations):
        padded = _max_pad(ctx, source, full, in_sizes, kernel, strides, dilations, out_sizes)
        ctx.set(functools.reduce(ops.maximum, _taps(padded, kernel, strides, dilations, out_sizes)),
                layout.channels_last(x.rank))
        return
    # Keras' "same" max pooling skips the padding, as ONNX's -inf padding does.
    same = None not in in_sizes and any(b or e for b, e in full) and \
        is_same_padding(full, in_sizes, kernel, strides, [1] * n)
    if None in in_sizes:  # a free axis: the edge copied, whatever the size
        source = _repeat_edge_slices(source, full)
    elif not same:
        source = _max_pad(ctx, source, full, in_sizes, kernel, strides, dilations, out_sizes)
    result = _pool_layer(n, "Max")(kernel, strides=strides, padding="same" if same else "valid",
                                   name=ctx.name())(source)
    ctx.set(_crop(result, out_sizes), layout.channels_last(x.rank))


def _max_pad(ctx, source, full, in_sizes, kernel, strides, dilations, out_sizes):
    """Padding a max pool cannot see. A copy of the edge is exact where every window that reaches a
    padded position also holds the position it copies, and keeps the tensor's range: a -FLT_MAX
    constant would make full-integer quantization calibrate this tensor to a scale of ~1e36 (every
    value then quantizes to one level). Symmetric padding is one op (torch's pads <= kernel / 2 always
    fit it); repeating the edge also covers ceil_mode's windows that hang past the end."""
    from keras import ops

    if not any(b or e for b, e in full):
        return source
    axes = list(zip(in_sizes, full, kernel, strides, dilations, out_sizes, strict=True))
    if all(_copies_stay_in_windows(_symmetric_source, *axis) for axis in axes):
        return ops.pad(source, [(0, 0), *full, (0, 0)], mode="symmetric")
    if all(_copies_stay_in_windows(_edge_source, *axis) for axis in axes):
        return _edge_pad(source, full)
    return zero_pad(ctx, source, full, float(np.finfo(np.float32).min))


def _symmetric_source(position: int, size: int) -> int:
    return -position - 1 if position < 0 else 2 * size - 1 - position


def _edge_source(position: int, size: int) -> int:
    return 0 if position < 0 else size - 1


def _copies_stay_in_windows(source_of, size, pads, kernel, stride, dilation, out_size) -> bool:
    """Along one axis: every window's padded taps copy taps of the same window inside the input."""
    if max(pads) > size:
        return False
    for start in range(-pads[0], -pads[0] + out_size * stride, stride):
        taps = {start + t * dilation for t in range(kernel)}
        inside = {t for t in taps if 0 <= t < size}
        if not inside or not {source_of(t, size) for t in taps - inside} <= inside:
            return False
    return True


def _edge_pad(source, full):
    """Each spatial axis of a channels-last tensor extended by repeats of its first and last slice."""
    from keras import ops

    for axis, (begin, end) in enumerate(full, start=1):
        size = source.shape[axis]
        first = ops.take(source, [0] * begin, axis=axis) if begin else None
        last = ops.take(source, [size - 1] * end, axis=axis) if end else None
        source = ops.concatenate([t for t in (first, source, last) if t is not None], axis=axis)
    return source


@op("AveragePool")
def average_pool(ctx):
    from keras import ops

    x = ctx.tensor(0)
    kernel, strides, dilations, in_sizes, out_sizes, pads, full = _window(ctx, x)
    n = x.rank - 2
    source = zero_pad(ctx, ctx.to_perm(x, layout.channels_last(x.rank)), full)
    if _by_taps(dilations):
        result = functools.reduce(ops.add, _taps(source, kernel, strides, dilations, out_sizes)) * \
            np.float32(1 / np.prod(kernel))
    else:
        result = _crop(_pool_layer(n, "Average")(kernel, strides=strides, padding="valid", name=ctx.name())(source),
                       out_sizes)
    if None in in_sizes:  # unpadded over a free axis: every window is whole
        ctx.set(result, layout.channels_last(x.rank))
        return
    # Keras divides by the whole window; ONNX by the elements inside the input (or input + pads).
    counted = np.zeros([i + b + e for i, (b, e) in zip(in_sizes, full, strict=True)], np.float32)
    inner = pads if ctx.attr("count_include_pad", 0) else [(0, 0)] * n
    region = tuple(slice(b - ib, b + i + ie) for (b, _), i, (ib, ie) in zip(full, in_sizes, inner, strict=True))
    counted[region] = 1
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(counted, span)
    windows = windows[tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)]
    counts = windows.sum(axis=tuple(range(n, 2 * n)))[tuple(slice(0, o) for o in out_sizes)]
    factor = np.float32(np.prod(kernel)) / counts
    if not np.allclose(factor, 1.0):
        result = result * factor.reshape(1, *factor.shape, 1).astype(np.float32)
    ctx.set(result, layout.channels_last(x.rank))


def _crop(result, out_sizes):
    shape = result.shape[1:-1]
    if None in out_sizes or all(s == o for s, o in zip(shape, out_sizes, strict=True)):
        return result
    return result[(slice(None), *(slice(0, o) for o in out_sizes), slice(None))]


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx):
    """A reduction over the spatial axes wherever the layout keeps them: no transpose needed."""
    from keras import ops

    x = ctx.tensor(0)
    axes = tuple(sorted(x.keras_axis(a) for a in range(2, x.rank)))
    function = ops.mean if ctx.op_type == "GlobalAveragePool" else ops.max
    ctx.set(function(x.keras, axis=axes, keepdims=True), x.perm)
