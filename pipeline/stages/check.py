"""check: onnx.checker (full), strict shape inference, and an onnxruntime session at batch 1 and N."""
import numpy as np
import onnx

from pipeline.context import RunContext
from pipeline.errors import PipelineError

CHECK_BATCH_SIZES = (1, 7)


def run(ctx: RunContext) -> None:
    path = ctx.onnx_path
    model = load_onnx(path)
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipelineError(f"{path} is not a valid ONNX model: {exc}",
                            "Re-run the export stage; try another export.opset.") from exc
    session = onnxruntime_session(path)
    feeds = ctx.held_out_inputs(max(CHECK_BATCH_SIZES), [i.name for i in session.get_inputs()])
    shapes = {}
    for batch in CHECK_BATCH_SIZES:
        outs = session.run(None, {name: value[:batch] for name, value in feeds.items()})
        rows = min(batch, len(next(iter(feeds.values()))))
        for out in outs:
            if out.shape[:1] != (rows,) or (out.dtype.kind == "f" and not np.isfinite(out).all()):
                raise PipelineError(f"onnxruntime returned {out.shape} (finite: {np.isfinite(out).all()}) "
                                    f"for a batch of {rows}.", "Check the model's export.")
        shapes[str(batch)] = list(outs[0].shape)
    ctx.report.data["check"] = {
        "opset": opset_of(model),
        "ir_version": model.ir_version,
        "bytes": path.stat().st_size,
        "nodes": len(model.graph.node),
        "inputs": [_value_info(v) for v in inferred.graph.input],
        "outputs": [_value_info(v) for v in inferred.graph.output],
        "onnxruntime_output_shapes": shapes,
    }


def load_onnx(path) -> onnx.ModelProto:
    if not path.is_file():
        raise PipelineError(f"No ONNX model at {path}.", "Run the export stage first.")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError on a truncated or foreign file
        raise PipelineError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}).",
                            "The file is corrupt or truncated: re-run the export stage.") from exc


def onnxruntime_session(path):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PipelineError(f"onnxruntime cannot load {path}: {exc}",
                            "Re-run the export stage; try another export.opset.") from exc


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _value_info(value) -> dict:
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "shape": dims}
