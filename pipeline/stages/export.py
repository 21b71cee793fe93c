"""export: torch.onnx.export with named inputs/outputs, a dynamic batch axis and the lowest opset that works.

The export starts at ``export.opset``; when an op needs a newer opset (``scaled_dot_product_attention``
needs 14), it is raised to the one the exporter names, up to the newest it supports. Inputs are named
after the dataset's (``input`` for a single tensor), outputs ``output`` (``output_0``, ``output_1``...
when the network returns several, or the keys of a returned dict). ``padding="same"`` convolutions,
which the exporter writes as ``auto_pad=SAME_UPPER``, get their explicit pads (onnxruntime refuses
``auto_pad`` with dilation).
"""
import itertools
import re
import warnings

import torch

from pipeline.atomic import write_with
from pipeline.context import RunContext
from pipeline.errors import PipelineError
from pipeline.runtimes.torch_runtime import flatten_outputs

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# "Support for this operator was added in version 14" / "opset version 14 is required"
_NEEDED_OPSET = re.compile(r"(?:added in version|opset version|opset_version)\D{0,12}(\d+)", re.IGNORECASE)


def run(ctx: RunContext) -> None:
    net = ctx.net.eval()
    x = ctx.data.splits.test[0]
    names = list(x) if isinstance(x, dict) else [INPUT_NAME]
    args = tuple(x[n][:1] for n in names) if isinstance(x, dict) else (x[:1],)
    requested = int(ctx.cfg.export.opset)
    outputs = output_names(net, args)
    opset = write_with_opset(net, args, names, outputs, ctx, requested)
    extra = {"requested_opset": requested} if opset != requested else {}
    ctx.report.add_artifact("onnx", ctx.onnx_path, opset=opset, **extra)
    ctx.report.data["export"] = {"opset": opset, "requested_opset": requested, "inputs": names, "outputs": outputs}


def output_names(net: torch.nn.Module, args: tuple) -> list[str]:
    with torch.inference_mode():
        result = net(*args)
    if isinstance(result, dict):
        return [str(k) for k in result]
    count = len(flatten_outputs(result))
    return [OUTPUT_NAME] if count == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(count)]


def max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def write_with_opset(net, args: tuple, names: list[str], outputs: list[str], ctx: RunContext, opset: int) -> int:
    """Export at ``opset``, raising it to what the exporter asks for; returns the opset used."""
    highest = max_opset()
    if not 7 <= opset <= highest:
        raise PipelineError(f"export.opset={opset} is outside what torch.onnx can export (7 to {highest}).",
                            f"Set export.opset between 7 and {highest} (13 is the default).")
    while True:
        try:
            write_with(ctx.onnx_path, lambda tmp, o=opset: export_onnx(net, args, tmp, o, names, outputs))
            return opset
        except Exception as exc:  # noqa: BLE001 - torch raises many types; the message says what it needs
            needed = required_opset(exc)
            if needed is None or needed <= opset or needed > highest:
                packed = packed_sequence_user(net, args)
                if packed:
                    raise PipelineError(f"torch.onnx.export cannot export packed sequences: {packed} is given a "
                                        f"PackedSequence (pack_padded_sequence) ({first_line(exc)}).",
                                        "Pass the padded [N, T, F] tensor to the recurrent layer instead (windows "
                                        "of one length need no packing), and mask padded steps if there are "
                                        "any.") from exc
                raise PipelineError(f"torch.onnx.export failed at opset {opset}: {first_line(exc)}",
                                    "Check that the model runs on the dataset's inputs; an op without an ONNX "
                                    "export must be replaced in the model.") from exc
            opset = needed


def packed_sequence_user(net: torch.nn.Module, args: tuple) -> str | None:
    """The name of the first recurrent module that ``net`` feeds a PackedSequence, if any."""
    from torch.nn.utils.rnn import PackedSequence

    found: list[str] = []
    hooks = [module.register_forward_pre_hook(
        lambda _m, inputs, n=name: found.append(n or "model.net") if inputs and isinstance(inputs[0], PackedSequence)
        else None) for name, module in net.named_modules() if isinstance(module, torch.nn.RNNBase)]
    try:
        with torch.inference_mode():
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


