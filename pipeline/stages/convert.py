"""convert: turn model.onnx into every target picked by ``export=``; one failure spares the rest."""
import logging

from pipeline.context import RunContext
from pipeline.converters import TARGETS, converter, onnx_layout
from pipeline.errors import ConversionError, PipelineError, StageFailed

log = logging.getLogger(__name__)


def selected_targets(cfg) -> list[str]:
    """Targets in conversion order, with what they are converted from (tflite needs tensorflow)."""
    wanted = [name for name, on in (cfg.export.get("targets") or {}).items() if on]
    unknown = sorted(set(wanted) - set(TARGETS))
    if unknown:
        raise PipelineError(f"Unknown export target(s) {unknown} in export.targets.",
                            f"Valid targets: {', '.join(TARGETS)} (or export=onnx|keras|tensorflow|tflite|all).")
    needed = set(wanted) | {TARGETS[t][2] for t in wanted if TARGETS[t][2]}
    return [t for t in TARGETS if t in needed]


def run(ctx: RunContext) -> None:
    import onnx

    logging.getLogger("onnx2keras").setLevel(logging.ERROR)
    default_layout = onnx_layout(onnx.load(str(ctx.onnx_path), load_external_data=False))
    failed = []
    for target in selected_targets(ctx.cfg):
        failed += [target] if not _convert_one(ctx, target, default_layout) else []
    if failed:
        reasons = "; ".join(f"{t}: {ctx.report.data['targets'][t]['reason']}" for t in failed)
        raise StageFailed(f"Conversion failed for {', '.join(failed)} ({reasons}).",
                          "The other targets were converted and go through parity; see report.json targets.")


def _convert_one(ctx: RunContext, target: str, default_layout: str) -> bool:
    module_name, artifact_name, source = TARGETS[target]
    out_path = ctx.run_dir / artifact_name
    entry = {"status": "failed", "artifact": artifact_name, "input_layout": default_layout}
    ctx.report.data["targets"][target] = entry
    if source and source not in ctx.converted:
        entry["reason"] = f"needs the {source} target, which did not convert"
        return False
    source_path = ctx.converted[source] if source else ctx.onnx_path
    try:
        entry.update(converter(target).convert(source_path, out_path))
    except ConversionError as exc:
        entry.update(reason=str(exc), unsupported_op=exc.unsupported_op)
        log.error("convert %s failed: %s", target, exc)
        return False
    entry["status"] = "ok"
    ctx.converted[target] = out_path
    ctx.report.add_artifact(target, out_path)
    log.info("convert %s -> %s", target, out_path.name)
    return True
