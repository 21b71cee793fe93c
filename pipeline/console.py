"""What the user sees in the terminal: the config tree at start, a summary table at the end."""
import re
import sys

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

# Wide enough for the parity table when the output is a log file rather than a terminal.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 130)


def print_config(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(str(key)).add(Syntax(OmegaConf.to_yaml(value, resolve=True).rstrip(), "yaml"))
        else:
            tree.add(f"{key}: {value}")
    console.print(tree)


def print_summary(report: dict, run_dir) -> None:
    stages = Table(title=f"pipeline: {report['status']}  ({run_dir})")
    for column in ("stage", "status", "seconds"):
        stages.add_column(column)
    for name, stage in report["stages"].items():
        style = {"ok": "green", "failed": "red", "interrupted": "yellow"}.get(stage["status"], "dim")
        seconds = "" if stage["seconds"] is None else f"{stage['seconds']:.1f}"
        stages.add_row(name, f"[{style}]{stage['status']}[/]", seconds)
    console.print(stages)
    if report["parity"]:
        console.print(parity_table(report))
    for name, stage in report["stages"].items():
        # e.g. a TracerWarning: the exported graph keeps one branch of data-dependent Python control flow,
        # which parity only catches if its held-out samples take the other one.
        for warning in _distinct(stage.get("warnings") or [])[:3]:
            console.print(f"[yellow]{name} warning[/]: {_gist(warning)}", highlight=False)
    for name, target in report.get("targets", {}).items():
        if target.get("status") in ("refused", "failed"):
            style = "yellow" if target["status"] == "refused" else "red"
            console.print(f"[{style}]{name} {target['status']}[/]: {target.get('reason', '')}", highlight=False)


def _distinct(warnings: list[str]) -> list[str]:
    """One line per message: the same warning raised from several places of a library reads as one."""
    firsts = {}
    for warning in warnings:
        firsts.setdefault(re.sub(r"\s\([^()\s]+:\d+\)$", "", warning), warning)
    return list(firsts.values())


def _gist(warning: str, limit: int = 200) -> str:
    """A warning's first sentence and where it was raised ("(model.py:12)"); report.json has it whole."""
    where = re.search(r"\s(\([^()\s]+:\d+\))$", warning)
    first = re.split(r"(?<=[.!?])\s", warning, maxsplit=1)[0]
    first = first if len(first) <= limit else first[:limit] + " ..."
    return f"{first} {where.group(1)}" if where and where.group(1) not in first else first


def parity_table(report: dict) -> Table:
    table = Table(title="parity vs torch")
    for column in ("runtime", "samples", "max abs err", "max rel err", "allclose", "top-1 agree",
                   "metric", "latency b1 ms", "throughput/s"):
        table.add_column(column, justify="right")
    for e in report["parity"]:
        ok = "[green]yes[/]" if e["allclose"] else "[red]no[/]"
        if e.get("quantized"):  # judged by the task metric (parity.quantized), not by allclose
            ok = "[green]by metric[/]" if e["in_tolerance"] else "[red]metric: no[/]"
        table.add_row(e["runtime"], str(e["samples"]), _number(e["max_abs_err"], ".2e"),
                      _number(e["max_rel_err"], ".2e"), ok, _number(e["top1_agreement"], ".4f"),
                      _number(e.get("metric"), ".4f"), _number(e.get("latency_ms_batch1"), ".3f"),
                      _number(e.get("throughput_per_s"), ".0f"))
    return table


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
