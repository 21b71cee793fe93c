"""Any model converts (issue: unseen architectures, existing weights, any output shape).

The user models here are written the way users write them and configured only the README's way
(``model.net._target_=... model.output=...``); none has a config of its own. Runs are in-process
on composed configs (one TensorFlow start-up for the whole module).
"""
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from tests.conftest import mnist_root_override, run_composed

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow

TARGETS = ("keras", "tensorflow", "tflite")
SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "parity.samples=200")


class ResidualNet(nn.Module):
    """ResNet-style: BatchNorm, residual adds, max pool, adaptive average pool, dropout."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = F.relu(x + self.block(x))
        return self.head(F.relu(self.down(x)))


class MobileNet(nn.Module):
    """Mobile-style: depthwise separable convs, BatchNorm, ReLU6, Hardswish, squeeze-excite, concat."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.pointwise = nn.Conv2d(16, 24, 1)
        self.excite = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(24, 6, 1), nn.ReLU(), nn.Conv2d(6, 24, 1),
                                    nn.Hardsigmoid())
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pointwise(torch.cat([x, self.depthwise(x)], dim=1))
        x = x * self.excite(x)
        return self.head(x.mean(dim=(2, 3)))


class GRUNet(nn.Module):
    """A GRU over the 24 hourly values of italy_power ([N, 1, 24] -> [N, 24, 1] inside)."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.gru = nn.GRU(1, 16, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        out, _ = self.gru(x.transpose(1, 2))
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """LayerNorm, multi-head attention (scaled_dot_product_attention: opset 14), exact GELU."""

    def __init__(self, num_classes: int = 2, d_model: int = 16):
        super().__init__()
        self.embed = nn.Linear(1, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 32), nn.GELU(), nn.Linear(32, d_model))
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):
        h = self.embed(x.transpose(1, 2))
        q = self.norm1(h)
        h = h + self.attention(q, q, q, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(dim=1))


class AttentionGRUNet(nn.Module):
    """As sequence users write them: a GRU from a learned initial state, nn.RMSNorm, a default
    nn.TransformerEncoder with a padding mask padded at the end (torch's nested-tensor fast path in eval,
    which zeroes padded positions where the traced graph computes them), attention pooling, and the
    pooling weights returned beside the logits (training and the metric use the first output)."""

    def __init__(self, num_classes: int = 2, d: int = 16):
        super().__init__()
        self.embed = nn.Linear(1, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, d) * 0.3)
        self.norm = nn.RMSNorm(d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 4, 32, batch_first=True), 1)
        self.pool = nn.Linear(d, 1)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        h, _ = self.gru(self.embed(x.transpose(1, 2)), self.h0.expand(-1, x.shape[0], -1).contiguous())
        lengths = (x[:, 0] > -0.5).sum(1).clamp(min=4)  # a length per sample, padding at the end
        pad = torch.arange(x.shape[2]) >= lengths[:, None]
        h = self.encoder(self.norm(h), src_key_padding_mask=pad)
        weights = torch.softmax(self.pool(h).squeeze(-1), dim=1)
        return self.head((weights.unsqueeze(-1) * h).sum(1)), weights


class TokenPoolNet(nn.Module):
    """A token classifier as users write them from ids alone: nn.EmbeddingBag (padding_idx, max) beside a
    causal transformer layer whose padding mask always keeps the first token (an in-place assignment), and
    the hidden state of each sequence's last token before the first pad taken GPT-style (argmax of
    ids == 0, then h[torch.arange(N), position])."""

    def __init__(self, vocab: int = 12, d: int = 16, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.bag = nn.EmbeddingBag(vocab, d, mode="max", padding_idx=0)
        self.layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True, norm_first=True)
        self.head = nn.Linear(2 * d, num_classes)

    def forward(self, ids):
        steps = ids.shape[1]
        keep = ids != 0
        keep[:, 0] = True
        h = self.layer(self.embed(ids), src_mask=nn.Transformer.generate_square_subsequent_mask(steps),
                       src_key_padding_mask=~keep)
        last = (torch.eq(ids, 0).int().argmax(-1) - 1) % steps  # no pad: the last step
        return self.head(torch.cat([h[torch.arange(ids.shape[0]), last], self.bag(ids)], 1))


class PatchNet(nn.Module):
    """PatchTST-style on italy_power: per-series normalisation, patches by x.unfold(-1, ...) of the series
    and its torch.diff, a linear patch embedding, and the position of each raw patch's peak (torch.max's
    indices, of the input itself: an index of nearly tied computed values may differ between runtimes)."""

    def __init__(self, num_classes: int = 2, d: int = 8):
        super().__init__()
        self.embed = nn.Linear(12, d)
        self.head = nn.Linear(7 * (d + 1), num_classes)

    def forward(self, x):
        peak = torch.max(x.unfold(-1, 6, 3), dim=-1)[1].transpose(1, 2).float() / 6  # [N, 7, 1]
        x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
        x = torch.cat([x, torch.diff(x, dim=-1, prepend=x[..., :1])], 1)
        patches = x.unfold(-1, 6, 3).transpose(1, 2).flatten(2)  # [N, 7, 12]
        return self.head(torch.cat([F.gelu(self.embed(patches)), peak], -1).flatten(1))


IDS = "{ids: {shape: [10], distribution: integers, high: 12}}"


class DeepFMNet(nn.Module):
    """A recommender as users write it: categorical ids offset per column into one shared table (an integer
    add TFLite has no BiasAdd kernel for), numeric features bucketized into ids (no exporter symbolic),
    a factorization machine (square of sums minus sum of squares), a wide part and a deep MLP."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.register_buffer("offsets", torch.arange(4) * 50)
        self.register_buffer("edges", torch.linspace(-1.5, 1.5, 7))
        self.embed, self.wide = nn.Embedding(208, 8), nn.Embedding(208, num_classes)
        self.deep = nn.Sequential(nn.Linear(6 * 8 + 6, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, cat, num):
        buckets = torch.bucketize(num[:, :2], self.edges).clamp(max=6) + 200
        ids = torch.cat([cat + self.offsets, buckets], 1)
        v = self.embed(ids)
        fm = 0.5 * (v.sum(1) ** 2 - (v ** 2).sum(1)).sum(1, keepdim=True)
        return self.wide(ids).sum(1) + fm + self.deep(torch.cat([v.flatten(1), num], 1))


TABULAR = "{cat: {shape: [4], distribution: integers, high: 50}, num: {shape: [6]}}"
class SpatialTransformerNet(nn.Module):
    """PyTorch's spatial transformer tutorial: a localisation net predicts theta (initialised to the
    identity), F.affine_grid + F.grid_sample resample the digit (opset 20 raised by the export)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.loc = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2, 2), nn.ReLU(), nn.Conv2d(8, 10, 5),
                                 nn.MaxPool2d(2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(90, 32), nn.ReLU(),
                                 nn.Linear(32, 6))
        self.loc[-1].weight.data.normal_(0, 0.05)
        self.loc[-1].bias.data.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.head = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(8 * 12 * 12, num_classes))

    def forward(self, x):
        grid = F.affine_grid(self.loc(x).view(-1, 2, 3), x.size(), align_corners=False)
        return self.head(F.grid_sample(x, grid, align_corners=False))


class Im2ColNet(nn.Module):
    """A convolution written by hand (F.unfold, weight @ columns), nn.Fold back (Col2Im, opset 18) and the
    strongest channel per position as a feature (argmax)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.unfold = nn.Unfold(3, padding=1, stride=2)
        self.weight = nn.Parameter(torch.randn(8, 9) * 0.3)
        self.fold = nn.Fold((28, 28), 2, stride=2)
        self.head = nn.Linear(8 * 196 + 196 + 196, num_classes)

    def forward(self, x):
        y = F.relu(self.weight @ self.unfold(x)).view(-1, 8, 14, 14)
        back = self.fold(torch.tanh(F.unfold(x, 2, stride=2)))
        strongest = y.argmax(dim=1).flatten(1).float() / 8
        return self.head(torch.cat([y.flatten(1), F.avg_pool2d(back, 2).flatten(1), strongest], 1))


USER_MODELS = {
    "ResidualNet": ("mnist", (mnist_root_override(), *SHORT)),
    "MobileNet": ("mnist", (mnist_root_override(), *SHORT)),
    "GRUNet": ("italy_power", ("trainer.max_epochs=2", "parity.samples=300")),
    "TinyTransformer": ("italy_power", ("trainer.max_epochs=2", "parity.samples=300")),
    "AttentionGRUNet": ("italy_power", ("trainer.max_epochs=1", "parity.samples=300")),
    "TokenPoolNet": ("synthetic", (f"dataset.inputs={IDS}", "dataset.samples=64", "model.weights=init",
                                   "stages=[export,check,convert,parity]")),
    "DeepFMNet": ("synthetic", (f"dataset.inputs={TABULAR}", "dataset.samples=64", "model.weights=init",
                                "stages=[export,check,convert,parity]")),
    "PatchNet": ("italy_power", ("trainer.max_epochs=1", "parity.samples=300")),
    "SpatialTransformerNet": ("mnist", (mnist_root_override(), *SHORT)),
    "Im2ColNet": ("mnist", (mnist_root_override(), *SHORT)),
}


@pytest.mark.parametrize("name", USER_MODELS)
@pytest.mark.slow
def test_a_users_model_trains_and_converts_to_every_target_in_parity(name, tmp_path, mnist_root):
    dataset, short = USER_MODELS[name]
    report = run_composed(f"model.net._target_=tests.test_converters.{name}",
                            "model.output=logits", f"dataset={dataset}", "export=all", *short,
                            run_dir=tmp_path / "run")
    assert report["status"] == "ok"
    assert report["model"]["name"] == name  # defaults to the class once _target_ names another network
    assert all(report["targets"][t]["status"] == "ok" for t in TARGETS), report["targets"]
    parity = {e["runtime"]: e for e in report["parity"]}
    for runtime in ("onnxruntime", *TARGETS):
        assert parity[runtime]["allclose"] and parity[runtime]["top1_agreement"] == 1.0, parity[runtime]
    if name == "TinyTransformer":  # attention needs opset 14: the export raised it, and says so
        assert report["artifacts"]["onnx"]["opset"] == 14 and report["artifacts"]["onnx"]["requested_opset"] == 13


class LazyNet(nn.Module):
    """Lazy modules (shapes from the first forward) and a dict output."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv, self.norm = nn.LazyConv2d(8, 3, stride=2), nn.LazyBatchNorm2d()
        self.head = nn.LazyLinear(num_classes)

    def forward(self, x):
        features = F.relu(self.norm(self.conv(x)))
        return {"logits": self.head(features.flatten(1)), "features": features}


@pytest.mark.parametrize("overrides", [SHORT[:3], ("model.weights=init", "stages=[export,check,convert,parity]")],
                         ids=["trained", "init"])
def test_lazy_modules_are_built_by_a_first_forward_before_any_stage_uses_them(overrides, tmp_path, mnist_root):
    """nn.LazyLinear & co. have no parameters to count, optimise or export until a forward: the network is
    built with one, and the same seed gives the same weights in every build (torch's reference = export)."""
    report = run_composed("model.net._target_=tests.test_converters.LazyNet", "model.output=logits", "dataset=mnist",
                          mnist_root_override(), "export=keras", "parity.samples=64", *overrides,
                          run_dir=tmp_path / "run")
    assert report["status"] == "ok" and report["model"]["parameters"] > 0
    assert all(e["allclose"] for e in report["parity"]), report["parity"]


class PackedGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 4, batch_first=True)

    def forward(self, x):
        lengths = torch.full((x.shape[0],), x.shape[2], dtype=torch.int64)
        packed = nn.utils.rnn.pack_padded_sequence(x.transpose(1, 2), lengths, batch_first=True)
        return self.gru(packed)[1][-1]


PROJECTED_LSTM = nn.LSTM(16, 6, 2, proj_size=3, bidirectional=True, batch_first=True).requires_grad_(False)
EDGES = torch.tensor([-1.0, -0.25, 0.0, 0.0, 0.5, 1.5])  # a repeated boundary: left and right differ there
PARAMETRIZED = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(16, 8)),
                             nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8)),
                             nn.utils.parametrizations.orthogonal(nn.Linear(8, 8))).eval().requires_grad_(False)
