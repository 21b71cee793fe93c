"""Values computed from an input's shape along a free axis, built in Keras from the symbolic shape.

A positional table sliced to the sequence length (``self.position[:, :ids.shape[1]]``), positions
``torch.arange(ids.shape[1])`` or a causal mask ``torch.triu(torch.ones(T, T))`` depend on the size of a
free axis (``export.dynamic_axes``), not on the data: the probe measures them as values that change
between its runs, which only a batch-shaped pattern (``common.materialize``) could otherwise express.
Here the ONNX nodes that compute such a value are walked back to the model's tensors and rebuilt in
Keras: a size is ``a * (size of axis k of a Keras tensor) + b`` (``Dim``), shape vectors stay Python
lists of ints and ``Dim``s, and a length becomes a tensor as a line of ones along that axis (read off the
tensor itself), its positions a cumulative sum, a slice of a constant a gather at those positions. Every
rebuilt value is checked against what the probe measured at both of its runs.
"""
from dataclasses import dataclass

import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.layout import Dynamic, Tensor
from pipeline.errors import ConversionError

INT_MAX = 2**62


@dataclass(frozen=True)
class Dim:
    """``a * n + b``, ``n`` the size of ONNX axis ``axis`` of the converted tensor ``source``."""

    source: str
    axis: int
    a: int = 1
    b: int = 0

    def at(self, probe, run: int) -> int:
        return self.a * np.shape(probe.values[self.source][run])[self.axis] + self.b


@dataclass
class Ints:
    """A shape vector (or scalar) whose items are ints or ``Dim``s."""

    items: list
    scalar: bool = False


@dataclass
class Sym:
    """A Keras tensor in ONNX axis order with its shape as ints and ``Dim``s."""

    keras: object
    dims: list


class Unsupported(Exception):
    pass


