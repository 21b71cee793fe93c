"""keras3, our ONNX -> Keras converter, op by op and layout by layout: every case is a small real
PyTorch module exported to ONNX, converted, and compared with onnxruntime on random inputs at two
batch sizes. The cases are the ones a single global layout switch gets wrong (axis-taking ops on
channels-last data, rank-2/3 tensors beside images, batch-second tensors) and the ops users' models
bring (attention, recurrent layers, upsampling, odd pooling)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.converters.keras3 import build
from pipeline.errors import ConversionError
from pipeline.stages.export import export_onnx

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow


class Lambda(nn.Module):
    def __init__(self, function, *modules):
        super().__init__()
        self.function = function
        self.parts = nn.ModuleList(modules)

    def forward(self, x):
        return self.function(x, *self.parts)


def slice_assignments(x):
    """In-place writes as users make them (PyTorch exports each as ScatterND with batch-built indices)."""
    y = torch.zeros_like(x)
    y[:, :, 1:-1, 2:] = x[:, :, 1:-1, 2:] * 2
    y[:, 1] = 0.5
    y[..., :2] = y[..., -2:]
    y[:, :, ::3] = -y[:, :, ::3]
    return y


def conv_then(function, channels=6):
    """A conv first, so the tensor is channels-last inside Keras when ``function`` sees it."""
    return Lambda(lambda x, conv: function(conv(x)), nn.Conv2d(3, channels, 3, padding=1))


def assign_in_place(x):
    """In-place assignments as sequence code writes them: a step overwritten, a decoder loop filling a
    preallocated output step by step (batch-first and time-major), a mask's first position forced on."""
    y = x.clone()
    y[:, 0] = 1.0
    y[:, -2, 1:3] = x[:, 1, :2] * 3
    out = torch.zeros(x.shape[0], 3, 5)
    for t in range(3):
        out[:, t] = torch.tanh(y[:, t] + out[:, t - 1])
    mask = x[..., 0] > 0
    mask[:, 0] = True
    time_major = torch.zeros(3, x.shape[0], 5)  # [T, N, F], as seq2seq tutorials fill it: outputs[t] = y
    for t in range(3):
        time_major[t] = x[:, t + 1] * 2 + time_major[t - 1]
    return out + y[:, :3] + mask[:, :3, None].float() + time_major.transpose(0, 1)


