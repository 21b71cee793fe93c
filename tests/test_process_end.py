"""pipeline.process_end: the process ends at once, and what ending a program does that matters still happens."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import atexit, sys, threading, time
from pathlib import Path
from pipeline.process_end import end_process

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
print("buffered line", end="")  # no newline: flushed by the exit, not by print
end_process({code!r})
'''


def _end(tmp_path: Path, code) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(code=code)))
    return subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_exit_code_handlers_threads_and_streams_are_as_sys_exit_leaves_them(tmp_path):
    result = _end(tmp_path, 3)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered line"
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "joined"


def test_a_message_as_the_code_is_printed_and_exits_1(tmp_path):
    result = _end(tmp_path, "stopped: because")
    assert result.returncode == 1 and result.stderr.strip() == "stopped: because"
    assert _end(tmp_path, None).returncode == 0


def test_the_command_line_exits_with_the_runs_code():
    result = subprocess.run([sys.executable, "-m", "pipeline", "model=nope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "model" in result.stderr


def test_the_pipeline_script_imports_a_model_from_the_directory_it_runs_in(tmp_path):
    """``pipeline model.net._target_=my_net.Net`` beside my_net.py, as ``python -m pipeline`` does it: the
    console script's sys.path does not hold the working directory by itself."""
    script = Path(sys.executable).parent / "pipeline"
    if not script.is_file():
        import pytest

        pytest.skip("the console script is not installed (pip install -e .)")
    (tmp_path / "my_net.py").write_text(textwrap.dedent('''
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(6, 3)
            def forward(self, x):
                return self.fc(x)
    '''))
    result = subprocess.run([str(script), "model.net._target_=my_net.Net", "model.output=logits", "dataset=synthetic",
                             "dataset.shape=[6]", "model.weights=init", "stages=[export]", "print_config=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "model.onnx").is_file()
