"""MatMul, Gemm and Einsum: a Dense layer for constant weights, ``einsum`` written in each operand's
own axis order otherwise (no transposes: the subscripts follow the layout)."""
import string

import numpy as np

from pipeline.converters.keras3 import layout
from pipeline.converters.keras3.arith import add
from pipeline.converters.keras3.layout import Tensor
from pipeline.converters.keras3.ops import op


def dense(ctx, x: Tensor, kernel: np.ndarray, bias: np.ndarray | None, suffix: str = "", axis: int = -1) -> tuple:
    """``x @ kernel + bias`` over x's ONNX axis ``axis`` (the last by default) with a Keras Dense layer;
    the output's axis ``axis`` holds the result."""
    import keras

    last = axis % x.rank
    order = [p for p in x.perm if p != last] + [last]
    layer = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None, name=ctx.name(suffix or "dense"))
    result = _on_rows(layer, ctx.to_perm(x, order))
    layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
    return result, order


def _on_rows(layer, source):
    """``layer(source)``; a tensor of rank 3 or more whose only dynamic axis is the batch goes in as the rows of
    a matrix, reshaped by constant shapes. Keras' Dense on rank 3+ is a ``tensordot`` that reshapes by shapes
    computed at run time (Shape, Gather, Prod, Pack): with those around FULLY_CONNECTED, TFLite's XNNPACK
    delegate answers the first call at a batch of 48 or more right and every later call wrong (timm's
    mvitv2_tiny); reshapes by constants it runs right every time."""
    from keras import ops

    shape = tuple(source.shape)
    if len(shape) < 3 or shape[0] is not None or any(d is None for d in shape[1:]):
        return layer(source)
    rows = layer(ops.reshape(source, (-1, shape[-1])))
    return ops.reshape(rows, (-1, *shape[1:-1], layer.units))


@op("MatMul")
def matmul(ctx):
    a, b = ctx.data(0), ctx.data(1)
    if isinstance(a, Tensor) and isinstance(b, np.ndarray) and b.ndim >= 2 and a.rank >= 2 and \
            all(d == 1 for d in b.shape[:-2]) and b.ndim <= a.rank:
        ctx.set(*dense(ctx, a, b.reshape(b.shape[-2:]), None))
        return
    if isinstance(b, Tensor) and _plain_matrix(a, b.rank):
        # ``W @ x`` (a hand-written im2col conv, a graph's adjacency): a Dense layer over x's second-last
        # axis. As an einsum with the constant first, TensorFlow's TFLite converter writes [-1, ...] static
        # shapes at a dynamic batch and the flatbuffer does not load.
        ctx.set(*dense(ctx, b, a.reshape(a.shape[-2:]).T, None, axis=-2))
        return
    ctx.set(*batched_matmul(ctx, a, b))


def _plain_matrix(value, rank: int) -> bool:
    """A constant matrix (leading size-1 axes allowed) that broadcasts over a rank-``rank`` tensor."""
    return isinstance(value, np.ndarray) and 2 <= value.ndim <= rank and all(d == 1 for d in value.shape[:-2])


def batched_matmul(ctx, a, b) -> tuple:
    """ONNX MatMul (NumPy semantics) as one einsum over the operands as they are stored."""
    from keras import ops

    ranks = [v.rank if isinstance(v, Tensor) else np.ndim(v) for v in (a, b)]
    if min(ranks) < 2:
        return _matmul_in_onnx_order(ctx, a, b)
    rank = max(ranks)
    shapes = [ctx.in_shape(index) for index in range(2)]
    shapes = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    batch = string.ascii_lowercase[:rank - 2]
    out_letters = list(batch) + ["y", "z"]  # output axes: batch..., m, n
    letters = [list(batch) + ["y", "x"], list(batch) + ["x", "z"]]  # A: batch, m, k; B: batch, k, n
    operands, subscripts = [], []
    for index, (value, shape) in enumerate(zip((a, b), shapes, strict=True)):
        other = shapes[1 - index]
        own = letters[index]
        extra = rank - ranks[index]
        drop = [axis for axis in range(rank - 2) if shape[axis] == 1 and other[axis] != 1]
        if any(shape[axis] != other[axis] and axis not in drop and other[axis] != 1 for axis in range(rank - 2)):
            return _matmul_in_onnx_order(ctx, a, b)
        if isinstance(value, Tensor):
            perm = [p + extra for p in value.perm]
            keras_value = value.keras
            dropped = [perm.index(axis) for axis in drop if axis >= extra]
            if dropped:
                keras_value = ops.squeeze(keras_value, axis=tuple(dropped))
            kept = [p for p in perm if p not in drop]
        else:
            keras_value = np.asarray(value).reshape(shape)
            keras_value = np.squeeze(keras_value, axis=tuple(drop)) if drop else keras_value
            kept = [axis for axis in range(rank) if axis not in drop]
        operands.append(keras_value)
        subscripts.append("".join(own[p] for p in kept))
    out_perm = [p + rank - ranks[0] for p in a.perm] if isinstance(a, Tensor) and ranks[0] == rank else \
        list(range(rank))
    result, letters = contract(operands[0], subscripts[0], operands[1], subscripts[1],
                               "".join(out_letters[p] for p in out_perm))
    return result, [out_letters.index(ch) for ch in letters]