IMAGE, SEQ, FLAT = (3, 8, 10), (7, 5), (12,)
CASES = {
    # axis-taking ops on a channels-last tensor
    "softmax_over_channels": (conv_then(lambda x: F.softmax(x, dim=1)), IMAGE, 13),
    "log_softmax_over_height": (conv_then(lambda x: F.log_softmax(x, dim=2)), IMAGE, 13),
    "flatten_from_axis_2": (conv_then(lambda x: torch.flatten(x, 2)), IMAGE, 13),
    "concat_channels_and_reduce": (conv_then(lambda x: torch.cat([x, x * 2], 1).mean(dim=(2, 3))), IMAGE, 13),
    "split_gather_transpose": (conv_then(lambda x: torch.split(x, [2, 4], 1)[1][:, :, 1].transpose(1, 2)), IMAGE, 13),
    "channel_shuffle": (conv_then(lambda x: x.view(-1, 2, 3, 8, 10).transpose(1, 2).reshape(-1, 6, 8, 10)), IMAGE, 13),
    "max_over_width_keepdim": (conv_then(lambda x: x.amax(dim=3, keepdim=True) + x), IMAGE, 13),
    "batchnorm1d_rank2_and_rank3": (Lambda(lambda x, a, b, c: b(a(x).transpose(1, 2)).sum(2) + c(a(x).sum(1)),
                                           nn.Linear(5, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4)), SEQ, 13),
    # pooling edge rules
    "avgpool_ceil_pad_exclude": (conv_then(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                                  count_include_pad=False)), IMAGE, 13),
    "avgpool_ceil_pad_include": (conv_then(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)), IMAGE, 13),
    "maxpool_ceil_pad": (conv_then(lambda x: F.max_pool2d(x - 5, 3, 2, 1, ceil_mode=True)), IMAGE, 13),
    "maxpool1d_ceil": (Lambda(lambda x, c: F.max_pool1d(c(x), 2, ceil_mode=True), nn.Conv1d(7, 4, 2)), SEQ, 13),
    "pool3d_ceil_exclude_pad": (Lambda(lambda x, c: F.max_pool3d(c(x), 2, ceil_mode=True) + F.avg_pool3d(
        c(x), 3, 2, 1, ceil_mode=True, count_include_pad=False), nn.Conv3d(3, 4, 3, padding=1)), (3, 5, 7, 9), 13),
    # an If on a shape (squeeze a dimension if it is 1) whose branches read the data: inlined
    "local_response_norm": (conv_then(lambda x: nn.LocalResponseNorm(3, alpha=0.1, k=2.0)(x)), IMAGE, 13),
    "maxpool_dilated_ceil_pad": (conv_then(lambda x: F.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True)), IMAGE, 13),
    # convolutions
    "depthwise_dilated_strided": (Lambda(lambda x, c: c(x), nn.Conv2d(3, 6, 3, stride=2, dilation=2, groups=3,
                                                                      padding=2)), IMAGE, 13),
    "grouped_conv": (conv_then(lambda x: nn.functional.conv2d(x, torch.ones(4, 3, 1, 1) / 3, groups=2)), IMAGE, 13),
    "conv_transpose_output_padding": (Lambda(lambda x, c: c(x), nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1,
                                                                                   output_padding=1)), IMAGE, 13),
    "conv1d_same_padding": (Lambda(lambda x, c: c(x), nn.Conv1d(7, 3, 4, padding="same")), SEQ, 13),
    "conv_same_padding_dilated": (Lambda(lambda x, c: c(x), nn.Conv2d(3, 4, (3, 2), padding="same",
                                                                      dilation=(2, 3))), IMAGE, 13),
    "conv_transpose_grouped_dilated": (Lambda(lambda x, c: c(x), nn.ConvTranspose2d(
        3, 6, 3, stride=2, padding=1, output_padding=1, groups=3, dilation=2)), IMAGE, 13),
    # normalisation, and a per-channel constant added to a tensor held in ONNX order (NCHW), width = channels:
    # Keras' add on TensorFlow takes it for a bias of the last axis
    "group_norm_affine": (Lambda(lambda x, c, n: n(c(x)), nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6)),
                          (3, 4, 6), 13),
    "channel_bias_on_nchw_tensor": (conv_then(lambda x: (x.reshape(-1, 2, 90) * 2).reshape(-1, 6, 5, 6)
                                              + torch.arange(6.0).view(6, 1, 1)), (3, 5, 6), 13),
    # resize modes
    "upsample_nearest": (conv_then(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), IMAGE, 13),
    "upsample_bilinear": (conv_then(lambda x: F.interpolate(x, size=(11, 7), mode="bilinear")), IMAGE, 13),
    "upsample_bilinear_corners": (conv_then(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear",
                                                                    align_corners=True)), IMAGE, 13),
    "upsample_bicubic": (conv_then(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")), IMAGE, 13),
    "pad_negative_crops": (conv_then(lambda x: F.pad(F.pad(x, (-1, 2, -2, -1)), (1, 1, 0, 0), mode="reflect")),
                           IMAGE, 13),
    "pad_reflect_replicate": (conv_then(lambda x: F.pad(F.pad(x, (1, 2, 0, 1), mode="reflect"), (2, 0, 1, 1),
                                                        mode="replicate")), IMAGE, 13),
    # activations
    "hardswish_hardsigmoid_relu6_gelu": (Lambda(lambda x: F.hardswish(x) + F.hardsigmoid(x) + F.relu6(x * 4)
                                                + F.gelu(x) + F.gelu(x, approximate="tanh") + F.silu(x)), FLAT, 14),
    "elu_leaky_selu_softplus_mish": (Lambda(lambda x: F.elu(x, 0.5) + F.leaky_relu(x, 0.2) + F.selu(x)
                                            + F.softplus(x) + F.mish(x)), FLAT, 13),
    # matrix products and attention
    "batched_matmul_with_transpose": (Lambda(lambda x, q: torch.matmul(q(x), q(x).transpose(1, 2)),
                                             nn.Linear(5, 4)), SEQ, 13),
    "einsum_capital_letters": (Lambda(lambda x, q: torch.einsum("bTF,bSF->bTS", q(x), x[..., :4]), nn.Linear(5, 4)),
                               SEQ, 13),
    "multihead_attention_seq_first": (Lambda(lambda x, m: m(x.transpose(0, 1), x.transpose(0, 1),
                                                            x.transpose(0, 1), need_weights=False)[0],
                                             nn.MultiheadAttention(5, 1)), SEQ, 14),
    "layernorm_over_two_axes": (Lambda(lambda x, n: n(x), nn.LayerNorm([7, 5])), SEQ, 17),
    "class_token_expand": (Lambda(lambda x, p: torch.cat([p.weight.view(1, 1, 5).expand(x.shape[0], -1, -1), x], 1),
                                  nn.Linear(1, 5)), SEQ, 13),
    "gather_sorted_one_hot_triu": (Lambda(lambda x: torch.gather(x, 2, torch.topk(x, 5, dim=2).indices)
                                          + F.one_hot(x.argmax(dim=2), 5).float()
                                          + torch.triu(x @ x.transpose(1, 2), diagonal=1)[..., :5]), SEQ, 14),
    # recurrent layers
    "gru_two_layers": (Lambda(lambda x, g: g(x)[0], nn.GRU(5, 6, 2, batch_first=True)), SEQ, 13),
    "lstm_bidirectional_final_states": (Lambda(lambda x, m: torch.cat([m(x)[1][0].transpose(0, 1).flatten(1),
                                                                       m(x)[0][:, -1]], 1),
                                               nn.LSTM(5, 4, bidirectional=True, batch_first=True)), SEQ, 13),
    "lstm_time_major_with_state": (Lambda(lambda x, m: m(x.transpose(0, 1),
                                                         (torch.tanh(x[:, :1].transpose(0, 1)[..., :3]),
                                                          torch.ones(1, x.shape[0], 3)))[0],
                                          nn.LSTM(5, 3)), SEQ, 13),
    "rnn_tanh": (Lambda(lambda x, r: r(x)[1][0], nn.RNN(5, 3, batch_first=True)), SEQ, 13),
    # recurrent variants users write: a learned initial hidden state with a zero cell state, relu RNNs
    "lstm_learned_h0_zero_c0": (Lambda(lambda x, m, p: m(x, (p.weight.view(1, 1, 3).expand(-1, x.shape[0], -1)
                                                             .contiguous(), torch.zeros(1, x.shape[0], 3)))[0],
                                       nn.LSTM(5, 3, batch_first=True), nn.Linear(1, 3)), SEQ, 13),
    "lstm_data_h0_no_c0_given": (Lambda(lambda x, m, p: m(x, (torch.tanh(p(x[:, 0])).unsqueeze(0),
                                                              torch.zeros(1, x.shape[0], 3)))[1][1],
                                        nn.LSTM(5, 3, batch_first=True), nn.Linear(5, 3)), SEQ, 13),
    "rnn_relu_bidirectional": (Lambda(lambda x, r: r(x)[0], nn.RNN(5, 3, nonlinearity="relu", bidirectional=True,
                                                                   batch_first=True)), SEQ, 13),
    # attention as users write it
    "einsum_ellipsis_attention": (Lambda(lambda x, q: torch.einsum(
        "...ij,...jd->...id", torch.einsum("...id,...jd->...ij", *(q(x).view(-1, 7, 2, 2).transpose(1, 2),) * 2)
        .softmax(-1), q(x).view(-1, 7, 2, 2).transpose(1, 2)).flatten(1), nn.Linear(5, 4)), SEQ, 14),
    "decoder_learned_queries": (Lambda(lambda x, p, d: d(p.weight.view(1, 3, 5).expand(x.shape[0], -1, -1), x),
                                       nn.Linear(1, 15), nn.TransformerDecoderLayer(5, 1, 8, batch_first=True)),
                                SEQ, 14),
    "mha_bias_kv_zero_attn": (Lambda(lambda x, p, m: m(p(x), p(x), p(x), need_weights=False)[0], nn.Linear(5, 6),
                                     nn.MultiheadAttention(6, 2, batch_first=True, add_bias_kv=True,
                                                           add_zero_attn=True)), SEQ, 14),
    "nan_to_num_and_per_head_weights": (Lambda(lambda x, p: torch.nan_to_num(x @ x.transpose(1, 2)).sum(2, True)
                                               + (x.unsqueeze(1).expand(-1, 2, -1, -1) @ p.weight.view(2, 5, 2))
                                               .transpose(1, 2).flatten(2), nn.Linear(1, 20)), SEQ, 14),
    # im2col layers: nn.Fold (Col2Im, opset 18) overlapping, strided, padded, dilated; nn.Bilinear (no
    # TorchScript symbolic: exported as its einsum)
    "fold_overlapping_strided_padded": (conv_then(lambda x: F.fold(F.unfold(x, 3, padding=1, stride=2) * 2, (8, 10),
                                                                   3, padding=1, stride=2)), IMAGE, 18),
    "fold_dilated_rectangular": (conv_then(lambda x: F.fold(torch.tanh(F.unfold(x, (2, 3), dilation=(2, 1),
                                                                                stride=(1, 2))), (8, 10), (2, 3),
                                                            dilation=(2, 1), stride=(1, 2))), IMAGE, 18),
    "bilinear_layer_on_sequence": (Lambda(lambda x, b: b(x, torch.tanh(x)), nn.Bilinear(5, 5, 3)), SEQ, 13),
    # arg-max/min as ONNX defines them: first index of the extreme, -0.0 == 0.0 (mostly ties of signed zeros here)
    "argmax_argmin_ties_signed_zeros": (Lambda(lambda x: torch.cat([
        (torch.round(x * 0.3) * torch.sign(x.flip(1))).argmax(1).flatten(1),
        torch.round(x).argmin(3, keepdim=True).flatten(1), F.one_hot(torch.round(x).argmax(2), 8).flatten(1)], 1)
        .float()), IMAGE, 13),
    # a constant matrix times data (W @ x: hand-written im2col, a graph's adjacency): a Dense layer
    "constant_matrix_times_data": (conv_then(lambda x: torch.linspace(-1, 1, 24).view(1, 3, 8) @ x), IMAGE, 13),
    "parameter_matrix_times_sequence": (Lambda(lambda x, p: p.weight @ torch.tanh(x), nn.Linear(7, 4)), SEQ, 13),
    # spatial transformers: F.affine_grid (AffineGrid, opset 20) and F.grid_sample (GridSample, opset 16) with
    # grids reaching outside the image, from a predicted theta or straight from the data
    "affine_grid_sample_bilinear_zeros": (Lambda(lambda x, p: F.grid_sample(x, F.affine_grid(
        p(x.mean((2, 3))).view(-1, 2, 3), list(x.shape), align_corners=False), align_corners=False),
        nn.Linear(3, 6)), IMAGE, 20),
    "grid_sample_bilinear_border_corners": (Lambda(lambda x, c: F.grid_sample(
        x, torch.tanh(c(x)).permute(0, 2, 3, 1) * 1.3, padding_mode="border", align_corners=True),
        nn.Conv2d(3, 2, 3, stride=2)), IMAGE, 16),
    "grid_sample_reflection": (Lambda(lambda x, c: F.grid_sample(x, c(x).permute(0, 2, 3, 1) * 2,
                                                              padding_mode="reflection", align_corners=False)
                                      + F.grid_sample(x, c(x).permute(0, 2, 3, 1) * 3, padding_mode="reflection",
                                                      align_corners=True), nn.Conv2d(3, 2, 1)), IMAGE, 16),
    "grid_sample_nearest_zeros": (Lambda(lambda x, c: F.grid_sample(x, c(x).permute(0, 2, 3, 1), mode="nearest",
                                                                       align_corners=False),
                                         nn.Conv2d(3, 2, 1)), IMAGE, 16),
    # two-operand einsums as transposes + one batched matmul (TensorFlow's own lowering breaks on some in TFLite)
    "einsum_spatial_attention_pooling": (conv_then(lambda x: torch.einsum("bchw,bhw->bc", x, x.mean(1).softmax(-1))),
                                         IMAGE, 13),
    "einsum_outer_product_and_sum_out": (Lambda(lambda x, p: torch.einsum("bti,btj->bij", x, p(x)) +
                                                torch.einsum("bti,bsj->bj", x, x)[:, None], nn.Linear(5, 5)), SEQ, 13),
    # slice assignment: ScatterND whose every sample writes its own row at the same places
    "slice_assignment_scatter": (conv_then(slice_assignments), IMAGE, 13),
    "rms_norm_and_dilated_same_conv": (Lambda(lambda x, n, c: c(n(x).transpose(1, 2)), nn.RMSNorm(5),
                                              nn.Conv1d(5, 4, 3, padding="same", dilation=2)), SEQ, 13),
    # sequence idioms: the step picked per sample by advanced indexing (torch.arange(N) counts the batch,
    # negative positions), argmax/argmin of floats with ties, patches by unfold on a negative dimension
    # (square windows x positions: transposed by the exporter's own symbolic), EmbeddingBag over rows
    "index_steps_by_batch_arange": (Lambda(lambda x, q: q(x)[torch.arange(x.shape[0]), x[:, :, 0].argmax(1) - 7],
                                           nn.Linear(5, 4)), SEQ, 13),
    "max_indices_and_argmin_ties": (Lambda(lambda x: torch.max(x, dim=2)[1].float() + torch.argmin(x.round(), 2)),
                                    SEQ, 13),
    "unfold_negative_dim_patches": (Lambda(lambda x, q: q(x.transpose(1, 2).unfold(-1, 3, 2)).flatten(2),
                                           nn.Linear(3, 2)), SEQ, 13),
    "adaptive_pools_uneven_bins": (Lambda(lambda x, c: torch.cat([F.adaptive_max_pool1d(c(x), 3),
                                                                  F.adaptive_avg_pool1d(c(x), 3)], 1),
                                          nn.Conv1d(7, 4, 2)), SEQ, 13),
    "adaptive_pool2d_uneven_bins": (conv_then(lambda x: F.adaptive_max_pool2d(x, (3, 4)) + F.adaptive_avg_pool2d(
        x, (3, 4))), IMAGE, 13),
    "scatter_assignments_per_sample": (Lambda(assign_in_place), SEQ, 13),
    "scatter_top_k_mask_and_scatter_add": (Lambda(lambda x: x * torch.zeros_like(x).scatter_(
        -1, x.topk(2, dim=-1).indices, 1.0) + torch.ones(x.shape[0], 7, 5).scatter_add(
        1, (x[:, :2].abs() * 3).long().clamp(max=6), x[:, 2:4]) + torch.zeros(x.shape[0], 7, 5).scatter(
        1, (x[:, 4:6].abs() * 2).long().clamp(max=6), x[:, :2])), SEQ, 16),
    "ascending_sort_and_median": (Lambda(lambda x: torch.sort(x, dim=1)[0][:, :3] + torch.argsort(x.round(), 2)[
        :, :3] + x.median(dim=1, keepdim=True).values), SEQ, 13),
    "sdpa_grouped_query_heads": (Lambda(lambda x, q: F.scaled_dot_product_attention(
        q(x).view(-1, 7, 4, 2).transpose(1, 2), *(x[..., :4].reshape(-1, 7, 2, 2).transpose(1, 2),) * 2,
        is_causal=True, enable_gqa=True).transpose(1, 2).flatten(2), nn.Linear(5, 8)), SEQ, 14),
    "lstm_projections_bidirectional": (Lambda(lambda x, m: m(x)[0], nn.LSTM(5, 4, 2, proj_size=2, batch_first=True,
                                                                         bidirectional=True)), SEQ, 13),
    "embedding_bag_rows_padding_max": (Lambda(lambda x, b: b((x[..., 0].abs() * 4).long().clamp(max=9)),
                                              nn.EmbeddingBag(10, 4, mode="max", padding_idx=0)), SEQ, 13),
    # numeric features bucketed into ids (bucketize/searchsorted: no exporter symbolic) clamped in integers
    "bucketize_searchsorted_clamped_ids": (Lambda(lambda x, e: e(torch.bucketize(x, torch.linspace(-1, 1, 9)).clamp(
        1, 7)).flatten(2) + e(torch.searchsorted(torch.linspace(-1, 1, 9), x, right=True).clamp(max=8)).flatten(2),
        nn.Embedding(10, 3)), SEQ, 13),
    # survival curves: cumulative products (zeros, negative factors) and log-cumulative-sums (the export's own)
    "cumprod_logcumsumexp": (Lambda(lambda x: torch.cumprod(1 - torch.sigmoid(x), 1) + torch.cumprod(x.round(), 2)
                                    + torch.logcumsumexp(x, 1)), SEQ, 18),
    # Set Transformer / Perceiver / DETR pooling: learned queries expanded over the batch attend to the data
    # (per head, a constant row of its own once heads are merged into the batch axis)
    "learned_queries_multihead_attention": (Lambda(lambda x, e, m: m(e.weight[None].expand(x.shape[0], -1, -1), x, x)[
        0].flatten(1), nn.Embedding(3, 4), nn.MultiheadAttention(4, 2, kdim=5, vdim=5, batch_first=True)), SEQ, 14),
    "cummax_cummin_ties": (Lambda(lambda x: torch.cummax(x.round(), 1)[0] + torch.cummax(x.round(), 1)[1]
                                  - torch.cummin(x.round(), 2)[1] * torch.cummin(x, 2)[0]), SEQ, 13),
}


def _export(module: nn.Module, shape, opset: int, path) -> onnx.ModelProto:
    torch.manual_seed(0)
    for parameter in module.parameters():  # non-trivial weights, BatchNorm statistics included
        parameter.data.normal_(0, 0.5)
    for name, buffer in module.named_buffers():
        if "running_var" in name:
            buffer.data.uniform_(0.5, 2.0)
        elif "running_mean" in name:
            buffer.data.normal_(0, 0.5)
    export_onnx(module.eval(), (torch.randn(2, *shape),), path, opset)
    return onnx.load(str(path))


def _keras_outputs(conversion, x: np.ndarray) -> np.ndarray:
    out = conversion.model.predict_on_batch(np.transpose(x, conversion.input_perms[0]))
    return np.transpose(np.asarray(out), np.argsort(conversion.output_perms[0]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow
def test_converted_op_matches_onnxruntime(case, tmp_path):
    module, shape, opset = CASES[case]
    model = _export(module, shape, opset, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    sample = rng.normal(size=(4, *shape)).astype(np.float32)
    conversion, _ = build(model, {"input": sample[:3]})
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        expected = session.run(None, {"input": x})[0]
        got = _keras_outputs(conversion, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def _tflite_outputs(conversion, x: np.ndarray, tmp_path) -> np.ndarray:
    """The Keras model as a SavedModel (dynamic batch), through the tflite backend's converter, run by LiteRT."""
    import keras
    import tensorflow as tf

    from pipeline.converters.backends.tflite_tf_converter import convert_file
    from pipeline.runtimes.tflite_runtime import _interpreter_class

    model = conversion.model
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=lambda value: {"output": model(value, training=False)},
                         input_signature=[tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="x")])
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    convert_file(tmp_path / "saved_model", tmp_path / "m.tflite")
    runner = _interpreter_class()(model_path=str(tmp_path / "m.tflite")).get_signature_runner("serving_default")
    out = runner(x=np.ascontiguousarray(np.transpose(x, conversion.input_perms[0])))["output"]
    return np.transpose(out, np.argsort(conversion.output_perms[0]))


@pytest.mark.parametrize("case", ["einsum_spatial_attention_pooling", "constant_matrix_times_data",
                                  "argmax_argmin_ties_signed_zeros", "affine_grid_sample_bilinear_zeros",
                                  "fold_overlapping_strided_padded", "slice_assignment_scatter",
                                  "grid_sample_reflection", "bucketize_searchsorted_clamped_ids",
                                  "cumprod_logcumsumexp", "cummax_cummin_ties"])
@pytest.mark.slow
def test_tflite_runs_what_tensorflow_lowers_badly(case, tmp_path):
    """Cases where TensorFlow's own lowering of a Keras op fails in TFLite (an einsum turned into a
    BatchMatMul of the wrong shape, a flatbuffer with static [-1, ...] shapes that does not load, Keras'
    float argmax needing BitwiseAnd) or where the gathers must stay builtins: converted and run by LiteRT."""
    module, shape, opset = CASES[case]
    model = _export(module, shape, opset, tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    conversion, _ = build(model, {"input": rng.normal(size=(3, *shape)).astype(np.float32)})
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = rng.normal(size=(batch, *shape)).astype(np.float32)
        expected = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(_tflite_outputs(conversion, x, tmp_path), expected, rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def test_the_saved_file_loads_in_safe_mode_and_computes_the_same(tmp_path):
    import keras

    module, shape, opset = CASES["multihead_attention_seq_first"]
    model = _export(module, shape, opset, tmp_path / "m.onnx")
    x = np.random.default_rng(2).normal(size=(3, *shape)).astype(np.float32)
    conversion, _ = build(model, {"input": x})
    conversion.model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert {type(layer).__name__ for layer in loaded.layers} <= {"InputLayer", "Dense", "Identity"}
    expected = np.asarray(conversion.model.predict_on_batch(x))
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), expected)


def test_transposes_are_bookkeeping_not_data_movement(tmp_path):
    """A ResNet-style block followed by flatten: the only transpose is the one before the Flatten's
    reshape can run in ONNX order... and global pooling makes even that one unnecessary."""
    from keras import ops  # noqa: F401 - Keras must be importable for the inspection below

    block = Lambda(lambda x, a, b: F.adaptive_avg_pool2d(F.relu(b(F.relu(a(x))) + a(x)), 1).flatten(1),
                   nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1))
    model = _export(block, IMAGE, 13, tmp_path / "m.onnx")
    conversion, _ = build(model, {"input": np.zeros((2, *IMAGE), np.float32)})
    config = conversion.model.get_config()
    operations = [layer["class_name"] for layer in config["layers"]]
    assert "Transpose" not in " ".join(operations)


def test_an_op_without_a_converter_is_refused_by_name(tmp_path):
    class Determinant(nn.Module):
        def forward(self, x):
            return torch.linalg.det(x.view(-1, 2, 2, 3)[..., 0]).unsqueeze(1)

    model = _export(Determinant(), FLAT, 13, tmp_path / "m.onnx")
    with pytest.raises(ConversionError) as info:
        build(model, {"input": np.ones((2, *FLAT), np.float32)})
    assert info.value.unsupported_op == "Det" and "Det" in str(info.value)


def test_a_scatter_that_mixes_samples_is_refused_by_name(tmp_path):
    def reversed_rows(x):
        y = x.clone()
        y[torch.arange(x.shape[0] - 1, -1, -1), 0] = x[:, 1]  # sample i writes into sample N-1-i
        return y

    with pytest.raises(ConversionError) as info:
        build(_export(Lambda(reversed_rows), IMAGE, 13, tmp_path / "m.onnx"),
              {"input": np.ones((2, *IMAGE), np.float32)})
    assert info.value.unsupported_op == "ScatterND" and "samples" in str(info.value)


@pytest.mark.parametrize("bins", [(3, 4), (7, 7), (1, 6)])
def test_adaptive_average_pool_whose_size_does_not_divide_exports_and_converts(bins, tmp_path):
    """The TorchScript exporter refuses these (PSPNet bins, VGG's (7, 7) head on small images): the export's
    own symbolic must give PyTorch's values, and keras3 onnxruntime's."""
    module = conv_then(lambda x: F.adaptive_avg_pool2d(x, bins) + F.adaptive_avg_pool2d(x[:, :, :2, :3], bins))
    _assert_pytorch_onnxruntime_and_keras_agree(module, IMAGE, tmp_path, atol=1e-6)


def _assert_pytorch_onnxruntime_and_keras_agree(module, shape, tmp_path, atol):
    """The export's own symbolic gives PyTorch's values (onnxruntime), and keras3 gives them too."""
    model = _export(module, shape, 13, tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(size=(3, *shape)).astype(np.float32)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    expected = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    np.testing.assert_allclose(expected, reference, rtol=1e-5, atol=atol)
    conversion, _ = build(model, {"input": x[:2]})
    np.testing.assert_allclose(_keras_outputs(conversion, x), reference, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("function", [
    lambda x: F.threshold(x, 0.1, -1.0) + F.threshold(x, 0.0, 0.0),
    lambda x: torch.rot90(x, 1, (2, 3)).flatten(2) + torch.rot90(x, 2, (3, 2)).flatten(2)
    + torch.rot90(x, -1, (2, 3)).flatten(2),
    lambda x: torch.cat([F.interpolate(x, scale_factor=0.5, mode="nearest-exact").flatten(2),
                         F.interpolate(x, size=(4, 9), mode="nearest-exact").flatten(2),
                         F.interpolate(x, scale_factor=1.7, mode="nearest-exact").flatten(2)], 2),
], ids=["threshold", "rot90", "nearest_exact"])
def test_ops_the_exporter_lacks_export_as_pytorch_computes_them(function, tmp_path):
    """``F.threshold`` with a non-zero threshold, ``torch.rot90`` (square images) and nearest-exact
    interpolation: the export's own symbolics give PyTorch's values, and keras3 onnxruntime's."""
    _assert_pytorch_onnxruntime_and_keras_agree(conv_then(function), (3, 6, 6), tmp_path, atol=1e-5)


def test_grid_sampling_it_cannot_do_exactly_is_refused_by_name(tmp_path):
    module = Lambda(lambda x: F.grid_sample(x, x[:, :2].permute(0, 2, 3, 1), mode="bicubic", align_corners=False))
    with pytest.raises(ConversionError) as info:
        build(_export(module, IMAGE, 16, tmp_path / "m.onnx"), {"input": np.ones((2, *IMAGE), np.float32)})
    assert info.value.unsupported_op == "GridSample" and "bicubic" in str(info.value)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_dilated_average_pool_matches_onnxruntime(count_include_pad):
    """ONNX AveragePool takes dilations from opset 19 (PyTorch never writes them): built by hand."""
    from onnx import TensorProto, helper

    node = helper.make_node("AveragePool", ["input"], ["output"], kernel_shape=[3, 2], strides=[2, 1],
                            dilations=[2, 3], pads=[1, 1, 2, 0], ceil_mode=1, count_include_pad=count_include_pad)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 3, 9, 10])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = np.random.default_rng(4).normal(size=(3, 3, 9, 10)).astype(np.float32)
    conversion, _ = build(model, {"input": x[:2]})
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    np.testing.assert_allclose(_keras_outputs(conversion, x), expected, rtol=1e-5, atol=1e-6)


def test_group_norm_exported_below_opset_18_runs_channels_last_without_transposes(tmp_path):
    module = Lambda(lambda x, c, n: n(c(x)), nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6))
    conversion, _ = build(_export(module, IMAGE, 13, tmp_path / "m.onnx"), {"input": np.ones((2, *IMAGE), np.float32)})
    assert conversion.fused == {"GroupNormalization": 1}
    operations = [layer["class_name"] for layer in conversion.model.get_config()["layers"]]
    assert "Transpose" not in operations


def test_a_recurrent_loop_tflite_cannot_run_is_named():
    """Sequences longer than UNROLL_MAX_STEPS stay a Keras loop; TFLite's converter then fails on
    TensorList ops: the failure names the recurrent layer and what to change, not MLIR internals."""
    from pipeline.converters.backends.tflite_tf_converter import explain

    message = ('<unknown>:0: error: loc(callsite(fused["TensorListReserve:", "converted_1/gru_GRU_1_d0_1/'
               'TensorArrayV2_1@__inference_serve_3469"] ...)): \'tf.TensorListReserve\' op requires element_shape'
               ' to be static during TF Lite transformation pass')
    error = explain(RuntimeError(message))
    assert error.unsupported_op == "GRU" and "gru_GRU_1" in str(error) and "128 steps" in str(error)
    error = explain(RuntimeError("'tf.IsInf' op is neither a custom op nor a flex op"))
    assert error.unsupported_op == "IsInf"
