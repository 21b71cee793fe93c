"""Runs the selected stages in order, rewriting report.json after each one."""
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import disk, from_run, interrupts, limits, preflight, quiet, runtimes, schema, stages, tasks, threads
from pipeline import run_dir as run_dirs
from pipeline.artifacts import spec_of
from pipeline.context import RunContext
from pipeline.contracts import STAGES
from pipeline.contracts import producer as contracts_producer
from pipeline.errors import PipelineError, RunInterrupted, StageCrashed, StageFailed
from pipeline.report import Report
from pipeline.runtimes.torch_runtime import standard_paths

log = logging.getLogger(__name__)
logfile = logging.getLogger("pipeline.logfile")  # pipeline.log only (conf/config.yaml)

# Stages that load TensorFlow/LiteRT/onnxruntime, whose native output goes to pipeline.log.
NATIVE_CHATTER = {"export", "check", "convert", "parity"}


def check_inputs(selected: list[str], has_source: bool, has_weights: bool = False) -> None:
    """Each artifact a selected stage needs (its contract) is made by an earlier selected stage, comes from
    from_run, or (the trained weights) from model.weights."""
    if has_source:
        return  # from_run.adopt_artifacts checks that the source run has them
    contracts = stages.contracts()
    for stage in selected:
        for artifact in contracts[stage].needs:
            producer = contracts_producer(contracts, artifact)
            if producer in selected or (artifact == "weights" and has_weights):
                continue
            shown = f"[{','.join(selected)}]"
            raise PipelineError(
                f"stages={shown} runs {stage}, which needs {spec_of(artifact).description} from the {producer} "
                "stage; this run does not make it and there is no from_run to take it from.",
                f"Add {producer} to stages (stages=[{','.join(s for s in STAGES if s in {*selected, producer})}]), "
                f"or take it from an earlier run: from_run=<run dir> stages={shown}"
                + (", or give model.weights=<state_dict or checkpoint> (init: the constructor's own)."
                   if artifact == "weights" else "."))


def check_optimized_metric(cfg: DictConfig) -> None:
    name = cfg.get("optimized_metric")
    valid = tasks.metric_names(cfg.model.output)
    if name and name not in valid:
        raise PipelineError(f"optimized_metric={name!r} is not a metric of this run "
                            f"(model.output={cfg.model.output} reports {', '.join(valid)}).",
                            f"Set optimized_metric to one of: {', '.join(valid)} (or null).")


def validate(cfg: DictConfig) -> list[str]:
    """Checks the schema cannot express; all before any work. Returns the selected stages in run order."""
    from pipeline.converters import selected_targets

    tasks.check_output_kind(cfg.model.output)
    selected_targets(cfg)
    runtimes.check_alternatives(cfg.parity.get("runtimes") or [])
    selected = schema.check_stages(cfg.stages)
    if "train" in selected and (OmegaConf.is_missing(cfg, "optimizer") or cfg.get("optimizer") is None):
        raise PipelineError("optimizer is not set (optimizer=null), but the train stage needs one.",
                            "Pick one: optimizer=adam (the default) or optimizer=sgd.")
    check_inputs(selected, bool(cfg.get("from_run")), bool(cfg.model.get("weights")))
    check_optimized_metric(cfg)
    return selected


def optimized_metric(cfg: DictConfig, report: dict) -> float | None:
    """The value a hyperparameter sweeper optimises: ``optimized_metric`` names a report metric."""
    name = cfg.get("optimized_metric")
    value = report["metrics"].get(name) if name else None
    return None if value is None else float(value)


def count_parameters(net) -> int:
    from torch.nn.parameter import is_lazy

    # a lazy module whose first forward failed has no size yet (preflight names the input it cannot take)
    return sum(p.numel() for p in net.parameters() if p.requires_grad and not is_lazy(p))


