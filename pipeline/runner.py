"""Runs the selected stages in order, rewriting report.json after each one."""
import importlib
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from pipeline import from_run, preflight, tasks, threads
from pipeline.context import RunContext
from pipeline.errors import PipelineError, RunInterrupted, StageFailed
from pipeline.report import STAGES, Report

log = logging.getLogger(__name__)


def check_stages(stages) -> list[str]:
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"Unknown stage(s) {unknown} in stages={stages}.",
                            f"Valid stages, in run order: {', '.join(STAGES)}.")
    return stages


def validate(cfg: DictConfig) -> list[str]:
    """Checks the schema cannot express; all before any work. Returns the selected stages."""
    from pipeline.stages.convert import selected_targets

    tasks.check_output_kind(cfg.model.output)
    selected_targets(cfg)
    return check_stages(cfg.stages)


def count_parameters(net) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def run(cfg: DictConfig, run_dir: Path) -> Report:
    """Run the pipeline into ``run_dir``; raises the first PipelineError after the report is saved."""
    selected = validate(cfg)
    report = Report(run_dir, cfg.model.name)
    if report.path.exists():
        raise PipelineError(f"{run_dir} already holds a run (report.json exists); it is left untouched.",
                            "Start a new run dir (the default is a new dated one), e.g. hydra.run.dir=...")
    ctx = RunContext(cfg=cfg, run_dir=Path(run_dir), report=report, threads=threads.resolve(cfg))
    threads.apply(ctx.threads)
    report.data["environment"]["threads"] = ctx.threads
    if cfg.get("from_run"):
        from_run.adopt_artifacts(ctx, from_run.load_source(cfg.from_run), selected)
    report.save()
    try:
        report.data["model"]["parameters"] = count_parameters(preflight.check_model_fits_data(ctx))
    except PipelineError as exc:  # before any work: the first selected stage is the one that could not start
        _refuse(report, selected, exc)
        raise
    failure = None
    try:
        for name in STAGES:
            stage = report.data["stages"][name]
            if name not in selected or (failure and not isinstance(failure, StageFailed)):
                stage.update(status="skipped", reason="an earlier stage failed" if name in selected else "not selected")
                continue
            failure = _run_stage(ctx, name, stage) or failure
            report.save()
    except BaseException:  # an interrupt or a bug: the stages that never ran say so
        for stage in report.data["stages"].values():
            if stage["status"] == "pending":
                stage.update(status="skipped", reason="the run stopped before this stage")
        report.save()
        raise
    report.data["status"] = "failed" if failure else "ok"
    report.save()
    write_human_report(ctx)
    if failure:
        raise failure
    return report


def _refuse(report: Report, selected: list[str], exc: PipelineError) -> None:
    for name, stage in report.data["stages"].items():
        if selected and name == selected[0]:
            stage.update(status="failed", reason=str(exc))
        else:
            stage.update(status="skipped", reason="an earlier check failed" if name in selected else "not selected")
    report.data["status"] = "failed"
    report.save()


def write_human_report(ctx: RunContext) -> None:
    """report.md and the plots; a problem drawing them never fails the run."""
    from pipeline import report_md

    try:
        plots = draw_plots(ctx)
    except Exception as exc:  # noqa: BLE001 - plots are a view, the run's result is report.json
        log.warning("plots skipped: %s", exc)
        plots = []
    ctx.report.data["plots"] = [p.name for p in plots]
    ctx.report.save()
    report_md.write(ctx.run_dir, ctx.report.data, ctx.cfg, plots)


def draw_plots(ctx: RunContext) -> list[Path]:
    from pipeline import plots

    drawn = [plots.training_curves(ctx.run_dir / "metrics.csv", ctx.run_dir / "training_curves.png")]
    if ctx.outputs:
        first = ctx.output_names[0]  # the output the task metric is computed on
        reference = ctx.outputs["torch"][first]
        others = {k: v[first] for k, v in ctx.outputs.items() if k != "torch"}
        drawn.append(plots.parity(reference, others, ctx.run_dir / "parity.png"))
        if ctx.divergence_curves:
            drawn.append(plots.divergence(ctx.divergence_curves, ctx.run_dir / "divergence.png"))
        labels = ctx.held_out_targets
        predicted = tasks.predictions(ctx.output_kind, reference)
        if labels is None:
            pass
        elif predicted is not None:
            if predicted.ndim == 1:
                drawn.append(plots.confusion_matrix(labels, predicted, ctx.run_dir / "confusion_matrix.png"))
        else:
            inverse = ctx.data.splits.inverse or (lambda v: v)
            drawn.append(plots.forecast(inverse(labels.reshape(-1)), inverse(reference.reshape(-1)),
                                        ctx.run_dir / "forecast.png"))
    return [p for p in drawn if p is not None]


def _run_stage(ctx: RunContext, name: str, stage: dict) -> PipelineError | None:
    log.info("stage %s", name)
    start = time.perf_counter()
    stage["status"] = "running"
    ctx.report.save()  # a crash mid-stage leaves a report saying which stage was running
    try:
        importlib.import_module(f"pipeline.stages.{name}").run(ctx)
        stage["status"] = "ok"
        return None
    except PipelineError as exc:
        stage.update(status="failed", reason=str(exc))
        return exc
    except BaseException as exc:  # a bug or an interrupt: record it honestly, then let it propagate
        interrupted = isinstance(exc, KeyboardInterrupt | RunInterrupted)
        stage.update(status="interrupted" if interrupted else "failed", reason=f"{type(exc).__name__}: {exc}")
        ctx.report.data["status"] = "interrupted" if interrupted else "failed"
        raise
    finally:
        stage["seconds"] = round(time.perf_counter() - start, 3)
        ctx.report.save()