MAX_NORM = nn.Embedding(10, 16, max_norm=1.0).requires_grad_(False)


@pytest.mark.parametrize("function", [
    lambda x: x.unfold(-1, 4, 4), lambda x: x.unfold(-2, 3, 2),
    lambda x: F.embedding_bag((x[:, 0].abs() * 3).long().clamp(max=7), torch.eye(8), mode="mean", padding_idx=0),
    lambda x: x.masked_fill(torch.eye(x.shape[1], x.shape[2], dtype=torch.bool), 0.0),
    lambda x: torch.diff(x, n=2, dim=1, prepend=x[:, :1]) + torch.diff(x[:, 1:] > 0, dim=1, append=x[:, :1] > 0),
    lambda x: F.scaled_dot_product_attention(x.view(-1, 5, 4, 4).transpose(1, 2),
                                             *(x[..., :8].reshape(-1, 5, 2, 4).transpose(1, 2),) * 2, enable_gqa=True),
    lambda x: x.median(dim=1, keepdim=True).values + torch.median(x, -1)[0].unsqueeze(-1),
    lambda x: torch.cat([PROJECTED_LSTM(x)[0].flatten(1),
                         *(state.transpose(0, 1).flatten(1) for state in PROJECTED_LSTM(x)[1])], 1),
    lambda x: torch.stack([torch.bucketize(x.round(decimals=1), EDGES), torch.bucketize(x, EDGES, right=True),
                           torch.searchsorted(EDGES, x.masked_fill(x > 2, float("nan")), side="right"),
                           torch.searchsorted(EDGES, x.round(decimals=1), out_int32=True).long()]),
    lambda x: PARAMETRIZED(x),
    lambda x: torch.cat([torch.cumprod(x.round(decimals=1), 1), torch.cumprod(torch.sigmoid(x), -1),
                         torch.logcumsumexp(x, 2), torch.logcumsumexp(x.masked_fill(x < 0, float("-inf")), 1)], 2),
    lambda x: torch.cat([*torch.cummax(x.round(), 1), *torch.cummin(x.round(), 2),
                         *torch.cummax(x.masked_fill(x > 1.5, float("nan")), 2)], 1),
    lambda x: MAX_NORM((x[..., 0].abs() * 3).long().clamp(max=9)),
], ids=["unfold_last", "unfold_second_last", "embedding_bag_rows", "bool_eye_mask", "diff", "grouped_query_attention",
        "median", "lstm_proj_size", "bucketize_searchsorted", "parametrizations",
        "cumprod_logcumsumexp", "cummax_cummin",
        "embedding_max_norm"])
