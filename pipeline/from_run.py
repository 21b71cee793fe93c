"""``from_run=<run dir>``: later stages run on an earlier run's artifacts, in a new run dir.

The source run is only read, never written. Its model, dataset, trainer, optimizer and seed config
are adopted (its artifacts and checkpoints were made with them), except the keys given on the command
line. The stages not selected take their outputs from it, copied into the new run dir so that the
new run is complete on its own and can itself be a ``from_run`` source.
"""
import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.context import ONNX_NAME, WEIGHTS_NAME, RunContext
from pipeline.converters import TARGETS
from pipeline.errors import PipelineError
from pipeline.report import REPORT_NAME

# Adopted from the source run: what its artifacts were made with.
ADOPTED_KEYS = ("model", "dataset", "trainer", "optimizer", "seed")


@dataclass
class SourceRun:
    path: Path
    report: dict
    config: DictConfig

    def artifact(self, name: str, needed_for: str) -> Path:
        path = self.path / name
        if not path.exists():
            train = self.report.get("stages", {}).get("train", {}).get("status")
            raise PipelineError(
                f"from_run={self.path} has no {name}, which the {needed_for} stage needs "
                f"(its train stage: {train}, status: {self.report.get('status')}).",
                "Add the stage that makes it to stages=[...], or pick a run that finished it.")
        return path

    @property
    def training_finished(self) -> bool:
        return self.report.get("stages", {}).get("train", {}).get("status") == "ok"

    def resume_checkpoint(self) -> Path | None:
        # An epoch-end checkpoint resumes cleanly (the data order is not resumable mid-epoch).
        for name in ("last.ckpt", "interrupted.ckpt"):
            if (self.path / "checkpoints" / name).is_file():
                return self.path / "checkpoints" / name
        return None


@functools.lru_cache(maxsize=4)  # read once: the CLI adopts its config, the runner its artifacts
def load_source(path: str) -> SourceRun:
    run = Path(path).expanduser().resolve()
    report, config = run / REPORT_NAME, run / ".hydra" / "config.yaml"
    if not report.is_file() or not config.is_file():
        raise PipelineError(f"from_run={path} is not a pipeline run dir (it needs report.json and .hydra/config.yaml).",
                            "Point from_run at a dir under outputs/ or multirun/ written by a run.")
    try:
        return SourceRun(run, json.loads(report.read_text()), OmegaConf.load(config))
    except Exception as exc:
        raise PipelineError(f"from_run={path}: report.json or .hydra/config.yaml is unreadable: {exc}",
                            "Pick another run dir.") from exc


def adopt_config(cfg: DictConfig, source: SourceRun, command_line: list[str]) -> None:
    """Take ADOPTED_KEYS from the source run, then re-apply what the user set on the command line."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in command_line if "=" in o}
    kept = {key: OmegaConf.select(cfg, key) for key in given if key.split(".")[0] in ADOPTED_KEYS}
    with open_dict(cfg):
        for key in ADOPTED_KEYS:
            value = source.config[key]
            if isinstance(value, DictConfig) and OmegaConf.get_type(cfg, key) is not dict:
                # A typed node (model): replace field by field; untyped children (net) wholesale.
                for field_name, field_value in value.items():
                    cfg[key][field_name] = field_value
            else:
                cfg[key] = value
        for key, value in kept.items():
            OmegaConf.update(cfg, key, value, merge=False)


def adopt_artifacts(ctx: RunContext, source: SourceRun, selected: list[str]) -> None:
    """Copy what the unselected stages would have made; set the checkpoint to resume from."""
    ctx.report.data["from_run"] = {"path": str(source.path), "adopted_config": list(ADOPTED_KEYS)}
    if "train" in selected:
        if not source.training_finished and source.resume_checkpoint():
            ctx.resume_from = source.resume_checkpoint()
            ctx.report.data["from_run"]["resumed_from"] = str(ctx.resume_from)
    else:
        ctx.report.data["metrics"].update(source.report.get("metrics", {}))  # the model's, measured there
        if set(selected) & {"export", "check", "convert", "parity"}:
            _copy(source.artifact(WEIGHTS_NAME, "export/parity"), ctx.weights_path, ctx, "weights")
    if "export" not in selected and set(selected) & {"check", "convert", "parity"}:
        _copy(source.artifact(ONNX_NAME, "check/convert/parity"), ctx.onnx_path, ctx, "onnx")
    if "convert" not in selected and "parity" in selected:
        for target, entry in source.report.get("targets", {}).items():
            if entry.get("status") == "ok" and target in TARGETS:
                out = ctx.run_dir / TARGETS[target].artifact
                _copy(source.artifact(TARGETS[target].artifact, "parity"), out, ctx, target)
                ctx.report.data["targets"][target] = entry
                ctx.converted[target] = out


def _copy(src: Path, dst: Path, ctx: RunContext, key: str) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    ctx.report.add_artifact(key, dst, copied_from=str(src))
