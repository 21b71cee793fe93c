"""check: onnx.checker (full), strict shape inference, and an onnxruntime session at batch 1 and N."""
import re

import numpy as np
import onnx

from pipeline.context import RunContext
from pipeline.contracts import StageContract
from pipeline.errors import PipelineError
from pipeline.onnx_model import opset_of, read_onnx
from pipeline.results import CheckResult

CHECK_BATCH_SIZES = (1, 7)

CONTRACT = StageContract("check", needs=("onnx",), uses=("weights",))

# onnx's own messages: "(op_type:CumSum, node name: /model/CumSum): x typestr: T, has unsupported type:
# tensor(bool)"
_INVALID_NODE = re.compile(r"op_type:(\w+), node name: ([^)]*)\)")
_UNSUPPORTED_TYPE = re.compile(r"unsupported type: tensor\((\w+)\)")


def invalid_model_hint(message: str) -> str:
    """The op the exporter wrote wrong, and what to change in the model (another opset writes the same)."""
    node = _INVALID_NODE.search(message)
    if node is None:
        return "The exporter wrote a graph onnx cannot check; name the model in a bug report (pipeline.log)."
    op_type, name = node.groups()
    dtype = _UNSUPPORTED_TYPE.search(message)
    if dtype:
        return (f"The exporter wrote {op_type} ({name}) on {dtype.group(1)} values, which ONNX's {op_type} does "
                f"not take: cast that op's input in the model (e.g. x.long() or x.float() before it).")
    return (f"The exporter wrote an invalid {op_type} ({name}): replace the PyTorch op that exports as "
            f"{op_type} in the model, or name the model in a bug report (pipeline.log).")


def run(ctx: RunContext) -> CheckResult:
    path = ctx.onnx_path
    model = read_onnx(path, external_data=True)
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PipelineError(f"{path} is not a valid ONNX model: {exc}", invalid_model_hint(str(exc))) from exc
    session = onnxruntime_session(path)
    feeds = ctx.samples.held_out(max(CHECK_BATCH_SIZES), [i.name for i in session.get_inputs()])
    shapes = {}
    for batch in CHECK_BATCH_SIZES:
        outs = _run(session, {name: value[:batch] for name, value in feeds.items()}, batch)
        rows = min(batch, len(next(iter(feeds.values()))))
        for out in outs:
            if out.shape[:1] != (rows,):
                raise PipelineError(f"onnxruntime returned {out.shape} for a batch of {rows}: the batch axis is lost "
                                    "(the graph holds a batch size fixed when it was traced).",
                                    "Keep the batch axis first in model.net, and take sizes from tensors inside "
                                    "tensor ops (torch.arange(x.shape[0]), not len(x) or int(x.size(0)) used as a "
                                    "Python number: the export's TracerWarnings name the lines).")
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise _not_finite(ctx, {name: value[:batch] for name, value in feeds.items()}, batch)
        shapes[str(batch)] = list(outs[0].shape)
    return CheckResult(opset=opset_of(model), ir_version=model.ir_version, bytes=path.stat().st_size,
                       nodes=len(model.graph.node), inputs=[_value_info(v) for v in inferred.graph.input],
                       outputs=[_value_info(v) for v in inferred.graph.output], onnxruntime_output_shapes=shapes)


# onnxruntime's message: "Non-zero status code returned while running Tile node. Name:'/a/Tile_9' Status
# Message: 'repeat' input tensor must be 1 dimensional"
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.DOTALL)


def _run(session, feeds: dict, batch: int) -> list:
    """The session on ``feeds``; a node onnxruntime refuses is named, with the batch size it was run at."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # onnxruntime's own error types are not importable by a stable name
        failed = _FAILED_NODE.search(str(exc))
        if failed is None:
            raise
        op_type, name, message = failed.group(1), failed.group(2), failed.group(3).strip().splitlines()[0]
        hint = (f"Find the PyTorch op that exports as {op_type} ({name}) and write it another way, or name the "
                "model in a bug report (pipeline.log).")
        if batch > 1:
            hint += (f" It fails at batch {batch}: a Python branch or size computed from the traced sample may be "
                     "frozen into the graph (the export's TracerWarnings in report.json stages.export.warnings "
                     "name the lines).")
        raise PipelineError(f"onnxruntime cannot run the exported model at batch {batch}: {op_type} node {name}: "
                            f"{message}", hint) from exc


def _not_finite(ctx: RunContext, feeds: dict, batch: int) -> PipelineError:
    """NaN/inf from onnxruntime: the export's fault only if PyTorch gives finite outputs for the same input."""
    from pipeline import runtimes

    reference = runtimes.load("torch", ctx.net, ctx.input_names, ctx.output_names).predict(feeds)
    if not all(np.isfinite(v).all() for v in reference.values() if v.dtype.kind == "f"):
        return PipelineError(f"The trained network itself returns NaN or inf for the test inputs (batch of {batch}), "
                             "in PyTorch as in onnxruntime: training diverged or the data holds extreme values.",
                             "Re-train with a lower optimizer.lr (or scheduler.max_lr), and check the data.")
    return PipelineError(f"onnxruntime returns NaN or inf for a batch of {batch} where PyTorch's outputs are finite.",
                         "Re-run the export stage; try another export.opset.")


def onnxruntime_session(path):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PipelineError(f"onnxruntime cannot load {path}: {exc}",
                            "Re-run the export stage; try another export.opset.") from exc


def _value_info(value) -> dict:
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "shape": dims}