def test_the_exported_graph_computes_what_pytorch_computes(function, tmp_path):
    """Ops the TorchScript exporter writes wrong or refuses, as the export stage writes them instead:
    unfold on a negative dimension (its symbolic swapped the window and position axes), embedding_bag on
    rows of ids (a Loop over the bags, refused with a padding_idx), a bool torch.eye sized by a shape (an
    EyeLike onnxruntime has no kernel for), torch.diff and torch.median (no symbolic),
    scaled_dot_product_attention with enable_gqa and nn.LSTM with proj_size (refused), bucketize and
    searchsorted (none; NaN after every boundary, as PyTorch), parametrized weights (vdot, matrix_exp),
    cumprod (zeros and negative factors included), logcumsumexp, cummax/cummin (ties, NaN) (none), an
    embedding's max_norm (dropped, and its rows renormalised in place by the export's own trace)."""
    import onnxruntime as ort

    from pipeline.stages.export import export_onnx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = nn.ModuleList([PARAMETRIZED, MAX_NORM])  # its own: the trace takes others as constants

        def forward(self, x):
            return function(x)

    x = torch.randn(3, 5, 16)
    export_onnx(Net().eval(), (x[:1],), tmp_path / "m.onnx", 14)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert "Loop" not in {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], function(x).numpy(), atol=1e-6)


