"""export: torch.onnx.export with named inputs/outputs, a dynamic batch axis (and the free axes of
``export.dynamic_axes``, ``pipeline.free_axes``) and the lowest opset that works.

The export starts at ``export.opset``; when an op needs a newer opset (``scaled_dot_product_attention``
needs 14), it is raised to the one the exporter names, up to the newest it supports. Inputs are named
after the dataset's (``input`` for a single tensor), outputs ``output`` (``output_0``, ``output_1``...
when the network returns several, or the keys of a returned dict). ``padding="same"`` convolutions,
which the exporter writes as ``auto_pad=SAME_UPPER``, get their explicit pads (onnxruntime refuses
``auto_pad`` with dilation).
"""
import logging
import re
import warnings

import torch

from pipeline import free_axes
from pipeline.atomic import write_with
from pipeline.context import RunContext
from pipeline.contracts import StageContract
from pipeline.converters import torch_symbolics
from pipeline.errors import PipelineError
from pipeline.results import ExportResult
from pipeline.runtimes.torch_runtime import flatten_outputs

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# The trace's batch: 2, not 1. A Python branch on a size that is 1 only in the traced sample is frozen into
# the graph (transformers' causal LMs given ids alone expand their [1, T] position ids to the batch only
# when it is not 1: traced at 1, the graph indexes out of bounds at any other batch size).
EXPORT_BATCH = 2
# "Support for this operator was added in version 14" / "opset version 14 is required" / a symbolic's
# warning that its graph differs below an opset ("ROIAlign with aligned=True is only supported in opset >= 16")
# The exporter appends the aten op it was translating when a symbolic fails: kept in our message.
_TRANSLATING = re.compile(r"\(Occurred when translating ([\w:.]+)\)")
logfile = logging.getLogger("pipeline.logfile")  # pipeline.log only (conf/config.yaml)
_NEEDED_OPSET = re.compile(r"(?:added in version|opset version|opset_version|supported in opset >=)\D{0,12}(\d+)",
                           re.IGNORECASE)

CONTRACT = StageContract("export", needs=("weights",), makes=("onnx", "labels"))


def run(ctx: RunContext) -> ExportResult:
    net = ctx.net.eval()
    x = ctx.data.head("test", EXPORT_BATCH)[0]
    names = list(x) if isinstance(x, dict) else [INPUT_NAME]
    # Copies: a network that changes its input in place must not change the test split parity reads.
    args = tuple(x[n].clone() for n in names) if isinstance(x, dict) else (x.clone(),)
    requested = int(ctx.cfg.export.opset)
    outputs = output_names(net, args)
    free = free_axes.resolve(ctx.cfg.export.get("dynamic_axes"),
                             {n: tuple(a.shape) for n, a in zip(names, args, strict=True)})
    axes = dynamic_axes(net, args, names, outputs, free)
    opset = write_with_opset(net, args, names, outputs, ctx, requested, axes)
    if free:  # before any converter: a graph that pins a free axis is refused here, by name
        free_axes.check_export(net, ctx.onnx_path, args, names, free)
    extra = {"requested_opset": requested} if opset != requested else {}
    ctx.store.put("onnx", "export", opset=opset, **extra)
    write_labels(ctx)
    return ExportResult(opset, requested, names, outputs,
                        {n: {str(a): label for a, label in axes[n].items()} for n in axes})


LABELS_NAME = "labels.txt"


def write_labels(ctx: RunContext) -> None:
    """The class names, one per line in output index order, beside the artifacts (what an app shows)."""
    classes = ctx.data_spec.classes
    if classes and ctx.output_kind != "value":
        path = ctx.run_dir / LABELS_NAME
        write_with(path, lambda tmp: tmp.write_text("".join(f"{name}\n" for name in classes)))
        ctx.store.put("labels", "export", path)


