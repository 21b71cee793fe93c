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
