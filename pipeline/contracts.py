"""What a stage needs and makes: each stage module declares a ``StageContract`` (``CONTRACT``); the runner
derives the input checks, preflight's needs and from_run's adoption from them. Artifacts are named by
their store keys (``pipeline.artifacts``); ``TARGETS`` stands for every selected export target's."""
from dataclasses import dataclass

# The stages in run order.
STAGES = ("train", "export", "check", "convert", "parity")
TARGETS = "targets"  # every selected export target's artifact


@dataclass(frozen=True)
class StageContract:
    name: str
    needs: tuple[str, ...] = ()  # artifacts it cannot run without: an earlier stage's, or from_run's
    # artifacts it reads when a run has them: a from_run source must (parity measures its conversions)
    uses: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    needs_data: bool = True  # reads the dataset (its held-out inputs at least)
    needs_network: bool = True  # builds model.net (the reference, the export, training)


def producer(contracts: dict[str, StageContract], artifact: str) -> str | None:
    """The stage whose contract makes ``artifact``."""
    return next((name for name, contract in contracts.items() if artifact in contract.makes), None)