def dynamic_axes(net, args: tuple, names: list[str], outputs: list[str], free: dict) -> dict:
    """torch.onnx.export's ``dynamic_axes``: the batch and ``free`` axes of the inputs, and the axes of the
    outputs that change with them (measured by running the network at another size)."""
    inputs = free_axes.onnx_axes(free, names)
    if not free:
        return {**inputs, **{name: {0: "batch"} for name in outputs}}
    trained = {n: tuple(a.shape) for n, a in zip(names, args, strict=True)}
    other = free_axes.other_shapes(free, trained)[0]
    feeds = {n: free_axes.tiled(a.numpy(), other[n]) for n, a in zip(names, args, strict=True)}
    at_other = free_axes.torch_outputs(net, feeds, names, free, trained)
    at_trained = free_axes.torch_outputs(net, {n: a.numpy() for n, a in zip(names, args, strict=True)}, names,
                                         free, trained)
    changed = free_axes.output_axes({n: o.shape for n, o in zip(outputs, at_trained, strict=True)},
                                    {n: o.shape for n, o in zip(outputs, at_other, strict=True)},
                                    free_axes.size_labels(free, trained, other))
    return {**inputs, **changed}


def output_names(net: torch.nn.Module, args: tuple) -> list[str]:
    # no_grad, not inference_mode: a tensor the network caches in forward (timm's convit_tiny) would be an
    # inference tensor, which the exporter's trace cannot use
    with torch.no_grad():
        result = net(*args)
    if isinstance(result, dict):
        return [str(k) for k in result]
    count = len(flatten_outputs(result))
    return [OUTPUT_NAME] if count == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(count)]


def max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def write_with_opset(net, args: tuple, names: list[str], outputs: list[str], ctx: RunContext, opset: int,
                     axes: dict | None = None) -> int:
    """Export at ``opset``, raising it to what the exporter asks for; returns the opset used."""
    highest = max_opset()
    if not 7 <= opset <= highest:
        raise PipelineError(f"export.opset={opset} is outside what torch.onnx can export (7 to {highest}).",
                            f"Set export.opset between 7 and {highest} (13 is the default).")
    while True:
        try:
            write_with(ctx.onnx_path, lambda tmp, o=opset: export_onnx(net, args, tmp, o, names, outputs, axes))
            return opset
        except Exception as exc:  # noqa: BLE001 - torch raises many types; the message says what it needs
            needed = required_opset(exc)
            if needed is None or needed <= opset or needed > highest:
                logfile.error("torch.onnx.export failed at opset %d:", opset, exc_info=exc)  # the full traceback
                packed = packed_sequence_user(net, args)
                if packed:
                    raise PipelineError(f"torch.onnx.export cannot export packed sequences: {packed} is given a "
                                        f"PackedSequence (pack_padded_sequence) ({first_line(exc)}).",
                                        "Pass the padded [N, T, F] tensor to the recurrent layer instead (windows "
                                        "of one length need no packing), and mask padded steps if there are "
                                        "any.") from exc
                op = translated_op(exc)
                hint = (f"The exporter failed on the op {op} (traceback in pipeline.log): replace that op in the "
                        "model, or compute its arguments as constants." if op else
                        "Check that the model runs on the dataset's inputs (traceback in pipeline.log); an op "
                        "without an ONNX export must be replaced in the model.")
                raise PipelineError(f"torch.onnx.export failed at opset {opset}: {first_line(exc)}", hint) from exc
            opset = needed


def packed_sequence_user(net: torch.nn.Module, args: tuple) -> str | None:
    """The name of the first recurrent module that ``net`` feeds a PackedSequence, if any."""
    from torch.nn.utils.rnn import PackedSequence

    found: list[str] = []
    hooks = [module.register_forward_pre_hook(
        lambda _m, inputs, n=name: found.append(n or "model.net") if inputs and isinstance(inputs[0], PackedSequence)
        else None) for name, module in net.named_modules() if isinstance(module, torch.nn.RNNBase)]
    try:
        with torch.no_grad():  # not inference_mode: see output_names
            net(*args)
    except Exception:  # noqa: BLE001 - only looking; the export's own error is reported
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


def required_opset(exc: Exception) -> int | None:
    """The highest opset the exporter's message names (it names the failing one too)."""
    found = [int(n) for n in _NEEDED_OPSET.findall(str(exc))]
    return max(found) if found else None


