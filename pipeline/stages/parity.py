"""parity: every runtime runs the same held-out data; outputs are compared with PyTorch's, by name.

Per runtime: max abs error, max rel error (|out - ref| / max(|ref|, atol)), ``np.allclose`` at
rtol/atol, top-1 agreement (classifiers, on the first output), the task metric, batch-1 latency
(median) and batched throughput. Outputs are matched by ONNX name and brought back to the ONNX
layout by the runtime adapters; a shape that does not match is a parity failure of that runtime.
The stage fails after the report is written if any runtime drifts. Quantized and half-precision
targets are judged by the task metric and top-1 agreement on the first output, and every other output
by its error against PyTorch's, by name (``pipeline.quantized``, ``parity.quantized``); their max abs
error is reported, not gating. With free axes (``export.dynamic_axes``) every runtime also runs at the
other sizes of ``parity.shapes`` (``sizes`` in its entry): a miss there takes it out of tolerance.
"""
import logging
import time

import numpy as np

from pipeline import diagnose, free_axes, quantized, runtimes, tasks
from pipeline.context import RunContext
from pipeline.contracts import TARGETS as CONVERTED_TARGETS
from pipeline.contracts import StageContract
from pipeline.errors import ParityError
from pipeline.preflight import check_finite_outputs
from pipeline.runtimes import ONNX_RUNTIME, REFERENCE
from pipeline.targets import TARGETS

log = logging.getLogger(__name__)

CONTRACT = StageContract("parity", needs=("weights", "onnx"), uses=(CONVERTED_TARGETS,))


