"""``from_run=<run dir>``: later stages run on an earlier run's artifacts, in a new run dir.

The source run is only read, never written. What its artifacts were made with (ADOPTED_KEYS: model,
dataset, trainer, optimizer, scheduler, export, seed) is adopted, except the keys given on the
command line, which win: a group (``model=mnist_cnn``) replaces the whole key, a dotted key
(``trainer.max_epochs=3``) that one value, and an experiment (``experiment=...``) the groups and keys
it sets. Without ``stages=`` on the command line the run resumes: it runs the source's stages that did
not finish (an interrupted training continues from its checkpoint). The stages not run take their
outputs from the source, copied into the new run dir so that the new run is complete on its own and
can itself be a ``from_run`` source.
"""
import functools
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, is_dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pipeline import foreign_config, limits, schema
from pipeline import run_dir as run_dirs
from pipeline.artifacts import FOLDER, spec_of
from pipeline.context import RunContext
from pipeline.contracts import TARGETS as CONVERTED_TARGETS
from pipeline.errors import PipelineError
from pipeline.report import REPORT_NAME, STAGES
from pipeline.results import Converted
from pipeline.targets import TARGETS

# Adopted from the source run: what its artifacts and checkpoints were made with.
ADOPTED_KEYS = ("model", "dataset", "trainer", "optimizer", "scheduler", "export", "seed")
# A resume (no stages= on the command line) finishes the source run as it was set up: these too.
RESUMED_KEYS = (*ADOPTED_KEYS, "parity", "logger")
# Groups whose options are typed per option (pipeline/schema.py): adopted values keep their schema.
TYPED_GROUPS = ("dataset", "optimizer", "scheduler")


@dataclass
class SourceRun:
    path: Path
    report: dict
    config: DictConfig
    killed: bool = False  # its report says "running" but no process holds its lock (kill -9, power loss)
    adopted: tuple[str, ...] = ADOPTED_KEYS  # what adopt_config took from it

    @property
    def status(self) -> str:
        return "killed" if self.killed else str(self.report.get("status"))

    def stage_status(self, stage: str) -> str | None:
        entry = self.report.get("stages", {}).get(stage)
        return entry.get("status") if isinstance(entry, dict) else None

    def artifact(self, name: str, needed_for: str, folder: bool | None = None) -> Path:
        path = self.path / name
        if not path.exists():
            raise PipelineError(
                f"from_run={self.path} has no {name}, which the {needed_for} stage needs "
                f"(its train stage: {self.stage_status('train')}, status: {self.status}).",
                "Add the stage that makes it to stages=[...], or pick a run that finished it.")
        # A file artifact (model.pt, model.onnx, model.tflite) must be one; a SavedModel is a dir (the artifact's
        # spec says which; without one, a name with a suffix is a file).
        expected_file = not folder if folder is not None else bool(Path(name).suffix)
        if (expected_file and not path.is_file()) or (not expected_file and not path.is_dir()):
            found = ("a directory" if path.is_dir() else "something else") + (" via a symlink" if path.is_symlink()
                                                                               else "")
            raise PipelineError(
                f"from_run={self.path}: its {name} is not a {'file' if expected_file else 'directory'} ({found}), "
                "so it is not what the run wrote.",
                "Pick another run dir, or re-run the stage that makes it (add it to stages=[...]).")
        self.check_inside(path, name)
        return path

    def check_inside(self, path: Path, name: str) -> None:
        """Refuse ``path`` (and, for a folder, everything in it) if a link leads out of the source run dir or it
        holds something that is not a file or folder: nothing outside the source is ever read or copied."""
        self._check_one_inside(path, name)
        if path.is_dir():  # not a link out (checked above): walk it
            for folder, dirs, files in os.walk(path):  # links are not followed: each is checked here
                for entry in [*dirs, *files]:
                    inner = Path(folder) / entry
                    self._check_one_inside(inner, f"{name}/{inner.relative_to(path)}")
                    if inner.is_symlink() and inner.is_dir():  # copying would follow it, maybe in a loop
                        raise PipelineError(f"from_run={self.path}: its {name}/{inner.relative_to(path)} is a link "
                                            "to a folder, which a run never writes; nothing was copied.",
                                            "Pick a run dir whose files are its own, or re-run the stage that "
                                            "makes it (add it to stages=[...]).")

    def _check_one_inside(self, path: Path, name: str) -> None:
        if path.is_symlink() and not self._inside(Path(os.path.realpath(path))):
            raise PipelineError(
                f"from_run={self.path}: its {name} is a link to {os.readlink(path)}, outside that run dir; a run's "
                "files are read from inside it only, so nothing was read or copied.",
                "Pick a run dir whose files are its own (copy the real files in place of the links), or re-run "
                "the stage that makes it (add it to stages=[...]).")
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise PipelineError(f"from_run={self.path}: its {name} is not a regular file or folder (a device, a pipe "
                                "or a socket), so it is not what the run wrote.",
                                "Pick another run dir, or re-run the stage that makes it (add it to stages=[...]).")

    def _check_intact(self, path: Path, name: str) -> None:
        """A checkpoint is a torch.save zip archive: a truncated one (a full disk, a copy cut short) is named."""
        if not zipfile.is_zipfile(path):
            raise PipelineError(f"from_run={self.path}: its {name} is damaged ({path.stat().st_size} bytes, not a "
                                "complete torch.save archive: truncated by a full disk or an interrupted copy?), so "
                                "its training cannot resume from it.",
                                "Train anew (a new run without from_run), or resume from a copy of that run dir "
                                "without the damaged checkpoint.")

    def _inside(self, real: Path) -> bool:
        return real == self.path or self.path in real.parents

    @property
    def training_finished(self) -> bool:
        return self.stage_status("train") == "ok"

    def resume_checkpoint(self) -> Path | None:
        # An epoch-end checkpoint resumes cleanly (the data order is not resumable mid-epoch).
        for name in ("last.ckpt", "interrupted.ckpt"):
            path = self.path / "checkpoints" / name
            if path.is_file() or path.is_symlink():
                self.check_inside(path, f"checkpoints/{name}")
                if path.is_file():
                    self._check_intact(path, f"checkpoints/{name}")
                    return path
        return None

    def unfinished_stages(self) -> list[str]:
        """The stages the source selected and did not finish, in run order."""
        selected = _raw(self.config, "stages") or list(STAGES)  # never resolved: the config is foreign
        return [s for s in STAGES if s in selected and self.stage_status(s) != "ok"]