def translated_op(exc: Exception) -> str | None:
    """The aten op the exporter was translating when it failed ("Occurred when translating col2im")."""
    found = _TRANSLATING.search(str(exc))
    return found.group(1) if found else None


def first_line(exc: Exception) -> str:
    """The exporter's message without the TorchScript graph it appends (the op it was translating kept)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0].strip()[:400] if text else ''}"
    op = translated_op(exc)
    return f"{line} (occurred when translating {op})" if op and op not in line else line


_SYMBOLICS_REGISTERED = False


def _register_symbolics() -> None:
    global _SYMBOLICS_REGISTERED
    if not _SYMBOLICS_REGISTERED:
        for opset in range(9, 23):
            torch_symbolics.register(opset)
        _SYMBOLICS_REGISTERED = True


def export_onnx(net: torch.nn.Module, args, path, opset: int, input_names=None, output_names_=None,
                axes: dict | None = None) -> None:
    """torch.onnx.export (TorchScript). Its TracerWarnings (a branch or a Python number frozen into the
    graph) go on to the stage's recorder (report.json stages.export.warnings). Ops the exporter gets wrong
    or refuses are written by ``pipeline.converters.torch_symbolics``."""
    _register_symbolics()
    net = torch_symbolics.without_parametrizations(net)
    args = args if isinstance(args, tuple) else (args,)
    input_names = input_names or [INPUT_NAME]
    output_names_ = output_names_ or [OUTPUT_NAME]
    axes = axes or {name: {0: "batch"} for name in [*input_names, *output_names_]}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot target the low
        # opsets onnx-tf needs: that says nothing about this model.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*dynamo=False.*|.*TorchScript-based ONNX export.*")
        # A symbolic that warns it writes another computation below some opset (torchvision's roi_align
        # with aligned=True at opset < 16) fails instead, so that the opset is raised to what it names.
        warnings.filterwarnings("error", message=r".*only supported in opset >= \d+")
        with torch_symbolics.decompositions():
            torch.onnx.export(
                net, args, str(path), input_names=input_names, output_names=output_names_, dynamic_axes=axes,
                opset_version=int(opset), do_constant_folding=True, dynamo=False,
            )
    explicit_same_pads(path)
    eye_like_in_float(path)


def eye_like_in_float(path) -> None:
    """``torch.eye(n, dtype=torch.bool)`` with ``n`` from a shape (a diagonal mask) is exported as a bool
    ``EyeLike``, which onnxruntime has no kernel for: made in float and cast to bool (the same values)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)
    if not any(node.op_type == "EyeLike" for node in model.graph.node):
        return
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]})
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "EyeLike" or TensorProto.BOOL not in (attrs.get("dtype"), types.get(node.input[0])):
            nodes.append(node)
            continue
        source, made = f"{node.output[0]}_float_in", f"{node.output[0]}_float"
        nodes.append(helper.make_node("Cast", [node.input[0]], [source], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("EyeLike", [source], [made], name=node.name, k=int(attrs.get("k", 0)),
                                      dtype=TensorProto.FLOAT))
        out_type = attrs.get("dtype", types.get(node.input[0]))
        nodes.append(helper.make_node("Cast", [made], [node.output[0]], to=int(out_type)))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))


def explicit_same_pads(path) -> None:
    """Rewrite stride-1 ``Conv`` nodes with ``auto_pad=SAME_UPPER|SAME_LOWER`` (how the exporter writes
    ``padding="same"``) to explicit ``pads``: at stride 1 the padding does not depend on the input size
    ((k - 1) * d in all, the odd one at the end for SAME_UPPER), and onnxruntime cannot run auto_pad
    with dilation."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if node.op_type != "Conv" or auto not in ("SAME_UPPER", "SAME_LOWER") or "kernel_shape" not in attrs:
            continue
        kernel = list(attrs["kernel_shape"])
        if any(s != 1 for s in attrs.get("strides", [1] * len(kernel))):
            continue
        totals = [(k - 1) * d for k, d in zip(kernel, attrs.get("dilations", [1] * len(kernel)), strict=True)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        pads = small + large if auto == "SAME_UPPER" else large + small
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", pads)])
        changed = True
    if changed:
        onnx.save(model, str(path))
