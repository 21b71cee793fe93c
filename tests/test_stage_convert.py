"""Keras, TensorFlow SavedModel and TFLite: converted for real, loaded outside the pipeline, in parity."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.converters.backends import keras_onnx2keras
from pipeline.errors import ConversionError
from pipeline.stages.export import export_onnx
from tests.conftest import read_report

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow

RUNTIMES = ("onnxruntime", "keras", "tensorflow", "tflite")


def _test_batch(n=64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 28, 28)).astype(np.float32)


def test_every_runtime_is_in_parity_on_the_whole_held_out_split(default_run):
    report = read_report(default_run)
    parity = {e["runtime"]: e for e in report["parity"]}
    assert sorted(parity) == sorted(RUNTIMES)
    for name, entry in parity.items():
        assert entry["allclose"], name
        assert entry["max_abs_err"] <= 1e-4, (name, entry["max_abs_err"])
        assert entry["top1_agreement"] >= 0.999, name
        assert entry["samples"] == 2000
        assert entry["latency_ms_batch1"] > 0 and entry["throughput_per_s"] > 0
    for target in ("keras", "tensorflow", "tflite"):
        assert report["targets"][target]["status"] == "ok"
        artifact = report["artifacts"][target]
        assert (default_run / artifact["path"]).exists() and len(artifact["sha256"]) == 64 and artifact["bytes"] > 0
    assert report["targets"]["keras"]["input_layout"] == "NHWC"
    assert report["targets"]["tensorflow"]["input_layout"] == "NCHW"


def _onnxruntime(run_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_keras_file_loads_in_safe_mode_outside_the_pipeline_with_the_reported_layout(default_run):
    import keras

    layout = read_report(default_run)["targets"]["keras"]["input_layout"]
    model = keras.saving.load_model(str(default_run / "model.keras"), safe_mode=True)
    x = _test_batch()
    nhwc = np.transpose(x, (0, 2, 3, 1)) if layout == "NHWC" else x
    out = np.asarray(model.predict(nhwc, verbose=0))
    np.testing.assert_allclose(out, _onnxruntime(default_run, x), atol=1e-4, rtol=0)


def test_saved_model_serving_default_runs_outside_the_pipeline(default_run):
    import tensorflow as tf

    signature = tf.saved_model.load(str(default_run / "saved_model")).signatures["serving_default"]
    x = _test_batch()
    out = signature(input=tf.constant(x))["output"].numpy()
    np.testing.assert_allclose(out, _onnxruntime(default_run, x), atol=1e-4, rtol=0)


def test_tflite_file_runs_in_litert_outside_the_pipeline(default_run):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(default_run / "model.tflite"))
    x = _test_batch(5)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, _onnxruntime(default_run, x), atol=1e-4, rtol=0)


class GeluNet(torch.nn.Module):
    """Exports an ``Erf`` op (exact GELU), which onnx2keras has no converter for (keras3 fuses it)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


def test_a_missing_op_names_the_op_and_the_fix(tmp_path):
    onnx_path = tmp_path / "gelu.onnx"
    export_onnx(GeluNet().eval(), torch.randn(1, 8), onnx_path, opset=13)
    with pytest.raises(ConversionError) as info:
        keras_onnx2keras.convert_file(onnx_path, tmp_path / "gelu.keras")
    assert info.value.unsupported_op == "Erf"
    assert "Erf" in str(info.value) and "EXTRA_CONVERTERS" in str(info.value)
    assert not (tmp_path / "gelu.keras").exists()


def test_every_target_records_its_backend_and_what_it_tried(default_run):
    targets = read_report(default_run)["targets"]
    assert {t: e["backend"] for t, e in targets.items()} == {"keras": "keras3", "tensorflow": "keras3",
                                                             "tflite": "tf-converter"}
    for entry in targets.values():
        attempt = entry["attempts"][0]
        assert attempt["status"] == "ok" and attempt["verify"]["ok"] and attempt["verify"]["max_abs_err"] < 1e-4
