"""How a runtime's outputs are judged against a reference's: one module for the convert-time check
(``verify_outputs``), parity (``compare_outputs``) and the quantized targets' loose checks (their
primitives: shapes, errors, top-1 agreement, relative RMSE, used by ``pipeline.quantized``).

float32 has round-off of its own, and a deep network accumulates it: two correct float32 runtimes can
differ by more than ``parity.atol`` on the same model. The **noise floor** measures it instead of
guessing: a float64 copy of model.net (a deep copy cast to double, float inputs cast, integer inputs
left integer) is the truth, and PyTorch float32's own distance to it, per output, is that output's
float32 noise. Every runtime is then held to the fixed test or to ``parity.noise_multiple`` times that
noise, whichever is looser, per output (``parity.noise_floor=false``: the fixed test alone). A model
whose float64 copy cannot run (a custom op, complex weights, a dtype fixed in its code) keeps the
fixed tolerances, and the report says why (``reference.noise_floor.reason``).
"""
import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline import tasks

log = logging.getLogger(__name__)
TINY = float(np.finfo(np.float32).tiny)  # stands in for an atol of 0 in a relative error's denominator
# Round-off is this small a part of an output's largest value (float32's epsilon is 1.2e-7; a deep net
# amplifies it 10-1000x). A larger gap between float32 and float64 is a discrete decision that flipped (an
# argmax, a threshold): not noise, and a floor that large would hide a broken conversion.
MAX_NOISE_SCALE = 1e-3
AGAINST = "PyTorch float32 against a float64 copy of model.net"


@dataclass(frozen=True)
class NoiseFloor:
    """Per output: PyTorch float32's max abs (and max rel) error against float64, and the multiple of it
    a runtime may differ by. Empty ``outputs`` with a ``reason``: not measured, fixed tolerances only."""

    multiple: float = 0.0
    outputs: dict[str, dict] = field(default_factory=dict)
    samples: int = 0
    reason: str | None = None

    def atol(self, name: str, fixed: float) -> float:
        """The absolute tolerance applied to output ``name``: the fixed one or the floor, the looser."""
        noise = self.outputs.get(name)
        if noise is None or not noise.get("applied", True):
            return float(fixed)
        return max(float(fixed), self.multiple * noise["max_abs_err"])

    def report(self, atol: float) -> dict:
        """``reference.noise_floor`` in report.json."""
        if self.reason is not None:
            return {"measured": False, "reason": self.reason}
        return {"measured": True, "against": AGAINST, "samples": self.samples, "multiple": self.multiple,
                "outputs": {name: {**noise, "atol": self.atol(name, atol)} for name, noise in self.outputs.items()}}


def off(reason: str) -> NoiseFloor:
    return NoiseFloor(reason=reason)


# --- measuring the floor ------------------------------------------------------------------------------

def floor_of_run(ctx, feeds: dict, float32_outputs: dict | None = None) -> NoiseFloor:
    """The run's noise floor on the first ``parity.noise_samples`` of ``feeds`` (PyTorch float32's outputs on
    them given, or computed here), unless ``parity.noise_floor=false``."""
    settings = ctx.cfg.parity
    if not settings.get("noise_floor", True):
        return off("parity.noise_floor=false: the fixed rtol/atol only")
    count = min(len(next(iter(feeds.values()))), int(settings.get("noise_samples") or 64))
    rows = {name: value[:count] for name, value in feeds.items()}
    batch = max(1, int(settings.batch_size))
    try:
        net = ctx.net
        if float32_outputs is None:
            float32_outputs = _run(net, rows, ctx.output_names, batch)
    except Exception as exc:  # noqa: BLE001 - no PyTorch run to measure with: the fixed tolerances stand
        return off(f"no PyTorch float32 run to measure the noise with ({type(exc).__name__}: "
                   f"{str(exc).strip()[:200]}): the fixed rtol/atol only")
    reference = {name: value[:count] for name, value in float32_outputs.items()}
    return measure_noise(net, rows, reference, float(settings.get("noise_multiple", 8)), batch, float(settings.atol))


