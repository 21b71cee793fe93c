"""Entry point: ``python -m pipeline`` / ``pipeline``, a Hydra app over ``conf/``."""
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

# Only light imports here: `--cfg job`, `--help` and bad overrides must answer fast. torch,
# Lightning and TensorFlow load inside the stages that need them.
from pipeline import schema
from pipeline.atomic import write_with
from pipeline.errors import PipelineError, RunInterrupted

log = logging.getLogger("pipeline")
# An absolute path: under ``python -m`` Hydra would otherwise look for a ``conf`` Python package.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
schema.register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from pipeline import console, runner

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        if prepare(cfg, list(hydra_cfg.overrides.task)):
            _save_effective_config(cfg, run_dir)
        if cfg.print_config:
            console.print_config(cfg)
        report = runner.run(cfg, run_dir)
    except PipelineError as exc:
        _explain(exc.message, exc.hint, run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun:  # the job's report says failed; the sweep summary sets the exit code
            return None
        sys.exit(EXIT_FAILED)
    except (RunInterrupted, KeyboardInterrupt) as exc:
        _explain(str(exc) or "Interrupted.", "", run_dir, verb="interrupted")
        sys.exit(EXIT_INTERRUPTED)
    console.print_summary(report.data, run_dir)
    return _optimized_metric(cfg, report.data)


def prepare(cfg: DictConfig, overrides: list[str]) -> bool:
    """What the composed config leaves to the run: adopt a from_run source's config, name the model.
    Returns whether the config now differs from what Hydra saved."""
    from pipeline import from_run

    adopted = bool(cfg.get("from_run"))
    if adopted:
        from_run.adopt_config(cfg, from_run.load_source(cfg.from_run), overrides)
    return _name_the_model(cfg, overrides) or adopted


def _name_the_model(cfg: DictConfig, overrides: list[str]) -> bool:
    """When the command line names another network (``model.net._target_=my_pkg.MyNet``), the default
    model's constructor arguments are not its own: only those given on the command line are kept, and
    ``model.name`` defaults to the class name."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if "model.net._target_" not in given:
        if cfg.model.get("name"):
            return False
        with open_dict(cfg):
            cfg.model.name = str(cfg.model.net.get("_target_", "model")).rsplit(".", 1)[-1]
        return True
    with open_dict(cfg):
        for key in [k for k in cfg.model.net if k != "_target_" and f"model.net.{k}" not in given]:
            del cfg.model.net[key]
        if "model.name" not in given:
            cfg.model.name = str(cfg.model.net._target_).rsplit(".", 1)[-1]
    return True


def _sigterm_as_interrupt(signum, frame):
    # SIGTERM stops the run as Ctrl+C does: Lightning checkpoints, the report says "interrupted".
    raise KeyboardInterrupt(f"Received signal {signum}")


def _save_effective_config(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra saved the config as typed; from_run adopted the source's model/dataset: save what ran."""
    path = run_dir / ".hydra" / "config.yaml"
    write_with(path, lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg)))


def _optimized_metric(cfg: DictConfig, report: dict) -> float | None:
    """The value a hyperparameter sweeper optimises: ``optimized_metric`` names a report metric."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in report["metrics"]:
        raise PipelineError(f"optimized_metric={name!r} is not a metric of this run.",
                            f"Pick one of: {', '.join(report['metrics'])}.")
    return float(report["metrics"][name])


def _explain(message: str, hint: str, run_dir: Path, verb: str = "failed") -> None:
    report = run_dir / "report.json"
    lines = [f"pipeline {verb}: {message}"]
    if hint:
        lines.append(f"How to fix: {hint}")
    if report.exists():
        lines.append(f"Report: {report}")
    lines.append("(Set HYDRA_FULL_ERROR=1 for the full traceback.)")
    log.error(" ".join(lines[:2]))
    print("\n".join(lines), file=sys.stderr)
