"""keras -> model.keras with onnx2keras (the seed tutorials' route); the file loads with ``safe_mode=True``.

onnx2keras lacks some ops and builds others from Lambda layers, which Keras refuses to deserialise
in safe mode: ``keras_ops`` registers serialisable converters for those in onnx2keras' own table.
Convolutions run channels-last (NHWC) on CPU, so image models are converted with
``change_ordering=True`` and expect NHWC input; the layout goes into the report. Sequence models
(LSTM) are converted as they are: their batch-first input [N, T, F] is what Keras' LSTM takes.
"""
from pathlib import Path

from pipeline.atomic import write_with
from pipeline.converters import ConvertJob, backend, keras_ops, onnx_rewrites
from pipeline.converters.backends.keras_keras3 import save_keras
from pipeline.errors import ConversionError

# Graphs with these ops are sequence models (see above), converted without change_ordering.
RECURRENT_OPS = set(onnx_rewrites.STATE_INPUTS)
# Ops that must run channels-last on CPU: they cannot share a graph with a recurrent op.
CHANNELS_LAST_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool"}


def unsupported_ops(model) -> list[str]:
    from onnx2keras.layers import AVAILABLE_CONVERTERS

    return sorted({n.op_type for n in model.graph.node} - set(AVAILABLE_CONVERTERS))


def is_sequence_model(model) -> bool:
    return any(node.op_type in RECURRENT_OPS for node in model.graph.node)


def layout_of(model) -> str:
    """change_ordering moves channels last: NCHW -> NHWC, NCW -> NWC. A sequence model is converted
    without it and takes PyTorch's batch-first layout, so it keeps the ONNX layout (no transposition)."""
    from pipeline.converters import onnx_layout

    layout = onnx_layout(model)
    return layout if is_sequence_model(model) else {"NCHW": "NHWC", "NCW": "NWC"}.get(layout, "NC")


def _prepare(model):
    """The model as converted, whether it is converted channels-last, and the rewrites applied."""
    if not is_sequence_model(model):
        return model, True, []
    mixed = sorted(CHANNELS_LAST_OPS & {node.op_type for node in model.graph.node})
    if mixed:
        raise ConversionError(f"onnx2keras: a graph with both recurrent ops and {', '.join(mixed)} is not supported: "
                              "the latter need channels-last, the former keep the batch-first layout.",
                              "Convert to tensorflow/tflite instead.", unsupported_op=mixed[0])
    # torch's zero initial state is computed from the batch size at run time; Keras' default is zeros.
    return onnx_rewrites.drop_zero_initial_states(model), False, ["drop_zero_initial_states"]


@backend("keras", "onnx2keras", order=20)
def convert(job: ConvertJob) -> dict:
    """onnx2keras with one global channels-last switch; single input and output."""
    if job.debug_outputs:
        raise ConversionError("onnx2keras cannot expose intermediate tensors (one output only).",
                              "Diagnose with export.keras.backend=keras3.")
    return convert_file(job.onnx_path, job.out_path)


def convert_file(onnx_path: Path, out_path: Path) -> dict:
    import onnx
    from onnx2keras import onnx_to_keras

    keras_ops.register_converters()
    model, channels_last, rewrites = _prepare(onnx.load(str(onnx_path)))
    if len(model.graph.input) - len(model.graph.initializer) > 1 or len(model.graph.output) > 1:
        raise ConversionError("onnx2keras converts models with one input and one output only.",
                              "Use export.keras.backend=keras3.")
    missing = unsupported_ops(model)
    if missing:
        raise ConversionError(
            f"onnx2keras has no converter for ONNX op(s) {', '.join(missing)}.",
            "Register one in pipeline/converters/keras_ops.py (EXTRA_CONVERTERS), or pick another "
            "export target.", unsupported_op=missing[0])
    input_name = model.graph.input[0].name
    try:
        with keras_ops.graph_facts(model):
            keras_ops.check_batch_first(model)
            keras_model = onnx_to_keras(model, [input_name], name_policy="renumerate", verbose=False,
                                        change_ordering=channels_last)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"onnx2keras failed: {type(exc).__name__}: {exc}",
                              "See the op named above; the ONNX model itself passed the check stage.") from exc
    lambdas = [layer.name for layer in keras_model.layers if type(layer).__name__ == "Lambda"]
    if lambdas:
        raise ConversionError(
            f"onnx2keras built Lambda layers ({', '.join(lambdas[:5])}), which Keras will not load "
            "with safe_mode=True.", "Add a serialisable converter for their ops in "
            "pipeline/converters/keras_ops.py.")
    write_with(out_path, lambda tmp: save_keras(keras_model, tmp))
    entry = {"input_layout": layout_of(model), "input_perms": {input_name: _perm(layout_of(model))},
             "output_perms": {model.graph.output[0].name: list(range(len(keras_model.outputs[0].shape)))},
             "load": "keras.saving.load_model(path, safe_mode=True)"}
    return {**entry, "onnx_rewrites": rewrites} if rewrites else entry


def _perm(layout: str) -> list[int]:
    return {"NHWC": [0, 2, 3, 1], "NWC": [0, 2, 1], "NCHW": [0, 1, 2, 3], "NCW": [0, 1, 2]}.get(layout, [0, 1])
