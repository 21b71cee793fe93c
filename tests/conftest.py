"""Shared helpers: run the real CLI in a subprocess, read its report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tf_env

tf_env.prepare()  # some tests import TensorFlow in this process: Triton must load first

ROOT = Path(__file__).resolve().parents[1]
# Real MNIST digits for tests and CI (no network here): 8000 train / 2000 test.
MNIST_ROOT = Path(os.environ.get("PIPELINE_MNIST_ROOT", ROOT.parent / "shared" / "data" / "mnist-10k")).resolve()
os.environ["PIPELINE_MNIST_ROOT"] = str(MNIST_ROOT)  # conf/dataset/mnist.yaml reads it in every subprocess


def run_cli(*overrides: str, run_dir: Path | None = None, env: dict | None = None, timeout: int = 600,
            multirun: bool = False, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m pipeline [flags] overrides``; the run goes to ``run_dir`` when given."""
    args = [sys.executable, "-m", "pipeline", *(["-m"] if multirun else []), *flags, "print_config=false", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def read_report(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "report.json").read_text())


def mnist_root_override() -> str:
    return f"dataset.root={MNIST_ROOT}"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST test data not found at {MNIST_ROOT}; set PIPELINE_MNIST_ROOT")
    return MNIST_ROOT


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    tail = f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{tail}"


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, mnist_root) -> Path:
    """One real default run of the headline job with every target: shared by the core and convert tests."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    assert_ok(run_cli("model=mnist_cnn", "export=all", mnist_root_override(), run_dir=run_dir))
    return run_dir


def run_in_process(*overrides: str, run_dir: Path, expect_failure: bool = False) -> dict:
    """The pipeline on a composed config in this process (no interpreter or TensorFlow start-up per run).

    Returns report.json; a PipelineError propagates after the report is written, as in the CLI, unless
    ``expect_failure`` (then the failed run's report is returned).
    """
    from hydra import compose, initialize_config_dir

    from pipeline import cli, runner
    from pipeline.errors import PipelineError

    overrides = ["print_config=false", *overrides]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=overrides)
    cli.prepare(cfg, overrides)
    try:
        runner.run(cfg, Path(run_dir))
    except PipelineError:
        if not expect_failure:
            raise
        return read_report(run_dir)
    assert not expect_failure, "the run was expected to fail"
    return read_report(run_dir)
