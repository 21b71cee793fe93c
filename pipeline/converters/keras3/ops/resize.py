"""Resize and Upsample, axis by axis: gathers at indices (and blend weights) computed here with ONNX's
own coordinate rules, so every mode (nearest, linear, cubic; half_pixel, align_corners...) is exact."""
import functools

import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.ops import op

CUBIC_TAPS = (-1, 0, 1, 2)


@op("Resize", "Upsample")
def resize(ctx):
    from keras import ops

    x = ctx.tensor(0)
    mode = ctx.attr("mode", "nearest")
    coordinate = ctx.attr("coordinate_transformation_mode", "half_pixel" if ctx.op_type == "Resize" else "asymmetric")
    if ctx.attr("antialias", 0) or coordinate == "tf_crop_and_resize":
        raise ctx.fail(f"antialias / {coordinate} resizing is not supported.")
    in_shape, out_shape = ctx.c.probe.shape(ctx.input_names[0]), ctx.out_shape()
    scales = _scales(ctx, in_shape, out_shape)
    if any(size is None for size in in_shape[1:]):  # a free axis (export.dynamic_axes): no per-size indices
        ctx.set(_free_upsample(ctx, x, scales, mode, coordinate), layout.channels_last(x.rank))
        return
    result = x.keras
    for axis, (size, out, scale) in enumerate(zip(in_shape, out_shape, scales, strict=True)):
        if size == out and scale == 1.0:
            continue
        if size is None or out is None:
            raise ctx.fail("resizing the batch axis is not supported.")
        k = x.keras_axis(axis)
        try:
            source = _source_coordinates(coordinate, size, out, scale)
            if mode == "nearest":
                indices = _nearest(source, size, ctx.attr("nearest_mode", "round_prefer_floor"))
                result = ops.take(result, indices, axis=k)
            else:
                result = _blend(result, k, x.rank, _taps(mode, source, size, ctx.attr("cubic_coeff_a", -0.75),
                                                         ctx.attr("exclude_outside", 0)))
        except (ValueError, KeyError) as exc:
            raise ctx.fail(f"resize with mode={mode!r}, coordinate_transformation_mode={coordinate!r}: {exc}") from exc
    ctx.set(result, x.perm)


def _free_upsample(ctx, x, scales, mode: str, coordinate: str):
    """Upsampling by integer factors of a tensor with a free axis (export.dynamic_axes), as a transposed
    convolution whose kernel does not depend on the size, with an identity over the channels (x * weight
    plus zeros; TFLite sizes it, which a reshape-based repeat of a free-sized tensor defeats):

    - nearest (asymmetric/floor, or half-pixel source coordinates, which never fall on a half at an integer
      scale): each element repeated, a kernel of ones of the factors' size;
    - linear with half-pixel coordinates (``F.interpolate(..., mode="bilinear", align_corners=False)``):
      the edges repeated once (ONNX clamps the source coordinate there), then the triangle kernel of the
      factor, cropped by a constant at each end.

    Other modes (align_corners, cubic, a fractional scale) take their weights from the size: refused."""
    import keras

    n = x.rank - 2
    factors = [float(f) for f in scales[2:]]
    nearest = mode == "nearest" and (
        (coordinate == "asymmetric" and ctx.attr("nearest_mode", "round_prefer_floor") == "floor")
        or coordinate in ("half_pixel", "pytorch_half_pixel"))
    linear = mode == "linear" and coordinate in ("half_pixel", "pytorch_half_pixel")
    if not ((nearest or linear) and n in (1, 2, 3) and list(scales[:2]) == [1.0, 1.0]
            and all(f >= 1 and f.is_integer() for f in factors)):
        raise ctx.fail(f"resizing a free axis (export.dynamic_axes) with mode={mode!r}, coordinate_transformation_"
                       f"mode={coordinate!r}, scales {[float(f) for f in scales]}: only nearest, or linear with "
                       "half-pixel coordinates (align_corners=False), upsampling of the spatial axes by integer "
                       "factors is size-independent here.",
                       "Upsample with mode='nearest' or 'bilinear' (align_corners=False) and an integer scale_factor "
                       "(or a ConvTranspose), or leave that axis out of export.dynamic_axes.")
    strides = [int(f) for f in factors]
    taps = [_nearest_kernel(f) if nearest else _linear_kernel(f) for f in strides]
    source = ctx.to_perm(x, layout.channels_last(x.rank))
    if linear:
        source = _repeat_edges(source, [f > 1 for f in strides])
    channels = ctx.in_shape(0)[1]
    kernel = functools.reduce(np.multiply.outer, [weights for weights, _ in taps])
    layer = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose, 3: keras.layers.Conv3DTranspose}[n](
        channels, list(kernel.shape), strides=strides, padding="valid", use_bias=False, name=ctx.name(mode))
    result = layer(source)
    weight = np.zeros((*kernel.shape, channels, channels), np.float32)  # Keras: [k..., out, in]
    weight[..., np.arange(channels), np.arange(channels)] = kernel.astype(np.float32)[..., None]
    layer.set_weights([weight])
    crops = [slice(begin, -end if end else None) for _, (begin, end) in taps]
    return result[(slice(None), *crops, slice(None))]


