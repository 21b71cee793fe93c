"""One converter per ONNX op type, registered by name with ``@op`` (as onnx2tf dispatches its ops).

A converter gets a ``NodeContext`` (its inputs: Keras ``Tensor``s with their axis order, or NumPy
constants; its output shapes as the probe measured them) and sets its outputs. It builds only
built-in Keras layers and ``keras.ops`` calls, which serialise and load with ``safe_mode=True``. What
it cannot do exactly it refuses with ``ctx.fail``, naming the op: never a silently wrong model.
"""
import importlib

HANDLERS: dict = {}
# Ops that work on channels-last data: a graph with them takes rank-3 inputs channels-last too.
SPATIAL_OPS = {"Conv", "ConvTranspose", "Col2Im", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
               "Resize"}
MODULES = ("elementwise", "activation", "shape", "reduce", "matmul", "conv", "pool", "norm", "recurrent", "resize",
           "sample")


def op(*op_types: str):
    def register(function):
        for op_type in op_types:
            HANDLERS[op_type] = function
        return function
    return register


for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")