# What a report.json written by this pipeline says in "status" and in each stage's "status".
RUN_STATUSES = ("running", "ok", "failed", "interrupted")
STAGE_STATUSES = ("pending", "running", "ok", "failed", "skipped", "interrupted")


@functools.lru_cache(maxsize=4)  # read once: the CLI adopts its config, the runner its artifacts
def load_source(path: str) -> SourceRun:
    run = Path(path).expanduser().resolve()
    report_path, config_path = run / REPORT_NAME, run / ".hydra" / "config.yaml"
    if not run.is_dir():
        what = "it does not exist" if not run.exists() else "it is a file"
        raise PipelineError(f"from_run={path} is not a pipeline run dir: {what}.",
                            "Point from_run at a run dir under outputs/ or multirun/ (one holding report.json "
                            "and .hydra/config.yaml).")
    if not report_path.is_file() or not config_path.is_file():
        jobs = sorted(p.parent.name for p in run.glob(f"*/{REPORT_NAME}"))
        hint = (f"It looks like a sweep dir: point from_run at one of its jobs, e.g. from_run={run / jobs[0]}."
                if jobs else "Point from_run at a dir under outputs/ or multirun/ written by a run.")
        raise PipelineError(f"from_run={path} is not a pipeline run dir (it needs report.json and .hydra/config.yaml).",
                            hint)
    source = SourceRun(run, {}, DictConfig({}))
    for name in (REPORT_NAME, ".hydra", ".hydra/config.yaml"):
        source.check_inside(run / name, name)
    limits.check_file(report_path, f"from_run={path}'s {REPORT_NAME}")
    limits.check_file(config_path, f"from_run={path}'s .hydra/config.yaml")
    try:
        report = json.loads(report_path.read_text(), parse_constant=_not_json)
        _refuse_yaml_aliases(config_path)
        config = OmegaConf.load(config_path)
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise PipelineError(f"from_run={path}: report.json or .hydra/config.yaml is unreadable: {text}",
                            "Pick another run dir.") from exc
    problem = _not_a_run(report, config)
    if problem:
        raise PipelineError(f"from_run={path}: report.json or .hydra/config.yaml is not a pipeline run's ({problem}).",
                            "Pick another run dir (one written by python -m pipeline).")
    source.report, source.config = report, config
    if report.get("status") == "running":
        holder = run_dirs.owner(run)
        if holder:
            raise PipelineError(f"from_run={path} is still running ({run_dirs.describe_owner(holder)}).",
                                "Wait for it to finish, or stop it (Ctrl+C or kill: it then says interrupted) "
                                "and resume from it.")
        source.killed = True
    return source


