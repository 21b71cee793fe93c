"""What a quantized or half-precision target is judged by: the task, not a float tolerance.

An int8 model cannot be ``allclose`` to PyTorch at rtol 1e-3; what matters is whether it still does
the task. In parity (``judge``), a quantized target passes when, against PyTorch on the same held-out
split (``parity.quantized``):

- classifiers: accuracy drops by at most ``max_accuracy_drop`` (default 0.01 = 1 point) and at least
  ``min_top1_agreement`` of the predictions (default 0.98) are PyTorch's;
- regressors: the MSE grows by at most ``max_mse_increase`` (relative, default 0.10 = 10 %; an MSE 10 %
  higher is an RMSE about 5 % higher). An improvement never fails.

Max abs error and ``allclose`` are reported, not gating. Without labels (synthetic data) classifiers
are judged by top-1 agreement alone, and regressors are not judged (``judged: false``).

Every other output (an embedding, a ``logdet``, a mask; matched by name) is judged against PyTorch's too
(``judge_outputs``): a float output by its relative RMSE (at most ``max_output_relative_rmse``, default
0.2), an integer or bool one (indices) by the share of equal elements (at least ``min_top1_agreement``).
The entry's ``outputs`` lists each output's ``judgement``; a failure names the output.

Before that, the convert stage checks each quantized artifact loosely (``sanity``): the reference's
shapes, finite values, and, on the few verify samples, top-1 agreement >= 50 % (classifiers, first
output) or a relative RMSE <= 0.5 against onnxruntime (other outputs): enough to catch a wrong
layout or scale, never a tolerance a sound int8 model could miss.
"""
import numpy as np

from pipeline import tasks

SANITY_MIN_AGREEMENT = 0.5
SANITY_MAX_RELATIVE_RMSE = 0.5
# The worst layers a failure message names.
LAYERS_NAMED = 3
# A calibrated range this wide came from a -inf or float32-max constant (an attention mask), not from data:
# 256 int8 levels over it put every real value on one level (and XNNPACK refuses to prepare such a model).
ABSURD_RANGE = 1e30


def relative_rmse(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS of the error over the reference's RMS (0 when both are zero)."""
    diff = np.sqrt(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2)) if ref.size else 0.0
    scale = np.sqrt(np.mean(ref.astype(np.float64) ** 2)) if ref.size else 0.0
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


def sanity(outputs: dict, reference: dict, kind: str, against: str = "onnxruntime") -> dict:
    """The convert stage's check of a quantized artifact against onnxruntime on a few held-out samples (parity's
    at another size of a free axis: ``against`` PyTorch)."""
    samples = len(next(iter(reference.values())))
    worst = 0.0
    for index, (name, ref) in enumerate(reference.items()):
        out = outputs[name]
        if out.shape != ref.shape:
            return {"ok": False, "reason": f"output {name} has shape {list(out.shape)}, {against} gives "
                    f"{list(ref.shape)}"}
        if not np.all(np.isfinite(out)):
            return {"ok": False, "reason": f"output {name} has non-finite values"}
        worst = max(worst, float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0)
        labels = tasks.predictions(kind, ref) if index == 0 else None
        if labels is not None:
            agreement = float((tasks.predictions(kind, out) == labels).mean())
            if agreement < SANITY_MIN_AGREEMENT:
                return {"ok": False, "reason": f"output {name}: top-1 agreement with {against} {agreement:.2f} on "
                        f"{samples} held-out samples (a quantized artifact needs >= {SANITY_MIN_AGREEMENT})"}
            continue
        error = relative_rmse(out, ref)
        if error > SANITY_MAX_RELATIVE_RMSE:
            return {"ok": False, "reason": f"output {name}: relative RMSE {error:.3g} against {against} on {samples} "
                    f"held-out samples (a quantized artifact needs <= {SANITY_MAX_RELATIVE_RMSE})"}
    return {"ok": True, "max_abs_err": worst, "samples": samples, "rule": "quantized (shapes, finite, loose)"}


