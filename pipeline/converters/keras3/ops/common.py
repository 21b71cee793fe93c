"""Helpers shared by the op converters: operands brought to one layout, constants laid out to match."""
import numpy as np

from pipeline.converters.keras3.arith import add  # noqa: F401 - the ops add through it
from pipeline.converters.keras3.layout import Tensor


def expand_rank(ctx, tensor: Tensor, rank: int, perm) -> object:
    """``tensor`` with leading size-1 axes added up to ``rank`` (NumPy broadcasting), in ``perm`` order."""
    from keras import ops

    extra = rank - tensor.rank
    if extra == 0:
        return ctx.to_perm(tensor, perm)
    own_order = [axis - extra for axis in perm if axis >= extra]
    x = ctx.to_perm(tensor, own_order)
    for position, axis in enumerate(perm):
        if axis < extra:
            x = ops.expand_dims(x, position)
    return x


def const_in_perm(value: np.ndarray, rank: int, perm) -> np.ndarray:
    """A constant broadcast-ready for a rank-``rank`` tensor held in ``perm`` order."""
    value = np.asarray(value)
    if value.ndim == 0:
        return value
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    return np.ascontiguousarray(np.transpose(value, perm))


def reference_perm(tensors: list[Tensor], rank: int) -> tuple[int, ...]:
    """The layout the operands of an elementwise op meet in: that of the first full-rank tensor."""
    full = [t for t in tensors if t.rank == rank]
    if full:
        return full[0].perm
    t = tensors[0]
    extra = rank - t.rank
    return tuple(range(extra)) + tuple(axis + extra for axis in t.perm)


def operands(ctx, indices=None) -> tuple[list, tuple[int, ...]]:
    """The node's inputs as Keras tensors or constants, all in one layout; returns them and that layout."""
    indices = list(range(len(ctx.input_names))) if indices is None else indices
    values = [ctx.value(i) for i in indices]
    rank = len(ctx.out_shape())
    tensors = [v for v in values if isinstance(v, Tensor)]
    perm = reference_perm(tensors, rank)
    result = []
    for index, value in zip(indices, values, strict=True):
        if isinstance(value, Tensor):
            result.append(expand_rank(ctx, value, rank, perm))
        elif isinstance(value, np.ndarray):
            result.append(const_in_perm(value, rank, perm))
        else:
            result.append(expand_rank(ctx, materialize(ctx, index), rank, perm))
    return result, perm


def materialize(ctx, index: int) -> Tensor:
    """A value computed from shapes only that changes between the probe's runs, as a Keras tensor in ONNX
    order: one that follows the batch (``_batch_materialize``), else one rebuilt from the symbolic shape of a
    free axis (``symbolic``: a positional table sliced to the sequence length, ``arange(T)``, a causal mask).
    """
    from pipeline.converters.keras3 import symbolic
    from pipeline.errors import ConversionError

    try:
        return _batch_materialize(ctx, index)
    except ConversionError as batch_error:
        try:
            return symbolic.build(ctx.c, ctx.input_names[index])
        except ConversionError as free_error:
            raise ConversionError(f"{batch_error.message} Nor from a free axis' size: {free_error.message}",
                                  batch_error.hint, batch_error.unsupported_op) from None


