"""A full disk (ENOSPC) is a fault of the machine, not of the model or the config: one message that names the
folder and what is free there, wherever it happens (train, export, convert, the report)."""
import errno
import shutil
from pathlib import Path

from pipeline.errors import PipelineError

# Libraries that wrap the OSError (TensorFlow, onnx-tf) keep at least its text.
FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class DiskFull(PipelineError):
    """No space left where the run writes: stops the stage (every backend, every retry would fail the same way)."""


def is_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or an exceeded quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def full_error(folder: Path, doing: str, needed: int | None = None, run_dir: Path | None = None) -> DiskFull:
    """The message for a full disk while ``doing`` (e.g. "the train stage wrote its checkpoint") in ``folder``
    (of the run in ``run_dir``, when it is another folder)."""
    need = f"; about {_size(needed)} more is needed" if needed else ""
    return DiskFull(f"The disk holding {folder} is full (No space left on device) while {doing}: "
                    f"{_free(folder)} free there{need}.",
                    "Free space on that disk (or give the run a folder on another disk with hydra.run.dir=...), "
                    f"then resume with: python -m pipeline from_run={run_dir or folder}")


def _free(folder: Path) -> str:
    for candidate in [Path(folder), *Path(folder).parents]:
        try:
            return _size(shutil.disk_usage(candidate).free)
        except OSError:
            continue
    return "unknown"


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"