def judge(entry: dict, reference_metric: float | None, kind: str, settings, target: dict,
          outputs: dict | None = None, reference: dict | None = None) -> None:
    """Sets ``in_tolerance`` of a quantized target's parity entry by ``parity.quantized``; adds
    ``metric_delta`` (absolute), ``metric_change`` (relative), the size and the verdict's reasons. With
    ``outputs`` and PyTorch's ``reference`` (by name), every output after the first is judged too."""
    entry["quantized"] = True
    for key in ("bytes", "float32_bytes", "size_ratio", "size_ratio_to"):
        if target.get(key) is not None:
            entry[key] = target[key]
    if entry.get("error"):
        entry["in_tolerance"] = False
        return
    metric = entry.get("metric")
    delta = None if metric is None or reference_metric is None else metric - reference_metric
    entry["metric_delta"] = delta
    entry["metric_change"] = None if delta is None or not reference_metric else delta / abs(reference_metric)
    failures, checks = [], []
    if tasks.is_classifier(kind):
        limit = float(settings.max_accuracy_drop)
        if delta is not None:
            checks.append(f"accuracy {100 * delta:+.2f} points (allowed -{100 * limit:.2f})")
            if -delta > limit + 1e-12:
                failures.append(f"accuracy dropped {-100 * delta:.2f} points ({metric:.4f} vs PyTorch's "
                                f"{reference_metric:.4f}; parity.quantized.max_accuracy_drop={limit})")
        agreement, minimum = entry.get("top1_agreement"), float(settings.min_top1_agreement)
        if agreement is not None:
            checks.append(f"top-1 agreement {agreement:.4f} (>= {minimum})")
            if agreement < minimum:
                failures.append(f"top-1 agreement {agreement:.4f} < parity.quantized.min_top1_agreement={minimum}")
    elif entry["metric_change"] is not None:
        limit = float(settings.max_mse_increase)
        change = entry["metric_change"]
        checks.append(f"MSE {100 * change:+.2f} % (allowed +{100 * limit:.1f} %)")
        if change > limit + 1e-12:
            failures.append(f"MSE {100 * change:+.1f} % ({metric:.4g} vs PyTorch's {reference_metric:.4g}; "
                            f"parity.quantized.max_mse_increase={limit})")
    task_failed = bool(failures)
    task_judgement = "; ".join(failures) if failures else (", ".join(checks) or "no labels: not judged")
    if outputs is not None and reference is not None:
        per_output = judge_outputs(outputs, reference, settings)
        first = next(iter(reference))
        per_output[first] = {"judged_by": "task", "in_tolerance": not task_failed, "judgement": task_judgement}
        _merge_outputs(entry, per_output)
        for name, verdict in per_output.items():
            if name != first:
                checks.append(f"output {name}: {verdict['judgement']}")
                if not verdict["in_tolerance"]:
                    failures.append(f"output {name}: {verdict['judgement']}")
    entry["judged"] = bool(checks)
    entry["in_tolerance"] = not failures
    entry["judgement"] = "; ".join(failures) if failures else (", ".join(checks) or "no labels: not judged")
    if failures and target.get("worst_layers"):  # the worst still quantized, by what keeping them in float gains
        kept = set(target.get("float_fallback") or [])
        quantized = [layer for layer in target["worst_layers"] if layer["layer"] not in kept
                     and layer.get("relative_rmse", 0) > 0]
        # output_gain is measured on the task's output: it ranks only when that output is the one that failed
        gaining = [layer for layer in quantized if (layer.get("output_gain") or 0) > 0] if task_failed else []
        entry["worst_layers"] = [layer["layer"] for layer in (gaining or quantized)][:LAYERS_NAMED]
        entry["worst_layer_ops"] = [layer["op"] for layer in (gaining or quantized)][:LAYERS_NAMED]
        entry["float_fallback"] = list(target.get("float_fallback") or [])
        gains = [layer["output_gain"] for layer in quantized if layer.get("output_gain") is not None]
        if gains and task_failed:
            entry["best_layer_gain"] = max(gains)


