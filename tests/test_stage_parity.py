"""Parity's timing is a budget, not a count: bounded batch-1 calls, a throughput batch that fits the samples;
the artifacts convert verified are not loaded again."""
import os
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.stages.parity import _measure
from tests.conftest import run_composed


class SlowAdapter:
    """A runtime whose every call takes ``seconds``; it counts the rows it is given per call."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.batches, self.invokes = seconds, [], 0

    def predict(self, feeds: dict) -> dict:
        x = feeds["input"]
        self.batches.append(len(x))
        return {"output": x * 2}

    def prepare(self, feeds: dict):
        return feeds

    def invoke(self, prepared) -> None:
        self.invokes += 1
        time.sleep(self.seconds)


def _settings(**values):
    base = {"batch_size": 256, "timing": True, "latency_repeats": 50, "latency_budget_s": 1.0}
    return OmegaConf.create({**base, **values})


FEEDS = {"input": np.arange(64, dtype=np.float32).reshape(64, 1)}


def test_the_throughput_batch_is_capped_at_the_samples_and_the_warm_up_output_is_kept():
    adapter = SlowAdapter()
    out, timing = _measure(adapter, FEEDS, _settings())
    np.testing.assert_array_equal(out["output"], FEEDS["input"] * 2)
    assert timing["throughput_batch_size"] == 64 and timing["throughput_calls"] == 1
    assert adapter.batches == [64, 64]  # a warm-up and one timed call: no batch of 256 asked for


def test_several_batches_reuse_the_warm_up_as_the_first_batch():
    adapter = SlowAdapter()
    out, timing = _measure(adapter, FEEDS, _settings(batch_size=16))
    np.testing.assert_array_equal(out["output"], FEEDS["input"] * 2)
    assert adapter.batches == [16, 16, 16, 16] and timing["throughput_calls"] == 3


def test_batch1_latency_stops_at_the_budget():
    adapter = SlowAdapter(seconds=0.02)
    _, timing = _measure(adapter, FEEDS, _settings(latency_budget_s=0.1))  # at most 50 calls without the budget
    assert 2 <= timing["latency_calls"] <= 7 and timing["latency_ms_batch1"] >= 15


def test_latency_repeats_is_the_most_calls_and_a_zero_budget_still_times_one():
    _, few = _measure(SlowAdapter(), FEEDS, _settings(latency_repeats=3, latency_budget_s=None))
    _, one = _measure(SlowAdapter(seconds=0.01), FEEDS, _settings(latency_budget_s=0))
    assert few["latency_calls"] == 3 and one["latency_calls"] == 1


def test_timing_false_compares_outputs_only():
    adapter = SlowAdapter()
    out, timing = _measure(adapter, FEEDS, _settings(timing=False, batch_size=32))
    np.testing.assert_array_equal(out["output"], FEEDS["input"] * 2)
    assert adapter.batches == [32, 32] and adapter.invokes == 0
    assert timing["latency_ms_batch1"] is None and timing["throughput_per_s"] is None
    assert timing["latency_calls"] == 0 and timing["throughput_calls"] == 0


def test_the_report_says_how_many_calls_each_figure_rests_on(tmp_path):
    report = run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "dataset.samples=400",
                          "model.weights=init", "stages=[export,check,parity]", "parity.samples=50",
                          "parity.latency_repeats=7", run_dir=tmp_path / "timed")
    for entry in [report["reference"], *report["parity"]]:
        assert entry["throughput_batch_size"] == 50 and entry["throughput_calls"] == 1
        assert 1 <= entry["latency_calls"] <= 7 and entry["latency_ms_batch1"] > 0
    untimed = run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "dataset.samples=400",
                           "model.weights=init", "stages=[export,check,parity]", "parity.timing=false",
                           run_dir=tmp_path / "untimed")
    assert untimed["status"] == "ok" and untimed["parity"][0]["latency_ms_batch1"] is None
    assert (tmp_path / "untimed" / "report.md").is_file()


@pytest.mark.tf
def test_parity_runs_the_artifact_convert_verified_without_loading_it_again(tmp_path, monkeypatch):
    from pipeline.runtimes import keras_runtime

    loads = []
    original = keras_runtime.load
    monkeypatch.setattr(keras_runtime, "load", lambda *a, **k: loads.append(a[0]) or original(*a, **k))
    report = run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "dataset.samples=400",
                          "model.weights=init", "stages=[export,check,convert,parity]", "export=keras",
                          run_dir=tmp_path / "run")
    assert report["status"] == "ok" and [e["runtime"] for e in report["parity"]] == ["onnxruntime", "keras"]
    assert len(loads) == 1  # convert's verification loaded model.keras; parity took that adapter


def test_a_kept_adapter_is_handed_over_once_and_never_for_a_rewritten_file(tmp_path):
    import torch

    from pipeline import runtimes

    path = tmp_path / "model.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(path), input_names=["input"],
                      output_names=["output"], dynamo=False)
    io = (["input"], ["output"])
    kept = runtimes.load("onnxruntime", path, *io, keep=True)
    assert runtimes.load("onnxruntime", path, *io) is kept
    assert runtimes.load("onnxruntime", path, *io) is not kept  # handed over once
    again = runtimes.load("onnxruntime", path, *io, keep=True)
    stat = path.stat()  # rewritten (a later modification time): never the old adapter
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert runtimes.load("onnxruntime", path, *io) is not again
    runtimes.forget()
