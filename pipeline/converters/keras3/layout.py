"""Per-tensor layout: which ONNX axis each axis of a Keras tensor holds.

A converted tensor keeps its ONNX values but may store its axes in another order: ``perm[j]`` is
the ONNX axis held by Keras axis ``j`` (``keras = onnx.transpose(perm)``). Convolutions want the
channels last, so they put their outputs in ``channels_last`` order; a Transpose node only changes
the bookkeeping; an op that takes an axis maps it through ``perm``; an op whose meaning depends on
the element order (Reshape, Flatten) first asks for an order it can work in. Every op is thus right
for any layout by construction, and a physical transpose is only made where an op needs one.
"""
from dataclasses import dataclass

import numpy as np


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def channels_last(rank: int) -> tuple[int, ...]:
    """NCHW -> NHWC (and NCW -> NWC, NCDHW -> NDHWC); ranks below 3 have no channel axis to move."""
    return (0, *range(2, rank), 1) if rank >= 3 else identity(rank)


def layout_name(perm) -> str:
    """The conventional name of a layout, e.g. NHWC; other orders are spelled out as a permutation."""
    perm = tuple(perm)
    names = {identity(4): "NCHW", channels_last(4): "NHWC", identity(3): "NCW", channels_last(3): "NWC",
             identity(2): "NC", identity(5): "NCDHW", channels_last(5): "NDHWC"}
    return names.get(perm, "perm" + "".join(map(str, perm)))


def inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


@dataclass
class Tensor:
    """A Keras tensor holding an ONNX tensor; ``perm[j]`` is the ONNX axis of Keras axis ``j``."""

    keras: object
    perm: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.perm)

    def keras_axis(self, onnx_axis: int) -> int:
        return self.perm.index(int(onnx_axis) % self.rank)

    def onnx_shape(self) -> tuple:
        """The ONNX shape (None for dynamic axes), read back from the Keras tensor."""
        shape = tuple(self.keras.shape)
        return tuple(shape[self.perm.index(axis)] for axis in range(self.rank))


@dataclass
class Dynamic:
    """A value that depends on the batch size only (a shape computed from the input), not on data.

    ``probe`` holds its values at the two probe batch sizes; ops that take shapes from it (Reshape,
    Expand...) use the output shapes the probe measured instead.
    """

    name: str
    probe: tuple[np.ndarray, np.ndarray]


def move_only_unit_axes(perm_from, perm_to, onnx_shape) -> bool:
    """Whether going from one axis order to the other moves only size-1 axes (a reshape does it)."""
    def order(perm):
        return [axis for axis in perm if onnx_shape[axis] != 1]
    return order(perm_from) == order(perm_to)


def reshape_groups(in_shape, out_shape):
    """Pair consecutive input axes with consecutive output axes of equal size.

    Sizes are ints, ``"B"`` for an axis of exactly the batch size, or None for another dynamic
    axis. Returns ``[(in_axes, out_axes), ...]`` covering every non-unit axis of both shapes in
    order, or None when the shapes cannot be matched this way (a batch axis merged with others).
    Size-1 axes are left out: they can go anywhere.
    """
    if None in in_shape or None in out_shape:
        return None
    ins = [i for i, d in enumerate(in_shape) if d != 1]
    outs = [j for j, d in enumerate(out_shape) if d != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        a, b = in_shape[ins[i]], out_shape[outs[j]]
        if a == "B" or b == "B":
            if a != b:
                return None
            groups.append(([ins[i]], [outs[j]]))
            i, j = i + 1, j + 1
            continue
        gi, gj, pa, pb = [ins[i]], [outs[j]], a, b
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(ins) or in_shape[ins[i]] == "B":
                    return None
                pa *= in_shape[ins[i]]
                gi.append(ins[i])
                i += 1
            else:
                if j >= len(outs) or out_shape[outs[j]] == "B":
                    return None
                pb *= out_shape[outs[j]]
                gj.append(outs[j])
                j += 1
        groups.append((gi, gj))
    return groups if i == len(ins) and j == len(outs) else None
