"""Library chatter goes to pipeline.log, not the console; warnings that matter to parity go to the report.

- TensorFlow, absl, CUDA and LiteRT write from C++ straight to file descriptor 2 ("failed call to
  cuInit", "Could not find cuda drivers", oneDNN notes): ``native_stderr_to_log`` points fd 2 at
  pipeline.log while a stage runs, so that output is kept but off the console.
- Libraries that log (also through the root logger) reach pipeline.log only: ``ConsoleFilter`` on
  the console handler.
- Python warnings are routed to pipeline.log by ``logging.captureWarnings`` (pipeline/cli.py) and
  conf/config.yaml. ``recorded_warnings`` also lists, in report.json ``stages.<stage>.warnings``, the
  ones that can explain a parity drift: TracerWarning (a trace that may not generalise) and warnings
  or log records of the exporter and converters (onnx2keras "The result may differ ...").
"""
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

# Where a warning comes from (file path or logger name) that can make an exported/converted model differ.
PARITY_SOURCES = ("torch/onnx", "torch/jit", "onnx2keras", "onnx_tf", "onnxruntime", "pipeline/converters")
PARITY_LOGGERS = ("onnx2keras", "onnx_tf")
IGNORED_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Exporter notes that say nothing about what the graph computes (an optimisation it skipped): log only.
HARMLESS_MESSAGES = ("Constant folding - Only steps=1 can be constant folded",)
MAX_WARNINGS = 20
# Loggers whose records reach the console; every other library's go to pipeline.log only.
CONSOLE_LOGGERS = ("pipeline", "models", "hydra", "__main__")
# ... except these: hydra.utils logs an ERROR for a _target_ it cannot import, which the run then explains
# itself (what was wrong, what to set); shown both ways, the console would say it twice.
MUTED_LOGGERS = ("hydra.utils",)


class ConsoleFilter(logging.Filter):
    """Keeps the console to the pipeline's own progress and Hydra's sweep lines (conf/config.yaml).

    Some libraries log through the root logger (onnxruntime.quantization's "Please consider
    pre-processing ..."), so a per-logger setting cannot mute them; this filter lets through only
    records of ``CONSOLE_LOGGERS`` and their children. pipeline.log still gets everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _under(record.name, CONSOLE_LOGGERS) and not _under(record.name, MUTED_LOGGERS)


def _under(name: str, loggers: tuple[str, ...]) -> bool:
    return any(name == logger or name.startswith(logger + ".") for logger in loggers)


def log_file() -> Path | None:
    """The file Hydra's job logging writes (pipeline.log), if logging is configured."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


@contextmanager
def native_stderr_to_log():
    """Point stderr (file descriptor 2 and ``sys.stderr``) at pipeline.log, appending, for the duration.

    torch.onnx prints whole IR graphs through ``sys.stderr`` when an export fails; TensorFlow writes to
    fd 2 from C++. No-op without a log file (logging not configured)."""
    path = log_file()
    if path is None:
        yield
        return
    _torch_onnx_log_to_stderr()
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    try:
        with open(path, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 2)
        with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as stream:
            sys.stderr = stream
            yield
    finally:
        sys.stderr = saved_stream
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


def _torch_onnx_log_to_stderr() -> None:
    """torch.onnx turns its own log on during every export (its check reads a function, not its result)
    and, when an export fails, writes the whole Torch IR graph to that log: stdout by default."""
    torch = sys.modules.get("torch")
    set_stream = getattr(getattr(torch, "_C", None), "_jit_set_onnx_log_output_stream", None)
    if set_stream is not None:
        set_stream("stderr")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def recorded_warnings(stage: dict):
    """Collect the stage's warnings: every one into pipeline.log, those that matter to parity into ``stage``."""
    collector = _Collect()
    for name in PARITY_LOGGERS:
        logging.getLogger(name).addHandler(collector)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        for name in PARITY_LOGGERS:
            logging.getLogger(name).removeHandler(collector)
        relevant = []
        for w in caught:
            logging.getLogger("py.warnings").warning(
                warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip())
            if _matters_to_parity(w):
                relevant.append(f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})")
        relevant += collector.messages
        if relevant:
            stage["warnings"] = list(dict.fromkeys(relevant))[:MAX_WARNINGS]


def _matters_to_parity(w: warnings.WarningMessage) -> bool:
    if w.category.__name__ == "TracerWarning":
        return True
    if issubclass(w.category, IGNORED_CATEGORIES) or str(w.message).startswith(HARMLESS_MESSAGES):
        return False
    return any(source in w.filename.replace(os.sep, "/") for source in PARITY_SOURCES)
