"""Ops that move, select or reshape elements: they map ONNX axes through the tensor's layout."""
import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.layout import Dynamic, Tensor
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import axis_list, expand_rank, materialize, operands, reference_perm

INT_MAX = 2**62


def sized_shape(ctx, name: str) -> tuple:
    """The probe's shape of ``name`` with "B" for an axis of exactly the batch size."""
    probe = ctx.c.probe
    batch = set(probe.batch_axes(name))
    return tuple("B" if axis in batch else d for axis, d in enumerate(probe.shape(name)))


def reshape(ctx, x: Tensor, in_name: str, out_index: int = 0) -> None:
    """Reshape in ONNX (row-major) element order, without a transpose when the layout allows it."""
    from keras import ops

    in_shape, out_shape = sized_shape(ctx, in_name), sized_shape(ctx, ctx.node.output[out_index])
    groups = layout.reshape_groups(in_shape, out_shape)
    physical = [axis for axis in x.perm if in_shape[axis] != 1]
    order = _group_order(groups, physical) if groups is not None else None
    if order is not None:
        out_perm = [axis for group in order for axis in group[1]]
        out_perm += [axis for axis in range(len(out_shape)) if axis not in out_perm]
        source = x.keras
    else:  # the layout interleaves the groups: bring the tensor to ONNX order first
        out_perm = list(range(len(out_shape)))
        source = ctx.to_perm(x, layout.identity(x.rank))
    target = [-1 if out_shape[axis] in ("B", None) else int(out_shape[axis]) for axis in out_perm]
    source_first = x.perm[0] if order is not None else 0
    if target.count(-1) == 2 and target[0] == -1 and target[1:].count(-1) == 1 and \
            _same_sizes(ctx, in_name, source_first, ctx.node.output[out_index], out_perm[0]):
        # Two dynamic axes (a free time axis and the batch): the first kept as it is, the other inferred.
        import keras

        ctx.set(keras.layers.Reshape(target[1:], name=ctx.name("reshape"))(source), out_perm, out_index)
        return
    if target.count(-1) > 1:
        raise ctx.fail(f"a reshape to {ctx.out_shape(out_index)} with several batch-dependent axes is not supported.")
    ctx.set(ops.reshape(source, target), out_perm, out_index)


def _same_sizes(ctx, in_name: str, in_axis: int, out_name: str, out_axis: int) -> bool:
    """Whether an input axis and an output axis had the same size in both probe runs (the same dimension)."""
    values = ctx.c.probe.values
    return all(np.shape(a)[in_axis] == np.shape(b)[out_axis] for a, b in zip(values[in_name], values[out_name],
                                                                               strict=True))


def _group_order(groups, physical: list[int]):
    """The groups in the order their input axes are stored, or None if a group's axes are not
    stored together and in order."""
    position = {axis: i for i, axis in enumerate(physical)}
    for in_axes, _ in groups:
        places = [position[a] for a in in_axes]
        if places != list(range(places[0], places[0] + len(places))):
            return None
    return sorted(groups, key=lambda group: position[group[0][0]])


@op("Reshape", "Flatten")
def reshape_op(ctx):
    reshape(ctx, ctx.tensor(0), ctx.input_names[0])


