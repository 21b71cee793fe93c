"""How a command-line process ends: at once, once its work is written.

Python's own teardown of torch's and TensorFlow's modules takes about 2 s after a run's last byte is
written and writes nothing. ``end_process`` does what ending a program does that matters (other threads
joined, the exit handlers run: logging's flush and close, temporary dirs, Ray's shutdown; the console
streams flushed) and then ends the process. Under a profiler or a debugger, whose results are written
after the program returns, it is the usual ``sys.exit``.
"""
import atexit
import os
import sys
import threading


def end_process(code: int | str | None) -> None:
    """What ``sys.exit(code)`` does at the end of a program, without the module teardown."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # joins non-daemon threads, as the interpreter's exit does
    if shutdown is None or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code or 0)
