"""Whether a converted artifact answers a second call like its first, at the batch size parity uses.

TFLite's XNNPACK delegate has answered the first call at a batch of 48 or more right and every later
call at that size wrong (memory of one call reused by the next: timm's mvitv2_tiny before keras3 wrote its
Dense layers over constant reshapes); which call goes wrong depends on what the memory held, so such a
model passes parity once and fails it the next time. The convert stage's check of 8 samples in one call
never sees it: this one calls twice, at parity's batch size, and compares the calls.
"""
import numpy as np


def parity_batch(cfg, available: int) -> int:
    """The batch size parity's comparison pass calls the runtime with."""
    samples = cfg.parity.get("samples")
    count = available if samples is None else min(int(samples), available)
    return max(1, min(int(cfg.parity.batch_size), count))


def second_call_differs(adapter, feeds: dict, limit: float) -> dict | None:
    """None when two calls on ``feeds`` agree within ``limit``; else the verdict naming the output."""
    first = adapter.predict(feeds)
    second = adapter.predict(feeds)
    batch = len(next(iter(feeds.values())))
    for name, value in first.items():
        other = second[name]
        if value.dtype.kind == "f":
            err = float(np.max(np.abs(value.astype(np.float64) - other), initial=0.0))
            same = np.isfinite(err) and err <= limit or np.array_equal(value, other, equal_nan=True)
        else:
            err, same = float("nan"), np.array_equal(value, other)
        if not same:
            return {"ok": False, "max_abs_err": err,
                    "reason": f"output {name}: a second call at batch {batch} answers differently from the first "
                              f"(by up to {err:.3g}): the runtime reuses memory between calls wrongly"}
    return None