def run(cfg: DictConfig, run_dir: Path) -> Report:
    """Run the pipeline into ``run_dir``; raises the first PipelineError after the report is saved."""
    selected = validate(cfg)
    limits.configure(cfg)
    report = Report(run_dir, cfg.model.name)
    if report.path.exists():  # the run-dir guard refuses this earlier; never overwrite a report
        raise PipelineError(f"{run_dir} already holds a run (report.json exists); it is left untouched.",
                            "Start a new run dir (the default is a new dated one), e.g. hydra.run.dir=...")
    ctx = RunContext(cfg=cfg, run_dir=Path(run_dir), report=report, threads=threads.resolve(cfg))
    threads.apply(ctx.threads)
    standard_paths()  # the torch reference computes what training and the export compute
    report.data["environment"]["threads"] = ctx.threads
    try:
        failure = _prepare(ctx, selected)
        first = True
        for name in STAGES:
            stage = report.data["stages"][name]
            if stage["status"] != "pending":  # failed before it started (_prepare)
                continue
            if name not in selected or (failure and not isinstance(failure, StageFailed)):
                stage.update(status="skipped", reason="an earlier stage failed" if name in selected else "not selected")
                continue
            # What needs the data (the network follows it) runs as part of the first stage: it loads the data
            # anyway, and a wait for the data (a download lock) shows as that stage running.
            checks = (lambda: _before_first_stage(ctx, selected)) if first else None
            failure = _run_stage(ctx, name, stage, checks) or failure
            first = False
            report.save()
    except BaseException as exc:  # an interrupt or a bug: the report never stays "running"
        interrupted = isinstance(exc, KeyboardInterrupt | RunInterrupted)
        statuses = [stage["status"] for stage in report.data["stages"].values()]
        if interrupted and "interrupted" not in statuses:  # a signal as a stage starts (before it says "running")
            starting = next((n for n in selected if report.data["stages"][n]["status"] in ("pending", "running")),
                            None)
            if starting:
                report.data["stages"][starting].update(status="interrupted", reason=f"{type(exc).__name__}: {exc}")
        for stage in report.data["stages"].values():
            if stage["status"] in ("pending", "running"):
                stage.update(status="skipped", reason="the run stopped before this stage")
        if report.data["status"] == "running":
            report.data["status"] = "interrupted" if interrupted else "failed"
        report.save()
        raise
    finally:
        runtimes.forget()  # adapters convert kept for parity
    report.data["status"] = "failed" if failure else "ok"
    report.save()
    write_human_report(ctx)
    if failure:
        raise failure
    return report


def report_early_end(cfg: DictConfig, run_dir: Path, status: str, reason: str) -> None:
    """A run that ended before its report existed (a bad config, a from_run problem, an early interrupt)
    still leaves one, so that every run dir (and every sweep job) says how it ended."""
    if not run_dirs.owns(run_dir):  # refused: the dir is another run's, never write into it
        return
    report = Report(run_dir, str(OmegaConf.select(cfg, "model.name", default=None)))
    if report.path.exists():
        return
    report.data["status"] = status
    for stage in report.data["stages"].values():
        stage.update(status="skipped", reason=f"the run stopped before any stage: {reason}")
    try:
        report.save()
    except OSError:  # an unwritable dir: the console message is all there is
        pass


def _prepare(ctx: RunContext, selected: list[str]) -> PipelineError | None:
    """from_run's artifacts; a failure is reported as the first stage's."""
    report = ctx.report
    report.save()  # the run is claimed: report.json says "running" from here on
    try:
        if ctx.cfg.get("from_run"):
            from_run.adopt_artifacts(ctx, from_run.load_source(ctx.cfg.from_run), selected)
        _check_metric_available(ctx)
    except PipelineError as exc:
        report.data["stages"][selected[0]].update(status="failed", reason=f"before the stage started: {exc}")
        return exc
    except Exception as exc:  # noqa: BLE001 - e.g. model.net's own code: one paragraph, the traceback in the log
        logfile.error("Preparing the %s stage raised:", selected[0], exc_info=exc)
        crashed = _crashed(selected[0], exc, ctx.run_dir)
        report.data["stages"][selected[0]].update(status="failed", reason=f"before the stage started: {crashed}")
        return crashed
    finally:
        report.save()
    return None


def _before_first_stage(ctx: RunContext, selected: list[str]) -> None:
    ctx.report.data["model"]["parameters"] = count_parameters(ctx.new_net())
    contracts = stages.contracts()
    preflight.check(ctx, selected, needs_network=any(contracts[s].needs_network for s in selected))


def _check_metric_available(ctx: RunContext) -> None:
    name = ctx.cfg.get("optimized_metric")
    if name and "train" not in ctx.cfg.stages and name not in ctx.report.data["metrics"]:
        raise PipelineError(f"optimized_metric={name} needs the train stage or a from_run that measured it.",
                            "Add train to stages, or drop optimized_metric.")


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
    try:
        report_md.write(ctx.run_dir, ctx.report.data, ctx.cfg, plots)
    except Exception as exc:  # noqa: BLE001 - the same: report.json is already complete
        log.warning("report.md skipped: %s", exc)