def _batch_materialize(ctx, index: int) -> Tensor:
    """A batch-dependent value that is constant along its batch axis (zeros sized by the batch, say) as a
    Keras tensor in ONNX order; anything else would need a fixed batch size and is refused. The axis may
    be a multiple of the batch (batch x heads, as attention merges them) when every row is the same."""
    from keras import ops

    name = ctx.input_names[index]
    probe = ctx.c.probe
    shape = probe.shape(name)
    a, b = ctx.value(index).probe
    dynamic = [axis for axis, d in enumerate(shape) if d is None]
    if len(dynamic) != 1:
        raise ctx.fail(f"input {name} depends on the batch size in a way only a fixed batch could express.")
    axis = dynamic[0]
    (n_a, n_b), (size_a, size_b) = probe.batches, (a.shape[axis], b.shape[axis])
    multiple = size_a // n_a
    if size_a != multiple * n_a or size_b != multiple * n_b:
        raise ctx.fail(f"input {name} depends on the batch size in a way only a fixed batch could express.")
    row = np.take(a, [0], axis=axis)
    row_b = np.take(b, [0], axis=axis)
    # The same row at both probe runs: a value that changes with a free axis' size, not with the batch
    # (``torch.full((N,), T)``), is not this constant row.
    if _same_rows(a, row) and _same_rows(b, row_b) and row_b.shape == row.shape and _same_rows(row_b, row):
        if row.dtype == bool:  # no multiplication of bools: built in float
            value = ops.cast(ctx.c.batch_ones(shape) * row.astype(np.float32), "bool")
        else:
            value = ctx.c.batch_ones(shape, dtype=row.dtype.name) * row
        return Tensor(ops.repeat(value, multiple, axis=axis) if multiple > 1 else value, tuple(range(len(shape))))
    block = np.take(a, range(multiple), axis=axis)
    if multiple > 1 and _periodic(a, axis, multiple) and _periodic(b, axis, multiple) and _same_rows(
            np.take(b, range(multiple), axis=axis), block):
        # Batch x heads where each head has its own row, the same in every sample (attention on learned
        # queries, expanded over the batch, then heads merged into the batch axis): the block of one sample
        # repeated per sample.
        ones = ops.expand_dims(ctx.c.batch_ones([1 if i != axis else None for i in range(len(shape))],
                                                dtype=block.dtype.name), axis + 1)
        tiled = ones * np.expand_dims(block, axis)  # [..., N, multiple, ...]
        merged = [-1 if i == axis else d for i, d in enumerate(shape)]
        return Tensor(ops.reshape(tiled, merged), tuple(range(len(shape))))
    step = np.take(a, [1], axis=axis) - row if a.shape[axis] > 1 else None
    if multiple == 1 and step is not None and all(_same_rows(v, _counted(row, step, axis, v.shape[axis]))
                                                  for v in (a, b)):
        # The batch index counted along the axis (``torch.arange(N)`` for ``x[torch.arange(N), i]``).
        ones = ctx.c.batch_ones(shape)
        index = ops.cast(ops.cumsum(ones, axis=axis) - ones, row.dtype.name)
        # ``add``, not ``+``: an integer row is a bias to Keras' add, and TFLite has no integer BiasAdd.
        return Tensor(add(index * step, row), tuple(range(len(shape))))
    raise ctx.fail(f"input {name} varies along the batch axis without depending on the data.")


def _periodic(value: np.ndarray, axis: int, period: int) -> bool:
    """Every run of ``period`` rows along ``axis`` equals the first."""
    block = np.take(value, range(period), axis=axis)
    return value.dtype != bool and _same_rows(value, np.concatenate([block] * (value.shape[axis] // period), axis))


def _counted(row: np.ndarray, step: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``row + i * step`` for ``i`` in 0..size-1 along ``axis``."""
    shape = [1] * row.ndim
    shape[axis] = size
    return row + np.arange(size, dtype=row.dtype).reshape(shape) * step


def _same_rows(value: np.ndarray, row: np.ndarray) -> bool:
    """Every row equals the first; floats within rounding (onnxruntime's kernels may round the rows of
    one batch differently, e.g. a decoder's learned queries after attention)."""
    if value.dtype.kind != "f":
        return bool(np.all(value == row))
    scale = float(np.max(np.abs(row))) if row.size else 0.0
    return bool(np.allclose(value, row, rtol=1e-5, atol=1e-6 * max(scale, 1.0), equal_nan=True))


def axis_list(value, rank: int) -> list[int]:
    return sorted(int(a) % rank for a in np.atleast_1d(value))


def onnx_dtype(to: int) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(int(to))).name