def first_line(exc: Exception) -> str:
    """The exporter's message without the TorchScript graph it appends."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}"


def _rms_norm(g, x, normalized_shape, weight, eps):
    """``aten::rms_norm`` (``nn.RMSNorm``, ``F.rms_norm``), which the TorchScript exporter has no symbolic
    for below ONNX's RMSNormalization (opset 23): ``x / sqrt(mean(x^2) + eps) * weight``, PyTorch's own
    decomposition (eps None: the float32 machine epsilon, as PyTorch uses for float32 inputs)."""
    from torch.onnx import symbolic_helper

    axes = list(range(-len(symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")), 0))
    eps = 1.1920928955078125e-07 if symbolic_helper._is_none(eps) else symbolic_helper._get_const(eps, "f", "eps")
    square = g.op("Mul", x, x)
    if g.opset >= 18:
        mean = g.op("ReduceMean", square, g.op("Constant", value_t=torch.tensor(axes, dtype=torch.int64)),
                    keepdims_i=1)
    else:
        mean = g.op("ReduceMean", square, axes_i=axes, keepdims_i=1)
    root = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    out = g.op("Div", x, root)
    return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)


def _unfold(g, x, dimension, size, step):
    """``Tensor.unfold`` with its dimension counted from the front: the exporter's own symbolic places the
    window axis at ``dimension`` as given, so ``x.unfold(-1, ...)`` (PatchTST's patching) came out with the
    window and position axes swapped (an invalid graph, or transposed values when both are the same size)."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import symbolic_opset9

    dimension = symbolic_helper._get_const(dimension, "i", "dimension")
    rank = symbolic_helper._get_tensor_rank(x)
    if dimension < 0 and rank is not None:
        dimension += rank
    return symbolic_opset9.unfold(g, x, dimension, symbolic_helper._get_const(size, "i", "size"),
                                  symbolic_helper._get_const(step, "i", "step"))


def _diff(g, x, n, dim, prepend, append):
    """``torch.diff`` (differences of neighbours, a common series feature), which the exporter has no symbolic
    for: ``x[1:] - x[:-1]`` along ``dim``, ``n`` times, after ``prepend``/``append`` (``!=`` on bools)."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import _type_utils

    n, dim = symbolic_helper._get_const(n, "i", "n"), symbolic_helper._get_const(dim, "i", "dim")
    parts = [v for v in (prepend, x, append) if not symbolic_helper._is_none(v)]
    x = g.op("Concat", *parts, axis_i=dim) if len(parts) > 1 else x
    boolean = _type_utils.JitScalarType.from_value(x, _type_utils.JitScalarType.UNDEFINED) == \
        _type_utils.JitScalarType.BOOL
    for _ in range(n):
        later = symbolic_helper._slice_helper(g, x, axes=[dim], starts=[1], ends=[2**62])
        earlier = symbolic_helper._slice_helper(g, x, axes=[dim], starts=[0], ends=[-1])
        x = g.op("Xor" if boolean else "Sub", later, earlier)
    return x


def _attention(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention(..., enable_gqa=True)`` (grouped-query attention), which the exporter
    refuses: the key and value heads repeated up to the query's (as PyTorch does, ``repeat_interleave`` on
    dim -3), then its own symbolic."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import symbolic_opset14

    if symbolic_helper._maybe_get_const(enable_gqa, "b") is True:
        key, value = (_repeat_heads(g, v, query) for v in (key, value))
    return symbolic_opset14.scaled_dot_product_attention(g, query, key, value, attn_mask, dropout_p, is_causal,
                                                         scale, False)


def _repeat_heads(g, x, query):
    """``x.repeat_interleave(heads // kv_heads, dim=-3)``, the sizes read from the graph's shapes."""
    from torch.onnx import symbolic_helper

    def part(shape, start, end):
        return symbolic_helper._slice_helper(g, shape, axes=[0], starts=[start], ends=[end])
    shape = g.op("Shape", x)
    lead, kv_heads, tail = part(shape, 0, -3), part(shape, -3, -2), part(shape, -2, 2**62)
    heads = part(g.op("Shape", query), -3, -2)
    groups = g.op("Div", heads, kv_heads)
    repeated = g.op("Expand", symbolic_helper._unsqueeze_helper(g, x, [-3]),
                    g.op("Concat", lead, kv_heads, groups, tail, axis_i=0))  # [..., kv_heads, groups, T, d]
    return g.op("Reshape", repeated, g.op("Concat", lead, heads, tail, axis_i=0))


def _median(g, x, dim=None, keepdim=None):
    """``torch.median`` (no symbolic): the ``(n - 1) // 2``-th smallest value (PyTorch's lower median) as the
    last of an ascending TopK; ``median(dim)`` also returns its index (on ties PyTorch may name another)."""
    from torch.onnx import symbolic_helper

    if dim is None:  # of the whole tensor, batch included: not a per-sample value
        return symbolic_helper._unimplemented("median", "a median over the batch (give dim=...)", x)
    dim, keep = symbolic_helper._get_const(dim, "i", "dim"), symbolic_helper._get_const(keepdim, "b", "keepdim")
    size = symbolic_helper._get_tensor_sizes(x)[dim]
    if size is None:
        return symbolic_helper._unimplemented("median", "a median along an axis of unknown size", x)
    k = size // 2 + size % 2  # (size - 1) // 2 + 1
    values, indices = g.op("TopK", x, g.op("Constant", value_t=torch.tensor([k])), axis_i=dim, largest_i=0,
                           sorted_i=1, outputs=2)
    picked = [symbolic_helper._slice_helper(g, v, axes=[dim], starts=[k - 1], ends=[k]) for v in (values, indices)]
    return tuple(picked) if keep else tuple(symbolic_helper._squeeze_helper(g, v, [dim]) for v in picked)


def _scatter_add_below_16(g, *args):
    """Below opset 16 the exporter writes ``scatter_add`` as a plain scatter into zeros plus the input, which
    keeps one of the updates of a repeated index instead of their sum: raise the opset (the message names it)."""
    raise RuntimeError("scatter_add sums the updates of repeated indices: ScatterElements' reduction='add' was "
                       "added in version 16")


def _adaptive_pool(kind: str, rank: int):
    """``aten::adaptive_{avg,max}_pool{rank}d``. The exporter's symbolic refuses an output size that does not
    divide the input size (``nn.AdaptiveMaxPool1d(5)`` over 22 steps); PyTorch's bins are then
    ``[floor(i * L / n), ceil((i + 1) * L / n))``, one axis at a time (a box's max or mean is that of its
    rows' maxima or means: every row of a box has the same width): a slice and a reduction per bin."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import symbolic_opset9

    original = getattr(symbolic_opset9, f"adaptive_{kind}_pool{rank}d")
    reduce = "ReduceMax" if kind == "max" else "ReduceMean"

    def symbolic(g, x, output_size):
        sizes = symbolic_helper._get_tensor_sizes(x)
        bins = symbolic_helper._maybe_get_const(output_size, "is")
        spatial = sizes[2:] if sizes else None
        if symbolic_helper._is_value(bins) or not spatial or None in spatial or \
                all(size % count == 0 for size, count in zip(spatial, bins, strict=True)):
            return original(g, x, output_size)
        y = x
        for axis, (size, count) in enumerate(zip(spatial, bins, strict=True), start=2):
            parts = [_reduce(g, reduce, symbolic_helper._slice_helper(
                g, y, axes=[axis], starts=[i * size // count], ends=[-(-(i + 1) * size // count)]), axis)
                for i in range(count)]
            y = g.op("Concat", *parts, axis_i=axis) if count > 1 else parts[0]
        return (y, None) if kind == "max" else y  # max pooling's indices: none (as for its global case)
    return symbolic


def _reduce(g, op: str, x, axis: int):
    if g.opset >= 18:
        return g.op(op, x, g.op("Constant", value_t=torch.tensor([axis], dtype=torch.int64)), keepdims_i=1)
    return g.op(op, x, axes_i=[axis], keepdims_i=1)


_SYMBOLICS_REGISTERED = False


def _register_symbolics() -> None:
    global _SYMBOLICS_REGISTERED
    if not _SYMBOLICS_REGISTERED:
        for opset in range(9, 23):  # one registration per opset; 23 has RMSNormalization of its own
            torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)
            torch.onnx.register_custom_op_symbolic("aten::unfold", _unfold, opset)
            torch.onnx.register_custom_op_symbolic("aten::diff", _diff, opset)
            torch.onnx.register_custom_op_symbolic("aten::median", _median, opset)
            if opset < 16:
                torch.onnx.register_custom_op_symbolic("aten::scatter_add", _scatter_add_below_16, opset)
            if opset >= 14:  # below, the exporter's refusal names the opset to raise to
                torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", _attention, opset)
            for kind, rank in itertools.product(("avg", "max"), (1, 2, 3)):
                torch.onnx.register_custom_op_symbolic(f"aten::adaptive_{kind}_pool{rank}d",
                                                       _adaptive_pool(kind, rank), opset)
        _SYMBOLICS_REGISTERED = True


_embedding_bag = torch.nn.functional.embedding_bag


def _embedding_bag_fixed_bags(input, weight, offsets=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                              mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False,
                              padding_idx=None):
    """``F.embedding_bag`` on a 2-D input (one bag per row, all of one length) as the lookup and reduction
    it stands for. The exporter writes every embedding_bag as a Loop over the bags, which no converter
    turns into a Keras layer, and refuses it with a ``padding_idx``; 1-D inputs with offsets keep its way."""
    if input.dim() != 2 or offsets is not None or max_norm is not None:
        return _embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
                              per_sample_weights, include_last_offset, padding_idx)
    vectors = torch.nn.functional.embedding(input, weight)  # [N, L, D]
    if per_sample_weights is not None:  # mode="sum" only (PyTorch checks)
        vectors = vectors * per_sample_weights.unsqueeze(-1)
    if padding_idx is None:
        return vectors.sum(1) if mode == "sum" else vectors.mean(1) if mode == "mean" else vectors.amax(1)
    padding_idx = padding_idx + weight.size(0) if padding_idx < 0 else padding_idx
    keep = (input != padding_idx).unsqueeze(-1)  # padding entries are left out; an empty bag gives zeros
    if mode == "max":
        largest = vectors.masked_fill(~keep, float("-inf")).amax(1)
        return torch.where(keep.any(1), largest, torch.zeros_like(largest))
    total = (vectors * keep.to(vectors.dtype)).sum(1)
    return total if mode == "sum" else total / keep.sum(1).clamp(min=1).to(vectors.dtype)


def export_onnx(net: torch.nn.Module, args, path, opset: int, input_names=None, output_names_=None) -> None:
    """torch.onnx.export (TorchScript). Its TracerWarnings (a branch or a Python number frozen into the
    graph) go on to the stage's recorder (report.json stages.export.warnings). ``F.embedding_bag`` is traced
    as its decomposition while exporting (``_embedding_bag_fixed_bags``)."""
    _register_symbolics()
    args = args if isinstance(args, tuple) else (args,)
    input_names = input_names or [INPUT_NAME]
    output_names_ = output_names_ or [OUTPUT_NAME]
    axes = {name: {0: "batch"} for name in [*input_names, *output_names_]}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot target the low
        # opsets onnx-tf needs: that says nothing about this model.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*dynamo=False.*|.*TorchScript-based ONNX export.*")
        torch.nn.functional.embedding_bag = _embedding_bag_fixed_bags
        try:
            torch.onnx.export(
                net, args, str(path), input_names=input_names, output_names=output_names_, dynamic_axes=axes,
                opset_version=int(opset), do_constant_folding=True, dynamo=False,
            )
        finally:
            torch.nn.functional.embedding_bag = _embedding_bag
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
