"""Errors a user can fix: printed as one paragraph, without a traceback."""


class PipelineError(Exception):
    """An expected failure: bad input, missing data, an unsupported converter op.

    ``message`` says what happened and ``hint`` how to fix it.
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ParityError(PipelineError):
    """A runtime's outputs drifted beyond rtol/atol."""


class ConversionError(PipelineError):
    """A converter could not produce its artifact; ``unsupported_op`` names the op when known."""

    def __init__(self, message: str, hint: str = "", unsupported_op: str | None = None):
        super().__init__(message, hint)
        self.unsupported_op = unsupported_op


class NotApplicable(ConversionError):
    """The target does not apply to this kind of model by design (full-integer int8 of a recurrent layer):
    the target is reported as ``refused``, naming the op, and the run does not fail for it."""


class StageFailed(PipelineError):
    """A stage failed in part (one convert target of several): later stages still run on the rest."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run; the report says "interrupted"."""


class StageCrashed(PipelineError):
    """A stage raised something the pipeline does not check for yet: one paragraph, the traceback in the log."""


def explain(message: str, hint: str = "", report=None, verb: str = "failed") -> str:
    """The one paragraph a user sees for an expected error: what, how to fix, where the report is."""
    lines = [f"pipeline {verb}: {message}"]
    if hint:
        lines.append(f"How to fix: {hint}")
    if report is not None:
        lines.append(f"Report: {report}")
    lines.append("(Set HYDRA_FULL_ERROR=1 for the full traceback.)")
    return "\n".join(lines)
