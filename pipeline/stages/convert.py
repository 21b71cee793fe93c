"""convert: every target picked by ``export=``, each by the first backend of its chain whose artifact
computes what the ONNX model computes; one target's failure spares the others.

``export.<target>.backend: auto`` tries the target's backends in order (``pipeline.converters``):
a backend that fails is recorded with its reason and the op it names, and the next one is tried.
Every artifact is verified against onnxruntime on a few real held-out inputs (shapes first, then
values within ``export.verify``); ``auto`` passes over one that drifts. If every backend's artifact
drifts, the first is kept so that parity reports (and localises) the drift.

A quantized target (``tflite_int8``, ...) is verified by a loose sanity rule instead (``pipeline.quantized``):
parity judges it by the task metric. Its calibration inputs (``export.calibration_samples`` from the
training split) are read only when a backend asks for them. A backend that finds its target does not
apply to the model (``NotApplicable``) leaves it ``refused``, with the reason; that fails nothing.
"""
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline import compare, disk, quantized, runtimes
from pipeline.context import RunContext
from pipeline.contracts import TARGETS as CONVERTED_TARGETS
from pipeline.contracts import StageContract
from pipeline.converters import Backend, ConvertJob, chain, io_layout, onnx_layout, prepare_tensorflow, selected_targets
from pipeline.errors import ConversionError, NotApplicable, StageFailed
from pipeline.report import size_of
from pipeline.results import Converted
from pipeline.runtimes import ONNX_RUNTIME
from pipeline.targets import TARGETS

log = logging.getLogger(__name__)
# Validation inputs on which a quantized target's per-layer error is measured (one at a time: a few suffice).
LAYER_ERROR_SAMPLES = 64

CONTRACT = StageContract("convert", needs=("onnx",), uses=("weights",), makes=(CONVERTED_TARGETS,),
                         needs_network=False)  # model.onnx is all it converts


def run(ctx: RunContext) -> None:
    from pipeline.onnx_model import read_onnx

    model = read_onnx(ctx.onnx_path)
    targets = selected_targets(ctx.cfg)
    if any(TARGETS[t].needs_tensorflow for t in targets):
        prepare_tensorflow()
    default_layout = onnx_layout(model)
    sample = ctx.samples.held_out(int(ctx.cfg.export.verify.samples))
    reference = runtimes.load(ONNX_RUNTIME, ctx.onnx_path, ctx.input_names, ctx.output_names,
                              threads=ctx.threads).predict(sample)
    # float32's own round-off on these samples: a deep net is not refused here for what parity would allow
    floats = [t for t in targets if not TARGETS[t].quantized]  # the quantized ones have a rule of their own
    floor = compare.floor_of_run(ctx, sample) if floats else compare.off("no float target")
    cache: dict = {}
    failed = [t for t in targets if not _convert_target(ctx, t, default_layout, sample, reference, cache, floor)]
    if failed:
        reasons = "; ".join(f"{t}: {ctx.report.data['targets'][t]['reason']}" for t in failed)
        raise StageFailed(f"Conversion failed for {', '.join(failed)} ({reasons}).",
                          "The other targets were converted and go through parity; see report.json targets.")


