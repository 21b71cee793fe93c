"""What one stage hands the next, typed: the stages talk through these and the artifact store, never by
reading report.json back (the report is written from them)."""
from dataclasses import dataclass, field
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


@dataclass
class RunResults:
    """The hand-overs of one run, each written by one stage (or from_run) and read by later ones."""

    # from_run -> train: the checkpoint of an unfinished run to resume
    resume_from: Path | None = None
    # convert (or from_run) -> parity, diagnosis: target name -> its artifact
    converted: dict[str, Converted] = field(default_factory=dict)
    # parity -> the plots: outputs on the held-out data per runtime ("torch": the reference), and the labels
    outputs: dict = field(default_factory=dict)
    held_out_targets: object = None
    # parity's diagnosis -> the plots: per runtime, [(node index, max abs error)] along the graph
    divergence_curves: dict = field(default_factory=dict)
