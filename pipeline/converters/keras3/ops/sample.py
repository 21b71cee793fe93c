"""Sampling at data-dependent positions: ``F.affine_grid`` (AffineGrid) and ``F.grid_sample`` (GridSample),
as spatial transformer networks use them. Gathers and arithmetic only, so TFLite runs them with builtins."""
import numpy as np

from pipeline.converters.keras3.layout import Tensor
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.matmul import dense


def _base_coordinates(size: int, align_corners: bool) -> np.ndarray:
    """The normalised [-1, 1] coordinates of ``size`` pixel centres (or corners with ``align_corners``)."""
    if align_corners:
        return np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(1)
    return (np.arange(size) * 2.0 + 1.0) / size - 1.0


@op("AffineGrid")
def affine_grid(ctx):
    """``grid[n, ..., :] = theta[n] @ (x, y[, z], 1)``: one Dense layer whose kernel is the base grid,
    [N, k, positions]; the grid's coordinate axis stays first in storage (the layout says so)."""
    from keras import ops

    theta = ctx.tensor(0)
    spatial = list(ctx.out_shape()[1:-1])  # the size input holds the batch (x.size()): the probe's shape
    n = len(spatial)
    if theta.rank != 3 or None in spatial or ctx.c.probe.shape(ctx.input_names[0])[1:] != (n, n + 1):
        raise ctx.fail(f"theta of shape {ctx.c.probe.shape(ctx.input_names[0])} for a grid of {spatial} "
                       "is not supported.")
    axes = [_base_coordinates(s, bool(ctx.attr("align_corners", 0))) for s in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")  # D, H, W order; the grid lists x (W) first
    base = np.stack([*reversed([m.reshape(-1) for m in mesh]), np.ones(mesh[0].size)], axis=1)  # [P, n + 1]
    result, order = dense(ctx, theta, base.T.astype(np.float32), None)  # [N, k, P] in ``order``
    stored = ops.reshape(ctx.to_perm(Tensor(result, tuple(order)), (0, 1, 2)), [-1, n, *spatial])
    ctx.set(stored, (0, n + 1, *range(1, n + 1)))


@op("GridSample")
def grid_sample(ctx):
    """Bilinear or nearest sampling of a 4-D image at a grid's positions, zeros, border or reflection padding, as
    ONNX (and PyTorch) define them: out-of-image neighbours weigh 0; each neighbour is one gather from the
    image flattened to [N * H * W, C] (a batch offset per sample), so no per-sample gather is needed."""
    from keras import ops

    x, grid = ctx.tensor(0), ctx.tensor(1)
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(ctx.attr("mode", "bilinear"), ctx.attr("mode", "bilinear"))
    padding = ctx.attr("padding_mode", "zeros")
    corners = bool(ctx.attr("align_corners", 0))
    shape = ctx.c.probe.shape(ctx.input_names[0])
    out_shape = ctx.out_shape()
    if x.rank != 4 or mode not in ("bilinear", "nearest") or padding not in ("zeros", "border", "reflection") or \
            None in shape[1:] or None in out_shape[2:]:
        raise ctx.fail(f"grid sampling of a rank-{x.rank} input with mode={mode!r}, padding_mode={padding!r} "
                       "is not supported (4-D, bilinear or nearest, any padding are).")
    _, channels, height, width = shape
    positions = out_shape[2] * out_shape[3]
    image = ops.reshape(ctx.to_perm(x, (0, 2, 3, 1)), [-1, channels])  # [N * H * W, C]
    coords = ctx.to_perm(grid, (0, 1, 2, 3))  # [N, Ho, Wo, 2] with x (width) first
    ix = _unnormalise(ops.reshape(coords[..., 0], [-1, positions]), width, corners, padding)
    iy = _unnormalise(ops.reshape(coords[..., 1], [-1, positions]), height, corners, padding)
    offset = ops.cast(ops.cumsum(ctx.c.batch_ones([None, 1]), axis=0) - 1.0, "int32") * np.int32(height * width)
    if mode == "nearest":  # round half to even, as PyTorch's nearbyint and onnxruntime do
        taps = [(ops.round(iy), ops.round(ix), None)]
    else:
        y0, x0 = ops.floor(iy), ops.floor(ix)
        wy, wx = iy - y0, ix - x0
        taps = [(y0 + dy, x0 + dx, (wy if dy else 1.0 - wy) * (wx if dx else 1.0 - wx))
                for dy in (0, 1) for dx in (0, 1)]
    result = None
    for yi, xi, weight in taps:
        inside = ops.cast(ops.logical_and(ops.logical_and(yi >= 0.0, yi <= height - 1.0),
                                          ops.logical_and(xi >= 0.0, xi <= width - 1.0)), "float32")
        weight = inside if weight is None else weight * inside
        index = ops.cast(ops.clip(yi, 0.0, height - 1.0) * np.float32(width) + ops.clip(xi, 0.0, width - 1.0),
                         "int32") + offset
        value = ops.take(image, index, axis=0) * ops.expand_dims(weight, -1)  # [N, P, C]
        result = value if result is None else result + value
    ctx.set(ops.reshape(result, [-1, out_shape[2], out_shape[3], channels]), (0, 2, 3, 1))


def _unnormalise(coordinate, size: int, corners: bool, padding: str):
    """[-1, 1] grid coordinates to pixel coordinates; border padding clamps them into the image,
    reflection padding mirrors them at its edges first (PyTorch's ``reflect_coordinates``)."""
    from keras import ops

    pixel = (coordinate + 1.0) * np.float32((size - 1) / 2) if corners else \
        ((coordinate + 1.0) * np.float32(size) - 1.0) * np.float32(0.5)
    if padding == "reflection":
        low, span = (0.0, size - 1.0) if corners else (-0.5, float(size))
        if span == 0:
            return ops.zeros_like(pixel)
        distance = ops.abs(pixel - np.float32(low))
        flips = ops.floor(distance / np.float32(span))
        extra = distance - flips * np.float32(span)
        pixel = ops.where(ops.equal(ops.mod(flips, 2.0), 0.0), extra + np.float32(low),
                          ops.subtract(np.float32(span + low), extra))
    return ops.clip(pixel, 0.0, size - 1.0) if padding in ("border", "reflection") else pixel
