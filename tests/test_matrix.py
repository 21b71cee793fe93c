"""Every seed system end to end, to every target, in parity (issue: carry every seed system)."""
import pytest

from tests.conftest import assert_ok, read_report, run_cli

RUNTIMES = {"onnxruntime", "keras", "tensorflow", "tflite"}

SYSTEMS = {
    # model, dataset, parameters (None: not fixed by the seed), metric, short-training overrides
    "mnist_mlp": ("mnist", 101_770, "test_accuracy", ("trainer.max_epochs=1",)),
    "tabular_mlp": ("synthetic_tabular", 3_651, "test_accuracy", ("trainer.max_epochs=3",)),
    "ts_cnn": ("italy_power", 10_018, "test_accuracy", ("trainer.max_epochs=15",)),
    "lstm_forecaster": ("series", 12_961, "test_mse", ("trainer.max_epochs=5",)),
}


@pytest.mark.parametrize("model", SYSTEMS)
@pytest.mark.tf
@pytest.mark.slow
def test_seed_system_converts_to_every_target_in_parity(model, tmp_path, mnist_root):
    dataset, parameters, metric, short = SYSTEMS[model]
    run_dir = tmp_path / "run"
    assert_ok(run_cli(f"model={model}", f"dataset={dataset}", "export=all", *short, run_dir=run_dir))
    report = read_report(run_dir)
    assert report["status"] == "ok"
    assert report["model"]["parameters"] == parameters
    assert all(report["targets"][t]["status"] == "ok" for t in ("keras", "tensorflow", "tflite"))
    parity = {e["runtime"]: e for e in report["parity"]}
    assert set(parity) == RUNTIMES
    for name, entry in parity.items():
        assert entry["allclose"] and entry["max_abs_err"] <= 1e-4, (name, entry)
        assert entry["samples"] > 0
        if metric == "test_mse":
            assert entry["top1_agreement"] is None  # no classes: top-1 means nothing
            assert entry["metric"] == pytest.approx(report["metrics"]["test_mse"], rel=1e-3)
        else:
            assert entry["top1_agreement"] >= 0.999
    assert metric in report["metrics"]