def test_a_symbolic_that_warns_its_graph_differs_below_an_opset_raises_the_opset(tmp_path):
    """torchvision's roi_align with aligned=True below opset 16 writes another computation and only warns
    (onnxruntime then off by whole pixels): the warning fails the export, naming the opset it is raised to."""
    import onnxruntime as ort

    torchvision = pytest.importorskip("torchvision")
    from pipeline.stages.export import export_onnx, required_opset

    class RoIHead(nn.Module):
        def forward(self, x):
            boxes = torch.tensor([[1.0, 2.0, 9.0, 11.0]]).repeat(x.shape[0], 1)
            rois = torch.cat([torch.arange(x.shape[0], dtype=torch.float32)[:, None], boxes], 1)
            return torchvision.ops.roi_align(x, rois, (3, 3), 0.5, 2, aligned=True).flatten(1)

    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserWarning) as info:
        export_onnx(RoIHead().eval(), (x,), tmp_path / "m.onnx", 13)
    assert required_opset(info.value) == 16
    export_onnx(RoIHead().eval(), (x,), tmp_path / "m.onnx", 16)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], RoIHead()(x).numpy(), atol=1e-5)


def test_scatter_add_raises_the_opset_to_sum_repeated_indices(tmp_path):
    """Below opset 16 the exporter's scatter_add keeps one update of a repeated index (no ScatterElements
    reduction): the export goes to 16, where the sums are PyTorch's."""
    from types import SimpleNamespace

    import onnxruntime as ort

    from pipeline.stages.export import write_with_opset

    class Counts(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4).scatter_add(1, (x.abs() * 2).long().clamp(max=3), x)

    x = torch.randn(5, 12)
    ctx = SimpleNamespace(onnx_path=tmp_path / "model.onnx")
    assert write_with_opset(Counts().eval(), (x[:1],), ["input"], ["output"], ctx, 13) == 16
    session = ort.InferenceSession(str(ctx.onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], Counts()(x).numpy(), atol=1e-5)