def _matmul_in_onnx_order(ctx, a, b) -> tuple:
    from keras import ops

    def onnx_order(v):
        return ctx.to_perm(v, layout.identity(v.rank)) if isinstance(v, Tensor) else v
    result = ops.matmul(onnx_order(a), onnx_order(b))
    return result, layout.identity(len(ctx.out_shape()))


@op("Gemm")
def gemm(ctx):
    from keras import ops

    a, b, c = ctx.data(0), ctx.data(1), ctx.data(2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if isinstance(a, Tensor) and ctx.attr("transA", 0):
        a = Tensor(a.keras, tuple(1 - p for p in a.perm))
    if isinstance(b, np.ndarray) and isinstance(a, Tensor):
        kernel = (b.T if ctx.attr("transB", 0) else b) * np.float32(alpha)
        n = kernel.shape[1]
        bias = None
        if isinstance(c, np.ndarray) and c.size in (1, n) and (c.ndim < 2 or c.shape[0] == 1):
            bias, c = np.broadcast_to(c.reshape(-1) * np.float32(beta), (n,)).copy(), None
        result, perm = dense(ctx, a, kernel, bias)
    else:
        if isinstance(b, Tensor) and ctx.attr("transB", 0):
            b = Tensor(b.keras, tuple(1 - p for p in b.perm))
        elif isinstance(b, np.ndarray) and ctx.attr("transB", 0):
            b = b.T
        result, perm = batched_matmul(ctx, a, b)
        result = result * np.float32(alpha) if alpha != 1.0 else result
    if c is not None:
        addend = ctx.to_perm(c, perm) if isinstance(c, Tensor) else \
            np.transpose(np.reshape(c, (1,) * (2 - np.ndim(c)) + np.shape(c)), perm)
        result = add(result, ops.multiply(addend, np.float32(beta)) if beta != 1.0 else addend)
    ctx.set(result, perm)


@op("Einsum")
def einsum(ctx):
    """The equation rewritten for each operand's storage order; the output stays in ONNX order."""
    from keras import ops

    equation = _without_ellipsis(ctx, ctx.attr("equation").replace(" ", ""))
    inputs, output = equation.split("->") if "->" in equation else (equation, None)
    terms = inputs.split(",")
    operands, rewritten = [], []
    for index, term in enumerate(terms):
        value = ctx.data(index)
        if isinstance(value, Tensor):
            rewritten.append("".join(term[p] for p in value.perm))
            operands.append(value.keras)
        else:
            rewritten.append(term)
            operands.append(value)
    if output is None:
        output = "".join(sorted(ch for ch in set(inputs.replace(",", "")) if inputs.count(ch) == 1))
    if len(operands) == 2:
        result, letters = contract(operands[0], rewritten[0], operands[1], rewritten[1], output)
        ctx.set(result, [output.index(ch) for ch in letters])
        return
    ctx.set(ops.einsum(_lowercase(",".join(rewritten) + "->" + output), *operands), layout.identity(len(output)))


def contract(a, a_terms: str, b, b_terms: str, output: str) -> tuple:
    """A two-operand einsum as transposes, reshapes and one batched matmul; returns the result and the
    letters of its axes (batch, a's free, b's free: the caller's layout records that order, no transpose).
    Not ``tf.einsum``: TensorFlow's TFLite converter lowers some equations to a BatchMatMul of the wrong
    shape (``bhwc,bhw->bc``) or writes static [-1, ...] shapes that do not load."""
    from keras import ops

    if len(set(a_terms)) < len(a_terms) or len(set(b_terms)) < len(b_terms):  # a diagonal: einsum itself
        return ops.einsum(_lowercase(f"{a_terms},{b_terms}->{output}"), a, b), output
    a, a_terms = _sum_unused(a, a_terms, b_terms + output)
    b, b_terms = _sum_unused(b, b_terms, a_terms + output)
    batch = [ch for ch in output if ch in a_terms and ch in b_terms]
    summed = [ch for ch in a_terms if ch in b_terms and ch not in output]
    free_a = [ch for ch in a_terms if ch not in b_terms]
    free_b = [ch for ch in b_terms if ch not in a_terms]
    sizes = {**_sizes(b, b_terms), **_sizes(a, a_terms)}
    unknown = [ch for ch in sizes if sizes[ch] is None]
    if len(unknown) > 1 or (unknown and unknown[0] in summed and batch):  # not one reshape each: einsum itself
        return ops.einsum(_lowercase(f"{a_terms},{b_terms}->{output}"), a, b), output
    left = _grouped(a, a_terms, batch, [free_a, summed], sizes)
    right = _grouped(b, b_terms, batch, [summed, free_b], sizes)
    result = ops.matmul(left, right)
    result = ops.reshape(result, _target([*[sizes[ch] for ch in batch], *[sizes[ch] for ch in free_a + free_b]]))
    return result, "".join(batch + free_a + free_b)


def _sum_unused(x, terms: str, used: str):
    """Sum out the axes no other term names (einsum sums them)."""
    from keras import ops

    unused = [i for i, ch in enumerate(terms) if ch not in used]
    if not unused:
        return x, terms
    summed = np.sum(x, axis=tuple(unused)) if isinstance(x, np.ndarray) else ops.sum(x, axis=unused)
    return summed, "".join(ch for ch in terms if ch in used)


def _sizes(x, terms: str) -> dict:
    return dict(zip(terms, tuple(x.shape), strict=True))


def _grouped(x, terms: str, batch: list, groups: list, sizes: dict):
    """``x`` as [batch..., prod(groups[0]), prod(groups[1])]."""
    from keras import ops

    order = [terms.index(ch) for ch in [*batch, *groups[0], *groups[1]]]
    shape = [*[sizes[ch] for ch in batch], *[_product([sizes[ch] for ch in group]) for group in groups]]
    if isinstance(x, np.ndarray):
        return np.transpose(x, order).reshape(shape)
    moved = ops.transpose(x, order) if order != sorted(order) else x
    return ops.reshape(moved, _target(shape))


def _product(sizes: list):
    return None if None in sizes else int(np.prod(sizes, dtype=np.int64))


def _target(shape: list) -> list:
    """A reshape target: the one unknown (batch-sized) size as -1."""
    return [-1 if d is None else int(d) for d in shape]


def _without_ellipsis(ctx, equation: str) -> str:
    """The equation with each ``...`` spelled out in letters of its own, aligned from the right as
    NumPy broadcasts; broadcasting a size-1 axis against a larger one inside the ellipsis is refused."""
    if "..." not in equation:
        return equation
    inputs, output = equation.split("->") if "->" in equation else (equation, None)
    terms = inputs.split(",")
    free = [ch for ch in string.ascii_letters if ch not in equation]
    shapes = [ctx.in_shape(index) for index in range(len(terms))]
    spans = [len(shape) - (len(term) - 3) if "..." in term else 0 for term, shape in zip(terms, shapes, strict=True)]
    width = max(spans)
    if width > len(free):
        raise ctx.fail("einsum with more axes than letters is not supported.")
    letters = free[:width]
    sizes: dict[str, set] = {}
    spelled = []
    for term, shape, span in zip(terms, shapes, spans, strict=True):
        own = letters[width - span:] if span else []
        for letter, size in zip(own, shape[term.index("...") if "..." in term else 0:], strict=False):
            sizes.setdefault(letter, set()).add(size)
        spelled.append(term.replace("...", "".join(own)))
    if any(len(s) > 1 for s in sizes.values()):
        raise ctx.fail("einsum broadcasting a size-1 axis inside an ellipsis is not supported.")
    if output is None:  # implicit output: the ellipsis axes, then the letters used once, sorted
        single = sorted(ch for ch in set(inputs.replace(",", "").replace(".", "")) if inputs.count(ch) == 1)
        output = "".join(letters) + "".join(single)
    else:
        output = output.replace("...", "".join(letters))
    return ",".join(spelled) + "->" + output


def _lowercase(equation: str) -> str:
    """The same equation in lowercase letters only (Keras' shape inference mis-reads capitals)."""
    letters = sorted({ch for ch in equation if ch.isalpha()})
    if len(letters) > 26:
        return equation
    mapping = dict(zip(letters, string.ascii_lowercase, strict=False))
    return "".join(mapping.get(ch, ch) for ch in equation)
