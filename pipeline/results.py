"""What one stage hands the next, typed: the stages talk through these and the artifact store, never by
reading report.json back (the report is written from them)."""
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Converted:
    """A target's artifact as the convert stage accepted it (or a from_run source lent it)."""

    target: str
    path: Path
    facts: dict  # report.json targets.<target>: backend, layouts, quantization, sizes

    @property
    def backend(self) -> str | None:
        return self.facts.get("backend")

    @property
    def input_perms(self) -> dict | None:
        return self.facts.get("input_perms")

    @property
    def output_perms(self) -> dict | None:
        return self.facts.get("output_perms")
