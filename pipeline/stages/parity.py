"""parity: every runtime runs the same held-out data; outputs are compared with PyTorch's.

Per runtime: max abs error, max rel error (|out - ref| / max(|ref|, atol)), ``np.allclose`` at
rtol/atol, top-1 agreement (classifiers), the task metric, batch-1 latency (median) and batched
throughput. The stage fails after the report is written if any runtime drifts.
"""
import logging
import time

import numpy as np

from pipeline import runtimes, tasks
from pipeline.context import RunContext
from pipeline.errors import ParityError

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> None:
    settings = ctx.cfg.parity
    x, y = _held_out(ctx, settings.samples)
    reference = runtimes.load("torch", ctx.net)
    ref_out, ref_timing = _measure(reference, x, settings)
    ctx.outputs["torch"], ctx.held_out_targets = ref_out, y
    kind = ctx.output_kind
    inverse = ctx.data.splits.inverse
    metric = tasks.metric_name(kind)
    ctx.report.data["reference"] = {"runtime": "torch", "samples": len(x),
                                    "metric": tasks.evaluate(kind, ref_out, y, inverse)[metric], **ref_timing}
    entries = []
    for name, adapter in _runtimes_under_test(ctx):
        out, timing = _measure(adapter, x, settings)
        ctx.outputs[name] = out
        entry = {"runtime": name, "samples": len(x), **compare(out, ref_out, kind, settings),
                 "metric": tasks.evaluate(kind, out, y, inverse)[metric], **timing}
        entries.append(entry)
        log.info("parity %-11s max_abs_err=%.3g allclose=%s", name, entry["max_abs_err"], entry["allclose"])
    ctx.report.data["parity"] = entries
    drifted = [e for e in entries if not e["in_tolerance"]]
    if drifted:
        details = "; ".join(f"{e['runtime']}: max_abs_err={e['max_abs_err']:.3g}, "
                            f"top1_agreement={e['top1_agreement']}" for e in drifted)
        raise ParityError(f"Parity failed for {', '.join(e['runtime'] for e in drifted)} ({details}) "
                          f"at rtol={settings.rtol}, atol={settings.atol}.",
                          "Inspect report.json parity; loosen parity.rtol/atol only if the drift is acceptable.")


def _held_out(ctx: RunContext, samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = ctx.data.splits.test
    count = len(x) if samples is None else min(int(samples), len(x))
    return x[:count].numpy(), y[:count].numpy()


def _runtimes_under_test(ctx: RunContext):
    threads = ctx.threads
    yield "onnxruntime", runtimes.load("onnxruntime", ctx.onnx_path, threads=threads)
    for target, path in ctx.converted.items():
        layout = ctx.report.data["targets"].get(target, {}).get("input_layout", "")
        yield target, runtimes.load(target, path, layout=layout, threads=threads)


def compare(out: np.ndarray, ref: np.ndarray, kind: str, settings) -> dict:
    out = out.reshape(ref.shape)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref), settings.atol)
    allclose = bool(np.allclose(out, ref, rtol=settings.rtol, atol=settings.atol))
    ref_labels, labels = tasks.predictions(kind, ref), tasks.predictions(kind, out)
    agreement = None if ref_labels is None else float((ref_labels == labels).mean())
    in_tolerance = allclose and (agreement is None or agreement >= settings.min_top1_agreement)
    return {"max_abs_err": float(diff.max()), "max_rel_err": float(rel.max()), "allclose": allclose,
            "top1_agreement": agreement, "in_tolerance": in_tolerance}


def _measure(adapter, x: np.ndarray, settings) -> tuple[np.ndarray, dict]:
    """Outputs over ``x`` in batches, the batched throughput, and the batch-1 latency median."""
    batch = int(settings.batch_size)
    adapter.predict(x[:batch])  # warm-up: graph tracing and allocation are not throughput
    start = time.perf_counter()
    out = np.concatenate([adapter.predict(x[i:i + batch]) for i in range(0, len(x), batch)])
    elapsed = time.perf_counter() - start
    single = x[:1]
    adapter.predict(single)
    latencies = []
    for _ in range(int(settings.latency_repeats)):
        tick = time.perf_counter()
        adapter.predict(single)
        latencies.append(time.perf_counter() - tick)
    return out, {"latency_ms_batch1": float(np.median(latencies) * 1e3),
                 "throughput_per_s": float(len(x) / elapsed), "throughput_batch_size": batch}
