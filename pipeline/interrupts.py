"""SIGTERM and SIGHUP stop a run as Ctrl+C does; more signals while it is stopping are ignored.

The first signal raises KeyboardInterrupt: Lightning checkpoints, the report says "interrupted" and
the process exits 130. A second or third signal (an impatient ``kill``, a process manager) must not
break that clean-up half-way, so it is only noted.
"""
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stopping = False


def install() -> None:
    """Install the handlers (main thread only); a run starts not stopping."""
    global _stopping
    _stopping = False
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop)


def ignore() -> None:
    """Ignore the stop signals from here on. Python resets its own handlers to the default (terminate)
    while the interpreter shuts down, so a signal arriving then would end the process with 143."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def stopping() -> bool:
    return _stopping


def _stop(signum, frame):
    global _stopping
    name = signal.Signals(signum).name
    if _stopping:
        print(f"pipeline: {name} received again; still stopping cleanly (the report is being written).",
              file=sys.stderr)
        return
    _stopping = True
    raise KeyboardInterrupt(f"Received {name}")