def measure_noise(net, feeds: dict, float32_outputs: dict, multiple: float, batch_size: int = 256,
                  atol: float = 1e-5) -> NoiseFloor:
    """``float32_outputs`` (PyTorch's, by output name, on ``feeds``) against a float64 copy of ``net``."""
    samples = len(next(iter(feeds.values())))
    try:
        exact = float64_outputs(net, feeds, list(float32_outputs), batch_size)
    except Exception as exc:  # noqa: BLE001 - a custom op, a dtype fixed in the model's code: fixed tolerances
        log.info("noise floor: the float64 copy does not run (%s: %s)", type(exc).__name__, exc)
        return off(f"the float64 copy of model.net does not run ({type(exc).__name__}: {str(exc).strip()[:200]}): "
                   "the fixed rtol/atol only")
    outputs = {}
    for name, measured in float32_outputs.items():
        truth = exact[name]
        if not np.issubdtype(measured.dtype, np.floating) or truth.shape != measured.shape:
            continue  # integer outputs (indices) are compared as they are
        max_abs, max_rel = errors(measured, truth, atol)
        if not np.isfinite(max_abs):
            continue
        outputs[name] = {"max_abs_err": max_abs, "max_rel_err": max_rel}
        scale = float(np.max(np.abs(truth), initial=0.0))
        if max_abs > MAX_NOISE_SCALE * scale:
            outputs[name].update(applied=False, reason=f"float32 differs from float64 by {max_abs:.3g}, more than "
                                 f"{MAX_NOISE_SCALE:g} of the output's largest value {scale:.3g}: not round-off "
                                 "(a discrete decision flipped), the fixed rtol/atol only")
    if not outputs:
        return off("no float output to measure the float32 noise on: the fixed rtol/atol only")
    return NoiseFloor(multiple=float(multiple), outputs=outputs, samples=samples)


def float64_outputs(net, feeds: dict, output_names: list[str], batch_size: int = 256) -> dict[str, np.ndarray]:
    """``net`` run in float64 (a deep copy: the run's network is untouched) on ``feeds`` (float inputs cast,
    integer ones as they are). Raises when the copy cannot run; complex weights are refused (``double()``
    leaves them complex64, so the copy would not be float64 throughout)."""

    tensors = [*net.parameters(), *net.buffers()]
    if any(t.is_complex() for t in tensors):
        raise TypeError("complex parameters or buffers")
    double = copy.deepcopy(net).double().eval()
    cast = {name: value.astype(np.float64) if np.issubdtype(value.dtype, np.floating) else value
            for name, value in feeds.items()}
    return _run(double, cast, output_names, batch_size)


def _run(net, feeds: dict, output_names: list[str], batch_size: int) -> dict[str, np.ndarray]:
    from pipeline.runtimes.torch_runtime import TorchRuntime

    adapter = TorchRuntime(net, list(feeds), output_names)
    count = len(next(iter(feeds.values())))
    parts = [adapter.predict({n: v[i:i + batch_size] for n, v in feeds.items()}) for i in range(0, count, batch_size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in output_names}


# --- primitives ---------------------------------------------------------------------------------------

def shape_mismatch(out: np.ndarray | None, ref: np.ndarray) -> bool:
    return out is None or out.shape != ref.shape


def errors(out: np.ndarray, ref: np.ndarray, atol: float) -> tuple[float, float]:
    """Max abs error and max rel error (|out - ref| / max(|ref|, atol); atol=0 must not divide by an exact
    zero: the smallest float32 stands in for it)."""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref.astype(np.float64)), max(float(atol), TINY))
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def max_abs_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0


def top1_agreement(kind: str, out: np.ndarray, ref: np.ndarray) -> float | None:
    """The share of predictions equal to the reference's (classifiers; None for other outputs)."""
    expected = tasks.predictions(kind, ref)
    return None if expected is None else float((tasks.predictions(kind, out) == expected).mean())


