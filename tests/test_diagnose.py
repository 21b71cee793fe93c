"""When parity fails, say where (issue: first diverging layer per runtime, and a minimal reproducer)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline import diagnose
from pipeline.converters.keras3.ops import HANDLERS
from pipeline.errors import ParityError
from pipeline.results import Converted, RunResults
from tests.conftest import ROOT, mnist_root_override, run_composed

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow

SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=8", "trainer.limit_val_batches=2",
         "parity.samples=200", "parity.latency_repeats=3")


def _wrong_relu(ctx):
    """A Relu converted wrong on purpose: 5 % too large where it is positive."""
    from keras import ops

    x = ctx.tensor(0)
    ctx.set(ops.relu(x.keras) * np.float32(1.05), x.perm)


@pytest.mark.slow
def test_an_injected_wrong_op_is_found_in_keras_tensorflow_and_tflite(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setitem(HANDLERS, "Relu", _wrong_relu)
    run_dir = tmp_path / "run"
    with pytest.raises(ParityError, match="first diverges at node /Relu"):
        # The backends are named: auto would pass over the drifting keras3 artifacts.
        run_composed("model=mnist_cnn", mnist_root_override(), "export=all", "export.keras.backend=keras3",
                       "export.tensorflow.backend=keras3", *SHORT, run_dir=run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    parity = {e["runtime"]: e for e in report["parity"]}
    assert parity["onnxruntime"]["in_tolerance"] and "divergence" not in parity["onnxruntime"]
    keras = report["targets"]["keras"]  # its artifact drifted at verification: kept, and says so
    assert keras["verified"] is False and keras["reason"].startswith("kept unverified"), keras
    for runtime in ("keras", "tensorflow", "tflite"):
        where = parity[runtime]["divergence"]
        assert (where["node"], where["op_type"], where["inputs_ok"]) == ("/Relu", "Relu", True), where
        assert where["max_abs_err"] > 1e-3 and where["compared_nodes"] >= 10
        assert where["seconds"] > 0  # recorded; how long it takes is a benchmark, not a test
        assert (run_dir / where["reproducer"] / "subgraph.onnx").is_file()
        # The reproducer, alone, shows the same drift (the wrong converter is still in place here).
        assert diagnose.reproduce(run_dir / where["reproducer"])["drift"] is True
    assert (run_dir / "divergence.png").is_file()
    assert "Where parity drifts" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_too_strict_tolerance_names_a_node_for_every_runtime_and_the_command_reproduces_it(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    with pytest.raises(ParityError):
        run_composed("model=mnist_cnn", mnist_root_override(), "export=tflite", "parity.atol=1e-9", "parity.rtol=0",
                       *SHORT, run_dir=run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    for entry in report["parity"]:
        assert entry["divergence"]["node"], entry  # onnxruntime's is against the ONNX reference implementation
    command = report["parity"][-1]["divergence"]["command"].split()
    proc = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "drift reproduced" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_diagnose_on_demand_and_off(tmp_path):
    on = run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1", "export=keras",
                        "parity.diagnose=true", "parity.latency_repeats=3", run_dir=tmp_path / "on")
    assert on["status"] == "ok"
    for entry in on["parity"]:
        assert entry["divergence"]["node"] is None and entry["divergence"]["compared_nodes"] > 0
    off = run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1", "export=keras",
                         "parity.diagnose=false", "parity.atol=0", "parity.rtol=0", "parity.latency_repeats=3",
                         run_dir=tmp_path / "off", expect_failure=True)
    assert all("divergence" not in entry for entry in off["parity"])


def _conv_model():
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(8, 3, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="/c/Conv", pads=[2, 2, 2, 2]),
             helper.make_node("Constant", [], ["half"], value=numpy_helper.from_array(np.float32(0.5), "half")),
             helper.make_node("Cast", ["conv"], ["cast"], name="/Cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cast", "half"], ["y"], name="/Mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 8, 8])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnxruntime_drift_that_float32_reference_shares_is_named_against_float64(tmp_path):
    """onnxruntime can compute every tensor exactly as the float32 ONNX reference does while it drifts from
    PyTorch (float32 rounding): the float64 reference names the node, and the reproducer shows it."""
    import onnx

    from pipeline.atomic import write_json
    from pipeline.converters.keras3.probe import intermediates

    model = _conv_model()
    feeds = {"x": np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)}
    wide = diagnose.reference_values(model, feeds, float64=True)
    assert wide["conv"].dtype == np.float64 and wide["y"].dtype == np.float64
    actual = intermediates(model, feeds)
    assert 0 < np.abs(actual["conv"] - wide["conv"]).max() < 1e-4
    tensors = diagnose.traced_tensors(model)

    class Strict:
        rtol, atol = 0.0, 1e-12

    first = diagnose._first_divergence(tensors, actual, wide, Strict)[3]
    assert first[0].name == "/c/Conv"
    directory = tmp_path / "onnxruntime"
    directory.mkdir()
    onnx.save(model, str(directory / "subgraph.onnx"))
    np.save(directory / "input_0.npy", feeds["x"])
    manifest = {"runtime": "onnxruntime", "node": "/c/Conv", "op_type": "Conv", "inputs": {"x": "input_0.npy"},
                "outputs": ["y"], "backends": {}, "rtol": 0.0, "atol": 1e-12, "options": {}}
    for float64, drift in ((True, True), (False, None)):
        write_json(directory / diagnose.MANIFEST, {**manifest, "float64_reference": float64})
        result = diagnose.reproduce(directory)
        assert result["float64"] is float64 and (drift is None or result["drift"] is drift), result


def test_a_reproducer_input_without_a_batch_axis_goes_in_as_a_constant(tmp_path):
    """A drifting node that reads a scalar (``masked_fill``'s -inf: Where(mask, Constant, x)) got the scalar
    as an input, which the converter's batch probe resized to [2]: "Attempting to broadcast an axis by a
    dimension other than 1. 2 by 12"."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Constant", [], ["fill"], value=numpy_helper.from_array(np.float32(-1e4), "fill")),
             helper.make_node("Where", ["mask", "fill", "x"], ["y"], name="/Where")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 12]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(0)
    values = {"mask": rng.random((4, 12)) < 0.3, "x": rng.normal(size=(4, 12)).astype(np.float32),
              "fill": np.float32(-1e4)}
    converted = {"tensorflow": Converted("tensorflow", tmp_path / "saved_model", {"backend": "keras3"})}
    ctx = SimpleNamespace(results=RunResults(converted=converted),
                          cfg=OmegaConf.create({"parity": {"rtol": 0.0, "atol": 1e-9}, "export": {}}))
    directory = tmp_path / "tensorflow"
    diagnose.write_reproducer(ctx, model, "tensorflow", model.graph.node[1], ["mask", "fill", "x"], values,
                              directory)
    manifest = json.loads((directory / diagnose.MANIFEST).read_text())
    assert list(manifest["inputs"]) == ["mask", "x"] and manifest["constants"] == ["fill"]
    result = diagnose.reproduce(directory)  # converts and runs; raised before
    assert result["node"] == "/Where" and result["drift"] is False, result