def test_a_packed_sequence_is_refused_by_name_at_export(tmp_path):
    from types import SimpleNamespace

    from pipeline.stages.export import write_with_opset

    ctx = SimpleNamespace(onnx_path=tmp_path / "model.onnx")
    with pytest.raises(PipelineError, match="cannot export packed sequences: gru is given a PackedSequence") as info:
        write_with_opset(PackedGRU().eval(), (torch.randn(1, 1, 24),), ["input"], ["output"], ctx, 13)
    assert "padded [N, T, F] tensor" in info.value.hint


@pytest.mark.slow
def test_zoo_rows_torchvision_and_a_4d_output_convert_without_a_dataset(tmp_path):
    """Two rows of +matrix=zoo: a torchvision model on generated inputs, and a UNet whose per-pixel
    output comes back channels-last from Keras and is compared in PyTorch's layout."""
    mobile = run_composed("experiment=zoo/mobilenet_v3_small", "dataset.samples=32", "parity.latency_repeats=3",
                            run_dir=tmp_path / "mobile")
    unet = run_composed("experiment=zoo/unet_small", "dataset.samples=16", "dataset.shape=[3,32,32]",
                          "model.net.size=32", "parity.latency_repeats=3", run_dir=tmp_path / "unet")
    for report in (mobile, unet):
        assert report["status"] == "ok", report["stages"]
        assert report["stages"]["train"]["status"] == "skipped" and report["metrics"] == {}
        assert all(e["in_tolerance"] and e["top1_agreement"] == 1.0 for e in report["parity"])
        assert {e["runtime"] for e in report["parity"]} == {"onnxruntime", *TARGETS}
    assert unet["targets"]["keras"]["output_perms"] == {"output": [0, 2, 3, 1]}  # NHWC out of Keras
    assert unet["check"]["outputs"][0]["shape"] == ["batch", 4, 32, 32]


