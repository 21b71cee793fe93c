"""The stages, one module each, in run order (``pipeline.contracts.STAGES``). Each module has
``CONTRACT`` (what it needs and makes) and ``run(ctx)``."""
import importlib

from pipeline.contracts import STAGES, StageContract


def module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def contracts() -> dict[str, StageContract]:
    return {name: module(name).CONTRACT for name in STAGES}