def draw_plots(ctx: RunContext) -> list[Path]:
    from pipeline import plots

    drawn = [plots.training_curves(ctx.run_dir / "metrics.csv", ctx.run_dir / "training_curves.png")]
    if ctx.results.outputs:
        first = ctx.output_names[0]  # the output the task metric is computed on
        reference = ctx.results.outputs["torch"][first]
        others = {k: v[first] for k, v in ctx.results.outputs.items() if k != "torch"}
        drawn.append(plots.parity(reference, others, ctx.run_dir / "parity.png"))
        if ctx.results.divergence_curves:
            drawn.append(plots.divergence(ctx.results.divergence_curves, ctx.run_dir / "divergence.png"))
        labels = ctx.results.held_out_targets
        predicted = tasks.predictions(ctx.output_kind, reference)
        if labels is None:
            pass  # generated inputs: no task to plot
        elif predicted is not None:
            if predicted.ndim == 1:
                drawn.append(plots.confusion_matrix(labels, predicted, ctx.run_dir / "confusion_matrix.png",
                                                    ctx.data_spec.classes))
        elif ctx.data_spec.target_width > 1:  # several values per sample: a line through them means nothing
            inverse = ctx.data.inverse or (lambda v: v)  # in the targets' units
            names = (ctx.report.data["data"].get("target_scaling") or {}).get("columns")  # a table's targets
            drawn.append(plots.predicted_vs_actual(inverse(labels), inverse(reference),
                                                   ctx.run_dir / "predicted_vs_actual.png", names))
        else:
            inverse = ctx.data.inverse or (lambda v: v)
            drawn.append(plots.forecast(inverse(labels.reshape(-1)), inverse(reference.reshape(-1)),
                                        ctx.run_dir / "forecast.png"))
    return [p for p in drawn if p is not None]


def _run_stage(ctx: RunContext, name: str, stage: dict, before=None) -> PipelineError | None:
    log.info("stage %s", name)
    start = time.perf_counter()
    stage["status"] = "running"
    ctx.report.save()  # a crash mid-stage leaves a report saying which stage was running
    try:
        if before is not None:
            before()
        with quiet.recorded_warnings(stage), _native_output(name):
            result = stages.module(name).run(ctx)
        if result is not None:  # a typed result (pipeline.results): its report sections
            ctx.report.record(result)
        stage["status"] = "ok"
        return None
    except PipelineError as exc:
        if disk.is_full(exc) and not isinstance(exc, disk.DiskFull):  # a stage's own wording ("export failed")
            exc = _crashed(name, exc, ctx.run_dir)
        stage.update(status="failed", reason=str(exc))
        return exc
    except (KeyboardInterrupt, RunInterrupted) as exc:  # record it honestly, then let it propagate
        stage.update(status="interrupted", reason=f"{type(exc).__name__}: {exc}")
        ctx.report.data["status"] = "interrupted"
        raise
    except Exception as exc:  # not an input we check for yet: one paragraph, the traceback in pipeline.log
        logfile.error("The %s stage raised:", name, exc_info=exc)
        crashed = _crashed(name, exc, ctx.run_dir)
        stage.update(status="failed", reason=str(crashed))
        return crashed
    except SystemExit as exc:  # sys.exit() in model code or a library: a failure of this stage, not an exit code
        if interrupts.stopping():  # a library's own clean stop after our signal handler: an interrupt
            stage.update(status="interrupted", reason="stopped by a signal")
            ctx.report.data["status"] = "interrupted"
            raise RunInterrupted("Interrupted.") from None
        logfile.error("The %s stage called sys.exit(%r):", name, exc.code, exc_info=exc)
        crashed = StageCrashed(f"The {name} stage ended with sys.exit({exc.code!r}) (called by model.net or a "
                               "library it uses).",
                               "The full traceback is in pipeline.log: remove the exit from that code.")
        stage.update(status="failed", reason=str(crashed))
        return crashed
    except BaseException as exc:  # GeneratorExit and the like: recorded, then propagated
        stage.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        ctx.report.data["status"] = "failed"
        raise
    finally:
        stage["seconds"] = round(time.perf_counter() - start, 3)
        if ctx.data_loaded:  # what reading the data found (files skipped as corrupt...)
            ctx.report.data["data"].update(ctx.data.report())
        ctx.report.save()


def _crashed(stage: str, exc: Exception, run_dir: Path | None = None) -> PipelineError:
    if disk.is_full(exc):  # the machine's fault, not the model's: never "report it as a bug" or "another opset"
        full = disk.full_error(run_dir or Path.cwd(), f"the {stage} stage wrote its files")
        full.__cause__ = exc
        return full
    if type(exc).__module__.startswith("torch.onnx"):  # torch.onnx.errors: an op or opset the exporter lacks
        crashed = StageCrashed(f"torch.onnx cannot export model.net: {_first_line(exc)}",
                               "Pick another export.opset (7 to 20) if the message names one, or replace that op "
                               "in model.net; the full error is in pipeline.log.")
    else:
        crashed = StageCrashed(f"The {stage} stage failed unexpectedly: {type(exc).__name__}: {_first_line(exc)}",
                               "The full traceback is in pipeline.log; if the input is valid, please report it "
                               "as a bug with that log.")
    crashed.__cause__ = exc
    return crashed


def _native_output(stage: str):
    from contextlib import nullcontext

    return quiet.native_stderr_to_log() if stage in NATIVE_CHATTER else nullcontext()


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of an exception: torch.onnx appends whole IR graphs, TensorFlow long stacks."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + " ..."
