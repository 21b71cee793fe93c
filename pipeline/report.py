"""report.json: the run's contract with tools and checks. Rewritten after every stage."""
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.contracts import STAGES  # noqa: F401 - report.json has an entry per stage

REPORT_NAME = "report.json"
# report.json's layout: raised when a key is removed or changes meaning (keys are only ever added).
SCHEMA_VERSION = 1
# Its top-level keys and who writes them (docs/report-schema.md describes every key below them).
TOP_LEVEL_KEYS = {
    "schema_version": "this layout's version", "status": "the run: running, ok, failed, interrupted",
    "model": "name, parameters, constructor arguments from the data", "data": "what the artifacts take",
    "stages": "each stage's status, seconds, reason, warnings", "metrics": "the train stage's test metrics",
    "parity": "per runtime: errors, agreement, metric, timing", "reference": "PyTorch on the held-out data",
    "targets": "each export target's conversion", "artifacts": "the artifact store: path, sha256, bytes",
    "export": "opset, inputs, outputs, free axes", "check": "the ONNX model as checked",
    "trainer": "epochs, devices, strategy", "plots": "the images report.md shows",
    "from_run": "the source run, for from_run", "environment": "versions, threads, data files",
}
TRACKED_PACKAGES = (
    "torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "numpy", "onnx",
    "onnxruntime", "onnx-tf", "onnx2keras", "tensorflow", "keras", "ai-edge-litert", "aeon",
)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    env["git_sha"] = _git_sha()
    return env


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Report:
    """The in-memory report; ``save`` writes it atomically to ``<run_dir>/report.json``."""

    def __init__(self, run_dir: Path, model_name: str):
        self.run_dir = Path(run_dir)
        self.data = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "model": {"name": model_name, "parameters": None},
            "stages": {name: {"status": "pending", "seconds": None} for name in STAGES},
            "metrics": {},
            "parity": [],
            "reference": {},
            "targets": {},
            "artifacts": {},
            "environment": environment(),
        }

    @property
    def path(self) -> Path:
        return self.run_dir / REPORT_NAME

    def record(self, result) -> None:
        """A stage's typed result (``pipeline.results``) into its report sections (metrics are merged: a
        from_run source's stay where this run measures none)."""
        for key, value in result.sections().items():
            if key == "metrics":
                self.data["metrics"].update(value)
            else:
                self.data[key] = value

    def save(self) -> None:
        write_json(self.path, self.data)