def _refuse_yaml_aliases(path: Path) -> None:
    """A saved config never holds YAML anchors and aliases; nested ones can expand to billions of nodes."""
    import yaml

    for event in yaml.parse(path.read_text()):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(f"it uses a YAML alias (*{event.anchor}), which a saved config never holds")


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON (report.json is strict JSON)")


def _not_a_run(report, config) -> str | None:
    """Why a report and config were not written by a pipeline run (None: they look like one's)."""
    if not isinstance(report, dict):
        return f"report.json holds a {type(report).__name__}, not an object"
    if report.get("status") not in RUN_STATUSES:
        return f"report.json status is {report.get('status')!r}, not one of {', '.join(RUN_STATUSES)}"
    stages = report.get("stages")
    if not isinstance(stages, dict) or not set(STAGES) <= set(stages):
        return f"report.json stages must name every stage ({', '.join(STAGES)})"
    for name in STAGES:
        entry = stages[name]
        if not isinstance(entry, dict) or entry.get("status") not in STAGE_STATUSES:
            return f"report.json stages.{name} is {entry!r}, not a stage entry with a status"
    for key in ("metrics", "targets"):
        if not isinstance(report.get(key, {}), dict):
            return f"report.json {key} is not an object"
    if not isinstance(config, DictConfig):
        return f".hydra/config.yaml holds a {type(config).__name__}, not a mapping"
    missing = [key for key in ("model", "dataset", "stages") if key not in config.keys()]
    if missing:
        return f".hydra/config.yaml has no {', '.join(missing)}"
    if not isinstance(config._get_node("model"), DictConfig) or "net" not in config._get_node("model").keys():
        return ".hydra/config.yaml model has no net"
    stages = _raw(config, "stages")
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        return f".hydra/config.yaml stages is {stages!r}, not a list of stage names"
    return None


def _raw(config: DictConfig, key: str):
    """``config``'s value at a dotted key as written (interpolations never resolved), None if absent."""
    node = config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or part not in node.keys():
            return None
        node = node._get_node(part)
    return _plain(node)


# --- the config: the source's, then the command line's ---

def command_line_keys(overrides: list[str]) -> tuple[set[str], set[str]]:
    """(keys set on the command line, keys deleted there): groups and dotted keys, and what experiments set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given, deleted = set(), set()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if override.is_delete():
            deleted.add(key.replace("/", "."))
            continue
        given.add((override.package or key).replace("/", "."))
        given |= _keys_set_by_global_option(key, override.value())
    return given, deleted


def _keys_set_by_global_option(group: str, choice) -> set[str]:
    """What a ``@package _global_`` option (experiment=...) sets: the groups it picks and its keys."""
    from hydra.core.global_hydra import GlobalHydra

    if not isinstance(choice, str) or not GlobalHydra.instance().is_initialized():
        return set()
    try:  # Hydra's own config repository: every config source and search path, as composition saw them
        result = GlobalHydra.instance().config_loader().repository.load_config(f"{group}/{choice}")
    except Exception:  # noqa: BLE001 - not a config group option (e.g. a plain key): it sets nothing else
        return set()
    if result is None or result.header.get("package") != "_global_":
        return set()
    keys = {str(d.group).lstrip("/").replace("/", ".") for d in result.defaults_list or [] if getattr(d, "group", None)}
    return keys | set(_leaf_keys(result.config, ""))


def _leaf_keys(node, prefix: str):
    for key, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else []:
        if isinstance(value, DictConfig) and len(value):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def adopt_config(cfg: DictConfig, source: SourceRun, command_line: list[str]) -> None:
    """Take ADOPTED_KEYS from the source run, re-apply what the command line set, pick the stages to run."""
    given, deleted = command_line_keys(command_line)
    resuming = "stages" not in given
    adopted = RESUMED_KEYS if resuming else ADOPTED_KEYS
    trusted = bool(cfg.get("from_run_trust"))
    if not trusted:  # a run dir from elsewhere is data: it names no code and reads nothing of this machine
        foreign_config.check(source.config, adopted, _given_again(given, deleted), str(source.path))
    # Copies: the adopted values below replace the nodes these were read from.
    kept = {key: _plain(OmegaConf.select(cfg, key, throw_on_missing=False)) for key in given
            if key.split(".")[0] in adopted and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT}
    try:
        with open_dict(cfg):
            for key in adopted:
                if key in source.config.keys():
                    _set_node(cfg, key, _plain(source.config._get_node(key)), trusted, source)
            for key in sorted(kept, key=lambda k: k.count(".")):  # whole groups first, then single keys
                if "." in key:
                    OmegaConf.update(cfg, key, kept[key], merge=False)
                else:
                    _set_node(cfg, key, kept[key])
            for key in deleted:  # ~scheduler (scheduler=null): none; ~model.net.dropout: that key gone
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if not parent and leaf in adopted:
                    cfg[leaf] = None
                elif isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"from_run={source.path}: its config does not fit this version's schema: {exc}",
                            "Re-run that run's config with this version, or set the keys on the command line.") \
            from exc
    source.adopted = adopted
    if resuming:
        cfg.stages = _resume_stages(source)
    _check_one_source_of_weights(cfg, source, given)


def _given_again(given: set[str], deleted: set[str]):
    """Whether the command line sets (or removes) a key or one of its parents: the source's value is not used."""
    replaced = given | deleted

    def overridden(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in replaced for i in range(1, len(parts) + 1))
    return overridden