def _convert_target(ctx: RunContext, target: str, default_layout: str, sample, reference, cache,
                    floor: compare.NoiseFloor | None = None) -> bool:
    spec = TARGETS[target]
    out_path = ctx.store.path(target)
    attempts: list[dict] = []
    entry = {"status": "failed", "artifact": spec.artifact, "input_layout": default_layout, "backend": None,
             "attempts": attempts}
    ctx.report.data["targets"][target] = entry
    # the artifacts converted so far: what a later target's backend converts from (tflite <- tensorflow)
    made = {name: converted.path for name, converted in ctx.results.converted.items()}
    job = ConvertJob(target, ctx.onnx_path, out_path, sample, made, _options(ctx.cfg, target), cache,
                     calibration=lambda: ctx.samples.calibration(int(ctx.cfg.export.calibration_samples)),
                     validation=lambda: ctx.samples.validation(LAYER_ERROR_SAMPLES), output_kind=ctx.output_kind)
    kept = None  # (attempt, info, parked path) of the first artifact that drifted
    for candidate in chain(ctx.cfg, target):
        attempt = {"backend": candidate.name}
        attempts.append(attempt)
        info = _attempt(candidate, job, attempt)
        if info is None:
            continue
        info = {"input_layout": default_layout, **info}
        verdict = verify(ctx, target, out_path, info, sample, reference, floor)
        attempt["verify"] = verdict
        if verdict["ok"]:
            attempt["status"] = "ok"
            _discard(kept)
            return _accept(ctx, target, entry, candidate.name, info, out_path)
        attempt.update(status="drifted", reason=verdict["reason"])
        log.warning("convert %s: backend %s drifted: %s", target, candidate.name, verdict["reason"])
        if kept is None:
            kept = (attempt, info, _park(out_path))
        else:
            _remove(out_path)
    if kept is not None:  # nothing verified: parity shall measure (and localise) the drift
        attempt, info, parked = kept
        parked.replace(out_path)
        entry["verified"] = False
        accepted = _accept(ctx, target, entry, attempt["backend"], info, out_path)
        entry["reason"] = f"kept unverified for parity to measure: {attempt['backend']}: {attempt['reason']}"
        return accepted
    return _give_up(target, entry, attempts)


def _options(cfg, target: str) -> dict:
    """export.<target>, its layout defaulting to export.layout."""
    options = dict(cfg.export.get(target) or {})
    if options.get("layout") is None:
        options["layout"] = str(cfg.export.get("layout") or "nchw")
    return options


def _give_up(target: str, entry: dict, attempts: list[dict]) -> bool:
    """No artifact: the reasons of every backend tried, and the first op one of them named. Returns
    whether the run may still succeed (the target was refused by design, not failed)."""
    entry["reason"] = "; ".join(f"{a['backend']}: {a.get('reason', a['status'])}" for a in attempts) or \
        "no backend"
    entry["unsupported_op"] = next((a["unsupported_op"] for a in attempts if a.get("unsupported_op")), None)
    if attempts and all(a["status"] == "refused" for a in attempts):
        entry["status"] = "refused"  # not applicable to this model: reported, not a failure of the run
        log.warning("convert %s refused: %s", target, entry["reason"])
        return True
    log.error("convert %s failed: %s", target, entry["reason"])
    return False


def _attempt(candidate: Backend, job: ConvertJob, attempt: dict) -> dict | None:
    """Run one backend; records why it did not produce an artifact and returns None then."""
    if candidate.needs and candidate.needs not in job.artifacts:
        attempt.update(status="skipped", reason=f"needs the {candidate.needs} target, which did not convert")
        return None
    start = time.perf_counter()
    try:
        return _convert(candidate, job)
    except ConversionError as exc:  # NotApplicable: the target does not apply to this model, by design
        attempt.update(status="refused" if isinstance(exc, NotApplicable) else "failed", reason=str(exc),
                       unsupported_op=exc.unsupported_op)
    except ImportError as exc:
        attempt.update(status="skipped", reason=f"not installed ({exc})")
    except disk.DiskFull:  # every backend would fail the same way: the stage stops
        raise
    except Exception as exc:  # noqa: BLE001 - a converter library's own error: the next backend may do better
        log.debug("backend %s raised", candidate.name, exc_info=True)
        attempt.update(status="failed", reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                       if str(exc).strip() else type(exc).__name__)
    finally:
        attempt["seconds"] = round(time.perf_counter() - start, 3)
    _remove(job.out_path)
    return None


def _convert(candidate: Backend, job: ConvertJob) -> dict:
    """One backend's conversion; a full disk stops the stage (every backend would fail the same way), named
    as such, never as the converter's failure ("try another export.opset")."""
    try:
        return candidate.convert(job) or {}
    except Exception as exc:
        if disk.is_full(exc):
            _remove(job.out_path)
            raise disk.full_error(job.out_path.parent, f"the convert stage wrote {job.out_path.name}") from exc
        raise


def _accept(ctx: RunContext, target: str, entry: dict, backend: str, info: dict, out_path: Path) -> bool:
    entry.update(info, status="ok", backend=backend)
    entry.pop("reason", None)
    entry["io_layouts"] = io_layout.describe(entry, *_ranks(ctx))  # every tensor's layout, by name
    if TARGETS[target].named_signature:  # what an app passes and reads, by ONNX name
        entry["signature_names"] = _signature_names(ctx)
    if TARGETS[target].quantized:  # its size against the float32 model of the same format
        entry["bytes"] = size_of(out_path)
        if entry.get("float32_bytes"):
            entry["size_ratio"] = entry["bytes"] / entry["float32_bytes"]
            entry["size_ratio_to"] = entry.get("float32_artifact")
    ctx.results.converted[target] = Converted(target, out_path, entry)
    ctx.store.put(target, "convert", out_path, backend=backend)
    log.info("convert %s -> %s (backend %s)", target, out_path.name, backend)
    return True


def _signature_names(ctx: RunContext) -> dict:
    """The serving_default signature's key of every input and output (the ONNX name, made an identifier)."""
    from pipeline.runtimes import signature_key

    return {"inputs": {name: signature_key(name) for name in ctx.input_names},
            "outputs": {name: signature_key(name) for name in ctx.output_names}}


def _ranks(ctx: RunContext) -> tuple[dict[str, int], dict[str, int]]:
    from pipeline.onnx_model import read_onnx

    graph = read_onnx(ctx.onnx_path).graph
    return ({i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.name in ctx.input_names},
            {o.name: len(o.type.tensor_type.shape.dim) for o in graph.output})


def verify(ctx: RunContext, target: str, path: Path, info: dict, sample: dict, reference: dict,
           floor: compare.NoiseFloor | None = None) -> dict:
    """The artifact run on ``sample`` by its runtime adapter, against onnxruntime: shapes, then values
    (``pipeline.compare.verify_outputs``: within export.verify's tolerance, or the run's noise floor)."""
    settings = ctx.cfg.export.verify
    try:
        # kept: parity runs this artifact next and takes the loaded adapter instead of loading it again
        adapter = runtimes.load(TARGETS[target].runtime, path, ctx.input_names, ctx.output_names, keep=True,
                                input_perms=info.get("input_perms"), output_perms=info.get("output_perms"),
                                threads=ctx.threads)
        outputs = adapter.predict(sample)
    except Exception as exc:  # noqa: BLE001 - an artifact that does not run is a failed conversion
        return {"ok": False, "reason": f"the artifact does not run: {type(exc).__name__}: {str(exc)[:300]}"}
    if TARGETS[target].quantized:  # judged by the task metric in parity; here only a loose sanity check
        return quantized.sanity(outputs, reference, ctx.output_kind)
    verdict = compare.verify_outputs(outputs, reference, settings.rtol, settings.atol,
                                     len(next(iter(sample.values()))), floor)
    if not verdict.get("ok"):
        return verdict
    repeated = _repeat_check(ctx, target, adapter, reference)
    if repeated and not repeated.get("ok", True):
        return repeated
    return {**verdict, **(repeated or {})}


def _repeat_check(ctx: RunContext, target: str, adapter, reference: dict) -> dict | None:
    """Two calls at parity's batch size agree (``pipeline.repeat_calls``); tflite runtimes only. Returns the
    failed verdict, or ``{"second_call_batch": n}`` when checked."""
    from pipeline import repeat_calls

    if not runtimes.RUNTIMES[TARGETS[target].runtime].reuses_memory:
        return None
    feeds = ctx.samples.held_out(repeat_calls.parity_batch(ctx.cfg, ctx.data.size("test")))
    scale = max(float(np.max(np.abs(r), initial=0.0)) for r in reference.values()) if reference else 0.0
    limit = float(ctx.cfg.export.verify.rtol) * scale + float(ctx.cfg.export.verify.atol)
    return repeat_calls.second_call_differs(adapter, feeds, limit) or \
        {"second_call_batch": len(next(iter(feeds.values())))}


def _park(path: Path) -> Path:
    parked = path.with_name(f".{path.name}.drifted")
    _remove(parked)
    path.replace(parked)
    return parked


def _discard(kept) -> None:
    if kept is not None:
        _remove(kept[2])


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
