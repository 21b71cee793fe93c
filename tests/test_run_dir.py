"""Bad input fails early and clearly; interrupted runs resume; artifacts are never half-written (issue: reliability)."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline.atomic import write_json, write_with
from tests.conftest import ROOT, assert_ok, mnist_root_override, read_report, run_cli

SHORT = ("trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.limit_val_batches=2",
         "parity.samples=256")


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epochs=abc", ["trainer.max_epochs", "could not be converted to Integer"]),
    ("trainer.no_such_key=1", ["no_such_key", "trainer"]),
    ("model=no_such_model", ["model/no_such_model", "mnist_cnn", "lstm_forecaster"]),
    ("export=nope", ["export/nope", "keras", "tflite"]),
    ("model.output=bogus", ["model.output", "log_probs, logits, probability, value"]),
    ("dataset.batch_size=0", ["dataset.batch_size", "integer >= 1"]),
])
@pytest.mark.tf
def test_bad_config_fails_before_any_work_naming_the_key_and_the_choices(tmp_path, override, expected):
    run_dir = tmp_path / "run"
    proc = run_cli(override, run_dir=run_dir)
    assert proc.returncode == 1
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "checkpoints").exists()  # no training started


@pytest.mark.slow
def test_no_network_for_the_download_fails_fast_and_clearly(tmp_path):
    start = time.time()
    proc = run_cli(f"dataset.root={tmp_path / 'empty'}", "dataset.download=true", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert "MNIST could not be read" in proc.stderr and "download" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 120  # socket timeout: offline never hangs


@pytest.mark.slow
def test_a_job_waits_for_the_data_cache_lock_before_reading(tmp_path, mnist_root):
    """While another job holds the cache lock (downloading), a job reads nothing; then it runs normally."""
    from filelock import FileLock

    from pipeline.datasets.mnist import cache_lock

    cache = tmp_path / "cache"
    shutil.copytree(mnist_root / "MNIST", cache / "MNIST")
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline", "print_config=false", "model=mnist_mlp", f"dataset.root={cache}",
            "stages=[train]", "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"hydra.run.dir={run_dir}"]
    lock = cache_lock(cache)
    assert isinstance(lock, FileLock)
    with lock:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(15)
        assert proc.poll() is None  # still waiting on the lock
        assert read_report(run_dir)["stages"]["train"]["status"] == "running"
        assert not (run_dir / "checkpoints").exists()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert read_report(run_dir)["stages"]["train"]["status"] == "ok"


def _finished_run(tmp_path_factory, mnist_root):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert_ok(run_cli("model=mnist_mlp", "export=onnx", mnist_root_override(), *SHORT, run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_root):
    return _finished_run(tmp_path_factory, mnist_root)


def _damaged_copy(source, tmp_path, name):
    copy = tmp_path / "damaged"
    shutil.copytree(source, copy)
    target = copy / name
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    return copy


@pytest.mark.slow
def test_a_truncated_onnx_file_is_reported_as_corrupt(finished_run, tmp_path):
    damaged = _damaged_copy(finished_run, tmp_path, "model.onnx")
    proc = run_cli(f"from_run={damaged}", "stages=[check,parity]", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert "not a readable ONNX file" in proc.stderr and "re-run the export stage" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_report(tmp_path / "run")["stages"]["check"]["status"] == "failed"


@pytest.mark.slow
def test_truncated_weights_are_reported_as_unreadable(finished_run, tmp_path):
    damaged = _damaged_copy(finished_run, tmp_path, "model.pt")
    proc = run_cli(f"from_run={damaged}", "stages=[export]", run_dir=tmp_path / "run")
    assert proc.returncode == 1
    assert "model.pt is unreadable" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_mid_training_says_interrupted_and_from_run_resumes(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline", "print_config=false", "model=mnist_mlp", "trainer.max_epochs=500",
            mnist_root_override(), "parity.samples=256", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    for _ in range(3):  # three quick SIGTERMs: the repeats must not turn the clean stop into exit 143
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and f"from_run={run_dir}" in stderr
    report = read_report(run_dir)
    assert report["status"] == "interrupted"
    assert report["stages"]["train"]["status"] == "interrupted"
    assert report["stages"]["export"]["status"] == "skipped"
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    resumed = tmp_path / "resumed"
    assert_ok(run_cli(f"from_run={run_dir}", "trainer.max_epochs=3", run_dir=resumed))
    report = read_report(resumed)
    assert report["status"] == "ok"
    assert report["from_run"]["resumed_from"].endswith("last.ckpt")
    assert report["trainer"]["epochs"] == 3 and report["metrics"]["test_accuracy"] > 0.8
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # source untouched


def test_atomic_writes_leave_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"status": "ok"})

    def dies_half_way(tmp):
        tmp.write_text('{"status": "runn')
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        write_with(path, dies_half_way)
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind
