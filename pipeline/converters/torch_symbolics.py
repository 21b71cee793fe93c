"""PyTorch -> ONNX: ops the TorchScript exporter writes wrong or refuses, written for the export stage instead.

Symbolics (registered per opset by ``register``): ``Tensor.unfold`` on a negative dimension (its own symbolic
swapped the window and position axes), ``torch.diff`` and ``torch.median`` (none), grouped-query
``scaled_dot_product_attention`` (refused), ``scatter_add`` below opset 16 (a graph that loses repeated
indices: the opset is raised), adaptive pooling to sizes that do not divide the input (refused),
``nn.RMSNorm`` below opset 23, ``nn.Bilinear``, ``torch.rot90``, ``F.threshold`` with a non-zero threshold
and ``nearest-exact`` interpolation (none); ``F.fold`` whose ``output_size`` is a list of sizes
read off the input (timm's VOLO: the exporter's ``col2im`` needs a tensor).
``torch.searchsorted`` / ``torch.bucketize``, ``torch.cumprod`` / ``torch.logcumsumexp`` /
``torch.cummax`` / ``torch.cummin`` (none); ``torch.cumsum`` of bools or small integers (summed as int64,
as PyTorch does: the exporter's ``CumSum`` of bools is not valid ONNX); ``torch.tensor_split`` at positions
computed in ``forward`` (the exporter took them for a number of sections).
Decompositions traced while exporting (``decompositions``): ``F.embedding_bag`` on rows of ids (a Loop
no converter takes, refused with a ``padding_idx``), ``nn.LSTM`` with ``proj_size`` (refused),
``F.embedding`` with ``max_norm`` (the exporter drops the renormalisation, and its trace renormalises the
rows of the export's sample in place), ``F.scaled_dot_product_attention`` given ``is_causal`` as a tensor (the
tracer turns a bool passed down to a submodule by keyword into one, as in timm's EVA-02: a bool again).
Parametrized weights (``without_parametrizations``): exported as the value they hold in eval.
"""
import contextlib
import itertools

import torch

_embedding_bag = torch.nn.functional.embedding_bag  # PyTorch's own, put back after each export
_embedding = torch.nn.functional.embedding
_sdpa = torch.nn.functional.scaled_dot_product_attention


def register(opset: int) -> None:
    """Register this module's symbolics for ``opset``."""
    torch.onnx.register_custom_op_symbolic("aten::unfold", _unfold, opset)
    torch.onnx.register_custom_op_symbolic("aten::diff", _diff, opset)
    torch.onnx.register_custom_op_symbolic("aten::median", _median, opset)
    if opset < 16:
        torch.onnx.register_custom_op_symbolic("aten::scatter_add", _scatter_add_below_16, opset)
    if opset >= 14:  # below, the exporter's refusal names the opset to raise to
        torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", _attention, opset)
    for kind, rank in itertools.product(("avg", "max"), (1, 2, 3)):
        torch.onnx.register_custom_op_symbolic(f"aten::adaptive_{kind}_pool{rank}d", _adaptive_pool(kind, rank),
                                               opset)
    if opset < 23:  # 23 has RMSNormalization of its own
        torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)
    if opset >= 10:
        torch.onnx.register_custom_op_symbolic("aten::rot90", _rot90, opset)
        torch.onnx.register_custom_op_symbolic("aten::threshold", _threshold, opset)
    if opset >= 11:  # Resize with sizes
        torch.onnx.register_custom_op_symbolic("aten::_upsample_nearest_exact2d", _upsample_nearest_exact2d, opset)
    if opset >= 12:  # Einsum
        torch.onnx.register_custom_op_symbolic("aten::bilinear", _bilinear, opset)
    if opset >= 11:  # CumSum
        torch.onnx.register_custom_op_symbolic("aten::cumsum", _cumsum, opset)
    if opset >= 13:  # the exporter's own below is another
        torch.onnx.register_custom_op_symbolic("aten::tensor_split", _tensor_split, opset)
    if opset >= 18:  # Col2Im
        torch.onnx.register_custom_op_symbolic("aten::col2im", _col2im, opset)
    torch.onnx.register_custom_op_symbolic("aten::searchsorted", _searchsorted, opset)
    torch.onnx.register_custom_op_symbolic("aten::bucketize", _bucketize, opset)
    torch.onnx.register_custom_op_symbolic("aten::cumprod", _cumulative("ReduceProd", 1.0), opset)
    torch.onnx.register_custom_op_symbolic("aten::cummax", _running_extreme("ReduceMax"), opset)
    torch.onnx.register_custom_op_symbolic("aten::cummin", _running_extreme("ReduceMin"), opset)
    torch.onnx.register_custom_op_symbolic("aten::logcumsumexp", _cumulative("ReduceLogSumExp", float("-inf")),
                                           opset)


