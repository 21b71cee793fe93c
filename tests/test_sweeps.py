"""Sweeps with a summary, byte-identical reruns, and later stages from an earlier run (issue: sweeps)."""
import csv
import shutil

import pytest

from tests.conftest import assert_ok, mnist_root_override, read_report, run_cli

SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.limit_val_batches=2",
         "parity.samples=256")


@pytest.mark.slow
def test_two_job_multirun_writes_job_dirs_and_a_summary(tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    proc = run_cli("model=mnist_cnn,mnist_mlp", "export=onnx", mnist_root_override(), *SHORT,
                   f"hydra.sweep.dir={sweep}", multirun=True)
    assert_ok(proc)
    assert {read_report(sweep / job)["model"]["name"] for job in ("0", "1")} == {"mnist_cnn", "mnist_mlp"}
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert "model=mnist_cnn" in rows[0]["overrides"] and "model=mnist_mlp" in rows[1]["overrides"]
    assert all(r["status"] == "ok" and float(r["test_accuracy"]) > 0.3 for r in rows)
    assert all(float(r["worst_max_abs_err"]) < 1e-4 and float(r["train_s"]) > 0 for r in rows)
    assert "| job | overrides | status |" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_a_failing_job_is_in_the_summary_and_fails_the_sweep(tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    proc = run_cli("parity.atol=1e-5,0", "parity.rtol=0", "model=mnist_mlp", "export=onnx",
                   mnist_root_override(), *SHORT, f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 1
    statuses = [r["status"] for r in csv.DictReader((sweep / "summary.csv").open())]
    assert statuses == ["ok", "failed"]


@pytest.mark.slow
def test_same_seed_gives_byte_identical_onnx_and_metrics_and_the_saved_config_reruns(tmp_path, mnist_root):
    runs = [tmp_path / name for name in ("a", "b")]
    for run_dir in runs:
        assert_ok(run_cli("seed=7", "model=mnist_mlp", "export=onnx", mnist_root_override(), *SHORT,
                          run_dir=run_dir))
    a, b = (read_report(r) for r in runs)
    assert a["artifacts"]["onnx"]["sha256"] == b["artifacts"]["onnx"]["sha256"]
    assert a["metrics"] == b["metrics"]
    assert len(a["environment"]["data_files"]) == 4  # sha256 of each MNIST file read
    rerun = tmp_path / "rerun"
    assert_ok(run_cli(flags=("--config-path", str(runs[0] / ".hydra"), "--config-name", "config"), run_dir=rerun))
    assert read_report(rerun)["artifacts"]["onnx"]["sha256"] == a["artifacts"]["onnx"]["sha256"]


@pytest.mark.tf
@pytest.mark.slow
def test_from_run_converts_without_training_and_leaves_the_source_alone(tmp_path, mnist_root):
    source, later = tmp_path / "source", tmp_path / "later"
    assert_ok(run_cli("model=mnist_mlp", "export=onnx", mnist_root_override(), *SHORT, run_dir=source))
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert_ok(run_cli(f"from_run={source}", "stages=[convert,parity]", "export=keras", mnist_root_override(),
                      run_dir=later))
    report = read_report(later)
    assert [report["stages"][s]["status"] for s in ("train", "export", "check", "convert", "parity")] == \
        ["skipped", "skipped", "skipped", "ok", "ok"]
    assert report["model"]["name"] == "mnist_mlp"  # adopted from the source run
    assert report["artifacts"]["onnx"]["sha256"] == read_report(source)["artifacts"]["onnx"]["sha256"]
    assert {e["runtime"] for e in report["parity"]} == {"onnxruntime", "keras"}
    assert not (later / "checkpoints").exists()  # nothing was trained
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


@pytest.mark.tf
@pytest.mark.slow
def test_from_run_without_the_needed_artifact_says_which(tmp_path, mnist_root):
    source = tmp_path / "source"
    assert_ok(run_cli("model=mnist_mlp", "stages=[train]", mnist_root_override(), *SHORT, run_dir=source))
    proc = run_cli(f"from_run={source}", "stages=[convert,parity]", "export=keras", run_dir=tmp_path / "later")
    assert proc.returncode == 1
    assert "has no model.onnx" in proc.stderr and "Traceback" not in proc.stderr
    shutil.rmtree(tmp_path / "later", ignore_errors=True)
    proc = run_cli(f"from_run={tmp_path / 'missing'}", "stages=[parity]", run_dir=tmp_path / "later")
    assert proc.returncode == 1 and "is not a pipeline run dir" in proc.stderr


@pytest.mark.slow
def test_optuna_search_optimises_a_report_metric_and_writes_the_best_trial(tmp_path, mnist_root):
    from omegaconf import OmegaConf

    sweep = tmp_path / "sweep"
    assert_ok(run_cli("hparams_search=mnist_optuna", "hydra.sweeper.n_trials=2", "trainer.limit_train_batches=5",
                      "trainer.limit_val_batches=2", "parity.samples=200", f"hydra.sweep.dir={sweep}",
                      multirun=True))
    accuracies = [read_report(sweep / job)["metrics"]["test_accuracy"] for job in ("0", "1")]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == max(accuracies)
    assert "scheduler.max_lr" in best.best_params


def test_random_weights_without_training_are_the_same_in_every_run(tmp_path):
    """model.weights=init and no train stage: the network's random weights come from ``seed`` too, so the
    same config exports the same model.onnx twice in one process (the global RNG has moved in between)."""
    from tests.conftest import run_composed

    overrides = ("experiment=zoo/gru_classifier", "stages=[export]", "seed=3")
    first, second = (run_composed(*overrides, run_dir=tmp_path / name) for name in ("a", "b"))
    other_seed = run_composed(*overrides[:-1], "seed=4", run_dir=tmp_path / "c")
    assert first["artifacts"]["onnx"]["sha256"] == second["artifacts"]["onnx"]["sha256"]
    assert other_seed["artifacts"]["onnx"]["sha256"] != first["artifacts"]["onnx"]["sha256"]
