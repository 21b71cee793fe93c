"""Range checks for config values: each returns None when the value is valid, else what a valid value
looks like. Dataclass fields carry one in their metadata (``ranged``); ``pipeline.schema.check_ranges``
applies them. A leaf module: the config schema and every spec with options (export targets) use it."""
import math
from collections.abc import Callable
from dataclasses import field
from typing import Any

from omegaconf import ListConfig

Check = Callable[[Any], str | None]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Integers go to C code (torch, numpy, itertools): beyond int64 they overflow there instead of failing here.
MAX_INT = 2**63 - 1


def at_least(low: float, *, integer: bool = False, most: int = MAX_INT) -> Check:
    """``low`` or more; an integer also at most ``most`` (int64, or a sane limit)."""
    def check(value):
        if value is None or (_number(value) and value >= low and (not integer or (isinstance(value, int)
                                                                                   and value <= most))):
            return None
        return f"{'an integer' if integer else 'a number'} >= {low}" + (f" (at most {most})" if integer else "")
    return check


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
            integer: bool = False) -> Check:
    def check(value):
        if value is None or (_number(value) and (not integer or isinstance(value, int))
                             and (low < value if low_open else low <= value)
                             and (value < high if high_open else value <= high)):
            return None
        return (f"{'an integer' if integer else 'a number'} in {'(' if low_open else '['}{low}, "
                f"{high}{')' if high_open else ']'}")
    return check


def one_of(*choices) -> Check:
    def check(value):
        return None if value is None or value in choices else f"one of: {', '.join(map(str, choices))}"
    return check


def batches_limit(*, zero_ok: bool) -> Check:
    """Lightning's limit_*_batches: a fraction of the batches (float) or a number of batches (int)."""
    def check(value):
        if isinstance(value, int) and not isinstance(value, bool) and value >= (0 if zero_ok else 1):
            return None
        if isinstance(value, float) and math.isfinite(value) and (0.0 <= value if zero_ok else 0.0 < value) \
                and value <= 1.0:
            return None
        return (f"a fraction in {'[' if zero_ok else '('}0, 1] (e.g. 0.25) or a whole number of batches "
                f">= {0 if zero_ok else 1} (e.g. 10)")
    return check


def a_path(value) -> str | None:
    """A file or dir named on the command line: null, or a name (``''`` or spaces would be read as
    "not given" and silently ignored, or as the working directory)."""
    if value is None or (isinstance(value, str) and value.strip()):
        return None
    return "a path (a file or directory name)"


def devices(value) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)):
        return None
    if isinstance(value, list | ListConfig) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return None
    return "a number of devices >= 1, -1 (all), 'auto', or a list of device indices such as [0, 1]"


# A run of more epochs or steps than this is a typo (trainer.max_epochs=1000000000 never ends), not a plan.
MAX_EPOCHS, MAX_STEPS = 1_000_000, 1_000_000_000


def not_zero_steps(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and (value == -1 or 1 <= value <= MAX_STEPS):
        return None
    return f"-1 (no limit) or an integer in [1, {MAX_STEPS}]"


def ranged(default, check: Check, **kwargs):
    """A dataclass field whose value ``check_ranges`` validates."""
    return field(default=default, metadata={"check": check}, **kwargs)
