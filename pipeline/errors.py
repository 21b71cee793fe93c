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


class StageFailed(PipelineError):
    """A stage failed in part (one convert target of several): later stages still run on the rest."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run; the report says "interrupted"."""