class TwoHeads(nn.Module):
    """Two inputs (an image and a feature vector), two outputs of different ranks."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, image, features):
        maps = F.relu(self.conv(image))
        return maps.mean(dim=(2, 3)) + self.fc(features), maps


def test_several_inputs_and_outputs_are_matched_by_name(tmp_path):
    report = run_composed("model.net._target_=tests.test_converters.TwoHeads",
                            "model.output=logits", "model.weights=init", "dataset=synthetic",
                            "dataset.inputs={image: {shape: [3, 8, 8]}, features: {shape: [6]}}", "dataset.samples=20",
                            "export=all", "stages=[export,check,convert,parity]", run_dir=tmp_path / "run")
    assert report["status"] == "ok", report
    assert report["export"]["inputs"] == ["image", "features"]
    assert report["export"]["outputs"] == ["output_0", "output_1"]
    for entry in report["parity"]:
        assert set(entry["outputs"]) == {"output_0", "output_1"} and entry["in_tolerance"], entry


class NormUpNet(nn.Module):
    """Image-to-image, built from what a first conversion of users' CNNs got wrong or refused: GroupNorm
    (trained affine), a per-channel parameter added after PixelShuffle (channels = width), padding="same"
    with dilation, dilated max pooling, a grouped and dilated ConvTranspose2d, cropping F.pad, LRN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding="same", dilation=2)
        self.norm = nn.GroupNorm(4, 32)
        self.norm.weight.data.uniform_(0.5, 1.5)
        self.norm.bias.data.normal_(0, 0.5)
        self.shuffle = nn.PixelShuffle(2)
        self.shift = nn.Parameter(torch.linspace(-1, 1, 8).view(1, 8, 1, 1))
        self.pool = nn.MaxPool2d(3, 2, padding=1, dilation=2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, groups=4, dilation=2)
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x):
        y = self.shuffle(F.silu(self.norm(self.stem(x)))) + self.shift  # [N, 8, 8, 8]
        y = self.up(self.pool(y))
        return self.lrn(F.pad(y, (-1, -1, -1, -1)))


def test_an_image_to_image_cnn_converts_every_target_in_parity(tmp_path):
    report = run_composed("model.net._target_=tests.test_converters.NormUpNet", "model.output=value",
                          "model.weights=init", "dataset=synthetic", "dataset.shape=[3,4,4]", "dataset.samples=16",
                          "export=all", "stages=[export,check,convert,parity]", "parity.latency_repeats=3",
                          run_dir=tmp_path / "run")
    assert report["status"] == "ok", report["stages"]
    assert all(report["targets"][t]["status"] == "ok" for t in TARGETS), report["targets"]
    assert report["targets"]["keras"]["fused"] == {"GroupNormalization": 1}
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]


class Determinant(nn.Module):
    """torch.linalg.det: an ONNX op (Det) that keras3 and onnx2keras refuse, onnx-tf converts, and TFLite
    has no builtin kernel for."""

    def __init__(self, in_features: int = 20):
        super().__init__()
        self.fc = nn.Linear(in_features, 4)
        self.out = nn.Linear(1, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(torch.linalg.det(self.fc(x).view(-1, 2, 2)).unsqueeze(1)))


