"""Every output of a quantized target is judged (pipeline/quantized.py, issue 22 item 4): the task metric on
the first, and every other output by name against PyTorch's; a ruined second output fails, named."""
import numpy as np
import pytest
import torch

from pipeline import quantized
from tests.conftest import read_report, run_composed

pytestmark = pytest.mark.tf  # every test here converts to a TensorFlow target or runs TensorFlow

TWO_HEADS = ("model.net._target_=tests.test_quantized_outputs.TwoHeads", "model.output=logits", "model.weights=init",
             "stages=[export,check,convert,parity]", "dataset=synthetic", "dataset.shape=[16]", "dataset.samples=64",
             "export.calibration_samples=16", "parity.latency_repeats=2")


class TwoHeads(torch.nn.Module):
    """Class scores and an embedding. ``ruin`` adds 1000 to the embedding before taking it off again: int8
    gives that intermediate tensor a step of about 4 (its range must hold 0 and 1000), larger than the
    embedding itself, while the class scores are untouched."""

    def __init__(self, num_classes=10, ruin=True):
        super().__init__()
        self.body = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, num_classes)
        self.embed = torch.nn.Linear(32, 8)
        self.ruin = ruin

    def forward(self, x):
        h = torch.relu(self.body(x))
        embedding = self.embed(h)
        if self.ruin:
            embedding = (embedding + 1000.0) * 0.5 - 500.0
        return self.head(h), embedding


def by_runtime(report: dict) -> dict:
    return {e["runtime"]: e for e in report["parity"]}


def test_int8_that_ruins_the_second_output_fails_naming_that_output(tmp_path):
    report = run_composed(*TWO_HEADS, "export=[tflite_int8,onnx_int8]", run_dir=tmp_path / "run",
                          expect_failure=True)
    assert report["status"] == "failed"
    error = report["stages"]["parity"]["reason"]
    for target in ("tflite_int8", "onnx_int8"):
        entry = by_runtime(report)[target]
        assert not entry["in_tolerance"], entry
        first, second = entry["outputs"]["output_0"], entry["outputs"]["output_1"]
        assert first["judged_by"] == "task" and first["in_tolerance"], first  # the class scores survive
        assert second["judged_by"] == "relative_rmse" and not second["in_tolerance"] and second["relative_rmse"] > 1
        assert entry["judgement"].startswith("output output_1: relative RMSE"), entry["judgement"]
        assert f"Quantized target {target}: output output_1: relative RMSE" in error, error
    assert "near-tied class scores" not in error  # the class scores did not fail: no remark about them
    text = (tmp_path / "run" / "report.md").read_text()
    assert "- tflite_int8, each output: `output_0` ok (top-1 agreement" in text
    assert "`output_1` **no** (relative RMSE" in text


def test_every_output_of_a_sound_int8_model_is_judged_and_listed(tmp_path):
    report = run_composed(*TWO_HEADS, "+model.net.ruin=false", "export=[tflite_int8]", run_dir=tmp_path / "run")
    entry = by_runtime(report)["tflite_int8"]
    assert entry["in_tolerance"] and entry["judged"], entry
    assert entry["outputs"]["output_0"]["judged_by"] == "task"
    assert entry["outputs"]["output_1"]["relative_rmse"] < 0.2  # measured 0.063
    assert "output output_1: relative RMSE" in entry["judgement"]
    assert read_report(tmp_path / "run")["status"] == "ok"


class Settings:
    max_accuracy_drop, min_top1_agreement, max_mse_increase, max_output_relative_rmse = 0.01, 0.98, 0.10, 0.2


def judged(outputs: dict, reference: dict, kind="logits", agreement=1.0) -> dict:
    entry = {"runtime": "onnx_int8", "metric": None, "top1_agreement": agreement, "in_tolerance": False,
             "max_abs_err": 1.0}
    quantized.judge(entry, None, kind, Settings, {}, outputs, reference)
    return entry


def test_integer_outputs_are_judged_by_the_share_of_equal_elements():
    scores = np.eye(4, dtype=np.float32)
    indices = np.arange(100, dtype=np.int64)
    shifted = indices.copy()
    shifted[:5] += 1  # 95 % equal
    entry = judged({"output_0": scores, "output_1": shifted}, {"output_0": scores, "output_1": indices})
    verdict = entry["outputs"]["output_1"]
    assert verdict["judged_by"] == "agreement" and verdict["agreement"] == pytest.approx(0.95)
    assert not entry["in_tolerance"] and "output output_1: 0.9500 of its elements" in entry["judgement"]


def test_a_second_output_of_another_shape_fails_by_name_and_the_task_failure_comes_first():
    scores = np.eye(4, dtype=np.float32)
    entry = judged({"output_0": scores, "extra": np.zeros((4, 2), np.float32)},
                   {"output_0": scores, "extra": np.zeros((4, 3), np.float32)}, agreement=0.5)
    assert not entry["in_tolerance"]
    assert entry["judgement"].startswith("top-1 agreement 0.5000 < parity.quantized.min_top1_agreement")
    assert "output extra: shape [4, 2], PyTorch gives [4, 3]" in entry["judgement"]


def test_a_single_output_is_judged_by_the_task_alone():
    scores = np.eye(4, dtype=np.float32)
    entry = judged({"output": scores}, {"output": scores})
    assert entry["in_tolerance"] and entry["judgement"] == "top-1 agreement 1.0000 (>= 0.98)"
    assert entry["outputs"]["output"]["judged_by"] == "task"