def relative_rmse(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS of the error over the reference's RMS (0 when both are zero)."""
    diff = np.sqrt(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)) if ref.size else 0.0
    scale = np.sqrt(np.mean(ref.astype(np.float64) ** 2)) if ref.size else 0.0
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


# --- parity's rule ------------------------------------------------------------------------------------

def failure_entry(error: str) -> dict:
    return {"max_abs_err": None, "max_rel_err": None, "allclose": False, "top1_agreement": None,
            "in_tolerance": False, "error": error, "metric": None}


def compare_outputs(out: dict, ref: dict, kind: str, settings, floor: NoiseFloor | None = None) -> dict:
    """Parity's verdict: errors over every output (matched by name), ``allclose`` at parity.rtol and each
    output's applied atol (the noise floor's where looser), top-1 agreement on the first, for classifiers.
    ``tolerance`` records what each output was held to."""
    floor = floor or off("not measured")
    per_output, tolerance, worst_abs, worst_rel, allclose = {}, {}, 0.0, 0.0, True
    for name, expected in ref.items():
        got = out.get(name)
        if shape_mismatch(got, expected):
            shape = None if got is None else list(got.shape)
            return failure_entry(f"output {name}: shape {shape}, PyTorch gives {list(expected.shape)}")
        atol = floor.atol(name, settings.atol)
        max_abs, max_rel = errors(got, expected, settings.atol)
        close = bool(np.allclose(got, expected, rtol=settings.rtol, atol=atol))
        per_output[name] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "allclose": close}
        tolerance[name] = {"rtol": float(settings.rtol), "atol": atol, "noise_floor": atol > float(settings.atol)}
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
        allclose &= close
    first = next(iter(ref))
    agreement = top1_agreement(kind, out[first], ref[first])
    in_tolerance = allclose and (agreement is None or agreement >= settings.min_top1_agreement)
    entry = {"max_abs_err": worst_abs, "max_rel_err": worst_rel, "allclose": allclose, "top1_agreement": agreement,
             "in_tolerance": in_tolerance, "tolerance": tolerance}
    return {**entry, "outputs": per_output} if len(per_output) > 1 else entry


def rule(settings, floor: NoiseFloor) -> str:
    """The tolerance in words, for a failure message."""
    fixed = f"rtol={settings.rtol}, atol={settings.atol}"
    if floor.reason is not None:
        return fixed
    return f"{fixed} (or {floor.multiple:g}x the float32 noise floor, report.json reference.noise_floor)"


# --- the convert stage's rule -------------------------------------------------------------------------

def verify_outputs(outputs: dict, reference: dict, rtol: float, atol: float, samples: int,
                   floor: NoiseFloor | None = None) -> dict:
    """An artifact's outputs against onnxruntime's: shapes, then values within rtol * max|onnx output| + atol,
    or the noise floor's multiple where looser."""
    floor = floor or off("not measured")
    worst = 0.0
    for name, ref in reference.items():
        out = outputs[name]
        if out.shape != ref.shape:
            return {"ok": False, "reason": f"output {name} has shape {list(out.shape)}, ONNX gives {list(ref.shape)}"}
        err = max_abs_err(out, ref)
        fixed = float(rtol) * float(np.max(np.abs(ref), initial=0.0)) + float(atol)
        limit = floor.atol(name, fixed)
        if not np.isfinite(err) or err > limit:
            return {"ok": False, "max_abs_err": err, "reason": f"output {name} differs from onnxruntime by up to "
                    f"{err:.3g} on {samples} held-out samples (allowed {limit:.3g})"}
        worst = max(worst, err)
    verdict = {"ok": True, "max_abs_err": worst, "samples": samples}
    if floor.reason is None:
        verdict["noise_floor"] = {name: floor.atol(name, 0.0) for name in floor.outputs}
    return verdict
