"""The run's artifact store: every file or folder a stage makes or a from_run source lends, by key.

A key is declared once: the run's own artifacts below (``ARTIFACTS``), and one per export target
(``pipeline.targets``). Stages read and write artifacts only through the store; it records each one's
path, kind, producer, sha256 and size in report.json ``artifacts`` (keys unchanged: ``path``, ``sha256``,
``bytes`` and the producer's extra facts), and a from_run source's ``artifacts`` section is its manifest.
"""
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.report import sha256_of, size_of
from pipeline.targets import TARGETS

FILE, FOLDER = "file", "folder"


@dataclass(frozen=True)
class ArtifactSpec:
    key: str  # report.json artifacts.<key>
    name: str  # its path in the run dir
    kind: str  # FILE or FOLDER
    description: str


ARTIFACTS = {spec.key: spec for spec in (
    ArtifactSpec("weights", "model.pt", FILE, "model.pt (the trained weights)"),
    ArtifactSpec("checkpoint", "checkpoints/last.ckpt", FILE, "the Lightning checkpoint training resumes from"),
    ArtifactSpec("onnx", "model.onnx", FILE, "model.onnx"),
    ArtifactSpec("labels", "labels.txt", FILE, "labels.txt (class names in output order)"),
)}


def spec_of(key: str) -> ArtifactSpec:
    """The artifact ``key``: one of the run's own, or an export target's."""
    if key in ARTIFACTS:
        return ARTIFACTS[key]
    target = TARGETS.get(key)
    if target is None:
        raise PipelineError(f"Unknown artifact {key!r}.",
                            f"Valid artifacts: {', '.join([*ARTIFACTS, *TARGETS])}.")
    kind = FILE if Path(target.artifact).suffix else FOLDER
    return ArtifactSpec(key, target.artifact, kind, f"the {key} target's {target.artifact}")


class ArtifactStore:
    """Where a run's artifacts are, and what report.json says of them (``records``: its artifacts section)."""

    def __init__(self, run_dir: Path, records: dict):
        self.run_dir = Path(run_dir)
        self.records = records

    def path(self, key: str) -> Path:
        """Where ``key`` is (or is to be written) in this run dir."""
        return self.run_dir / spec_of(key).name

    def has(self, key: str) -> bool:
        return key in self.records and self.path(key).exists()

    def put(self, key: str, producer: str, path: Path | None = None, **extra) -> Path:
        """Record the artifact ``key`` (written at its path, or at ``path``) as made by ``producer``."""
        path = Path(path) if path is not None else self.path(key)
        self.records[key] = {"path": str(path.relative_to(self.run_dir)), "sha256": sha256_of(path),
                             "bytes": size_of(path), "kind": spec_of(key).kind, "producer": producer, **extra}
        return path

    def forget(self, key: str) -> None:
        self.records.pop(key, None)
