"""Write files and directories under a temporary name, then rename: never a half-written artifact."""
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_json(path: Path, data) -> None:
    """Strict JSON (RFC 8259): NaN and infinities, which json.dumps would write bare, become null."""
    text = json.dumps(strict(data), indent=2, default=str, allow_nan=False) + "\n"
    write_with(path, lambda tmp: tmp.write_text(text))


def strict(value):
    """``value`` with every non-finite float replaced by None (and NumPy scalars as Python numbers)."""
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy/torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` for a sibling temp file, then atomically replace ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        writer(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp creates 0600; artifacts get the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_dir_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Like ``write_with`` for a directory artifact (a SavedModel)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        shutil.rmtree(tmp)
        writer(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