def _nearest_kernel(factor: int) -> tuple[np.ndarray, tuple[int, int]]:
    return np.ones(factor), (0, 0)


def _linear_kernel(factor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The weights input ``q`` gives output ``factor * q + d`` (half-pixel: 1 - |src - q|), over the ``d``
    where they are not zero, and the (begin, end) crop of the transposed convolution of the input padded by
    one repeated edge: output ``i`` is its element ``i + factor - d_min``; it is ``factor + len - begin``
    longer than ``factor`` times the input at the end."""
    if factor == 1:
        return np.ones(1), (0, 0)
    span = np.arange(-2 * factor, 2 * factor + 1)
    weights = np.maximum(0.0, 1.0 - np.abs((span + 0.5) / factor - 0.5))
    kept = span[weights > 0]
    kernel = weights[weights > 0]
    begin = factor - int(kept[0])
    return kernel, (begin, factor + len(kernel) - begin)


def _repeat_edges(x, axes: list[bool]):
    """A channels-last tensor with its first and last slice repeated once along the flagged spatial axes
    (slices from the ends, so that any size works)."""
    from keras import ops

    for axis, flagged in enumerate(axes, start=1):
        if flagged:
            first = x[(slice(None),) * axis + (slice(0, 1),)]
            last = x[(slice(None),) * axis + (slice(-1, None),)]
            x = ops.concatenate([first, x, last], axis=axis)
    return x


def _scales(ctx, in_shape, out_shape) -> list[float]:
    if ctx.op_type == "Upsample":
        scales = ctx.attr("scales") if "scales" in ctx.attrs else ctx.const(1)
        return [float(s) for s in scales]
    scales = ctx.const(2) if ctx.has(2) else None
    if scales is not None and np.size(scales):
        return [float(s) for s in scales]
    return [1.0 if i == o else o / i for i, o in zip(in_shape, out_shape, strict=True)]


def _source_coordinates(mode: str, size: int, out: int, scale: float) -> np.ndarray:
    x = np.arange(out, dtype=np.float64)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel" and out == 1:
        return np.zeros(out)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out / (size * scale)
        return (size / 2) * (1 - adjustment) + (x + 0.5) / scale - 0.5
    raise ValueError(f"coordinate_transformation_mode {mode!r}")


def _nearest(source: np.ndarray, size: int, rounding: str) -> np.ndarray:
    functions = {"round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
                 "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v)),
                 "floor": np.floor, "ceil": np.ceil}
    return np.clip(functions[rounding](source), 0, size - 1).astype(np.int64)


def _taps(mode: str, source: np.ndarray, size: int, a: float, exclude_outside: int) -> list:
    """[(indices, weights)] whose weighted sum gives the interpolated value at each output position."""
    if mode == "linear":
        source = np.clip(source, 0, size - 1)
        low = np.floor(source)
        weight = source - low
        low = low.astype(np.int64)
        return [(low, 1 - weight), (np.minimum(low + 1, size - 1), weight)]
    if mode != "cubic":
        raise ValueError(f"mode {mode!r}")
    base = np.floor(source)
    t = source - base
    taps = []
    for offset in CUBIC_TAPS:
        distance = np.abs(t - offset)
        weight = np.where(distance <= 1, ((a + 2) * distance - (a + 3)) * distance**2 + 1,
                          np.where(distance < 2, (((distance - 5) * distance + 8) * distance - 4) * a, 0))
        index = base.astype(np.int64) + offset
        if exclude_outside:
            weight = np.where((index < 0) | (index >= size), 0, weight)
        taps.append((np.clip(index, 0, size - 1), weight))
    if exclude_outside:
        total = sum(w for _, w in taps)
        taps = [(i, w / total) for i, w in taps]
    return taps


def _blend(x, axis: int, rank: int, taps: list):
    from keras import ops

    shape = [1] * rank
    shape[axis] = -1
    result = None
    for indices, weights in taps:
        term = ops.take(x, indices, axis=axis) * weights.astype(np.float32).reshape(shape)
        result = term if result is None else result + term
    return result
