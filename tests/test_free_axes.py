"""Free axes by name (export.dynamic_axes, pipeline/free_axes.py, issue 22 item 1): carried through ONNX,
Keras, SavedModel and TFLite, refused by name where an op pins one, and proven by parity at other sizes."""
import numpy as np
import pytest
import torch
from torch import nn

from pipeline import free_axes
from pipeline.errors import PipelineError
from tests.conftest import run_composed

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow


class FullyConvClassifier(nn.Module):
    """Convolutions, an unpadded max pool and a global average pool: any height and width."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class TinyUNet(nn.Module):
    """Down by an unpadded pool, up by a ConvTranspose2d and by nearest upsampling, skip concats."""

    def __init__(self, classes=3):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Conv2d(32, 16, 3, padding=1)
        self.dec1 = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        u2 = torch.relu(self.dec2(torch.cat([self.up2(self.bottom(self.pool(d2))), d2], 1)))
        u1 = torch.relu(self.dec1(torch.cat([self.up1(u2), d1], 1)))
        return self.head(u1)


class FlattenedHead(nn.Module):
    """A Linear over the flattened feature map: pins height and width."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class GRUText(nn.Module):
    """Token ids [N, T] -> embedding -> GRU -> mean over time -> classes: any number of steps."""

    def __init__(self, num_classes=4, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.head = nn.Linear(12, num_classes)

    def forward(self, ids):
        out, _ = self.gru(self.embed(ids))
        return self.head(out.mean(1))


class FrozenSize(nn.Module):
    """Reads its height and width as Python ints: the trace freezes them into the ONNX graph's Reshape."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        y = self.conv(x).flatten(2)
        return y.reshape(y.shape[0], y.shape[1], int(x.shape[2]), int(x.shape[3])).mean((2, 3))


class BilinearUp(nn.Module):
    """Bilinear upsampling by 2 and 3 (half-pixel: the same kernel at any size); ``align_corners=True``: its
    blend weights depend on the size."""

    def __init__(self, num_classes=10, align_corners=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=(2, 3), mode="bilinear", align_corners=align_corners)
        self.up1d = nn.Upsample(scale_factor=3, mode="linear", align_corners=align_corners)

    def forward(self, x):
        y = self.up(self.conv(x))
        return y, self.up1d(y.mean(2))


IMAGE = ("model.output=logits", "model.weights=init", "stages=[export,check,convert,parity]", "dataset=synthetic",
         "dataset.shape=[3,16,16]", "dataset.samples=32", "parity.latency_repeats=2")


def model(name: str) -> str:
    return f"model.net._target_=tests.test_free_axes.{name}"


def entries(report: dict) -> dict:
    return {e["runtime"]: e for e in report["parity"]}


# --- end to end ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_unet_with_free_height_and_width_runs_in_every_artifact_at_three_sizes(tmp_path):
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    run = tmp_path / "run"
    report = run_composed(model("TinyUNet"), *IMAGE, "export=[keras,tflite,tflite_int8]",
                          "export.calibration_samples=16", "export.dynamic_axes=spatial", run_dir=run)
    assert report["status"] == "ok"
    assert report["export"]["dynamic_axes"]["input"] == {"0": "batch", "2": "height", "3": "width"}
    assert report["export"]["dynamic_axes"]["output"] == {"0": "batch", "2": "height", "3": "width"}
    assert report["reference"]["shapes"] == ["input [3, 32, 48]", "input [3, 48, 32]"]  # 2x/3x, then 3x/2x
    parity = entries(report)
    assert set(parity) == {"onnxruntime", "keras", "tensorflow", "tflite", "tflite_int8"}
    for name, entry in parity.items():
        assert entry["in_tolerance"] and len(entry["sizes"]) == 2, (name, entry)
        assert all(size["in_tolerance"] for size in entry["sizes"]), (name, entry["sizes"])
    assert all(size["max_abs_err"] < 1e-5 for size in parity["tflite"]["sizes"])
    # Each artifact says which axes are free, and takes another size.
    onnx_dims = [d.dim_param or d.dim_value for d in
                 __import__("onnx").load(str(run / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert onnx_dims == ["batch", 3, "height", "width"]
    assert tuple(keras.saving.load_model(run / "model.keras", safe_mode=True).inputs[0].shape) == (None, None, None, 3)
    signature = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["input"].shape.as_list() == [None, 3, None, None]
    interpreter = Interpreter(model_path=str(run / "model.tflite"))
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [-1, 3, -1, -1]
    image = np.random.default_rng(0).normal(size=(1, 3, 24, 40)).astype(np.float32)
    assert interpreter.get_signature_runner()(input=image)["output"].shape == (1, 3, 24, 40)
    assert "## Other input sizes (free axes: input axes 2 (height), 3 (width)" in (run / "report.md").read_text()


def test_free_axes_by_name_and_the_sizes_parity_runs_at(tmp_path):
    report = run_composed(model("FullyConvClassifier"), *IMAGE, "export=[tflite]",
                          "export.dynamic_axes={input:{2:height,3:width}}", "parity.shapes=[[3,24,40],[3,8,8]]",
                          run_dir=tmp_path / "run")
    assert report["export"]["dynamic_axes"]["input"] == {"0": "batch", "2": "height", "3": "width"}
    assert report["export"]["dynamic_axes"]["output"] == {"0": "batch"}  # class scores: no free axis
    tflite = entries(report)["tflite"]
    assert [size["shapes"] for size in tflite["sizes"]] == [{"input": [3, 24, 40]}, {"input": [3, 8, 8]}]
    assert tflite["in_tolerance"] and all(size["allclose"] for size in tflite["sizes"]), tflite


def test_a_resnet_stem_s_padded_max_pool_takes_odd_sizes(tmp_path):
    report = run_composed(model("ResNetStem"), *IMAGE[:5], "dataset.shape=[3,30,30]", "dataset.samples=16",
                          "parity.latency_repeats=2", "export=[tflite]", "export.dynamic_axes=spatial",
                          "parity.shapes=[[3,31,45],[3,64,17]]", run_dir=tmp_path / "run")
    for name, entry in entries(report).items():
        assert [size["shapes"]["input"] for size in entry["sizes"]] == [[3, 31, 45], [3, 64, 17]]
        assert entry["in_tolerance"] and all(size["allclose"] for size in entry["sizes"]), (name, entry)


def test_a_gru_text_model_with_a_free_time_axis(tmp_path):
    report = run_composed(model("GRUText"), "model.output=logits", "model.weights=init",
                          "stages=[export,check,convert,parity]", "dataset=synthetic", "dataset.shape=[20]",
                          "dataset.distribution=integers", "dataset.high=50", "dataset.samples=32",
                          "parity.latency_repeats=2", "export=all", "export.dynamic_axes=time",
                          run_dir=tmp_path / "run")
    assert report["export"]["dynamic_axes"]["input"] == {"0": "batch", "1": "time"}
    for name in ("onnxruntime", "keras", "tensorflow", "tflite"):
        entry = entries(report)[name]
        assert [size["shapes"] for size in entry["sizes"]] == [{"input": [40]}, {"input": [60]}]
        assert entry["in_tolerance"] and all(size["allclose"] for size in entry["sizes"]), entry


@pytest.mark.slow
def test_a_3_layer_bidirectional_lstm_over_512_steps_converts_to_tflite_in_parity_without_unrolling(tmp_path):
    """The network benchmarks/sequences.py times (512 steps convert in about the time of 16: README)."""
    from ai_edge_litert.interpreter import Interpreter

    run_dir = tmp_path / "run"
    report = run_composed("model.net._target_=benchmarks.sequences.StackedBiLSTM", "model.output=logits",
                          "model.weights=init", "stages=[export,check,convert,parity]", "dataset=synthetic",
                          "dataset.shape=[512,8]", "dataset.samples=8", "parity.latency_repeats=2", "export=[tflite]",
                          run_dir=run_dir)
    tflite = entries(report)["tflite"]
    assert tflite["allclose"] and tflite["in_tolerance"], tflite
    ops = [op["op_name"] for op in Interpreter(model_path=str(run_dir / "model.tflite"))._get_ops_details()]
    assert "WHILE" in ops and len(ops) < 200, ops[:20]  # one loop per layer and direction, not 512 steps unrolled


@pytest.mark.slow
def test_gru_with_an_initial_state_and_a_relu_rnn_over_200_steps_in_tflite(tmp_path):
    report = run_composed(model("RecurrentVariants"), "model.output=logits", "model.weights=init",
                          "stages=[export,check,convert,parity]", "dataset=synthetic", "dataset.shape=[200,8]",
                          "dataset.samples=8", "parity.latency_repeats=2", "export=[tflite,tflite_int8_dynamic]",
                          "export.dynamic_axes=time", "parity.shapes=[[7,8],[300,8]]", run_dir=tmp_path / "run")
    for name, entry in entries(report).items():
        assert entry["in_tolerance"] and all(size["in_tolerance"] for size in entry["sizes"]), (name, entry)
    assert entries(report)["tflite"]["allclose"] and all(s["allclose"] for s in entries(report)["tflite"]["sizes"])


# --- refusals, by name -----------------------------------------------------------------------------------

@pytest.mark.parametrize("net, named", [
    ("FlattenedHead", "module fc (Linear) pins a free axis (input axes [2, 3] (height, width)): at input [3, 32, 48] "
                      "PyTorch fails"),
    ("FrozenSize", "ONNX node /Reshape_1 (Reshape) pins a free axis (input axes [2, 3] (height, width))"),
])
def test_an_op_that_pins_a_free_axis_is_refused_at_export_by_name(tmp_path, net, named):
    with pytest.raises(PipelineError) as caught:
        run_composed(model(net), *IMAGE[:2], "stages=[export]", *IMAGE[3:6], "export.dynamic_axes=spatial",
                     run_dir=tmp_path / "run")
    assert named in str(caught.value), str(caught.value)
    assert "leave that axis out of export.dynamic_axes" in caught.value.hint


def test_positions_and_a_causal_mask_built_from_the_free_time_axis(tmp_path):
    """A positional table sliced to T, ``arange(T)`` positions and causal masks (``triu`` of ``ones(T, T)``,
    SDPA ``is_causal``) are rebuilt in Keras from the input's size (keras3 ``symbolic.py``)."""
    from ai_edge_litert.interpreter import Interpreter

    run = tmp_path / "run"
    report = run_composed(model("CausalText"), "model.output=logits", "model.weights=init",
                          "stages=[export,check,convert,parity]", "dataset=synthetic", "dataset.shape=[12]",
                          "dataset.distribution=integers", "dataset.high=40", "dataset.samples=16",
                          "parity.latency_repeats=2", "export=all", "export.dynamic_axes=time", run_dir=run)
    for name in ("onnxruntime", "keras", "tensorflow", "tflite"):
        entry = entries(report)[name]
        assert [size["shapes"] for size in entry["sizes"]] == [{"input": [24]}, {"input": [36]}]
        assert entry["in_tolerance"] and all(size["max_abs_err"] < 1e-5 for size in entry["sizes"]), entry
    # Another size than parity's (7 steps, not a multiple of 12), against onnxruntime.
    import onnxruntime as ort

    ids = np.random.default_rng(0).integers(0, 40, size=(2, 7)).astype(np.int64)
    expected = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": ids})[0]
    got = Interpreter(model_path=str(run / "model.tflite")).get_signature_runner()(input=ids)["output"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_positional_table_of_fixed_length_is_named(tmp_path):
    with pytest.raises(PipelineError) as caught:
        run_composed("model=transformer_classifier", "model.weights=init", "stages=[export]", "dataset=synthetic",
                     "dataset.shape=[24,1]", "dataset.samples=8", "export.dynamic_axes=time", run_dir=tmp_path / "run")
    assert "TransformerClassifier.forward pins a free axis (input axes [1] (time)): at input [48, 1]" in str(
        caught.value)
    assert "position [1, 24, 32] has the trained size of time: a table of fixed length" in str(caught.value)


def test_bilinear_and_linear_upsampling_by_integer_factors_take_any_size(tmp_path):
    report = run_composed(model("BilinearUp"), *IMAGE, "export=[tflite]", "export.dynamic_axes=spatial",
                          run_dir=tmp_path / "run")
    assert report["export"]["dynamic_axes"]["output_1"] == {"0": "batch", "2": "output_1_2"}  # 9 x width
    for name, entry in entries(report).items():
        assert entry["in_tolerance"] and all(size["allclose"] for size in entry["sizes"]), (name, entry)


def test_a_converter_op_that_depends_on_the_size_is_refused_by_name(tmp_path):
    report = run_composed(model("BilinearUp"), "+model.net.align_corners=true", *IMAGE, "export=[keras]",
                          "export.dynamic_axes=spatial", run_dir=tmp_path / "run", expect_failure=True)
    reason = report["targets"]["keras"]["attempts"][0]["reason"]
    assert "Resize" in reason and "resizing a free axis (export.dynamic_axes) with mode='linear', " \
        "coordinate_transformation_mode='align_corners'" in reason, reason


# --- the rules ----------------------------------------------------------------------------------------------

def test_shorthands_and_mappings_resolve_per_input():
    image, ids, series = (8, 3, 32, 32), (8, 20), (8, 1, 24)
    assert free_axes.resolve("spatial", {"input": image}) == {"input": {2: "height", 3: "width"}}
    assert free_axes.resolve("spatial", {"input": series}) == {"input": {2: "length"}}
    assert free_axes.resolve("time", {"ids": ids, "image": image}) == {"ids": {1: "time"}}
    assert free_axes.resolve({"2": "h"}, {"input": image}) == {"input": {2: "h"}}  # the only input
    assert free_axes.resolve({"ids": {1: "time"}}, {"ids": ids, "image": image}) == {"ids": {1: "time"}}
    assert free_axes.resolve(None, {"input": image}) == {}


@pytest.mark.parametrize("spec, message", [
    ("height", "is not a shorthand (spatial, time)"),
    ({"images": {2: "h"}}, "names input 'images'; the model's inputs are input"),
    ({"input": {0: "n"}}, "axis 0 of input input is not a free-able axis"),
    ({"input": {4: "w"}}, "axis 4 of input input is not a free-able axis"),
])
def test_a_wrong_dynamic_axes_setting_is_refused_with_the_fix(spec, message):
    with pytest.raises(PipelineError) as caught:
        free_axes.resolve(spec, {"input": (8, 3, 32, 32)})
    assert message in str(caught.value) and "export.dynamic_axes={input:{2:height,3:width}}" in caught.value.hint


def test_parity_shapes_may_change_free_axes_only():
    free, trained = {"input": {2: "height", 3: "width"}}, {"input": (16, 3, 32, 32)}
    assert free_axes.parity_shapes([[3, 8, 64]], free, trained) == [{"input": (16, 3, 8, 64)}]
    assert free_axes.parity_shapes(None, free, trained) == [{"input": (16, 3, 64, 96)}, {"input": (16, 3, 96, 64)}]
    with pytest.raises(PipelineError, match="changes axis 1, which is not free"):
        free_axes.parity_shapes([[4, 32, 32]], free, trained)


def test_inputs_are_brought_to_another_size_by_repetition():
    ids = np.arange(6).reshape(2, 3)
    assert free_axes.tiled(ids, (2, 7)).tolist() == [[0, 1, 2, 0, 1, 2, 0], [3, 4, 5, 3, 4, 5, 3]]
    assert free_axes.tiled(ids, (2, 2)).tolist() == [[0, 1], [3, 4]]


class TransformerText(nn.Module):
    """Token ids [N, T] -> embedding + a positional table sliced to T -> TransformerEncoder -> mean -> classes."""

    def __init__(self, num_classes=4, vocab=50, max_length=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.position = nn.Parameter(torch.randn(1, max_length, 16) * 0.1)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, num_classes)

    def forward(self, ids):
        h = self.embed(ids) + self.position[:, :ids.shape[1]]
        return self.head(self.encoder(h).mean(1))


class ResNetStem(nn.Module):
    """torchvision's stem (7x7/2 conv, BatchNorm, MaxPool2d(3, 2, 1)) and a strided block: any size."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x))).mean((2, 3))


class RecurrentVariants(nn.Module):
    """A 2-layer bidirectional GRU from a computed initial state, then a relu RNN, over [N, T, 8]."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.start = nn.Linear(8, 12)
        self.gru = nn.GRU(8, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.rnn = nn.RNN(24, 6, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        h0 = torch.tanh(self.start(x.mean(1))).unsqueeze(0).expand(4, -1, -1).contiguous()
        out, _ = self.gru(x, h0)
        out, last = self.rnn(out)
        return self.head(last[0] + out.mean(1))


class CausalText(nn.Module):
    """Token ids [N, T] -> embedding + a table sliced to T + an embedding of arange(T) -> attention under a
    triu mask of ones(T, T), then SDPA with is_causal -> mean -> classes."""

    def __init__(self, num_classes=3, vocab=40, dim=16, max_length=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.table = nn.Parameter(torch.randn(1, max_length, dim) * 0.5)
        self.pos = nn.Embedding(max_length, dim)
        self.qkv = nn.ModuleList([nn.Linear(dim, 3 * dim) for _ in range(2)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.embed(ids) + self.table[:, :t] + self.pos(torch.arange(t, device=ids.device))
        q, k, v = (x.unflatten(-1, (2, -1)).transpose(1, 2) for x in self.qkv[0](h).chunk(3, dim=-1))
        mask = torch.triu(torch.ones(t, t, device=ids.device), 1).bool()
        a = ((q @ k.transpose(-2, -1)) / 8 ** 0.5).masked_fill(mask, float("-inf")).softmax(-1) @ v
        h = h + a.transpose(1, 2).flatten(2)
        q, k, v = (x.unflatten(-1, (2, -1)).transpose(1, 2) for x in self.qkv[1](h).chunk(3, dim=-1))
        h = h + torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        return self.head(h.mean(1))