def test_auto_falls_back_along_the_chain_and_names_the_op_and_backend_that_failed(tmp_path):
    with pytest.raises(PipelineError, match="Conversion failed for keras, tflite"):
        run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1",
                       "model.net._target_=tests.test_converters.Determinant", "export=all",
                       run_dir=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    keras, tensorflow, tflite = (report["targets"][t] for t in TARGETS)
    assert keras["status"] == "failed" and keras["unsupported_op"] == "Det"
    assert [(a["backend"], a["status"]) for a in keras["attempts"]] == [("keras3", "failed"), ("onnx2keras", "failed")]
    assert tensorflow["status"] == "ok" and tensorflow["backend"] == "onnx-tf"
    assert tensorflow["attempts"][0]["backend"] == "keras3" and "Det" in tensorflow["attempts"][0]["reason"]
    assert tflite["status"] == "failed" and tflite["unsupported_op"]
    assert {e["runtime"] for e in report["parity"]} == {"onnxruntime", "tensorflow"}
    assert all(e["in_tolerance"] for e in report["parity"])


def test_an_explicit_backend_is_used_and_an_unknown_one_names_the_choices(tmp_path, mnist_root):
    report = run_composed("model=mnist_mlp", mnist_root_override(), "export=keras", "export.keras.backend=onnx2keras",
                            *SHORT, run_dir=tmp_path / "run")
    assert report["targets"]["keras"]["backend"] == "onnx2keras"
    assert [a["backend"] for a in report["targets"]["keras"]["attempts"]] == ["onnx2keras"]
    with pytest.raises(PipelineError, match="keras3, onnx2keras"):
        run_composed("model=mnist_mlp", "export=keras", "export.keras.backend=nope", run_dir=tmp_path / "bad")


def test_existing_weights_convert_without_training(tmp_path):
    """A state_dict saved elsewhere, and a Lightning checkpoint, each exported as they are."""
    torch.manual_seed(3)
    net = GRUNet()
    state = tmp_path / "gru.pt"
    torch.save(net.state_dict(), state)
    common = ("model.net._target_=tests.test_converters.GRUNet", "model.output=logits",
              "dataset=italy_power", "export=tflite", "stages=[export,check,convert,parity]", "parity.samples=100")
    report = run_composed(*common, f"model.weights={state}", run_dir=tmp_path / "from_state")
    assert report["status"] == "ok" and report["stages"]["train"]["status"] == "skipped"
    x = torch.randn(3, 1, 24)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "from_state" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], net(x).numpy(), atol=1e-5)

    trained = run_composed(*common[:4], "trainer.max_epochs=2", "~scheduler", "stages=[train]",
                             run_dir=tmp_path / "trained")
    checkpoint = tmp_path / "trained" / "checkpoints" / "last.ckpt"
    assert trained["status"] == "ok" and checkpoint.is_file()
    report = run_composed(*common, f"model.weights={checkpoint}", run_dir=tmp_path / "from_checkpoint")
    assert report["status"] == "ok"
    assert report["artifacts"]["onnx"]["sha256"] != json.loads((tmp_path / "from_state" / "report.json").read_text())[
        "artifacts"]["onnx"]["sha256"]


@pytest.mark.parametrize("overrides, expected", [
    (("model=mnist_cnn", "dataset=italy_power"), "cannot take dataset=italy_power's input"),
    (("model=mnist_mlp", mnist_root_override(), "model.net.num_classes=5"), "model.net.num_classes=10"),
    (("model=ts_cnn", "dataset=italy_power", "model.net.num_classes=1"), "model.output=probability"),
    (("model=ts_cnn", "dataset=italy_power", "model.output=value"), "Set model.output to what model.net returns"),
    (("model=ts_cnn", "dataset=italy_power", "model.output=log_probs"), "model.output=logits"),
    (("model=tabular_mlp", "dataset=synthetic_tabular", "model.output=logits", "model.net.num_classes=1"),
     "model.output="),
    (("model=ts_cnn", "dataset=italy_power", "model.weights=/no/such/file.pt"), "model.weights"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_before_any_work(tmp_path, overrides, expected):
    with pytest.raises(PipelineError) as info:
        run_composed(*overrides, run_dir=tmp_path / "run")
    assert expected in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
