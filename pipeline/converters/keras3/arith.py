"""Addition as the converted graph must do it (a leaf module: the ops and the symbolic shape values use it)."""
import numpy as np


def add(a, b):
    """``a + b`` with NumPy broadcasting, never through Keras' bias-add shortcut on the wrong axis.

    On TensorFlow, ``keras.ops.add(x1, x2)`` becomes ``tf.nn.bias_add`` when ``x2`` has one non-unit
    axis whose size is that of ``x1``'s axis 1 or last axis, and adds along the last axis whenever the
    sizes match there (Keras 3.15): ``[N, 8, 8, 8] + [1, 8, 1, 1]`` adds the bias along the width. So the
    operands go in an order whose shortcut is right (or not taken), else as ``a - (-b)`` (exact).
    """
    from keras import ops

    if not _integer(a) and not _integer(b):
        if _bias_add_right(a, b):
            return ops.add(a, b)
        if _bias_add_right(b, a):
            return ops.add(b, a)
    # Integers never as a bias-add: TFLite has no BiasAdd kernel for them (ids + per-column offsets).
    return ops.subtract(a, -b if isinstance(b, np.ndarray | np.generic) else ops.negative(b))


def _integer(x) -> bool:
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return np.dtype(str(dtype)).kind in "iu"


def _bias_add_right(x1, x2) -> bool:
    """Whether Keras' ``add(x1, x2)`` adds along the right axes for every batch size (1 or more) its
    dynamic axes may take at run time."""
    import itertools

    s1, s2 = (tuple(np.shape(x)) if isinstance(x, np.ndarray | np.generic | int | float) else tuple(x.shape)
              for x in (x1, x2))
    dynamic = [("a", i) for i, d in enumerate(s1) if d is None] + [("b", i) for i, d in enumerate(s2) if d is None]
    for sizes in itertools.product((1, 1_000_003), repeat=len(dynamic)):
        fill = dict(zip(dynamic, sizes, strict=True))
        c1 = [fill.get(("a", i), d) for i, d in enumerate(s1)]
        c2 = [fill.get(("b", i), d) for i, d in enumerate(s2)]
        wide = [j for j, d in enumerate(c2) if d > 1]
        if len(wide) != 1 or len(c1) < 2 or c2[wide[0]] not in {c1[1], c1[-1]}:
            continue  # no shortcut: tf.add
        axis = len(c1) - 1 if c1[-1] == c2[wide[0]] else 1
        if len(c2) > len(c1) or wide[0] + len(c1) - len(c2) != axis:
            return False
    return True