def without_parametrizations(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` itself, or a copy whose parametrized tensors (``weight_norm``, ``spectral_norm``,
    ``orthogonal``, ``register_parametrization``) are plain parameters holding their current value: the
    exporter would trace their computation from the parameters, with ops it lacks (``vdot``,
    ``matrix_exp``...), and in eval that value is a constant anyway."""
    import copy

    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in net.modules()):
        return net
    net = copy.deepcopy(net)
    for module in [m for m in net.modules() if parametrize.is_parametrized(m)]:
        with torch.no_grad():
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
        # Not remove_parametrizations: it deletes the property from the class, which the copy shares with
        # the user's network. The copy's module goes back to its own class instead.
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]
        for name, value in values.items():
            module.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
    return net


@contextlib.contextmanager
def decompositions():
    """While exporting, ``F.embedding_bag`` traces as ``_embedding_bag_fixed_bags``, ``F.embedding`` with a
    ``max_norm`` as ``_embedding_max_norm`` and an ``nn.LSTM`` with ``proj_size`` as ``_projected_lstm``."""
    torch.nn.functional.embedding_bag = _embedding_bag_fixed_bags
    torch.nn.functional.embedding = _embedding_max_norm
    torch.nn.LSTM.forward = _lstm_forward
    torch.nn.functional.scaled_dot_product_attention = _attention_with_bool_causal
    try:
        yield
    finally:
        torch.nn.functional.embedding_bag = _embedding_bag
        torch.nn.functional.embedding = _embedding
        torch.nn.functional.scaled_dot_product_attention = _sdpa
        torch.nn.LSTM.forward = _LSTM_FORWARD


_LSTM_FORWARD = torch.nn.LSTM.forward  # PyTorch's own


def _attention_with_bool_causal(query, key, value, *args, **kwargs):
    """``F.scaled_dot_product_attention`` whose ``is_causal`` arrived as a 0-d tensor: the tracer turns a bool
    that a module passes down to a submodule by keyword into one (timm's EVA-02 blocks), which the function
    refuses. The flag is a constant of the model: its value is read back."""
    if isinstance(kwargs.get("is_causal"), torch.Tensor):
        kwargs["is_causal"] = bool(kwargs["is_causal"])
    if len(args) >= 3 and isinstance(args[2], torch.Tensor):  # attn_mask, dropout_p, is_causal positionally
        args = (*args[:2], bool(args[2]), *args[3:])
    return _sdpa(query, key, value, *args, **kwargs)


def _embedding_max_norm(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                        sparse=False):
    """The rows PyTorch's forward returns after renormalising them in place (``embedding_renorm_``: a row
    whose norm exceeds ``max_norm`` scaled by ``max_norm / (norm + 1e-7)``), computed without mutating."""
    rows = _embedding(input, weight, padding_idx, None, norm_type, scale_grad_by_freq, sparse)
    if max_norm is None:
        return rows
    norms = torch.linalg.vector_norm(rows, ord=norm_type, dim=-1, keepdim=True)
    return torch.where(norms > max_norm, rows * (max_norm / (norms + 1e-7)), rows)


def _lstm_forward(self, input, hx=None):
    if self.proj_size > 0 and isinstance(input, torch.Tensor) and input.dim() == 3:
        return _projected_lstm(self, input, hx)
    return _LSTM_FORWARD(self, input, hx)


def _projected_lstm(lstm, x, hx):
    """``nn.LSTM(proj_size=P)`` (the exporter refuses "LSTMs with projections") as its equations, step by
    step: ``h = (o * tanh(c)) @ W_hr^T``. The unrolled MatMuls convert to every target."""
    from torch.nn import functional as F

    directions, steps = 2 if lstm.bidirectional else 1, x.shape[1 if lstm.batch_first else 0]
    sequence = x.transpose(0, 1) if lstm.batch_first else x  # [T, N, F]
    if hx is None:
        hx = (sequence.new_zeros(lstm.num_layers * directions, sequence.shape[1], lstm.proj_size),
              sequence.new_zeros(lstm.num_layers * directions, sequence.shape[1], lstm.hidden_size))
    finals_h, finals_c = [], []
    for layer in range(lstm.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = [getattr(lstm, f"{name}{suffix}", None) for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh", "weight_hr")]
            h, c = hx[0][layer * directions + direction], hx[1][layer * directions + direction]
            out = [None] * steps
            for t in reversed(range(steps)) if direction else range(steps):
                gates = F.linear(sequence[t], weights[0], weights[2]) + F.linear(h, weights[1], weights[3])
                i, f, g, o = gates.chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = F.linear(torch.sigmoid(o) * torch.tanh(c), weights[4])
                out[t] = h
            outputs.append(torch.stack(out))
            finals_h.append(h)
            finals_c.append(c)
        sequence = torch.cat(outputs, -1)  # dropout between layers: none in eval
    output = sequence.transpose(0, 1) if lstm.batch_first else sequence
    return output, (torch.stack(finals_h), torch.stack(finals_c))


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
    size, step = symbolic_helper._get_const(size, "i", "size"), symbolic_helper._get_const(step, "i", "step")
    if rank is not None and dimension >= 0 and symbolic_helper._get_tensor_dim_size(x, dimension) is None \
            and g.opset >= 11:
        return _unfold_unknown_length(g, x, dimension, size, step, rank)
    return symbolic_opset9.unfold(g, x, dimension, size, step)


def _unfold_unknown_length(g, x, dimension: int, size: int, step: int, rank: int):
    """``Tensor.unfold`` along an axis whose length the exporter does not know (after an ``F.pad`` of
    computed amounts: timm's HaloNet), which its symbolic refuses ("input size not accessible"): the windows
    gathered by index, ``starts[:, None] + arange(size)`` with ``(length - size) // step + 1`` starts, and
    the window axis moved last, as ``unfold`` returns it."""
    from torch.onnx import symbolic_helper

    def const(value):
        return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))
    length = g.op("Gather", g.op("Shape", x), const(dimension), axis_i=0)
    count = g.op("Add", g.op("Div", g.op("Sub", length, const(size)), const(step)), const(1))
    starts = g.op("Mul", g.op("Range", const(0), count, const(1)), const(step))
    index = g.op("Add", symbolic_helper._unsqueeze_helper(g, starts, [1]),
                 symbolic_helper._unsqueeze_helper(g, const(list(range(size))), [0]))
    gathered = g.op("Gather", x, index, axis_i=dimension)  # [..., count, size, ...]
    order = [a for a in range(rank + 1) if a != dimension + 1] + [dimension + 1]
    return g.op("Transpose", gathered, perm_i=order)


def _col2im(g, x, output_size, kernel_size, dilation, padding, stride):
    """``F.fold`` / ``nn.Fold`` (ONNX Col2Im, opset 18). The exporter's own symbolic reads the number of
    spatial axes off ``output_size`` as a tensor, and fails ("'NoneType' object is not subscriptable") when
    it is a list of sizes computed in ``forward`` from the input's shape (timm's VOLO folds back to
    ``(H, W)``): the sizes are made a 1-D int64 tensor first."""
    from torch.onnx import symbolic_helper

    def as_tensor(value):
        constant = symbolic_helper._maybe_get_const(value, "is")
        if isinstance(constant, list | tuple):
            return g.op("Constant", value_t=torch.tensor([int(v) for v in constant], dtype=torch.int64))
        if symbolic_helper._is_packed_list(value):  # sizes computed in the graph
            parts = [symbolic_helper._reshape_helper(g, g.op("Cast", v, to_i=7),
                                                     g.op("Constant", value_t=torch.tensor([1])))
                     for v in symbolic_helper._unpack_list(value)]
            return g.op("Concat", *parts, axis_i=0)
        return value

    dilation, padding, stride = (symbolic_helper._maybe_get_const(v, "is") for v in (dilation, padding, stride))
    axes = len(symbolic_helper._maybe_get_const(kernel_size, "is") or dilation or stride or [0, 0])
    pads = list(padding or [0] * axes) * 2  # begins, then ends
    return g.op("Col2Im", x, as_tensor(output_size), as_tensor(kernel_size), dilations_i=dilation or [1] * axes,
                pads_i=pads, strides_i=stride or [1] * axes)


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


def _cumsum(g, x, dim, dtype=None):
    """``torch.cumsum`` in PyTorch's result type: bools and integers summed as int64 (the exporter's
    symbolic writes a ``CumSum`` of bools, which ONNX has no kernel for: transformers' causal LMs given ids
    alone count packed sequences as ``(position_diff != 1).cumsum(-1)``)."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import _type_utils

    axis = g.op("Constant", value_t=torch.tensor(symbolic_helper._get_const(dim, "i", "dim"), dtype=torch.int64))
    if not symbolic_helper._is_none(dtype):
        target = _type_utils.JitScalarType(symbolic_helper._get_const(dtype, "i", "dtype"))
    else:
        target = _type_utils.JitScalarType.from_value(x, _type_utils.JitScalarType.UNDEFINED)
        if target in _INTEGRAL:
            target = _type_utils.JitScalarType.INT64
    if target != _type_utils.JitScalarType.from_value(x, _type_utils.JitScalarType.UNDEFINED) and \
            target != _type_utils.JitScalarType.UNDEFINED:
        x = g.op("Cast", x, to_i=target.onnx_type())
    return g.op("CumSum", x, axis)


def _tensor_split(g, x, indices_or_sections, dim, _outputs=None):
    """``torch.tensor_split(x, [i, j, ...], dim)`` with positions computed in ``forward`` (transformers'
    Mamba: ``tensor_split(h, [seq_len - kept], dim=2)``) as the slices it stands for: the exporter's
    symbolic takes such a list for a number of sections (a ``Tile`` of a 2-D repeat onnxruntime rejects)."""
    from torch.onnx import symbolic_helper
    from torch.onnx._internal.torchscript_exporter import symbolic_opset13

    if not symbolic_helper._is_packed_list(indices_or_sections):
        return symbolic_opset13.tensor_split(g, x, indices_or_sections, dim, _outputs)
    axis = symbolic_helper._get_const(dim, "i", "dim")
    positions = [symbolic_helper._unsqueeze_helper(g, g.op("Cast", v, to_i=7), [0])
                 for v in symbolic_helper._unpack_list(indices_or_sections)]
    bounds = [g.op("Constant", value_t=torch.tensor([0])), *positions,
              g.op("Constant", value_t=torch.tensor([2**62]))]
    axes = g.op("Constant", value_t=torch.tensor([axis]))
    parts = [g.op("Slice", x, start, end, axes) for start, end in itertools.pairwise(bounds)]
    return g.op("prim::ListConstruct", *parts)  # the ListUnpack after it takes the parts back out


def _integral_types():
    from torch.onnx._internal.torchscript_exporter import _type_utils

    kinds = _type_utils.JitScalarType
    return {kinds.BOOL, kinds.UINT8, kinds.INT8, kinds.INT16, kinds.INT}


_INTEGRAL = _integral_types()


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


def _reduce(g, op: str, x, axis: int, keepdims: bool = True):
    """A Reduce* (not ReduceSum, whose axes became an input at 13) over one axis."""
    if g.opset >= 18:  # axes as an input
        return g.op(op, x, g.op("Constant", value_t=torch.tensor([axis], dtype=torch.int64)), keepdims_i=int(keepdims))
    return g.op(op, x, axes_i=[axis], keepdims_i=int(keepdims))



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

def _bilinear(g, x1, x2, weight, bias):
    """``aten::bilinear`` (``nn.Bilinear``, ``F.bilinear``), which the TorchScript exporter has no symbolic
    for: ``einsum("...i,oij,...j->...o", x1, weight, x2) + bias``, its definition (Einsum: opset 12)."""
    from torch.onnx import symbolic_helper

    out = g.op("Einsum", x1, weight, x2, equation_s="...i,oij,...j->...o")
    return out if symbolic_helper._is_none(bias) else g.op("Add", out, bias)

def _threshold(g, x, threshold, value):
    """``aten::threshold`` (``nn.Threshold``, ``F.threshold``): the exporter takes a zero threshold only;
    ``where(x > threshold, x, value)`` is its definition."""
    from torch.onnx import symbolic_helper

    bound = float(symbolic_helper._get_const(threshold, "f", "threshold"))
    fill = float(symbolic_helper._get_const(value, "f", "value"))
    if bound == 0.0 and fill == 0.0:
        return g.op("Relu", x)
    bound_value, fill_value = (g.op("Constant", value_t=symbolic_helper._if_scalar_type_as(torch.tensor(v), x))
                               for v in (bound, fill))
    return g.op("Where", g.op("Greater", x, bound_value), x, fill_value)

def _rot90(g, x, k, dims):
    """``aten::rot90`` (rotation TTA, rotated filters of group-equivariant convolutions), which the exporter
    lacks: as NumPy and PyTorch define it, flips (Slice with step -1) and a Transpose of the two axes."""
    from torch.onnx import symbolic_helper

    k = int(symbolic_helper._get_const(k, "i", "k")) % 4
    rank = symbolic_helper._get_tensor_rank(x)
    first, second = (int(d) % rank for d in symbolic_helper._get_const(dims, "is", "dims"))

    def flip(value, axis):
        return symbolic_helper._slice_helper(g, value, axes=[axis], starts=[-1], ends=[-(2**62)], steps=[-1])

    def swap(value):
        perm = list(range(rank))
        perm[first], perm[second] = second, first
        return g.op("Transpose", value, perm_i=perm)

    if k == 1:
        return swap(flip(x, second))
    if k == 2:
        return flip(flip(x, first), second)
    return flip(swap(x), second) if k == 3 else x

def _upsample_nearest_exact2d(g, x, output_size, *scales):
    """``F.interpolate(mode="nearest-exact")``, which the exporter lacks: PyTorch's source pixel
    ``floor((i + 0.5) * in / out)`` is ONNX Resize's nearest with half_pixel coordinates rounded half up."""
    import math

    from torch.onnx import symbolic_helper

    sizes = symbolic_helper._get_tensor_sizes(x)
    if not symbolic_helper._is_none(output_size):
        out = [int(v) for v in symbolic_helper._get_const(output_size, "is", "output_size")]
    else:  # the .vec overload: scale factors; PyTorch's output size is floor(size * scale)
        factors = symbolic_helper._get_const(scales[0], "fs", "scale_factors")
        out = [math.floor(size * f) for size, f in zip(sizes[2:], factors, strict=True)]
    leading = symbolic_helper._slice_helper(g, g.op("Shape", x), axes=[0], starts=[0], ends=[2])
    target = g.op("Concat", leading, g.op("Constant", value_t=torch.tensor(out, dtype=torch.int64)), axis_i=0)
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, target, mode_s="nearest", coordinate_transformation_mode_s="half_pixel",
                nearest_mode_s="round_prefer_ceil")


def _searchsorted(g, sorted_sequence, values, out_int32=False, right=False, side=None, sorter=None):
    """``torch.searchsorted`` (no symbolic): the index is the count of boundaries below the value (``<``;
    ``<=`` with ``right``/``side="right"``), one comparison per boundary and a sum over them."""
    from torch.onnx import symbolic_helper

    if not symbolic_helper._is_none(sorter):
        raise torch.onnx.errors.SymbolicValueError("torch.searchsorted with a sorter is not exportable", values)
    side = symbolic_helper._maybe_get_const(side, "s") if not symbolic_helper._is_none(side) else None
    right = side == "right" if side is not None else bool(symbolic_helper._maybe_get_const(right, "b"))
    rank = symbolic_helper._get_tensor_rank(sorted_sequence)
    boundaries = sorted_sequence if rank == 1 else symbolic_helper._unsqueeze_helper(g, sorted_sequence, [rank - 1])
    return _count_below(g, values, boundaries, right, bool(symbolic_helper._maybe_get_const(out_int32, "b")))


def _bucketize(g, values, boundaries, out_int32=False, right=False):
    """``torch.bucketize`` (no symbolic): as ``searchsorted`` on a 1-D ``boundaries`` (same ``right``)."""
    from torch.onnx import symbolic_helper

    return _count_below(g, values, boundaries, bool(symbolic_helper._maybe_get_const(right, "b")),
                        bool(symbolic_helper._maybe_get_const(out_int32, "b")))


def _count_below(g, values, boundaries, right: bool, out_int32: bool):
    """Per value (a new last axis against the boundaries): how many boundaries are < it (<= if ``right``)."""
    from torch.onnx import symbolic_helper

    column = symbolic_helper._unsqueeze_helper(g, values, [-1])
    # As "not above": a NaN value counts every boundary, as PyTorch puts it after all of them.
    above = g.op("Less", column, boundaries)
    if not right:
        above = g.op("Or", above, g.op("Equal", column, boundaries))
    below = g.op("Not", above)
    counted = g.op("Cast", below, to_i=torch.onnx.TensorProtoDataType.INT64)
    total = symbolic_helper._reducesum_helper(g, counted, axes_i=[-1], keepdims_i=0)
    return g.op("Cast", total, to_i=torch.onnx.TensorProtoDataType.INT32) if out_int32 else total


def _cumulative(reduce: str, neutral: float):
    """``torch.cumprod`` / ``torch.logcumsumexp`` (survival curves, stick-breaking; no symbolic): along an
    axis of static length T, the T x T terms ``x[j] if j <= i else neutral`` reduced over ``j``. Exact where
    ``exp(cumsum(log x))`` is not (zeros, negative values)."""
    import numpy as np
    from torch.onnx import symbolic_helper

    def symbolic(g, x, dim, dtype=None):
        rank = symbolic_helper._get_tensor_rank(x)
        axis = int(symbolic_helper._get_const(dim, "i", "dim")) % rank
        size = symbolic_helper._get_tensor_sizes(x)[axis]
        if size is None:
            raise torch.onnx.errors.SymbolicValueError(f"{reduce} along an axis of unknown length", x)
        if dtype is not None and not symbolic_helper._is_none(dtype):
            scalar = symbolic_helper._get_const(dtype, "i", "dtype")
            x = g.op("Cast", x, to_i=torch.onnx.JitScalarType(scalar).onnx_type())
        lower = np.tril(np.ones((size, size), dtype=bool)).reshape((size, size) + (1,) * (rank - axis - 1))
        terms = g.op("Where", g.op("Constant", value_t=torch.from_numpy(lower)),
                     symbolic_helper._unsqueeze_helper(g, x, [axis]),
                     g.op("Constant", value_t=symbolic_helper._if_scalar_type_as(torch.tensor(neutral), x)))
        return _reduce(g, reduce, terms, axis + 1, keepdims=False)

    return symbolic


def _running_extreme(reduce: str):
    """``torch.cummax`` / ``torch.cummin`` (no symbolic), values and indices as PyTorch computes them: over
    the T x T prefix terms (the first element standing in for the masked ones), the index of the last
    element equal to the running extreme, a NaN taking over from where it appears (the last NaN's index)."""
    import numpy as np
    from torch.onnx import symbolic_helper

    def symbolic(g, x, dim):
        rank = symbolic_helper._get_tensor_rank(x)
        axis = int(symbolic_helper._get_const(dim, "i", "dim")) % rank
        size = symbolic_helper._get_tensor_sizes(x)[axis]
        if size is None:
            raise torch.onnx.errors.SymbolicValueError(f"{reduce} along an axis of unknown length", x)
        trailing = (1,) * (rank - axis - 1)
        lower = g.op("Constant", value_t=torch.from_numpy(np.tril(np.ones((size, size), dtype=bool)).reshape(
            (size, size) + trailing)))
        first = symbolic_helper._unsqueeze_helper(
            g, symbolic_helper._slice_helper(g, x, axes=[axis], starts=[0], ends=[1]), [axis])
        column = symbolic_helper._unsqueeze_helper(g, x, [axis])  # [..., 1 (i), T (j), ...]
        terms = g.op("Where", lower, column, first)
        values = _reduce(g, reduce, terms, axis + 1, keepdims=False)
        floating = symbolic_helper._is_fp(x)
        if floating:
            seen = _reduce(g, "ReduceMax", g.op("Cast", g.op("IsNaN", terms), to_i=torch.onnx.TensorProtoDataType.
                                                FLOAT), axis + 1, keepdims=False)
            nan = g.op("Constant", value_t=symbolic_helper._if_scalar_type_as(torch.tensor(float("nan")), x))
            values = g.op("Where", g.op("Greater", seen, g.op("Constant", value_t=torch.tensor(0.0))), nan, values)
        target = symbolic_helper._unsqueeze_helper(g, values, [axis + 1])
        equal = g.op("Equal", terms, target)
        if floating:
            equal = g.op("Or", equal, g.op("And", g.op("IsNaN", terms), g.op("IsNaN", target)))
        positions = g.op("Constant", value_t=torch.arange(size, dtype=torch.int64).reshape((size,) + trailing))
        hits = g.op("Where", g.op("And", equal, lower), positions, g.op("Constant", value_t=torch.tensor(-1)))
        return values, _reduce(g, "ReduceMax", hits, axis + 1, keepdims=False)

    return symbolic
