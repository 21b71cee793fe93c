"""Parallel and cluster sweeps through Hydra launchers; data-parallel training through Lightning (issue: scale out)."""
import csv

import pytest

from tests.conftest import assert_ok, mnist_root_override, read_report, run_cli

TABULAR = ("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1")


def _summary(sweep):
    return list(csv.DictReader((sweep / "summary.csv").open()))


@pytest.mark.slow
def test_joblib_sweep_runs_two_jobs_in_parallel_with_one_thread_each(tmp_path):
    sweep = tmp_path / "sweep"
    assert_ok(run_cli("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", *TABULAR,
                      f"hydra.sweep.dir={sweep}", multirun=True))
    rows = _summary(sweep)
    assert [next(o for o in r["overrides"].split() if o.startswith("seed=")) for r in rows] == ["seed=1", "seed=2"]
    assert all(r["status"] == "ok" for r in rows)
    assert read_report(sweep / "0")["environment"]["threads"] == 1  # 2 cores / 2 concurrent jobs


@pytest.mark.slow
def test_submitit_local_cluster_launcher_runs_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    assert_ok(run_cli("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=1,2", *TABULAR,
                      f"hydra.sweep.dir={sweep}", multirun=True))
    assert [r["status"] for r in _summary(sweep)] == ["ok", "ok"]
    assert list((sweep / ".submitit").rglob("*_log.out"))  # submitit's own job logs: it really ran them


@pytest.mark.slow
def test_ddp_cpu_trains_on_two_processes_and_rank_zero_reports(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    assert_ok(run_cli("trainer=ddp_cpu", "trainer.max_epochs=2", "export=onnx", mnist_root_override(),
                      run_dir=run_dir))
    report = read_report(run_dir)
    assert report["trainer"]["world_size"] == 2 and report["trainer"]["strategy"] == "ddp_spawn"
    assert report["metrics"]["test_accuracy"] > 0.9
    assert report["status"] == "ok" and report["parity"][0]["allclose"]


RAY_LOCAL = ("hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
             "+hydra.launcher.ray.init.include_dashboard=false")


@pytest.mark.slow
def test_ray_launcher_runs_a_two_job_sweep_on_a_local_ray(tmp_path):
    sweep = tmp_path / "sweep"
    assert_ok(run_cli(*RAY_LOCAL, "seed=1,2", *TABULAR, "stages=[train]", f"hydra.sweep.dir={sweep}", multirun=True,
                      env={"RAY_AUTH_MODE": "disabled"}))  # a local Ray for this test only: no token file to write
    rows = _summary(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert read_report(sweep / "0")["environment"]["threads"] == 1  # 2 CPUs / 2 Ray jobs of 1 CPU each


@pytest.mark.slow
def test_a_matrix_runs_its_rows_in_parallel_and_merges_them_into_one_table(tmp_path):
    sweep, table = tmp_path / "sweep", tmp_path / "model-zoo.md"
    assert_ok(run_cli("+matrix=zoo", "experiment=zoo/conv1d_bn,zoo/gru_classifier", "export=onnx",
                      "stages=[export,check,parity]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      f"hydra.callbacks.sweep_summary.matrix_path={table}", f"hydra.sweep.dir={sweep}",
                      multirun=True))
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "zoo/" in line]
    assert [row.split(" | ")[1] for row in rows] == ["zoo/conv1d_bn", "zoo/gru_classifier"]  # the sweep's order
    assert all("✅" in row for row in rows)
    assert read_report(sweep / "1")["environment"]["threads"] == 1  # the two rows ran at once