def _check_one_source_of_weights(cfg: DictConfig, source: SourceRun, given: set[str]) -> None:
    """Without train, the weights come from the source's model.pt: a model.weights given on the command
    line as well would be ignored without a word."""
    weights = OmegaConf.select(cfg, "model.weights", default=None)
    if "model.weights" in given and weights and "train" not in (cfg.get("stages") or []):
        raise PipelineError(f"model.weights={weights} and from_run={source.path} both give the weights to export; "
                            "without the train stage this run would take from_run's model.pt and ignore "
                            "model.weights.",
                            "Drop from_run to export model.weights (stages=[export,check,convert,parity] "
                            f"model.weights={weights}), or drop model.weights to use that run's weights.")


_ABSENT = object()


def _plain(node):
    """A detached copy of a config value (interpolations kept as written)."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=False)
    return node._value() if hasattr(node, "_value") else node


def _set_node(cfg: DictConfig, key: str, value, trusted: bool = True, source: SourceRun | None = None) -> None:
    """Replace ``cfg[key]``, keeping its schema (types and ranges still apply to the new value)."""
    if isinstance(value, dict):
        if key in TYPED_GROUPS:
            value = schema.typed_option(key, value)
            # a dataset of conf/ without a typed schema (a new dataset is its module and conf file) is
            # adopted as it is: typed or not, it is what this project's own dataset=<name> would run
            own = value.get("_target_") in foreign_config.conf_targets() if isinstance(value, dict) else True
            if key == "dataset" and isinstance(value, dict) and not own and not trusted and source is not None:
                raise PipelineError(
                    f"from_run={source.path}: its dataset (_target_={value.get('_target_')}) is not one of this "
                    "project's datasets, so it would be adopted without types or ranges.",
                    "Pick the dataset on the command line (e.g. dataset=mnist), or add from_run_trust=true if you "
                    "trust that run dir.")
        elif is_dataclass(node_type := OmegaConf.get_type(cfg, key)):
            value = OmegaConf.merge(OmegaConf.structured(node_type), value)
    cfg[key] = value


def _resume_stages(source: SourceRun) -> list[str]:
    stages = source.unfinished_stages()
    if not stages:
        done = ", ".join(s for s in STAGES if source.stage_status(s) == "ok")
        raise PipelineError(f"from_run={source.path} finished every stage it ran ({done}): there is nothing to resume.",
                            f"To run stages again on its artifacts, name them, e.g. from_run={source.path} "
                            "stages=[convert,parity] export=keras.")
    return stages


# --- the artifacts ---

def adopt_artifacts(ctx: RunContext, source: SourceRun, selected: list[str]) -> None:
    """Copy what the selected stages need (their contracts) and no selected stage makes; set the checkpoint
    to resume from."""
    from pipeline import stages

    entry = {"path": str(source.path), "adopted_config": list(source.adopted), "source_status": source.status,
             "stages": selected, "trusted": bool(ctx.cfg.get("from_run_trust"))}
    ctx.report.data["from_run"] = entry
    if "train" in selected:
        if not source.training_finished and source.resume_checkpoint():
            check_resumable(ctx.cfg, source)
            ctx.results.resume_from = source.resume_checkpoint()
            entry["resumed_from"] = str(ctx.results.resume_from)
    else:
        ctx.report.data["metrics"].update(source.report.get("metrics", {}))  # the model's, measured there
        if "trainer" in source.report:
            ctx.report.data["trainer"] = source.report["trainer"]
    contracts = stages.contracts()
    made_here = {artifact for name in selected for artifact in contracts[name].makes}
    wanted: dict[str, list[str]] = {}  # artifact -> the stages that read it
    for name in selected:
        for artifact in (*contracts[name].needs, *contracts[name].uses):
            if artifact not in made_here:
                wanted.setdefault(artifact, []).append(name)
    for artifact, readers in wanted.items():
        if artifact == CONVERTED_TARGETS:
            _adopt_targets(ctx, source)
        elif artifact == "weights" and ctx.cfg.model.get("weights") and \
                not (source.path / spec_of(artifact).name).exists():
            continue  # a source that never trained (model.weights=init or a file): the network is built the same
        else:
            _adopt(ctx, source, artifact, "/".join(readers))


def _adopt(ctx: RunContext, source: SourceRun, key: str, needed_for: str) -> None:
    spec = spec_of(key)
    path = source.artifact(spec.name, needed_for, folder=spec.kind == FOLDER)
    if path.suffix == ".onnx":
        _check_onnx(path, source)
    elif path.is_dir():  # a SavedModel: its graph must not read or write files
        foreign_config.check_saved_model(path, f"from_run={source.path}'s {path.name}")
    _copy(path, ctx.store.path(key), ctx, key)


def _adopt_targets(ctx: RunContext, source: SourceRun) -> None:
    """The source's conversions of the selected targets, for parity to measure (a refused one is reported)."""
    targets = source.report.get("targets") or {}
    converted = {target: entry for target, entry in targets.items()
                 if isinstance(entry, dict) and entry.get("status") == "ok" and target in TARGETS}
    refused = {target: entry for target, entry in targets.items()
               if isinstance(entry, dict) and entry.get("status") == "refused" and target in TARGETS}
    _check_converted(ctx.cfg, source, {**converted, **refused})  # a refused target has nothing to measure
    picked = _selected_targets(ctx.cfg)  # export=keras measures keras only, not every target of the source
    ctx.report.data["targets"].update({t: e for t, e in refused.items() if t in picked})
    for target, target_entry in converted.items():
        if target in picked:
            _adopt(ctx, source, target, "parity")
            ctx.report.data["targets"][target] = target_entry
            ctx.results.converted[target] = Converted(target, ctx.store.path(target), target_entry)