def run(ctx: RunContext) -> None:
    settings = ctx.cfg.parity
    feeds, labels = _held_out(ctx, settings.samples)
    reference = runtimes.load(REFERENCE, ctx.net, ctx.input_names, ctx.output_names)
    ref_out, ref_timing = _measure(reference, feeds, settings)
    check_finite_outputs(ctx.cfg, ref_out, "held-out")
    ctx.results.outputs[REFERENCE], ctx.results.held_out_targets = ref_out, labels
    samples = len(next(iter(feeds.values())))
    ctx.report.data["reference"] = {"runtime": REFERENCE, "samples": samples, "metric": _metric(ctx, ref_out, labels),
                                    **ref_timing}
    sizes = _other_sizes(ctx, feeds, reference, settings)
    if sizes:
        ctx.report.data["reference"]["shapes"] = [free_axes.describe(shapes) for shapes, _, _ in sizes]
    entries = []
    for name, load in _runtimes_under_test(ctx):
        entry = {"runtime": name, "samples": samples}
        adapter = None
        try:  # an artifact that does not even load (a flatbuffer with a bad tensor) fails parity, named
            adapter = load()
            out, timing = _measure(adapter, feeds, settings)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the data fails parity, clearly
            entry.update(failure_entry(f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
        else:
            ctx.results.outputs[name] = out
            entry.update(compare(out, ref_out, ctx.output_kind, settings))
            entry["metric"] = _metric(ctx, out, labels) if entry.get("error") is None else None
            entry.update(timing)
        target = TARGETS.get(name.split("@")[0])
        is_quantized = target is not None and target.quantized
        if is_quantized:
            quantized.judge(entry, ctx.report.data["reference"]["metric"], ctx.output_kind, settings.quantized,
                            ctx.results.converted[target.name].facts, ctx.results.outputs.get(name), ref_out)
        if sizes and adapter is not None:
            _judge_sizes(entry, adapter, sizes, ctx.output_kind, settings, is_quantized)
        entries.append(entry)
        log.info("parity %-11s max_abs_err=%s allclose=%s", name, entry["max_abs_err"], entry["allclose"])
    ctx.report.data["parity"] = entries
    ctx.report.save()  # the measurements stand even if the diagnosis below is interrupted
    ctx.results.divergence_curves = diagnose.run(ctx, entries)  # not the quantized targets: their report names layers
    drifted = [e for e in entries if not e["in_tolerance"] and not e.get("quantized")]
    missed = [e for e in entries if not e["in_tolerance"] and e.get("quantized")]
    if drifted or missed:
        parts = [f"Parity failed for {', '.join(e['runtime'] for e in drifted)} "
                 f"({'; '.join(_describe(e) for e in drifted)}) at rtol={settings.rtol}, atol={settings.atol}."
                 ] if drifted else []
        parts += [f"Quantized target {quantized.describe(e, e['runtime'])}." for e in missed]
        hints = ["loosen parity.rtol/atol only if the drift is acceptable"] if drifted else []
        if missed:  # only what applies to the targets that missed: a dynamic target has no calibration
            targets = {name: converted.facts for name, converted in ctx.results.converted.items()}
            remedies = ["keep the named layers in float"] if any(e.get("worst_layers") for e in missed) else []
            remedies += ["calibrate on more samples (export.calibration_samples)"] if any(
                targets.get(e["runtime"], {}).get("calibration_samples") for e in missed) else []
            remedies += ["use another quantized target"] if not remedies else []
            task = ctx.output_names[0]  # the remark is about class scores: only when those failed
            ties = (" (random or barely trained weights give near-tied class scores, whose top-1 int8 flips)"
                    if any(e.get("top1_agreement") is not None
                           and not e.get("outputs", {}).get(task, {}).get("in_tolerance", False) for e in missed)
                    else "")
            hints += [f"{', '.join(remedies)}, or loosen parity.quantized.* if the loss is acceptable{ties}"]
        raise ParityError(" ".join(parts), f"Inspect report.json parity; {'; '.join(hints)}.")


def _describe(entry: dict) -> str:
    if entry.get("error"):
        return f"{entry['runtime']}: {entry['error']}"
    if entry.get("quantized"):
        return f"{entry['runtime']}: {entry.get('judgement', 'out of tolerance')}"
    if entry.get("allclose") and entry.get("size_failure"):  # in tolerance at the trained size only
        return f"{entry['runtime']}: {entry['size_failure']}"
    where = entry.get("divergence", {})
    first = f", first diverges at node {where['node']} ({where['op_type']})" if where.get("node") else ""
    other = f"; {entry['size_failure']}" if entry.get("size_failure") else ""
    return (f"{entry['runtime']}: max_abs_err={entry['max_abs_err']:.3g}, "
            f"top1_agreement={entry['top1_agreement']}{first}{other}")


def _other_sizes(ctx: RunContext, feeds: dict, reference, settings) -> list[tuple[dict, dict, dict]]:
    """(shapes, inputs, PyTorch's outputs) at each other size of the free axes (``parity.shapes``), on
    ``parity.shapes_samples`` held-out samples brought to that size by repetition."""
    from pipeline.onnx_model import read_onnx

    free = free_axes.of_onnx(read_onnx(ctx.onnx_path))
    if not free:
        if settings.get("shapes"):
            raise ParityError(f"parity.shapes={settings.shapes} needs free axes, and the model has none.",
                              "Set export.dynamic_axes (e.g. spatial or time), or drop parity.shapes.")
        return []
    few = _rows(feeds, 0, int(settings.shapes_samples))
    trained = {name: value.shape for name, value in few.items()}
    result = []
    for shapes in free_axes.parity_shapes(settings.get("shapes"), free, trained):
        inputs = free_axes.feeds_at(few, shapes)
        outputs, _ = _measure(reference, inputs, settings, timed=False)
        result.append((shapes, inputs, outputs))
    return result


def _judge_sizes(entry: dict, adapter, sizes: list, kind: str, settings, is_quantized: bool) -> None:
    """The runtime at each other size against PyTorch there: allclose (quantized targets: the loose sanity
    rule, shapes and finite values). ``entry['sizes']`` lists each; a miss takes the entry out of tolerance."""
    entry["sizes"] = []
    for shapes, inputs, expected in sizes:
        where = f"at {free_axes.describe(shapes)}"
        try:
            got, _ = _measure(adapter, inputs, settings, timed=False)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot take the size fails parity there
            verdict = {"in_tolerance": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        else:
            verdict = quantized.sanity(got, expected, kind, "PyTorch") if is_quantized else \
                compare(got, expected, kind, settings)
            verdict["in_tolerance"] = verdict.pop("ok", verdict.get("in_tolerance"))
        entry["sizes"].append({"shapes": {n: list(s[1:]) for n, s in shapes.items()}, **verdict})
        if not verdict["in_tolerance"] and not entry.get("size_failure"):
            reason = verdict.get("error") or verdict.get("reason") or (
                f"max_abs_err={verdict['max_abs_err']:.3g}, top1_agreement={verdict.get('top1_agreement')}")
            entry["size_failure"] = f"{where}: {reason}"
            entry["in_tolerance"] = False
            if is_quantized:
                entry["judgement"] = f"{entry.get('judgement', '')}; {where}: {reason}".lstrip("; ")


def _held_out(ctx: RunContext, samples: int | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    feeds = ctx.samples.held_out(None if samples is None else int(samples))
    count = len(next(iter(feeds.values())))
    labels = ctx.data.targets("test")
    return feeds, None if labels is None else labels[:count].numpy()


def _metric(ctx: RunContext, outputs: dict, labels) -> float | None:
    if labels is None:
        return None
    kind = ctx.output_kind
    return tasks.evaluate(kind, outputs[ctx.output_names[0]], labels, ctx.data.inverse)[tasks.metric_name(kind)]


def _runtimes_under_test(ctx: RunContext):
    """(name, loader) per runtime: loaded inside parity's try, so a load failure is that runtime's. Each
    artifact runs on the runtime its target names, and on the alternatives ``parity.runtimes`` picks
    (reported as ``<target>@<runtime>``)."""
    names = (ctx.input_names, ctx.output_names)
    chosen = list(ctx.cfg.parity.get("runtimes") or [])
    artifacts = [(ONNX_RUNTIME, ONNX_RUNTIME, ctx.onnx_path, None)]
    artifacts += [(target, TARGETS[target].runtime, converted.path, converted)
                  for target, converted in ctx.results.converted.items()]
    for label, runtime, path, converted in artifacts:
        options = {"threads": ctx.threads, "input_perms": converted and converted.input_perms,
                   "output_perms": converted and converted.output_perms}
        yield label, lambda r=runtime, p=path, o=options: runtimes.load(r, p, *names, **o)
        for other in runtimes.alternatives(runtime, chosen):
            yield f"{label}@{other.name}", lambda r=other.name, p=path, o=options: runtimes.load(r, p, *names, **o)


def failure_entry(error: str) -> dict:
    return {"max_abs_err": None, "max_rel_err": None, "allclose": False, "top1_agreement": None,
            "in_tolerance": False, "error": error, "metric": None}


def compare(out: dict, ref: dict, kind: str, settings) -> dict:
    """Errors over every output (matched by name); top-1 agreement on the first, for classifiers."""
    per_output, worst_abs, worst_rel, allclose = {}, 0.0, 0.0, True
    for name, expected in ref.items():
        got = out.get(name)
        if got is None or got.shape != expected.shape:
            shape = None if got is None else list(got.shape)
            return failure_entry(f"output {name}: shape {shape}, PyTorch gives {list(expected.shape)}")
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        # atol=0 must not divide by an exact zero: the smallest float32 stands in for it.
        rel = diff / np.maximum(np.abs(expected), max(float(settings.atol), float(np.finfo(np.float32).tiny)))
        close = bool(np.allclose(got, expected, rtol=settings.rtol, atol=settings.atol))
        per_output[name] = {"max_abs_err": float(diff.max(initial=0.0)), "max_rel_err": float(rel.max(initial=0.0)),
                            "allclose": close}
        worst_abs = max(worst_abs, per_output[name]["max_abs_err"])
        worst_rel = max(worst_rel, per_output[name]["max_rel_err"])
        allclose &= close
    first = next(iter(ref))
    ref_labels, labels = tasks.predictions(kind, ref[first]), tasks.predictions(kind, out[first])
    agreement = None if ref_labels is None else float((ref_labels == labels).mean())
    in_tolerance = allclose and (agreement is None or agreement >= settings.min_top1_agreement)
    entry = {"max_abs_err": worst_abs, "max_rel_err": worst_rel, "allclose": allclose, "top1_agreement": agreement,
             "in_tolerance": in_tolerance}
    return {**entry, "outputs": per_output} if len(per_output) > 1 else entry


def _rows(feeds: dict, start: int, stop: int) -> dict:
    return {name: value[start:stop] for name, value in feeds.items()}


def _measure(adapter, feeds: dict, settings, timed: bool = True) -> tuple[dict, dict]:
    """Outputs over ``feeds`` in batches and, when ``timed`` and unless ``parity.timing=false``, the batched
    throughput and the batch-1 latency median, each with the number of calls it rests on. The timing is
    bounded: the comparison pass itself is the throughput run, and the batch-1 calls stop at
    ``latency_budget_s`` seconds. Untimed (the other input sizes): outputs only, no timing keys."""
    count = len(next(iter(feeds.values())))
    batch = max(1, min(int(settings.batch_size), count))  # 64 samples: the throughput at batch 64, not 256
    if not timed or not settings.get("timing", True):
        parts = [adapter.predict(_rows(feeds, i, i + batch)) for i in range(0, count, batch)]
        untimed = {"latency_ms_batch1": None, "throughput_per_s": None, "throughput_batch_size": batch,
                   "latency_calls": 0, "throughput_calls": 0}
        return _joined(parts), untimed if timed else {}
    first = adapter.predict(_rows(feeds, 0, batch))  # warm-up (graph tracing, allocation): not throughput
    starts = list(range(batch, count, batch)) or [0]  # a single batch is timed once more
    start = time.perf_counter()
    timed_parts = [adapter.predict(_rows(feeds, i, i + batch)) for i in starts]
    elapsed = time.perf_counter() - start
    timed_rows = sum(min(i + batch, count) - i for i in starts)
    out = _joined([first, *timed_parts] if count > batch else [first])
    latencies = _batch1_latencies(adapter, feeds, int(settings.latency_repeats), settings.get("latency_budget_s"))
    return out, {"latency_ms_batch1": float(np.median(latencies) * 1e3),
                 "throughput_per_s": float(timed_rows / elapsed), "throughput_batch_size": batch,
                 "latency_calls": len(latencies), "throughput_calls": len(timed_parts)}


def _batch1_latencies(adapter, feeds: dict, most: int, budget_s: float | None) -> list[float]:
    """Seconds per batch-1 call, after a warm-up: ``most`` calls, fewer when ``budget_s`` runs out first
    (a large model on a slow runtime takes seconds per call; the median needs a handful)."""
    single = adapter.prepare(_rows(feeds, 0, 1))
    adapter.invoke(single)
    latencies, spent = [], 0.0
    while len(latencies) < most and (budget_s is None or spent < float(budget_s) or not latencies):
        tick = time.perf_counter()
        adapter.invoke(single)
        latencies.append(time.perf_counter() - tick)
        spent += latencies[-1]
    return latencies


def _joined(parts: list[dict]) -> dict:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
