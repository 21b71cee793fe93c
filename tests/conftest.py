"""Shared helpers: run the real CLI in a subprocess or in this process, read its report."""
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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
    proc = run_cli("model=mnist_cnn", "export=all", mnist_root_override(), run_dir=run_dir)
    assert_ok(proc)
    (run_dir.parent / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw
    return run_dir


@dataclass
class Outcome:
    """What a run of the CLI left: its exit code and its console output."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_in_process(*overrides: str, run_dir: Path | None = None, multirun: bool = False,
                   flags: tuple[str, ...] = ()) -> Outcome:
    """``pipeline.cli.main()`` in this process (no interpreter start, no torch import per call), as the
    console script runs it: the same argv, exit code and output (file descriptors 1 and 2)."""
    from hydra.core.global_hydra import GlobalHydra

    from pipeline import cli

    argv = ["pipeline", *flags, *(["-m"] if multirun else []), "print_config=false", *overrides]
    if run_dir is not None:
        argv.append(f"hydra.run.dir={run_dir}")
    _unbind_absl_handler()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    saved_argv, code = sys.argv, 0
    GlobalHydra.instance().clear()
    sys.argv = argv
    try:
        with _captured() as output:
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for handler in logging.getLogger().handlers[:]:  # Hydra's console/file handlers of that run
            logging.getLogger().removeHandler(handler)
            handler.close()
    return Outcome(code, output["stdout"], output["stderr"])


def _unbind_absl_handler() -> None:
    """absl's log handler (TensorFlow imports it) keeps the sys.stderr it was made with, and closes it when
    Hydra's logging setup shuts every handler down while sys.stderr is another stream: pytest's capture file,
    when a test imported TensorFlow. Pointed at the process's own stderr, it is never closed."""
    absl = sys.modules.get("absl.logging")
    if absl is not None:
        absl.get_absl_handler().python_handler.stream = sys.__stderr__


@contextmanager
def _captured():
    """Capture file descriptors 1 and 2 (Python and native writers alike) into strings."""
    output = {}
    files = {1: tempfile.TemporaryFile(), 2: tempfile.TemporaryFile()}
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = {fd: os.dup(fd) for fd in files}
    saved_streams = sys.stdout, sys.stderr
    for fd, file in files.items():
        os.dup2(file.fileno(), fd)
    ours = [open(fd, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace") for fd in (1, 2)]
    sys.stdout, sys.stderr = ours
    try:
        yield output
    finally:
        # only the streams opened here are closed: code under test may have swapped sys.stdout/stderr for
        # others (a library restoring what it saw at import: pytest's own), which must stay open
        for stream in ours:
            stream.flush()
            stream.close()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            files[fd].seek(0)
            output[name] = files[fd].read().decode("utf-8", errors="replace")
            files[fd].close()


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (hidden ones too) with its bytes: to prove nothing was touched."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_composed(*overrides: str, run_dir: Path, expect_failure: bool = False) -> dict:
    """The runner on a composed config in this process (no CLI around it: no run-dir guard, no interrupt
    handling), for tests of what the stages do with a config.

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
    saved = Path(run_dir) / ".hydra"  # as Hydra saves it: the run can be a from_run source
    saved.mkdir(parents=True, exist_ok=True)
    (saved / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (saved / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    try:
        runner.run(cfg, Path(run_dir))
    except PipelineError:
        if not expect_failure:
            raise
        return read_report(run_dir)
    assert not expect_failure, "the run was expected to fail"
    return read_report(run_dir)