@op("Squeeze")
def squeeze(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axes = ctx.attr("axes") if "axes" in ctx.attrs else ctx.const(1)
    shape = ctx.c.probe.shape(ctx.input_names[0])
    axes = axis_list(axes, x.rank) if axes is not None else [a for a, d in enumerate(shape) if d == 1]
    perm = [p - sum(a < p for a in axes) for p in x.perm if p not in axes]
    ctx.set(ops.squeeze(x.keras, axis=tuple(x.keras_axis(a) for a in axes)), perm)


@op("Unsqueeze")
def unsqueeze(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axes = ctx.attr("axes") if "axes" in ctx.attrs else ctx.const(1)
    rank = x.rank + len(np.atleast_1d(axes))
    axes = axis_list(axes, rank)
    kept = [axis for axis in range(rank) if axis not in axes]  # where the input's axes go
    result = x.keras
    for _ in axes:  # new size-1 axes go last: no element moves
        result = ops.expand_dims(result, -1)
    ctx.set(result, [kept[p] for p in x.perm] + axes)


@op("Transpose")
def transpose(ctx):
    """Free: the data stays, only the bookkeeping of which axis is which changes."""
    x = ctx.tensor(0)
    order = list(ctx.attr("perm", list(reversed(range(x.rank)))))
    ctx.set(x.keras, [order.index(p) for p in x.perm])


@op("Concat")
def concat(ctx):
    from keras import ops

    values, perm = operands(ctx)
    axis = perm.index(int(ctx.attr("axis")) % len(perm))
    ctx.set(ops.concatenate(values, axis=axis), perm)


@op("Split")
def split(ctx):
    from keras import ops

    x = ctx.tensor(0)
    axis = int(ctx.attr("axis", 0)) % x.rank
    sizes = ctx.attr("split") if "split" in ctx.attrs else ctx.const(1)
    if sizes is None:
        sizes = [ctx.c.probe.shape(name)[axis] for name in ctx.node.output]
    if any(s is None for s in np.atleast_1d(sizes)):
        raise ctx.fail("a split along the batch axis is not supported.")
    bounds = np.cumsum(np.atleast_1d(sizes))[:-1].tolist()
    parts = ops.split(x.keras, bounds, axis=x.keras_axis(axis))
    for index, part in enumerate(parts):
        ctx.set(part, x.perm, index)


@op("Slice")
def slice_op(ctx):
    x = ctx.tensor(0)
    shape = ctx.c.probe.shape(ctx.input_names[0])
    if "starts" in ctx.attrs:  # opset < 10
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes, steps = ctx.attr("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _slice_bound(ctx, 1), _slice_bound(ctx, 2)
        axes = ctx.const(3, np.arange(len(starts)))
        steps = ctx.const(4, np.ones(len(starts), np.int64))
    index = [slice(None)] * x.rank
    for start, end, axis, step in zip(np.atleast_1d(starts), np.atleast_1d(ends), np.atleast_1d(axes),
                                      np.atleast_1d(steps), strict=True):
        axis = int(axis) % x.rank
        index[x.keras_axis(axis)] = _python_slice(ctx, int(start), int(end), int(step), shape[axis])
    ctx.set(x.keras[tuple(index)], x.perm)


def _slice_bound(ctx, index: int) -> np.ndarray:
    """A Slice's starts or ends; one read off a shape (``x[:, :, :y.shape[2]]``, scatter_add's updates cut
    to its indices) may follow the batch size only where it is an axis' full size: that is read as "to the
    end"."""
    value = ctx.value(index)
    if not isinstance(value, Dynamic):
        return ctx.const(index)
    (a, b), axes = value.probe, ctx.const(3, np.arange(np.size(value.probe[0])))
    shapes = [v.shape for v in ctx.c.probe.values[ctx.input_names[0]]]
    bound = np.array(a, dtype=np.int64)
    for i, axis in enumerate(np.atleast_1d(axes)):
        if a[i] != b[i]:
            if index != 2 or (a[i], b[i]) != (shapes[0][axis], shapes[1][axis]):
                raise ctx.fail(f"input {index} ({ctx.input_names[index]}) must be a constant here.")
            bound[i] = INT_MAX
    return bound


def _python_slice(ctx, start: int, end: int, step: int, size) -> slice:
    """ONNX's clamped slice bounds as a Python slice (``None`` where it runs to the end)."""
    if size is None:
        if start == 0 and end >= INT_MAX and step == 1:
            return slice(None)
        raise ctx.fail("slicing part of the batch axis is not supported.")
    if step > 0:
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        return slice(start, end, step)
    start = min(max(start + size if start < 0 else start, -1), size - 1)
    end = min(max(end + size if end < 0 else end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


@op("Gather")
def gather(ctx):
    from keras import ops

    data, indices = ctx.data(0), ctx.data(1)
    axis = int(ctx.attr("axis", 0))
    if isinstance(data, Tensor) and isinstance(indices, np.ndarray):
        axis %= data.rank
        size = ctx.c.probe.shape(ctx.input_names[0])[axis]
        if size is None:
            raise ctx.fail("gathering along the batch axis is not supported.")
        indices = np.where(indices < 0, indices + size, indices).astype(np.int64)
        k = data.keras_axis(axis)
        q = indices.ndim

        def moved(p):
            return p if p < axis else p + q - 1
        perm = [moved(p) for p in data.perm[:k]] + [axis + i for i in range(q)] + [moved(p) for p in data.perm[k + 1:]]
        ctx.set(ops.take(data.keras, indices, axis=k), perm)
    elif isinstance(indices, Tensor) and isinstance(data, np.ndarray):
        axis %= data.ndim
        if axis != 0:
            raise ctx.fail("a lookup in a constant table along an axis other than the first is not supported.")
        # A table lookup (an embedding): the indices keep their layout, the table's axes follow.
        result = ops.take(data, ops.cast(indices.keras, "int32"), axis=0)
        ctx.set(result, list(indices.perm) + list(range(indices.rank, indices.rank + data.ndim - 1)))
    elif isinstance(data, Tensor) and isinstance(indices, Tensor):
        # Indices computed from the data (``x[torch.arange(N), lengths - 1]``, a flattened batch x steps axis)
        axis %= data.rank
        k = data.keras_axis(axis)
        index = ops.cast(indices.keras, "int32")
        index = ops.where(index < 0, index + _axis_size(data.keras, k), index)

        def moved(p):
            return p if p < axis else p + indices.rank - 1
        perm = [moved(p) for p in data.perm[:k]] + [axis + p for p in indices.perm] + \
            [moved(p) for p in data.perm[k + 1:]]
        ctx.set(ops.take(data.keras, index, axis=k), perm)
    else:
        raise ctx.fail("gathering from a constant along data-dependent indices of another axis is not supported.")


def _axis_size(x, k: int):
    """The size of axis ``k`` of ``x`` at run time (a batch-sized axis has none in the graph) as an int32."""
    from keras import ops

    size = x.shape[k]
    if size is not None:
        return np.int32(size)
    one_line = x[tuple(slice(None) if j == k else slice(0, 1) for j in range(len(x.shape)))]
    return ops.cast(ops.sum(ops.ones_like(one_line, dtype="int32")), "int32")


@op("GatherElements")
def gather_elements(ctx):
    """``torch.gather``: both tensors in one layout, the axis mapped through it."""
    from keras import ops

    data, indices = ctx.data(0), ctx.data(1)
    if not isinstance(data, Tensor):
        raise ctx.fail("gathering from constant data is not supported.")
    axis = int(ctx.attr("axis", 0)) % data.rank
    size = ctx.c.probe.shape(ctx.input_names[0])[axis]
    if isinstance(indices, np.ndarray):
        index = np.transpose(np.where(indices < 0, indices + size, indices), data.perm)
    else:
        index = ops.cast(ctx.to_perm(indices, data.perm), "int32")
        index = ops.where(index < 0, index + size, index) if size is not None else index
    ctx.set(ops.take_along_axis(data.keras, index, axis=data.keras_axis(axis)), data.perm)


@op("OneHot")
def one_hot(ctx):
    from keras import ops

    indices = ctx.tensor(0)
    depth = int(np.asarray(ctx.const(1)).reshape(-1)[0])
    off, on = (float(v) for v in np.asarray(ctx.const(2)).reshape(-1)[:2])
    axis = int(ctx.attr("axis", -1)) % (indices.rank + 1)
    index = ops.cast(indices.keras, "int32")
    encoded = ops.one_hot(ops.where(index < 0, index + depth, index), depth) * np.float32(on - off) + np.float32(off)
    # Keras puts the new axis last: the indices' axes keep their order, shifted past ONNX's new axis.
    ctx.set(encoded, [p + (p >= axis) for p in indices.perm] + [axis])


@op("Trilu")
def trilu(ctx):
    """Upper or lower triangle of the last two axes: a constant 0/1 mask laid out like the tensor."""
    from keras import ops

    x = ctx.tensor(0)
    k = int(np.asarray(ctx.const(1, np.zeros(()))).reshape(-1)[0])
    rows, cols = ctx.c.probe.shape(ctx.input_names[0])[-2:]
    if rows is None or cols is None:
        raise ctx.fail("a triangle over a batch-sized axis is not supported.")
    mask = np.triu(np.ones((rows, cols)), k) if ctx.attr("upper", 1) else np.tril(np.ones((rows, cols)), k)
    full = np.transpose(mask.reshape((1,) * (x.rank - 2) + mask.shape), x.perm)
    ctx.set(ops.multiply(x.keras, full.astype(str(x.keras.dtype))), x.perm)


@op("Expand")
def expand(ctx):
    """Broadcast to the output shape; an axis broadcast up to the batch takes its size from the input."""
    out_shape = ctx.out_shape()
    rank = len(out_shape)
    value = ctx.value(0)
    if isinstance(value, np.ndarray):  # a constant broadcast up to the batch (a class token, say)
        ctx.set(ctx.c.batch_ones(out_shape, value.dtype.name) * value, layout.identity(rank))
        return
    x = value if isinstance(value, Tensor) else materialize(ctx, 0)
    perm = reference_perm([x], rank)
    keras_x = expand_rank(ctx, x, rank, perm)
    in_shape = (1,) * (rank - x.rank) + ctx.c.probe.shape(ctx.input_names[0])
    ones_shape = [d if in_shape[axis] == 1 else 1 for axis, d in enumerate(out_shape)]
    if all(d == 1 for d in ones_shape):
        ctx.set(keras_x, perm)
        return
    dtype = str(keras_x.dtype)
    if None in ones_shape:
        ones = ctx.to_perm(Tensor(ctx.c.batch_ones(ones_shape, dtype), layout.identity(rank)), perm)
    else:
        ones = np.ones([ones_shape[p] for p in perm], dtype)
    ctx.set(keras_x * ones, perm)


@op("Tile")
def tile(ctx):
    from keras import ops

    x = ctx.tensor(0)
    repeats = ctx.const(1)
    ctx.set(ops.tile(x.keras, [int(repeats[p]) for p in x.perm]), x.perm)


@op("Pad")
def pad(ctx):
    from keras import ops

    x = ctx.tensor(0)
    mode = ctx.attr("mode", "constant")
    pads = ctx.attr("pads") if "pads" in ctx.attrs else ctx.const(1)
    value = ctx.attr("value", 0.0) if "value" in ctx.attrs else ctx.const(2, np.zeros(()))
    axes = ctx.const(3) if ctx.has(3) else np.arange(len(pads) // 2)
    axes = [int(a) % x.rank for a in np.atleast_1d(axes)]
    begin, end = [0] * x.rank, [0] * x.rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = int(pads[i]), int(pads[i + len(axes)])
    shape = ctx.c.probe.shape(ctx.input_names[0])
    source = x.keras
    if min(begin + end) < 0:  # negative pads crop: slice first, then pad what is positive
        if mode != "constant" and any(min(b, e) < 0 < max(b, e) for b, e in zip(begin, end, strict=True)):
            raise ctx.fail(f"{mode} padding that also crops the same axis is not supported.")
        if any(shape[axis] is None and min(begin[axis], end[axis]) < 0 for axis in range(x.rank)):
            raise ctx.fail("cropping the batch axis is not supported.")
        source = source[tuple(slice(-min(begin[p], 0), shape[p] + min(end[p], 0)) if shape[p] is not None
                              else slice(None) for p in x.perm)]
        shape = tuple(d if d is None else d + min(b, 0) + min(e, 0) for d, b, e in zip(shape, begin, end, strict=True))
        begin, end = [max(b, 0) for b in begin], [max(e, 0) for e in end]
    widths = [(begin[p], end[p]) for p in x.perm]
    if not any(b or e for b, e in widths):
        result = source
    elif mode == "constant":
        result = ops.pad(source, widths, mode="constant", constant_values=float(np.asarray(value).reshape(-1)[0]
                                                                                  if np.size(value) else 0.0))
    elif mode == "reflect":
        result = ops.pad(source, widths, mode="reflect")
    elif mode in ("edge", "wrap"):
        result = source
        for k, (b, e) in enumerate(widths):
            if b or e:
                size = shape[x.perm[k]]
                positions = np.arange(-b, size + e)
                indices = np.clip(positions, 0, size - 1) if mode == "edge" else positions % size
                result = ops.take(result, indices, axis=k)
    else:
        raise ctx.fail(f"pad mode {mode!r} is not supported.")
    ctx.set(result, x.perm)


@op("DepthToSpace", "SpaceToDepth")
def depth_space(ctx):
    """Done in ONNX's own element order: reshape, transpose, reshape."""
    from keras import ops

    x = ctx.tensor(0)
    b = int(ctx.attr("blocksize"))
    _, c, h, w = ctx.c.probe.shape(ctx.input_names[0])
    source = ctx.to_perm(x, layout.identity(4))
    if ctx.op_type == "DepthToSpace":
        if ctx.attr("mode", "DCR") == "DCR":
            y = ops.transpose(ops.reshape(source, [-1, b, b, c // b**2, h, w]), [0, 3, 4, 1, 5, 2])
        else:
            y = ops.transpose(ops.reshape(source, [-1, c // b**2, b, b, h, w]), [0, 1, 4, 2, 5, 3])
        result = ops.reshape(y, [-1, c // b**2, h * b, w * b])
    else:
        y = ops.transpose(ops.reshape(source, [-1, c, h // b, b, w // b, b]), [0, 3, 5, 1, 2, 4])
        result = ops.reshape(y, [-1, c * b * b, h // b, w // b])
    ctx.set(result, layout.identity(4))


@op("ScatterND")
def scatter_nd(ctx):
    """In-place assignment to the same positions of every sample: ``mask[:, 0] = True`` or a decoder loop's
    ``outputs[:, t] = y`` (indices ``[n, *position]`` for each sample ``n``, as the probe measures them), or
    ``outputs[t] = y`` on a time-major tensor (constant indices before the batch axis). Done as a gather
    from the data and the updates side by side (no scatter kernel)."""
    from keras import ops

    data, indices, updates = ctx.data(0), ctx.value(1), ctx.data(2)
    shape = ctx.in_shape(0)
    if ctx.attr("reduction", "none") != "none":
        raise ctx.fail(f"reduction={ctx.attr('reduction')!r} is not supported.")
    if isinstance(indices, Dynamic) and shape[0] is None:
        lead, positions = 1, _per_sample_positions(ctx, indices.probe)
    elif isinstance(indices, np.ndarray):
        lead, positions = 0, indices.reshape(-1, indices.shape[-1])
    else:
        raise ctx.fail("indices computed from the data are not supported.")
    inner, tail = shape[lead:lead + positions.shape[1]], list(shape[lead + positions.shape[1]:])
    if not isinstance(data, Tensor) or not isinstance(updates, Tensor) or not positions.shape[1] or \
            None in inner or sum(d is None for d in tail) != 1 - lead:
        raise ctx.fail("only assignments to the same positions of every sample are supported.")
    size = int(np.prod(inner))
    source = np.arange(size)  # where each position's value comes from; the last update of a position wins
    source[np.ravel_multi_index(tuple((positions % np.array(inner)).T), inner)] = size + np.arange(len(positions))
    rest = [-1 if d is None else d for d in tail]
    merged = ops.concatenate([ops.reshape(ctx.to_perm(data, layout.identity(data.rank)), [-1] * lead + [size, *rest]),
                              ops.reshape(ctx.to_perm(updates, layout.identity(updates.rank)),
                                          [-1] * lead + [len(positions), *rest])], axis=lead)
    result = ops.reshape(ops.take(merged, source, axis=lead), [-1 if d is None else d for d in shape])
    ctx.set(result, layout.identity(len(shape)))


def _per_sample_positions(ctx, probes) -> np.ndarray:
    """The positions (after the batch index) that ScatterND writes in every sample, the same for each sample
    and at both probe batch sizes; anything else is refused."""
    found = None
    for n, index in zip(ctx.c.probe.batches, probes, strict=True):
        if index.ndim < 2 or index.shape[0] != n or index.shape[-1] < 1:
            raise ctx.fail("the scatter indices do not enumerate the samples of the batch.")
        rows = index.reshape(n, -1, index.shape[-1])
        if not np.array_equal(rows[..., 0], np.broadcast_to(np.arange(n)[:, None], rows.shape[:2])) or \
                not np.array_equal(rows[..., 1:], np.broadcast_to(rows[:1, :, 1:], rows[..., 1:].shape)):
            raise ctx.fail("the scatter writes different positions in different samples.")
        if found is not None and not np.array_equal(found, rows[0, :, 1:]):
            raise ctx.fail("the scatter positions change with the batch size.")
        found = rows[0, :, 1:]
    return found


@op("ScatterElements", "Scatter")
def scatter_elements(ctx):
    """``torch.scatter``/``scatter_add`` (a top-k mask ``zeros_like(s).scatter_(-1, s.topk(k).indices, 1)``)
    with indices from the data, through a one-hot of the indices along the axis (no scatter kernel): the
    sum of the updates a position gets (reduction add), or the last one (none, as onnxruntime does).
    Indices that cover only part of the other axes are refused."""
    from keras import ops

    data, indices, updates = ctx.data(0), ctx.data(1), ctx.data(2)
    shape, index_shape = ctx.in_shape(0), ctx.in_shape(1)
    axis = int(ctx.attr("axis", 0)) % len(shape)
    reduction = ctx.attr("reduction", "none")
    if not isinstance(data, Tensor) or reduction not in ("none", "add") or shape[axis] is None or \
            any(index_shape[d] != shape[d] for d in range(len(shape)) if d != axis):
        raise ctx.fail("only scatters (none or add) along a static axis, with indices as wide as the data on "
                       "the other axes, are supported.")
    size, dtype = shape[axis], str(data.keras.dtype)
    if isinstance(indices, Tensor):
        index = ops.cast(ctx.to_perm(indices, layout.identity(indices.rank)), "int32")
        one = ops.one_hot(ops.where(index < 0, index + size, index), size, dtype="float32")
    else:
        one = np.eye(size, dtype=np.float32)[np.where(indices < 0, indices + size, indices)]
    values = ctx.to_perm(updates, layout.identity(updates.rank)) if isinstance(updates, Tensor) else updates
    x = ctx.to_perm(data, layout.identity(data.rank))
    if reduction == "add":
        work = "float32" if dtype in ("bool", "float16", "bfloat16") else dtype
        total = ops.sum(ops.cast(one, work) * ops.expand_dims(ops.cast(values, work), -1), axis=axis)
        ctx.set(ops.cast(ops.cast(x, work) + ops.moveaxis(total, -1, axis), dtype), layout.identity(len(shape)))
        return
    # Per position, 1 + the last index along the axis that writes it (0: none does).
    order = np.arange(1, index_shape[axis] + 1, dtype=np.float32).reshape(
        [-1 if d == axis else 1 for d in range(len(shape))] + [1])
    last = ops.moveaxis(ops.max(one * order, axis=axis), -1, axis)
    source = ops.cast(ops.maximum(last - 1.0, 0.0), "int32")
    taken = ops.take_along_axis(ops.cast(values, dtype) if isinstance(values, np.ndarray) else values, source,
                                axis=axis)
    ctx.set(ops.where(last > 0, taken, x), layout.identity(len(shape)))
