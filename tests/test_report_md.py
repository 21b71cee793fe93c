"""What people read: report.md, plots, training logs (issue: reports)."""
import csv

import pytest
from PIL import Image

from tests.conftest import assert_ok, mnist_root_override, read_report, run_cli


def test_report_md_has_config_stages_metrics_parity_and_artifacts(default_run):
    text = (default_run / "report.md").read_text()
    for heading in ("## Config", "## Stages", "## Metrics", "## Parity vs PyTorch", "## Artifacts", "## Plots"):
        assert heading in text
    keras_row = next(line for line in text.splitlines() if line.startswith("| keras | 2000 |"))
    assert "True" in keras_row  # the Keras parity result, allclose
    assert "input layout **NHWC**" in text and "safe_mode=True" in text


def test_plots_are_real_pngs_linked_from_the_report(default_run):
    plots = read_report(default_run)["plots"]
    assert {"training_curves.png", "parity.png", "confusion_matrix.png"} <= set(plots)
    text = (default_run / "report.md").read_text()
    for name in plots:
        with Image.open(default_run / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200
        assert f"({name})" in text


def test_metrics_csv_has_one_row_per_epoch_with_loss_and_accuracy(default_run):
    rows = [r for r in csv.DictReader((default_run / "metrics.csv").open()) if r.get("val_acc")]
    epochs = read_report(default_run)["trainer"]["epochs"]
    assert len(rows) == epochs and all(0 < float(r["val_acc"]) <= 1 for r in rows)


@pytest.mark.slow
def test_tensorboard_logger_writes_event_files_and_forecaster_gets_a_forecast_plot(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("model=lstm_forecaster", "dataset=series", "trainer.max_epochs=2", "logger=tensorboard",
                      run_dir=run_dir))
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert "forecast.png" in read_report(run_dir)["plots"]
    assert (run_dir / "metrics.csv").exists()


@pytest.mark.slow
def test_mlflow_logger_records_the_run_in_a_local_store(tmp_path):
    import mlflow

    run_dir = tmp_path / "run"
    assert_ok(run_cli("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=2", "logger=mlflow",
                      run_dir=run_dir))
    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["pipeline"])
    assert len(runs) == 1
    assert runs["metrics.test_acc"][0] == pytest.approx(read_report(run_dir)["metrics"]["test_accuracy"], abs=1e-6)


def test_console_script_is_installed_and_equivalent(tmp_path, mnist_root):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("pipeline") or str(Path(sys.executable).parent / "pipeline")
    proc = subprocess.run([script, "--cfg", "job", mnist_root_override()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "mnist_cnn" in proc.stdout