class Builder:
    def __init__(self, converter):
        self.c = converter
        self.memo: dict = {}

    # --- entry ----------------------------------------------------------------------------------------

    def tensor(self, name: str) -> Tensor:
        value = self.value(name)
        if isinstance(value, Ints):
            raise Unsupported(f"{name} is a shape vector")
        if isinstance(value, np.ndarray):
            raise Unsupported(f"{name} is a constant")
        return Tensor(value.keras, layout.identity(len(value.dims)))

    def value(self, name: str):
        if name in self.memo:
            return self.memo[name]
        stored = self.c.values.get(name)
        if isinstance(stored, np.ndarray):
            result = stored
        elif isinstance(stored, Tensor):
            dims = [d if d is not None else Dim(name, axis) for axis, d in enumerate(self.c.probe.shape(name))]
            result = Sym(self.c.to_perm(stored, layout.identity(stored.rank)), dims)
        elif isinstance(stored, Dynamic):
            node = self.c.producers.get(name)
            if node is None:
                raise Unsupported(f"{name} has no producer")
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise Unsupported(f"{node.op_type} ({node.name})")
            outputs = handler(node)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            for out, built in zip(node.output, outputs, strict=False):
                self._check(out, built)
                self.memo[out] = built
            result = self.memo[name]
        else:
            raise Unsupported(f"{name} is unknown")
        self.memo[name] = result
        return result

    def _check(self, name: str, built) -> None:
        probe = self.c.probe
        for run in (0, 1):
            measured = probe.values[name][run]
            if isinstance(built, Ints):
                items = [d.at(probe, run) if isinstance(d, Dim) else int(d) for d in built.items]
                ok = np.array_equal(np.asarray(items).reshape(np.shape(measured)), measured) if \
                    np.size(measured) == len(items) else False
            elif isinstance(built, Sym):
                dims = [d.at(probe, run) if isinstance(d, Dim) else int(d) for d in built.dims]
                static = tuple(np.shape(built.keras))  # what Keras knows of the shape must agree
                ok = tuple(dims) == tuple(np.shape(measured)) and len(static) == len(dims) and all(
                    k is None or isinstance(d, Dim) or k == d for k, d in zip(static, built.dims, strict=True))
            else:
                ok = np.array_equal(np.asarray(built), measured)
            if not ok:
                raise Unsupported(f"{name} rebuilt does not match the probe")

    # --- helpers --------------------------------------------------------------------------------------

    def inputs(self, node):
        return [self.value(name) if name else None for name in node.input]

    def attr(self, node, name, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def dtype(self, name: str) -> str:
        return np.asarray(self.c.probe.values[name][0]).dtype.name

    def line(self, dim) -> object:
        """A 1-D float32 Keras tensor of ones, ``dim`` long."""
        from keras import ops

        if not isinstance(dim, Dim):
            return np.ones(int(dim), np.float32)
        source = self.c.values[dim.source]
        if not isinstance(source, Tensor):
            raise Unsupported(f"a size of {dim.source}, which is not a Keras tensor")
        k = source.keras_axis(dim.axis)
        x = source.keras[tuple(slice(None) if j == k else slice(0, 1) for j in range(source.rank))]
        ones = ops.reshape(ops.cast(ops.ones_like(x), "float32"), [-1])
        if dim.a < 1:
            raise Unsupported("a negative or zero multiple of a size")
        if dim.a > 1:
            ones = ops.repeat(ones, dim.a, axis=0)
        if dim.b < 0:
            ones = ones[:dim.b]
        elif dim.b > 0:
            ones = ops.concatenate([ones, np.ones(dim.b, np.float32)], axis=0)
        return ones

    def arange(self, dim, dtype: str) -> object:
        from keras import ops

        if not isinstance(dim, Dim):
            return np.arange(int(dim)).astype(dtype)
        line = self.line(dim)
        return ops.cast(ops.cumsum(line, axis=0) - 1.0, dtype)

    def ones(self, dims, dtype: str) -> object:
        """Ones of shape ``dims`` (the outer product of lines along the dynamic axes)."""
        result = np.ones([1 if isinstance(d, Dim) else int(d) for d in dims], np.float32)
        for axis, d in enumerate(dims):
            if isinstance(d, Dim):
                from keras import ops

                shape = [1] * len(dims)
                shape[axis] = -1
                result = ops.reshape(self.line(d), shape) * result
        from keras import ops

        return ops.cast(result, dtype) if not isinstance(result, np.ndarray) else result.astype(dtype)

    @staticmethod
    def broadcast(*shapes) -> list:
        rank = max(len(s) for s in shapes)
        padded = [[1] * (rank - len(s)) + list(s) for s in shapes]
        out = []
        for column in zip(*padded, strict=True):
            wide = [d for d in column if not (isinstance(d, int | np.integer) and d == 1)]
            out.append(wide[0] if wide else 1)
        return out

    def dims_of(self, value) -> list:
        if isinstance(value, Sym):
            return list(value.dims)
        if isinstance(value, Ints):
            return [] if value.scalar else [len(value.items)]
        return list(np.shape(value))

    def as_keras(self, value, dtype: str | None = None):
        """A Sym's tensor, an Ints vector as a constant when it has no Dim, else unsupported."""
        if isinstance(value, Sym):
            return value.keras
        if isinstance(value, Ints):
            if any(isinstance(d, Dim) for d in value.items):
                raise Unsupported("a shape vector with a free size used as data")
            array = np.asarray(value.items, dtype or np.int64)
            return array.reshape(()) if value.scalar else array
        return value

    # --- shape vectors --------------------------------------------------------------------------------

    def op_Shape(self, node):
        (x,) = self.inputs(node)[:1]
        dims = self.dims_of(x)
        start, end = self.attr(node, "start", 0), self.attr(node, "end", None)
        return Ints(dims[start:end] if end is not None else dims[start:])

    def op_Identity(self, node):
        return self.inputs(node)[0]

    def op_Cast(self, node):
        (x,) = self.inputs(node)
        if isinstance(x, Ints):
            return x
        from keras import ops

        return Sym(ops.cast(x.keras, self.dtype(node.output[0])), x.dims) if isinstance(x, Sym) else x

    def op_Gather(self, node):
        from keras import ops

        data, index = self.inputs(node)
        axis = int(self.attr(node, "axis", 0))
        if isinstance(data, Ints) and isinstance(index, np.ndarray):
            picked = [data.items[int(i)] for i in index.reshape(-1)]
            return Ints(picked, scalar=index.ndim == 0)
        if isinstance(index, Ints):
            index = Sym(self.as_keras(index), self.dims_of(index))
        if isinstance(data, np.ndarray | Sym) and isinstance(index, Sym | np.ndarray):
            data_dims = self.dims_of(data)
            axis %= len(data_dims)
            idx = index.keras if isinstance(index, Sym) else index
            kdata = data.keras if isinstance(data, Sym) else data
            size = data_dims[axis]
            if isinstance(size, int | np.integer):
                idx = ops.where(idx < 0, idx + int(size), idx) if isinstance(index, Sym) else \
                    np.where(idx < 0, idx + int(size), idx)
            result = ops.take(kdata, ops.cast(idx, "int32") if isinstance(index, Sym) else idx, axis=axis)
            return Sym(result, data_dims[:axis] + self.dims_of(index) + data_dims[axis + 1:])
        raise Unsupported("Gather")

    def op_Unsqueeze(self, node):
        from keras import ops

        values = self.inputs(node)
        x = values[0]
        axes = self.attr(node, "axes") if len(values) < 2 else values[1]
        axes = [int(a) for a in np.atleast_1d(axes)]
        if isinstance(x, Ints) and x.scalar and axes in ([0], [-1]):
            return Ints(x.items)
        if isinstance(x, Sym):
            rank = len(x.dims) + len(axes)
            axes = sorted(a % rank for a in axes)
            result, dims = x.keras, list(x.dims)
            for a in axes:
                result = ops.expand_dims(result, a)
                dims.insert(a, 1)
            return Sym(result, dims)
        raise Unsupported("Unsqueeze")

    def op_Squeeze(self, node):
        from keras import ops

        values = self.inputs(node)
        x = values[0]
        axes = self.attr(node, "axes") if len(values) < 2 else values[1]
        if isinstance(x, Ints) and len(x.items) == 1:
            return Ints(x.items, scalar=True)
        if isinstance(x, Sym):
            axes = [a for a, d in enumerate(x.dims) if d == 1] if axes is None else \
                sorted(int(a) % len(x.dims) for a in np.atleast_1d(axes))
            return Sym(ops.squeeze(x.keras, axis=tuple(axes)), [d for a, d in enumerate(x.dims) if a not in axes])
        raise Unsupported("Squeeze")

    def op_Concat(self, node):
        from keras import ops

        values = self.inputs(node)
        if all(isinstance(v, Ints) or (isinstance(v, np.ndarray) and v.ndim == 1) for v in values):
            items = []
            for v in values:
                items += v.items if isinstance(v, Ints) else [int(i) for i in v]
            return Ints(items)
        if any(isinstance(v, Ints) for v in values):
            raise Unsupported("Concat")
        axis = int(self.attr(node, "axis")) % len(self.dims_of(values[0]))
        sizes = [self.dims_of(v)[axis] for v in values]
        if any(isinstance(s, Dim) for s in sizes):
            raise Unsupported("Concat along a free size")
        dims = self.dims_of(next(v for v in values if isinstance(v, Sym)))
        dims[axis] = int(sum(sizes))
        return Sym(ops.concatenate([self.as_keras(v) for v in values], axis=axis), dims)

    def _arith(self, node, fn):
        a, b = self.inputs(node)
        if isinstance(a, Ints) or isinstance(b, Ints):
            pair = [a.items if isinstance(a, Ints) else [int(i) for i in np.atleast_1d(a)],
                    b.items if isinstance(b, Ints) else [int(i) for i in np.atleast_1d(b)]]
            n = max(len(p) for p in pair)
            pair = [p * n if len(p) == 1 else p for p in pair]
            items = [fn(x, y) for x, y in zip(*pair, strict=True)]
            return Ints(items, scalar=all(isinstance(v, Ints) and v.scalar or
                                          (isinstance(v, np.ndarray) and v.ndim == 0) for v in (a, b)))
        return None

    def _dim_op(self, op_type):
        def fn(x, y):
            dx, dy = isinstance(x, Dim), isinstance(y, Dim)
            if not dx and not dy:
                return {"Add": x + y, "Sub": x - y, "Mul": x * y,
                        "Div": x // y if y else 0, "Max": max(x, y), "Min": min(x, y)}[op_type]
            if op_type == "Add" and not (dx and dy):
                d, k = (x, y) if dx else (y, x)
                return Dim(d.source, d.axis, d.a, d.b + int(k))
            if op_type == "Sub" and dx and not dy:
                return Dim(x.source, x.axis, x.a, x.b - int(y))
            if op_type == "Mul" and not (dx and dy):
                d, k = (x, y) if dx else (y, x)
                return Dim(d.source, d.axis, d.a * int(k), d.b * int(k))
            if op_type == "Div" and dx and not dy and y and x.a % y == 0 and x.b % y == 0:
                return Dim(x.source, x.axis, x.a // int(y), x.b // int(y))
            raise Unsupported(f"{op_type} of free sizes")
        return fn

    def _elementwise(self, node, keras_fn):
        from keras import ops

        symbolic = self._arith(node, self._dim_op(node.op_type)) if node.op_type in (
            "Add", "Sub", "Mul", "Div", "Max", "Min") else None
        if symbolic is not None:
            return symbolic
        values = self.inputs(node)
        if any(isinstance(v, Ints) for v in values):
            values = [Sym(self.as_keras(v), self.dims_of(v)) if isinstance(v, Ints) else v for v in values]
        dims = self.broadcast(*[self.dims_of(v) for v in values])
        result = keras_fn(*[self.as_keras(v) for v in values])
        dtype = self.dtype(node.output[0])
        if str(result.dtype) != dtype:
            result = ops.cast(result, dtype)
        return Sym(result, dims)

    def op_Add(self, node):
        from pipeline.converters.keras3.arith import add

        return self._elementwise(node, add)

    def op_Sub(self, node):
        from keras import ops

        return self._elementwise(node, ops.subtract)

    def op_Mul(self, node):
        from keras import ops

        return self._elementwise(node, ops.multiply)

    def op_Div(self, node):
        from keras import ops

        integer = np.dtype(self.dtype(node.output[0])).kind in "iu"
        return self._elementwise(node, ops.floor_divide if integer else ops.divide)

    def op_Max(self, node):
        from keras import ops

        return self._elementwise(node, ops.maximum)

    def op_Min(self, node):
        from keras import ops

        return self._elementwise(node, ops.minimum)

    def op_Neg(self, node):
        from keras import ops

        return self._elementwise(node, ops.negative)

    def op_Not(self, node):
        from keras import ops

        return self._elementwise(node, ops.logical_not)

    def op_Equal(self, node):
        from keras import ops

        return self._elementwise(node, ops.equal)

    def op_Less(self, node):
        from keras import ops

        return self._elementwise(node, ops.less)

    def op_Greater(self, node):
        from keras import ops

        return self._elementwise(node, ops.greater)

    def op_LessOrEqual(self, node):
        from keras import ops

        return self._elementwise(node, ops.less_equal)

    def op_GreaterOrEqual(self, node):
        from keras import ops

        return self._elementwise(node, ops.greater_equal)

    def op_And(self, node):
        from keras import ops

        return self._elementwise(node, ops.logical_and)

    def op_Or(self, node):
        from keras import ops

        return self._elementwise(node, ops.logical_or)

    def op_Where(self, node):
        from keras import ops

        return self._elementwise(node, ops.where)

    # --- values built from sizes ----------------------------------------------------------------------

    @staticmethod
    def _int(value) -> int:
        if isinstance(value, Ints) and len(value.items) == 1 and not isinstance(value.items[0], Dim):
            return int(value.items[0])
        if isinstance(value, np.ndarray) and value.size == 1:
            return int(value.reshape(-1)[0])
        raise Unsupported("a bound that is not a plain integer")

    @staticmethod
    def _size(value):
        if isinstance(value, Ints) and len(value.items) == 1:
            return value.items[0]
        return Builder._int(value)

    def op_Range(self, node):
        from keras import ops

        start, limit, delta = self.inputs(node)
        start, delta, limit = self._int(start), self._int(delta), self._size(limit)
        if delta != 1 or not isinstance(limit, Dim):
            raise Unsupported("Range other than step 1 up to a free size")
        length = Dim(limit.source, limit.axis, limit.a, limit.b - start)
        dtype = self.dtype(node.output[0])
        positions = self.arange(length, dtype)
        return Sym(ops.add(positions, np.asarray(start, dtype)) if start else positions, [length])

    def op_CumSum(self, node):
        from keras import ops

        x, axis = self.inputs(node)
        if self.attr(node, "exclusive", 0) or self.attr(node, "reverse", 0):
            raise Unsupported("CumSum exclusive or reverse")
        x = x if isinstance(x, Sym) else Sym(self.as_keras(x), self.dims_of(x))
        axis = self._int(axis) % len(x.dims)
        return Sym(ops.cast(ops.cumsum(x.keras, axis=axis), self.dtype(node.output[0])), x.dims)

    def op_ConstantOfShape(self, node):
        from onnx import numpy_helper

        (shape,) = self.inputs(node)
        if not isinstance(shape, Ints):
            raise Unsupported("ConstantOfShape")
        fill = self.attr(node, "value")
        fill = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
        dtype = self.dtype(node.output[0])
        ones = self.ones(shape.items, "float32")
        return Sym(self._cast(ones * np.float32(fill), dtype), list(shape.items))

    def _cast(self, x, dtype):
        from keras import ops

        return ops.cast(x, dtype)

    def op_Expand(self, node):
        x, shape = self.inputs(node)
        if not isinstance(shape, Ints):
            raise Unsupported("Expand")
        x = x if isinstance(x, Sym) else Sym(self.as_keras(x), self.dims_of(x))
        dims = self.broadcast(x.dims, shape.items)
        dtype = self.dtype(node.output[0])
        padded = [1] * (len(dims) - len(x.dims)) + list(x.dims)
        # Ones where x has a single entry to broadcast; elsewhere x already has the size.
        ones = self.ones([d if isinstance(o, int | np.integer) and o == 1 else 1 for d, o in
                          zip(dims, padded, strict=True)], dtype if dtype != "bool" else "float32")
        from keras import ops

        return Sym(ops.multiply(x.keras, ones) if dtype != "bool" else ops.logical_and(x.keras, ops.cast(
            ones, "bool")), dims)

    def op_Reshape(self, node):
        from keras import ops

        x, shape = self.inputs(node)
        x = x if isinstance(x, Sym) else Sym(self.as_keras(x), self.dims_of(x))
        items = shape.items if isinstance(shape, Ints) else [int(i) for i in shape]
        items = [x.dims[i] if (isinstance(d, int | np.integer) and d == 0) else d for i, d in enumerate(items)]
        free = [i for i, d in enumerate(items) if isinstance(d, Dim) or d == -1]
        if len(free) > 1:
            raise Unsupported("Reshape with several free sizes")
        target = [-1 if i in free else int(d) for i, d in enumerate(items)]
        dims = list(items)
        if free and not isinstance(items[free[0]], Dim):
            out = self.c.probe.shape(node.output[0])
            if out[free[0]] is not None:
                dims[free[0]] = out[free[0]]
            else:
                raise Unsupported("Reshape inferring a free size")
        return Sym(ops.reshape(x.keras, target), dims)

    def op_Transpose(self, node):
        from keras import ops

        (x,) = self.inputs(node)
        x = x if isinstance(x, Sym) else Sym(self.as_keras(x), self.dims_of(x))
        perm = list(self.attr(node, "perm", list(reversed(range(len(x.dims))))))
        return Sym(ops.transpose(x.keras, perm), [x.dims[p] for p in perm])

    def op_Slice(self, node):
        from keras import ops

        values = self.inputs(node)
        data, starts, ends = values[:3]
        if isinstance(data, Ints):  # part of a shape: x.shape[-2:]
            bounds = [self._int(v) if v is not None else 1 for v in [starts, ends, *values[4:5]]]
            return Ints(data.items[slice(*bounds)])
        dims = self.dims_of(data)
        axes = values[3] if len(values) > 3 and values[3] is not None else np.arange(len(self._items(starts)))
        steps = values[4] if len(values) > 4 and values[4] is not None else np.ones(len(self._items(starts)), int)
        result = data.keras if isinstance(data, Sym) else self.as_keras(data)
        for start, end, axis, step in zip(self._items(starts), self._items(ends), self._items(axes),
                                          self._items(steps), strict=True):
            axis, step = int(axis) % len(dims), int(step)
            size = dims[axis]
            if isinstance(start, Dim) or step != 1:
                raise Unsupported("Slice from a free size or with a step")
            if not isinstance(end, Dim) and end >= INT_MAX // 2 and start == 0:
                continue
            if not isinstance(end, Dim) and not isinstance(size, Dim):
                bounds = slice(*slice(start, end).indices(int(size))[:2])
                index = [slice(None)] * len(dims)
                index[axis] = bounds
                result = result[tuple(index)]
                dims[axis] = len(range(*bounds.indices(int(size))))
                continue
            if not isinstance(end, Dim) or start < 0:
                raise Unsupported("Slice of a free-sized axis by constant bounds")
            length = Dim(end.source, end.axis, end.a, end.b - start)
            positions = ops.cast(self.arange(length, "float32") + float(start), "int32")
            result = ops.take(result, positions, axis=axis)
            dims[axis] = length
        return Sym(result, dims) if not isinstance(result, np.ndarray) else result

    @staticmethod
    def _items(value) -> list:
        if isinstance(value, Ints):
            return list(value.items)
        if isinstance(value, np.ndarray):
            return [int(v) for v in value.reshape(-1)]
        raise Unsupported("a slice bound that is a tensor")

    def op_Trilu(self, node):
        from keras import ops

        values = self.inputs(node)
        x = values[0]
        k = self._int(values[1]) if len(values) > 1 and values[1] is not None else 0
        x = x if isinstance(x, Sym) else Sym(self.as_keras(x), self.dims_of(x))
        rows, cols = x.dims[-2:]
        row = ops.reshape(self.arange(rows, "float32"), [-1, 1])
        col = ops.reshape(self.arange(cols, "float32"), [1, -1])
        keep = (col - row >= float(k)) if self.attr(node, "upper", 1) else (col - row <= float(k))
        return Sym(ops.where(keep, x.keras, ops.zeros_like(x.keras)), x.dims)


def build(converter, name: str) -> Tensor:
    """The value ``name`` (a ``Dynamic``) rebuilt in Keras from the symbolic shapes it is computed from, in
    ONNX axis order; raises ``ConversionError`` with the reason when it cannot be."""
    try:
        return Builder(converter).tensor(name)
    except Unsupported as exc:
        raise ConversionError(f"keras3: {name} could not be built from the input's shape: {exc}.",
                              "Change the model around this value.") from exc
