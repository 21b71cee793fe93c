"""ONNX -> Keras with onnx2keras, saved as a ``.keras`` file that loads with ``safe_mode=True``.

onnx2keras builds some ops from Lambda layers, which Keras refuses to deserialise in safe mode,
and lacks others (LogSoftmax). We register converters for those through its converter table
(``onnx2keras.layers.AVAILABLE_CONVERTERS``) that use only built-in, serialisable Keras layers.
Convolutions run channels-last (NHWC) on CPU, so the model is converted with
``change_ordering=True`` and expects NHWC input; the layout goes into the report.
"""
from pathlib import Path

from pipeline.atomic import write_with
from pipeline.errors import ConversionError


def _last_axis(node, params, rank_hint: int | None = None) -> bool:
    axis = params.get("axis", -1)
    return axis == -1 or (rank_hint is not None and axis == rank_hint - 1)


def convert_log_softmax(node, params, layers, lambda_func, node_name, keras_name):
    _activation("log_softmax", node, params, layers, node_name, keras_name)


def convert_softmax(node, params, layers, lambda_func, node_name, keras_name):
    _activation("softmax", node, params, layers, node_name, keras_name)


def _activation(name, node, params, layers, node_name, keras_name):
    import keras
    from onnx2keras.utils import ensure_tf_type

    x = ensure_tf_type(layers[node.input[0]], name=f"{keras_name}_const")
    if not _last_axis(node, params, len(x.shape)):
        raise ConversionError(f"onnx2keras: {node.op_type} over axis {params['axis']} (not the last) "
                              "is not supported.", "Apply it over the last axis in the model.")
    # Activation(...) serialises by name: no Lambda, so the file loads in safe mode.
    layers[node_name] = keras.layers.Activation(name, name=keras_name)(x)


def convert_flatten(node, params, layers, lambda_func, node_name, keras_name):
    """Flatten in PyTorch's (channels-first) element order, whatever the Keras layout."""
    import keras
    from onnx2keras.utils import ensure_tf_type

    x = ensure_tf_type(layers[node.input[0]], layers[list(layers)[0]], name=f"{keras_name}_const")
    if params["change_ordering"] and len(x.shape) in (3, 4):
        # onnx2keras rebuilds the graph channels-last and remaps a 3-D Permute's dims on the
        # way; (3, 1, 2) maps to itself, i.e. NHWC -> NCHW. A 2-D Permute is kept: NLC -> NCL.
        dims = (3, 1, 2) if len(x.shape) == 4 else (2, 1)
        x = keras.layers.Permute(dims, name=f"{keras_name}_to_channels_first")(x)
    layers[node_name] = keras.layers.Flatten(name=keras_name)(x)


EXTRA_CONVERTERS = {
    "LogSoftmax": convert_log_softmax,
    "Softmax": convert_softmax,
    "Flatten": convert_flatten,
}


def register_converters() -> None:
    from onnx2keras.layers import AVAILABLE_CONVERTERS

    AVAILABLE_CONVERTERS.update(EXTRA_CONVERTERS)


def unsupported_ops(model) -> list[str]:
    from onnx2keras.layers import AVAILABLE_CONVERTERS

    return sorted({n.op_type for n in model.graph.node} - set(AVAILABLE_CONVERTERS))


def layout_of(model) -> str:
    """change_ordering moves channels last: NCHW -> NHWC, NCW -> NWC."""
    from pipeline.converters import onnx_layout

    return {"NCHW": "NHWC", "NCW": "NWC"}.get(onnx_layout(model), "NC")


def convert(onnx_path: Path, out_path: Path) -> dict:
    import onnx
    from onnx2keras import onnx_to_keras

    register_converters()
    model = onnx.load(str(onnx_path))
    missing = unsupported_ops(model)
    if missing:
        raise ConversionError(
            f"onnx2keras has no converter for ONNX op(s) {', '.join(missing)}.",
            "Register one in pipeline/converters/to_keras.py (EXTRA_CONVERTERS), or pick another "
            "export target.", unsupported_op=missing[0])
    input_name = model.graph.input[0].name
    try:
        keras_model = onnx_to_keras(model, [input_name], name_policy="renumerate", verbose=False,
                                    change_ordering=True)
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
            "pipeline/converters/to_keras.py.")
    write_with(out_path, lambda tmp: _save(keras_model, tmp))
    return {"input_layout": layout_of(model), "input_name": keras_model.inputs[0].name,
            "load": "keras.saving.load_model(path, safe_mode=True)"}


def _save(keras_model, tmp: Path) -> None:
    # Keras insists on the .keras suffix: save beside, then move onto the temp name.
    staged = tmp.with_name(tmp.name + ".keras")
    try:
        keras_model.save(staged)
        staged.replace(tmp)
    finally:
        staged.unlink(missing_ok=True)
