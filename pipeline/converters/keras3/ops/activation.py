"""Activations with parameters, each as the closest built-in Keras op (TFLite has kernels for most)."""
import math

import numpy as np

from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import operands


@op("LeakyRelu")
def leaky_relu(ctx):
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(ops.leaky_relu(x.keras, negative_slope=float(ctx.attr("alpha", 0.01))), x.perm)


@op("Elu", "Celu")
def elu(ctx):
    from keras import ops

    x = ctx.tensor(0)
    alpha = float(ctx.attr("alpha", 1.0))
    if ctx.op_type == "Elu" and alpha == 1.0:
        ctx.set(ops.elu(x.keras), x.perm)
        return
    scaled = x.keras / np.float32(alpha) if ctx.op_type == "Celu" else x.keras
    negative = (ops.exp(ops.minimum(scaled, np.float32(0))) - np.float32(1)) * np.float32(alpha)
    ctx.set(ops.maximum(x.keras, np.float32(0)) + ops.minimum(negative, np.float32(0)), x.perm)


@op("Selu")
def selu(ctx):
    from keras import ops

    x = ctx.tensor(0)
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    if math.isclose(alpha, 1.6732632, rel_tol=1e-6) and math.isclose(gamma, 1.0507010, rel_tol=1e-6):
        ctx.set(ops.selu(x.keras), x.perm)
        return
    negative = (ops.exp(ops.minimum(x.keras, np.float32(0))) - np.float32(1)) * np.float32(alpha)
    ctx.set(ops.where(x.keras > 0, x.keras, negative) * np.float32(gamma), x.perm)


@op("HardSigmoid")
def hard_sigmoid(ctx):
    from keras import ops

    x = ctx.tensor(0)
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:  # PyTorch's hardsigmoid
        ctx.set(ops.hard_sigmoid(x.keras), x.perm)
    else:
        ctx.set(ops.clip(x.keras * np.float32(alpha) + np.float32(beta), 0.0, 1.0), x.perm)


@op("HardSwish")
def hard_swish(ctx):
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(ops.hard_silu(x.keras), x.perm)


@op("Mish")
def mish(ctx):
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(x.keras * ops.tanh(ops.softplus(x.keras)), x.perm)


@op("Softsign")
def softsign(ctx):
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(x.keras / (ops.abs(x.keras) + np.float32(1)), x.perm)


@op("Gelu")
def gelu(ctx):
    """ONNX Gelu (opset 20), and the Erf-based pattern ``patterns`` fuses into it."""
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(ops.gelu(x.keras, approximate=ctx.attr("approximate", "none") == "tanh"), x.perm)


@op("ThresholdedRelu")
def thresholded_relu(ctx):
    from keras import ops

    x = ctx.tensor(0)
    alpha = np.float32(ctx.attr("alpha", 1.0))
    ctx.set(ops.where(x.keras > alpha, x.keras, np.float32(0)), x.perm)


@op("PRelu")
def prelu(ctx):
    from keras import ops

    (x, slope), perm = operands(ctx)
    # (a Keras tensor first: NumPy on the left would try to read the symbolic tensor's values)
    ctx.set(ops.maximum(x, np.float32(0)) + ops.multiply(ops.minimum(x, np.float32(0)), slope), perm)
