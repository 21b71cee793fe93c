"""A Hydra callback: after each job and at the end of a sweep, ``summary.csv``/``summary.md`` at the sweep root.

One row per job: its overrides, status, metrics, worst parity error and stage seconds. The sweep
exits non-zero when any job failed.
"""
import csv
import io
import json
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.atomic import write_with
from pipeline.matrix import render as render_matrix
from pipeline.report import REPORT_NAME, STAGES

log = logging.getLogger(__name__)


def job_reports(sweep_dir: Path) -> list[tuple[str, str, dict]]:
    """(job name, its overrides, its report) for every job dir of the sweep, in job order."""
    jobs = []
    for report_path in sorted(sweep_dir.glob(f"*/{REPORT_NAME}"), key=lambda p: _job_order(p.parent.name)):
        job_dir = report_path.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        jobs.append((job_dir.name, " ".join(overrides), json.loads(report_path.read_text())))
    return jobs


def job_rows(sweep_dir: Path) -> list[dict]:
    return [_row(job, overrides, report) for job, overrides, report in job_reports(sweep_dir)]


def _job_order(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def _row(job: str, overrides: str, report: dict) -> dict:
    row = {"job": job, "overrides": overrides, "status": report["status"], "model": report["model"]["name"]}
    row.update({k: _round(v) for k, v in report["metrics"].items()})
    floats = [e for e in report["parity"] if not e.get("quantized")]  # quantized: judged by the metric
    worst = max(floats, key=_error_of, default=None)
    row["worst_parity_runtime"] = worst["runtime"] if worst else ""
    row["worst_max_abs_err"] = _round(worst["max_abs_err"]) if worst and worst["max_abs_err"] is not None else ""
    row["all_allclose"] = all(e["allclose"] for e in floats) if floats else ""
    quantized = [e for e in report["parity"] if e.get("quantized")]
    if quantized:
        row["quantized_in_tolerance"] = all(e["in_tolerance"] for e in quantized)
    for stage in STAGES:
        row[f"{stage}_s"] = report["stages"][stage]["seconds"] or ""
    return row


def _error_of(entry: dict) -> float:
    return float("inf") if entry["max_abs_err"] is None else entry["max_abs_err"]


def _round(value):
    return float(f"{value:.6g}") if isinstance(value, float) else value


def write_summary(sweep_dir: Path) -> list[dict]:
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_with(sweep_dir / "summary.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    write_with(sweep_dir / "summary.md", lambda tmp: tmp.write_text(_markdown(rows, columns)))
    return rows


def _markdown(rows: list[dict], columns: list[str]) -> str:
    lines = [f"# Sweep summary ({len(rows)} jobs)", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """``matrix_path``: also write a support matrix there (``matrix_kind``: seeds or zoo, see pipeline.matrix)."""

    def __init__(self, matrix_path: str | None = None, matrix_kind: str = "seeds"):
        self.matrix_path = matrix_path
        self.matrix_kind = matrix_kind

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        write_summary(Path(config.hydra.sweep.dir))  # kept current as jobs finish

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if rows and self.matrix_path:
            matrix = render_matrix(sweep_dir, job_reports(sweep_dir), self.matrix_kind)
            for path in [sweep_dir / Path(self.matrix_path).name, self.matrix_path]:
                write_with(Path(path), lambda tmp, text=matrix: tmp.write_text(text))
        failed = [row["job"] for row in rows if row["status"] != "ok"]
        log.info("sweep summary: %s (%d jobs, %d failed)", sweep_dir / "summary.md", len(rows), len(failed))
        if failed:
            print(f"pipeline sweep: job(s) {', '.join(failed)} failed; see {sweep_dir / 'summary.md'}",
                  file=sys.stderr)
            sys.exit(1)
