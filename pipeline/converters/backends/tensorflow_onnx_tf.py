"""tensorflow -> saved_model/ with onnx-tf (the seed tutorials' route), through the compat layer in ``onnx_tf_compat``.

onnx-tf 1.10 knows ONNX op versions up to opset ~15 only (``Constant version 19`` fails), so a
model exported at a newer opset is first converted down with ``onnx.version_converter``.
"""
from pathlib import Path

from pipeline.atomic import write_dir_with
from pipeline.converters import ConvertJob, backend
from pipeline.errors import ConversionError

# The highest opset whose ops onnx-tf 1.10 converts reliably (measured: 13 converts a CNN exactly).
ONNX_TF_MAX_OPSET = 13


@backend("tensorflow", "onnx-tf", order=20)
def convert(job: ConvertJob) -> dict:
    """onnx-tf 1.10 (archived) through our compat layer; models above opset 13 converted down. Its
    SavedModel takes the ONNX layout (nchw) whatever export.layout asks: the TFLite targets then convert
    from a SavedModel of their own layout (io_layout), and the entry says so."""
    job.cache.pop(("saved_model_layout", str(job.out_path)), None)  # a keras3 attempt's record, if any
    return convert_file(job.onnx_path, job.out_path, job.debug_outputs)


def convert_file(onnx_path: Path, out_path: Path, debug_outputs: list[str] = ()) -> dict:
    import onnx

    from pipeline.converters import with_outputs
    from pipeline.converters.onnx_tf_compat import import_onnx_tf_backend
    from pipeline.onnx_model import opset_of

    backend = import_onnx_tf_backend()
    model = onnx.load(str(onnx_path))
    if debug_outputs:
        model = with_outputs(model, debug_outputs)
    source_opset = opset_of(model)
    if source_opset > ONNX_TF_MAX_OPSET:
        model = _downgrade(model, ONNX_TF_MAX_OPSET)
    model, rewrites = _rewrite(model)
    try:
        representation = backend.prepare(model)
        write_dir_with(out_path, lambda tmp: representation.export_graph(str(tmp)))
    except Exception as exc:
        op = _failing_op(exc)
        raise ConversionError(
            f"onnx-tf failed{f' on op {op}' if op else ''}: {type(exc).__name__}: {exc}",
            "Try another export.opset, or another target.", unsupported_op=op) from exc
    entry = {"converted_from_opset": source_opset, "opset": opset_of(model), "signature": "serving_default",
             "load": "tf.saved_model.load(path).signatures['serving_default']"}
    return {**entry, "onnx_rewrites": rewrites} if rewrites else entry


def _rewrite(model) -> tuple[object, list[str]]:
    """Unroll the LSTM nodes, onnx-tf's own LSTM being broken; returns the rewrites applied."""
    from pipeline.converters import onnx_rewrites

    if not any(node.op_type == "LSTM" for node in model.graph.node):
        return model, []
    try:
        # Dropping torch's zero initial states first spares the unrolled first step its recurrent term.
        model = onnx_rewrites.unroll_lstm(onnx_rewrites.drop_zero_initial_states(model))
    except onnx_rewrites.RewriteError as exc:
        raise ConversionError(f"onnx-tf cannot convert this {exc.op}: {exc}",
                              "Try another target.", unsupported_op=exc.op) from exc
    return model, ["drop_zero_initial_states", "unroll_lstm"]


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
