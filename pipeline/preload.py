"""TensorFlow, Keras and matplotlib imported in a background thread while the train stage runs.

Importing TensorFlow and Keras takes seconds, and the convert stage would pay them after training; the
plots pay matplotlib's at the end. Started with the train stage and waited for when it ends, the import
overlaps with training (which leaves a CPU idle between its steps) instead of following it. The import
happens with TensorFlow's C++ start-up chatter (file descriptor 2) sent to pipeline.log, as in the stages that
load it; that redirection is process-wide, so it is confined to the train stage, whose progress is on stdout.

Only where it is safe: a single training process without DataLoader worker processes (a fork while a
thread holds an import lock can deadlock the child), and only when a selected target needs TensorFlow.
"""
import logging
import os
import threading
from contextlib import contextmanager

from omegaconf import DictConfig

log = logging.getLogger(__name__)


class Preload:
    def __init__(self, thread: threading.Thread | None):
        self.thread = thread

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def during_training(cfg: DictConfig, selected: list[str]) -> Preload:
    """Start the background imports the later stages of this run need (nothing when none or unsafe)."""
    if not _wanted(cfg, selected) or not _safe(cfg):
        return Preload(None)
    thread = threading.Thread(target=_import_tensorflow_and_matplotlib, name="pipeline-preload", daemon=True)
    thread.start()
    return Preload(thread)


def _wanted(cfg: DictConfig, selected: list[str]) -> bool:
    if "train" not in selected or "convert" not in selected:
        return False
    from pipeline.converters import TARGETS
    from pipeline.stages.convert import selected_targets

    return any(TARGETS[name].runtime != "onnxruntime" for name in selected_targets(cfg))


def _safe(cfg: DictConfig) -> bool:
    trainer = cfg.trainer
    one_process = str(trainer.get("devices", 1)) in ("1", "auto") and int(trainer.get("num_nodes") or 1) == 1 \
        and str(trainer.get("strategy", "auto")) in ("auto", "None", "single_device")
    return one_process and int(cfg.dataset.get("num_workers") or 0) == 0


def _import_tensorflow_and_matplotlib() -> None:
    from pipeline import plots, tf_env

    try:
        with _native_output_to_log():
            tf_env.prepare()  # Triton before TensorFlow (tf_env)
            import keras  # noqa: F401 - imports TensorFlow, its backend
        plots._pyplot()  # matplotlib with the Agg backend, as the plots use it
    except Exception as exc:  # noqa: BLE001 - the stage that needs it imports it again and reports it
        log.debug("background import skipped: %s", exc)


@contextmanager
def _native_output_to_log():
    """File descriptor 2 (TensorFlow's C++ start-up lines) into pipeline.log while the import runs. Not
    ``sys.stderr``: the training thread may take a reference to that object meanwhile, and a stream swapped
    in and closed from this thread would be closed under it."""
    from pipeline import quiet

    path = quiet.log_file()
    if path is None:
        yield
        return
    saved = os.dup(2)
    try:
        with open(path, "ab", buffering=0) as log_file:
            os.dup2(log_file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
