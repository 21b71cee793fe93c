"""The headline job, for real: train on MNIST, export ONNX, check it, prove parity (issue: core runner)."""
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.report import STAGES, sha256_of
from tests.conftest import assert_ok, mnist_root_override, read_report, run_cli, tree


def test_default_run_trains_to_97_percent_and_is_in_parity(default_run):
    report = read_report(default_run)
    assert report["status"] == "ok"
    assert set(report["stages"]) == set(STAGES)
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in report["stages"].values())
    assert report["model"] == {"name": "mnist_cnn", "parameters": 431_080,
                               "from_data": {"num_classes": 10, "input_shape": [1, 28, 28]}}
    assert report["metrics"]["test_accuracy"] >= 0.97
    ort_entry = next(e for e in report["parity"] if e["runtime"] == "onnxruntime")
    assert ort_entry["samples"] == 2000  # the whole held-out split
    assert ort_entry["allclose"] and ort_entry["top1_agreement"] >= 0.999
    assert ort_entry["max_abs_err"] <= 1e-4
    assert abs(ort_entry["metric"] - report["metrics"]["test_accuracy"]) < 0.002
    for key in ("python", "torch", "onnx", "onnxruntime"):
        assert report["environment"][key]


def test_run_dir_holds_config_log_checkpoint_onnx_and_report(default_run):
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "pipeline.log", "model.onnx", "model.pt",
                 "checkpoints/last.ckpt", "metrics.csv", "report.json"):
        assert (default_run / name).exists(), name
    artifacts = read_report(default_run)["artifacts"]
    onnx_entry = artifacts["onnx"]
    assert onnx_entry["path"] == "model.onnx"
    assert onnx_entry["sha256"] == sha256_of(default_run / "model.onnx")
    assert onnx_entry["bytes"] == (default_run / "model.onnx").stat().st_size
    assert artifacts["checkpoint"]["path"] == "checkpoints/last.ckpt"


def test_exported_onnx_has_named_io_dynamic_batch_and_runs_at_batch_1_and_7(default_run, mnist_root):
    from torchvision import datasets

    path = default_run / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = datasets.MNIST(str(mnist_root), train=False, download=False).data[:7].numpy()
    batch = images.astype(np.float32)[:, None]  # raw pixels: the normalisation is in the graph
    labels = datasets.MNIST(str(mnist_root), train=False, download=False).targets[:7].numpy()
    for size in (1, 7):
        out = session.run(None, {"input": batch[:size]})[0]
        assert out.shape == (size, 10)
    assert (out.argmax(1) == labels).mean() >= 5 / 7


@pytest.mark.slow
def test_parity_out_of_tolerance_fails_the_run_after_writing_the_report(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    proc = run_cli("model=mnist_mlp", mnist_root_override(), "trainer.max_epochs=1", "parity.samples=200",
                   "parity.atol=0", "parity.rtol=0", "parity.noise_floor=false", run_dir=run_dir)
    assert proc.returncode != 0
    assert "Parity failed for onnxruntime" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = read_report(run_dir)
    assert report["status"] == "failed"
    assert report["stages"]["parity"]["status"] == "failed"
    assert report["parity"][0]["allclose"] is False and report["parity"][0]["samples"] == 200


def test_missing_data_is_a_clear_error_without_traceback(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false", run_dir=run_dir)
    assert proc.returncode == 1
    assert "MNIST could not be read" in proc.stderr and "dataset.root" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_report(run_dir)["stages"]["train"]["status"] == "failed"


def test_unknown_stage_names_the_valid_stages(tmp_path):
    proc = run_cli("stages=[train,exprt]", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert re.search(r"Unknown stage.*exprt", proc.stderr)
    assert "train, export, check, convert, parity" in proc.stderr


def test_a_used_run_dir_is_refused_and_left_untouched(default_run):
    before = tree(default_run)
    proc = run_cli("stages=[export]", run_dir=default_run)
    assert proc.returncode == 1 and "is not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(default_run) == before  # .hydra/ and pipeline.log too: refused before Hydra writes


@pytest.mark.slow
def test_subset_of_stages_marks_the_rest_skipped(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1",
                      "stages=[train,export,check]", run_dir=run_dir))
    stages = read_report(run_dir)["stages"]
    assert [stages[s]["status"] for s in STAGES] == ["ok", "ok", "ok", "skipped", "skipped"]


def test_a_convolutional_network_trains_channels_last_and_is_saved_in_pytorchs_layout(default_run):
    import torch
    from torch import nn

    from models.mnist_cnn import MnistCNN
    from pipeline.stages.train import has_2d_convolutions, set_memory_format

    net = MnistCNN()
    assert has_2d_convolutions(net) and not has_2d_convolutions(nn.Sequential(nn.Conv1d(2, 2, 3), nn.Linear(2, 2)))
    set_memory_format(net, torch.channels_last)
    weight = net.conv2.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    set_memory_format(net, torch.contiguous_format)
    assert net.conv2.weight is weight and weight.is_contiguous()  # the same parameter: the optimizer holds it
    state = torch.load(default_run / "model.pt", weights_only=True)
    four_d = [name for name, tensor in state.items() if tensor.dim() == 4]
    assert four_d and all(state[name].is_contiguous() for name in four_d)
