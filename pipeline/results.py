"""What the stages return and hand each other, typed: the stages talk through these and the artifact store,
never by reading report.json back. ``report.Report.record`` writes a stage's result into report.json
(each result names its sections there). Convert and parity write their entries as they go instead, so
that a target or runtime that fails leaves what the others measured (train too: a diverged training's
metrics); their typed hand-over is ``Converted``.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ExportResult:
    opset: int
    requested_opset: int
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict  # {tensor: {axis: name}}

    def sections(self) -> dict:
        return {"export": asdict(self)}


@dataclass
class CheckResult:
    opset: int
    ir_version: int
    bytes: int
    nodes: int
    inputs: list[dict]
    outputs: list[dict]
    onnxruntime_output_shapes: dict

    def sections(self) -> dict:
        return {"check": asdict(self)}


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
