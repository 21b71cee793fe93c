"""Channels-last I/O (export.layout, pipeline/converters/io_layout.py, issue 22 item 2): SavedModel and the
TFLite targets take and return [N, H, W, C] with no transpose at the boundary, in parity."""
import numpy as np
import pytest
import torch

from pipeline.converters import io_layout
from tests.conftest import run_composed

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow

IMAGE = ("model.net._target_=tests.test_free_axes.TinyUNet", "model.output=logits", "model.weights=init",
         "stages=[export,check,convert,parity]", "dataset=synthetic", "dataset.shape=[3,16,16]", "dataset.samples=32",
         "export.calibration_samples=16", "parity.latency_repeats=2")


def tflite_graph(path) -> tuple[list, list, list[str], int]:
    """Input and output shape signatures (-1: free), the ops that read the input, and the TRANSPOSE count."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the graph's ops, as the interpreter runs them
    inputs = {d["index"] for d in interpreter.get_input_details()}
    readers = [op["op_name"] for op in ops if inputs & set(op["inputs"])]
    return (list(interpreter.get_input_details()[0]["shape_signature"]),
            list(interpreter.get_output_details()[0]["shape_signature"]),
            readers, sum(op["op_name"] == "TRANSPOSE" for op in ops))


def test_nhwc_savedmodel_and_tflite_take_channels_last_without_a_transpose_in_parity(tmp_path):
    import tensorflow as tf

    run = tmp_path / "run"
    report = run_composed(*IMAGE, "export=[tflite,tflite_int8]", "export.layout=nhwc", run_dir=run)
    assert report["status"] == "ok"
    parity = {e["runtime"]: e for e in report["parity"]}
    assert parity["tflite"]["allclose"] and parity["tensorflow"]["allclose"], parity
    assert parity["tflite_int8"]["in_tolerance"], parity["tflite_int8"]
    for target in ("tensorflow", "tflite", "tflite_int8"):
        entry = report["targets"][target]
        assert entry["layout"] == "nhwc" and entry["input_perms"] == {"input": [0, 2, 3, 1]}, entry
        assert entry["io_layouts"] == {"inputs": {"input": "NHWC"}, "outputs": {"output": "NHWC"}}
    signature = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["input"].shape.as_list() == [None, 16, 16, 3]
    for artifact, reader in (("model.tflite", "CONV_2D"), ("model_int8.tflite", "QUANTIZE")):
        shape_in, shape_out, readers, transposes = tflite_graph(run / artifact)
        assert shape_in == [-1, 16, 16, 3] and shape_out == [-1, 16, 16, 3]
        assert readers == [reader] and transposes == 0, (artifact, readers, transposes)
    assert "(inputs: `input` NHWC; outputs: `output` NHWC)" in (run / "report.md").read_text()


def test_the_default_nchw_keeps_pytorch_s_layout_and_a_target_may_ask_for_nhwc_alone(tmp_path):
    run = tmp_path / "run"
    report = run_composed(*IMAGE, "export=[tflite,tflite_fp16]", "export.tflite.layout=nhwc",
                          "export.dynamic_axes=spatial", run_dir=run)
    targets = report["targets"]
    assert targets["tensorflow"]["io_layouts"]["inputs"] == {"input": "NCHW"} and targets["tflite_fp16"]["layout"] == \
        "nchw"
    assert targets["tflite"]["layout"] == "nhwc" and targets["tflite"]["io_layouts"]["outputs"] == {"output": "NHWC"}
    shape_in, _, readers, _ = tflite_graph(run / "model.tflite")
    assert shape_in == [-1, -1, -1, 3] and "TRANSPOSE" not in readers  # free height and width, channels last
    assert tflite_graph(run / "model_fp16.tflite")[0] == [-1, 3, -1, -1]
    for entry in report["parity"]:  # each runtime fed its own layout, at every size of the free axes
        assert entry["in_tolerance"] and len(entry["sizes"]) == 2, entry
    assert sorted(p.name for p in run.iterdir() if "saved_model" in p.name) == ["saved_model"]  # no leftovers


def test_describe_names_every_tensor_s_layout():
    entry = {"input_perms": {"image": [0, 2, 3, 1]}, "output_perms": {"mask": [0, 2, 3, 1]}}
    assert io_layout.describe(entry, {"image": 4, "ids": 2}, {"mask": 4, "score": 1}) == {
        "inputs": {"image": "NHWC", "ids": "NC"}, "outputs": {"mask": "NHWC", "score": "N"}}


def test_inputs_and_outputs_cross_layouts_and_back():
    image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    stored = io_layout.to_artifact({"input": image}, {"input": [0, 2, 3, 1]})["input"]
    assert stored.shape == (1, 3, 4, 2)
    assert np.array_equal(io_layout.from_artifact({"input": stored}, {"input": [0, 2, 3, 1]})["input"], image)


class ImageAndIds(torch.nn.Module):
    """Two named inputs (an image and token ids) and a dict of two named outputs."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(16, num_classes)

    def forward(self, image, ids):
        features = torch.cat([self.conv(image).mean((2, 3)), self.embed(ids).mean(1)], 1)
        return {"scores": self.head(features), "features": features}


def test_named_inputs_and_outputs_keep_their_names_in_every_signature(tmp_path):
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    run = tmp_path / "run"
    report = run_composed("model.net._target_=tests.test_io_layout.ImageAndIds", "model.output=logits",
                          "model.weights=init", "stages=[export,check,convert,parity]", "dataset=synthetic",
                          "dataset.inputs={image: {shape: [3,16,16]}, ids: {shape: [8], distribution: integers, "
                          "high: 50}}", "dataset.samples=32", "export=[keras,tflite,tflite_int8]", "export.layout=nhwc",
                          "export.calibration_samples=16", "parity.latency_repeats=2", run_dir=run)
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert [t.name for t in model.inputs] == ["image", "ids"] and list(model.output_names) == ["scores", "features"]
    signature = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert inputs["image"].shape.as_list() == [None, 16, 16, 3] and inputs["ids"].shape.as_list() == [None, 8]
    assert set(signature.structured_outputs) == {"scores", "features"}
    for artifact in ("model.tflite", "model_int8.tflite"):
        described = Interpreter(model_path=str(run / artifact)).get_signature_list()["serving_default"]
        assert sorted(described["inputs"]) == ["ids", "image"] and sorted(described["outputs"]) == ["features",
                                                                                                   "scores"]
    assert report["targets"]["tflite"]["signature_names"] == {"inputs": {"image": "image", "ids": "ids"},
                                                             "outputs": {"scores": "scores", "features": "features"}}
    assert report["targets"]["tflite_int8"]["io_layouts"] == {"inputs": {"image": "NHWC", "ids": "NC"},
                                                              "outputs": {"scores": "NC", "features": "NC"}}