def judge_outputs(outputs: dict, reference: dict, settings) -> dict:
    """Each output after the first (the task's) against PyTorch's, by name: float outputs by relative RMSE,
    integer and bool ones (indices, masks) by the share of equal elements."""
    verdicts = {}
    for name, ref in list(reference.items())[1:]:
        out = outputs.get(name)
        if out is None or out.shape != ref.shape:
            shape = None if out is None else list(out.shape)
            verdicts[name] = {"judged_by": "shape", "in_tolerance": False,
                              "judgement": f"shape {shape}, PyTorch gives {list(ref.shape)}"}
        elif np.issubdtype(ref.dtype, np.floating):
            verdicts[name] = _by_relative_rmse(out, ref, float(settings.max_output_relative_rmse))
        else:
            verdicts[name] = _by_agreement(out, ref, float(settings.min_top1_agreement))
    return verdicts


def _by_relative_rmse(out: np.ndarray, ref: np.ndarray, limit: float) -> dict:
    error = relative_rmse(out, ref)
    ok = bool(np.isfinite(error)) and error <= limit + 1e-12
    sign = "<=" if ok else ">"
    return {"judged_by": "relative_rmse", "relative_rmse": error, "in_tolerance": ok,
            "judgement": f"relative RMSE {error:.3g} against PyTorch ({sign} "
                         f"parity.quantized.max_output_relative_rmse={limit})"}


def _by_agreement(out: np.ndarray, ref: np.ndarray, minimum: float) -> dict:
    agreement = float((out == ref).mean()) if ref.size else 1.0
    ok = agreement >= minimum
    sign = ">=" if ok else "<"
    return {"judged_by": "agreement", "agreement": agreement, "in_tolerance": ok,
            "judgement": f"{agreement:.4f} of its elements equal to PyTorch's ({sign} "
                         f"parity.quantized.min_top1_agreement={minimum})"}


def _merge_outputs(entry: dict, verdicts: dict) -> None:
    """Each output's verdict beside its errors in ``entry['outputs']`` (kept for a single output too)."""
    outputs = entry.setdefault("outputs", {})
    for name, verdict in verdicts.items():
        outputs.setdefault(name, {}).update(verdict)


def describe(entry: dict, target: str) -> str:
    """A failed quantized target in one sentence, with the layers that lose most and how to keep them in float."""
    if entry.get("error"):
        return f"{entry['runtime']}: {entry['error']}"
    text = f"{entry['runtime']}: {entry['judgement']}"
    layers, kept = entry.get("worst_layers"), entry.get("float_fallback") or []
    if layers:
        already = f" besides {', '.join(kept)} (kept in float)" if kept else ""
        ops = entry.get("worst_layer_ops") or [""] * len(layers)
        shown = ", ".join(f"{name} ({op})" if op else name for name, op in zip(layers, ops, strict=False))
        text += (f"; the layers that lose most{already}: {shown} (report.json targets.{target}.worst_layers); "
                 f"keep them in float with export.{target}.float_fallback=[{','.join([*kept, *layers])}]")
        best = entry.get("best_layer_gain")
        if best is not None and best < SMALL_GAIN:
            text += (f"; but keeping any one of them in float removes at most {100 * max(best, 0.0):.1f} % of the "
                     "int8 output error: the loss is spread over the model, lies in integer index arithmetic the "
                     "per-layer statistics do not see (grid_sample, gathers by computed indices), or the held-out "
                     "inputs leave the range calibrated on the training split (a trending series); "
                     f"{_instead(target)}")
    return text


# Below this share of the int8 output error removed by the best single layer kept in float, naming layers to
# keep in float is no help: the failure says so, and what to use instead.
SMALL_GAIN = 0.1


def _instead(target: str) -> str:
    from pipeline.targets import TARGETS

    spec = TARGETS.get(target)
    return (spec.instead if spec is not None else "") or "use a float target"


def refusal(target: dict) -> str:
    """Why a refused target does not apply: its backend's own words (the entry's reason prefixes the backend)."""
    return next((a["reason"] for a in target.get("attempts", []) if a.get("status") == "refused"),
                target.get("reason", ""))
