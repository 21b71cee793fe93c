"""ONNX -> TensorFlow SavedModel with onnx-tf, through the compat layer in ``onnx_tf_compat``.

onnx-tf 1.10 knows ONNX op versions up to opset ~15 only (``Constant version 19`` fails), so a
model exported at a newer opset is first converted down with ``onnx.version_converter``.
"""
from pathlib import Path

from pipeline.atomic import write_dir_with
from pipeline.errors import ConversionError

# The highest opset whose ops onnx-tf 1.10 converts reliably (measured: 13 converts a CNN exactly).
ONNX_TF_MAX_OPSET = 13


def convert(onnx_path: Path, out_path: Path) -> dict:
    import onnx

    from pipeline.converters.onnx_tf_compat import import_onnx_tf_backend
    from pipeline.stages.check import opset_of

    backend = import_onnx_tf_backend()
    model = onnx.load(str(onnx_path))
    source_opset = opset_of(model)
    if source_opset > ONNX_TF_MAX_OPSET:
        model = _downgrade(model, ONNX_TF_MAX_OPSET)
    try:
        representation = backend.prepare(model)
        write_dir_with(out_path, lambda tmp: representation.export_graph(str(tmp)))
    except Exception as exc:
        op = _failing_op(exc)
        raise ConversionError(
            f"onnx-tf failed{f' on op {op}' if op else ''}: {type(exc).__name__}: {exc}",
            "Try another export.opset, or another target.", unsupported_op=op) from exc
    return {"converted_from_opset": source_opset, "opset": opset_of(model), "signature": "serving_default",
            "load": "tf.saved_model.load(path).signatures['serving_default']"}


def _downgrade(model, opset: int):
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ConversionError(f"onnx.version_converter could not take the model to opset {opset}: {exc}",
                              f"Export at export.opset={opset} directly.") from exc


def _failing_op(exc: Exception) -> str | None:
    """onnx-tf names the op in its messages ('... Unsqueeze version 13 is not implemented')."""
    import re

    match = re.search(r"\b([A-Z][A-Za-z]+) version \d+", str(exc))
    return match.group(1) if match else None
