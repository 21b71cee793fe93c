"""Quantized and half-precision targets, judged by task metric, size and latency (issue: deploy targets).

Real conversions of a really trained MNIST CNN, calibrated on its training split, measured on the
whole held-out split.
"""
import json

import numpy as np
import pytest

from pipeline.errors import ParityError
from tests.conftest import mnist_root_override, run_composed

QUANTIZED = ("tflite_fp16", "tflite_int8_dynamic", "tflite_int8", "onnx_int8")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, mnist_root):
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    report = run_composed("model=mnist_cnn", mnist_root_override(), "export=deploy", "trainer.max_epochs=1",
                          "parity.latency_repeats=5", run_dir=run_dir)
    return run_dir, report


def test_mnist_cnn_int8_tflite_keeps_accuracy_at_under_a_third_of_the_size(deployed):
    _, report = deployed
    assert report["status"] == "ok"
    parity = {e["runtime"]: e for e in report["parity"]}
    int8 = parity["tflite_int8"]
    assert int8["quantized"] and int8["in_tolerance"]
    assert -int8["metric_delta"] <= 0.003  # accuracy drop <= 0.3 points on the 2000 held-out digits
    assert int8["size_ratio"] <= 0.30 and int8["size_ratio_to"] == "model.tflite"
    assert report["targets"]["tflite_int8"]["calibration_samples"] == 200
    for name in QUANTIZED:
        entry = parity[name]
        assert entry["in_tolerance"] and entry["top1_agreement"] >= 0.98, entry
        assert entry["bytes"] > 0 and entry["latency_ms_batch1"] > 0 and entry["throughput_per_s"] > 0
    assert parity["tflite_fp16"]["size_ratio"] == pytest.approx(0.5, abs=0.05)
    assert parity["onnx_int8"]["size_ratio_to"] == "model.onnx"
    assert "static" in report["targets"]["onnx_int8"]["quantization"]


def test_a_quantized_target_that_misses_its_threshold_names_the_layers_that_lose_most(deployed, tmp_path):
    run_dir, report = deployed
    int8 = next(e for e in report["parity"] if e["runtime"] == "tflite_int8")
    assert int8["top1_agreement"] < 1.0  # measured 0.999: int8 changes a couple of the 2000 predictions
    with pytest.raises(ParityError) as info:
        run_composed(f"from_run={run_dir}", "stages=[parity]", "export=[tflite,tflite_int8]",
                     "parity.quantized.min_top1_agreement=1.0", "parity.latency_repeats=3", run_dir=tmp_path / "strict")
    message = str(info.value)
    assert "tflite_int8" in message and "top-1 agreement" in message
    worst = report["targets"]["tflite_int8"]["worst_layers"]
    assert worst[0]["node"] in message and "export.tflite_int8.float_fallback=[" in message


def test_float_fallback_of_the_worst_layer_brings_the_int8_model_closer(deployed, tmp_path):
    run_dir, report = deployed
    worst = report["targets"]["tflite_int8"]["worst_layers"][0]
    before = next(e for e in report["parity"] if e["runtime"] == "tflite_int8")
    after = run_composed(f"from_run={run_dir}", "stages=[convert,parity]", "export=[tflite,tflite_int8]",
                         f"export.tflite_int8.float_fallback=[\"{worst['node']}\"]", "parity.latency_repeats=3",
                         run_dir=tmp_path / "fallback")
    fallback = next(e for e in after["parity"] if e["runtime"] == "tflite_int8")
    assert after["targets"]["tflite_int8"]["float_fallback"] == [worst["node"]]
    assert fallback["max_abs_err"] < before["max_abs_err"] / 2, (fallback["max_abs_err"], before["max_abs_err"])
    assert fallback["in_tolerance"] and fallback["size_ratio"] <= 0.30


def test_int8_input_and_output_tensors(deployed, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    run_dir, _ = deployed
    report = run_composed(f"from_run={run_dir}", "stages=[convert,parity]", "export=[tflite,tflite_int8]",
                          "export.tflite_int8.int8_io=true", "parity.latency_repeats=3", run_dir=tmp_path / "io")
    runner = Interpreter(model_path=str(tmp_path / "io" / "model_int8.tflite")).get_signature_runner()
    assert runner.get_input_details()["input"]["dtype"] == np.int8
    assert runner.get_output_details()["output"]["dtype"] == np.int8
    entry = next(e for e in report["parity"] if e["runtime"] == "tflite_int8")
    assert entry["in_tolerance"] and entry["top1_agreement"] >= 0.98  # floats in and out, via scale/zero point


def test_a_recurrent_seed_gets_the_targets_that_apply(tmp_path):
    report = run_composed("experiment=seed004_lstm_forecaster", "trainer.max_epochs=3", "export=deploy",
                          "parity.latency_repeats=3", run_dir=tmp_path / "run")
    assert report["status"] == "ok"  # a target refused by design does not fail the run
    targets = report["targets"]
    assert "dynamic" in targets["onnx_int8"]["quantization"] and "LSTM" in targets["onnx_int8"]["quantization"]
    refused = targets["tflite_int8"]
    assert refused["status"] == "refused" and refused["unsupported_op"] == "LSTM" and "tflite_int8_dynamic" in \
        refused["reason"]
    for name in ("tflite_fp16", "tflite_int8_dynamic", "onnx_int8"):
        assert targets[name]["status"] == "ok", targets[name]
    judged = {e["runtime"]: e for e in report["parity"] if e.get("quantized")}
    assert all("metric_change" in e for e in judged.values())  # regressor: relative MSE change
    assert json.loads((tmp_path / "run" / "report.json").read_text())["parity"] == report["parity"]
