"""Entry point: ``python -m pipeline`` / ``pipeline``, a Hydra app over ``conf/``."""
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import console, runner
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")
# An absolute path: under ``python -m`` Hydra would otherwise look for a ``conf`` Python package.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.print_config:
        console.print_config(cfg)
    try:
        report = runner.run(cfg, run_dir)
    except PipelineError as exc:
        _explain(exc, run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # a sweep records the failure per job and goes on
        sys.exit(1)
    console.print_summary(report.data, run_dir)


def _explain(exc: PipelineError, run_dir: Path) -> None:
    report = run_dir / "report.json"
    lines = [f"pipeline failed: {exc.message}"]
    if exc.hint:
        lines.append(f"How to fix: {exc.hint}")
    if report.exists():
        lines.append(f"Report: {report}")
    lines.append("(Set HYDRA_FULL_ERROR=1 for the full traceback.)")
    log.error(" ".join(lines[:2]))
    print("\n".join(lines), file=sys.stderr)
