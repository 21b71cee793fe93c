"""export: torch.onnx.export with named inputs/outputs, a dynamic batch axis and the chosen opset."""
import warnings

import torch

from pipeline.atomic import write_with
from pipeline.context import RunContext

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def run(ctx: RunContext) -> None:
    net = ctx.net.eval()
    sample = ctx.data.splits.test[0][:1]
    write_with(ctx.onnx_path, lambda tmp: export_onnx(net, sample, tmp, ctx.cfg.export.opset))
    ctx.report.add_artifact("onnx", ctx.onnx_path, opset=int(ctx.cfg.export.opset))


def export_onnx(net: torch.nn.Module, sample: torch.Tensor, path, opset: int) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot target the
        # low opsets onnx-tf needs; its warnings say nothing actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (sample,), str(path),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=int(opset), do_constant_folding=True, dynamo=False,
        )