def _check_onnx(path: Path, source: SourceRun) -> None:
    """A source's ONNX model within limits.* (file size, the tensors it declares), read from its file only."""
    from pipeline.onnx_model import read_onnx

    key = f"from_run={source.path}'s {path.name}"
    limits.check_file(path, key)
    limits.check_onnx(read_onnx(path), key)


def _selected_targets(cfg: DictConfig) -> list[str]:
    from pipeline.converters import selected_targets

    return selected_targets(cfg)


def _check_converted(cfg: DictConfig, source: SourceRun, converted: dict) -> None:
    """Parity without convert measures the source's conversions: each target asked for must be there."""
    from pipeline.converters import selected_targets

    missing = [t for t in selected_targets(cfg) if t not in converted]
    if missing:
        raise PipelineError(f"from_run={source.path} has no {', '.join(missing)} conversion for parity to measure "
                            f"(it converted: {', '.join(converted) or 'nothing'}).",
                            f"Add convert to stages (stages=[convert,parity]) to convert it here, or drop "
                            f"{', '.join(missing)} from export=.")


def check_resumable(cfg: DictConfig, source: SourceRun) -> None:
    """A checkpoint resumes only the network and optimizer it was saved from."""
    for key in ("model.net", "model.output", "optimizer._target_"):
        ours = _plain(OmegaConf.select(cfg, key, default=None))
        theirs = _raw(source.config, key)
        if str(ours) != str(theirs):
            raise PipelineError(
                f"from_run={source.path} resumes its interrupted training, but {key} differs from that run's "
                f"({ours} here, {theirs} there): its checkpoint does not fit.",
                f"Drop {key} from the command line to resume, or train anew with a new run (no from_run).")


def _copy(src: Path, dst: Path, ctx: RunContext, key: str) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    ctx.store.put(key, "from_run", dst, copied_from=str(src))
