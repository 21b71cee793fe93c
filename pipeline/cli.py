"""Entry point: ``python -m pipeline`` / ``pipeline``, a Hydra app over ``conf/``."""
import logging
import os
import sys
from pathlib import Path

# Only light imports here: `--cfg job`, `--help` and bad overrides must answer fast. torch,
# Lightning and TensorFlow load inside the stages that need them.
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline import disk, interrupts, schema
from pipeline import run_dir as run_dirs
from pipeline.atomic import write_with
from pipeline.errors import PipelineError, RunInterrupted, explain
from pipeline.process_end import end_process

log = logging.getLogger("pipeline")
# Records for pipeline.log only (conf/config.yaml routes this logger to the file handler).
logfile = logging.getLogger("pipeline.logfile")
# An absolute path: under ``python -m`` Hydra would otherwise look for a ``conf`` Python package.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
GUARD_OVERRIDE = "++hydra.callbacks.run_dir_guard._target_=pipeline.run_dir.RunDirGuard"
schema.register()


def unknown_key(exc: Exception) -> tuple[str, str] | None:
    """An override of a key the config does not have (``trainer.max_epoch=3``): the message and hint, naming the
    keys there are and the nearest one; Hydra's own advice ("use +trainer.max_epoch") would add a key that
    nothing reads. None for any other error."""
    import dataclasses
    import difflib

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = exc.__cause__
    kind = getattr(cause, "object_type", None)
    if not isinstance(cause, ConfigAttributeError | ConfigKeyError) or not dataclasses.is_dataclass(kind):
        return None
    full_key = str(getattr(cause, "full_key", "") or "")
    parent, _, key = full_key.rpartition(".")
    keys = [f.name for f in dataclasses.fields(kind) if not f.name.startswith("_")]
    near = difflib.get_close_matches(key, keys, n=1)
    where = f"{parent}." if parent else ""
    return (f"{full_key}: there is no such setting" + (f" ({parent} has no key {key!r})." if parent else "."),
            (f"Did you mean {where}{near[0]}? " if near else "") +
            f"The keys{f' of {parent}' if parent else ''}: {', '.join(keys)}.")


def _report_hydra_errors() -> None:
    """Hydra prints a traceback for any error of its own that is not one of its "compact" ones (``=1`` on the
    command line, an OSError in a callback): those get our one paragraph and exit 1 too. ``--cfg`` checks the
    composed config against the schema before printing it."""
    from hydra._internal import hydra as hydra_internal
    from hydra._internal import utils as hydra_utils
    from hydra.errors import CompactHydraException, OverrideParseException

    if getattr(hydra_utils.run_and_report, "pipeline", False):
        return
    original = hydra_utils.run_and_report

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except OverrideParseException as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or not _needs_quotes(exc.override):
                    raise  # Hydra's own paragraph says it
                key, _, value = exc.override.partition("=")
                print(explain(f"the override {exc.override} cannot be parsed ({str(exc).splitlines()[0]}): its value "
                              "holds spaces or characters of Hydra's override grammar.",
                              f"Quote the value for Hydra inside the shell's quotes: \"{key}='{value}'\"."),
                      file=sys.stderr)
                sys.exit(EXIT_FAILED)
            except CompactHydraException as exc:
                unknown = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else unknown_key(exc)
                if unknown is None:
                    raise  # Hydra prints these itself, in one paragraph
                print(explain(*unknown), file=sys.stderr)
                sys.exit(EXIT_FAILED)
            except Exception as exc:
                if interrupts.stopping():  # Hydra's own state cut short by a signal (a sweep's first second)
                    print(explain("Interrupted by a signal before the run started or after it ended.", "",
                                  verb="interrupted"), file=sys.stderr)
                    sys.exit(EXIT_INTERRUPTED)
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                import yaml

                if isinstance(exc, PipelineError):
                    print(explain(exc.message, exc.hint), file=sys.stderr)
                elif isinstance(exc, yaml.YAMLError):  # a config file (--config-path, conf/): name the file and line
                    text = " ".join(str(exc).split())[:400]
                    print(explain(f"a config file is not valid YAML: {type(exc).__name__}: {text}",
                                  "Fix the YAML in the file named there (e.g. a saved .hydra/config.yaml passed with "
                                  "--config-path), or re-run from an intact copy."), file=sys.stderr)
                else:
                    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    print(explain(f"{type(exc).__name__}: {text}",
                                  "Check the command line: overrides are key=value (a group: group=option), e.g. "
                                  "model=mnist_cnn trainer.max_epochs=3; see python -m pipeline --help."),
                          file=sys.stderr)
                sys.exit(EXIT_FAILED)
        return original(guarded)

    run_and_report.pipeline = True
    hydra_utils.run_and_report = run_and_report

    show_cfg = hydra_internal.Hydra.show_cfg

    def checked_show_cfg(self, config_name, overrides, cfg_type, package, resolve=False):
        if cfg_type != "hydra":
            cfg = self.compose_config(config_name=config_name, overrides=overrides, run_mode=RunMode.RUN,
                                      with_log_configuration=False)
            schema.validate(cfg)
        return show_cfg(self, config_name, overrides, cfg_type, package, resolve)

    hydra_internal.Hydra.show_cfg = checked_show_cfg


_report_hydra_errors()


def main() -> None:
    """The console script and ``python -m pipeline``: Hydra, with interrupts and run-dir locks handled."""
    interrupts.install()
    # A log handler that cannot write (a full disk) must not print a traceback per record on the console:
    # the error that caused it is reported once, as one paragraph.
    logging.raiseExceptions = False
    logging.captureWarnings(True)  # library warnings go to pipeline.log, not the console (conf/config.yaml)
    sys.argv[1:] = [_group_deletion(arg) for arg in sys.argv[1:]]
    split = _split_by_the_shell(sys.argv[1:])
    if split:
        print(explain(*split), file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if any(arg.split("=")[0] in ("--config-name", "-cn", "--config-path", "-cp") for arg in sys.argv[1:]):
        # A saved config (.hydra/config.yaml) has no hydra section: keep the run-dir guard anyway.
        sys.argv.append(GUARD_OVERRIDE)
    try:
        hydra_main()
    except KeyboardInterrupt as exc:  # before or after the job (Hydra start-up, a sweep between jobs)
        print(explain(f"{exc or 'Interrupted'} before the run started or after it ended.", "", verb="interrupted"),
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        if not interrupts.stopping():
            raise
        # Hydra's own state cut short by the signal (outside the job): the stop is all that happened.
        print(explain("Interrupted by a signal before the run started or after it ended.", "", verb="interrupted"),
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        run_dirs.release_all()
        logging.captureWarnings(False)
        interrupts.ignore()  # the process is ending: a late signal must not turn exit 130 into 143


def entry() -> None:
    """``python -m pipeline`` and the console script: main(), then the process ends at once
    (``pipeline.process_end``: no 2 s teardown of torch and TensorFlow after the run is written)."""
    _import_from_working_dir()
    try:
        main()
    except SystemExit as exc:
        end_process(exc.code)
    end_process(0)


def _import_from_working_dir() -> None:
    """``model.net._target_=my_model.Net`` finds my_model.py in the directory the user runs from, with the
    ``pipeline`` script as with ``python -m pipeline`` (which puts it first on sys.path itself)."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
        sys.path.insert(0, here)


def _needs_quotes(override: str | None) -> bool:
    """A key=value whose value has what Hydra's grammar reads as syntax (spaces, parentheses, quotes...)."""
    value = (override or "").partition("=")[2]
    return bool(value) and any(c.isspace() or c in "()[]{}'\"\\:,=" for c in value) and not value.startswith(("'", '"'))


def _split_by_the_shell(args: list[str]) -> tuple[str, str] | None:
    """``hydra.run.dir=/data/my runs`` unquoted reaches us as two arguments; Hydra's own error ("missing
    EQUAL") does not say why. Returns (message, fix) for words that follow a ``key=value`` without one."""
    for index in range(1, len(args)):
        previous, word = args[index - 1], args[index]
        if "=" in word or word.startswith(("-", "~")) or "=" not in previous or previous.startswith("-"):
            continue
        words = [word]
        for following in args[index + 1:]:
            if "=" in following or following.startswith(("-", "~")):
                break
            words.append(following)
        whole = " ".join([previous, *words])
        return (f"{word!r} is not an override (key=value): it follows {previous}, so a value with spaces was "
                "probably split by the shell.",
                f"Quote the whole override: '{whole}' (or use a path without spaces).")
    return None


def _group_deletion(arg: str) -> str:
    """``scheduler=null`` (drop a group's default, as the README and the experiments' defaults say) is
    ``~scheduler`` on Hydra's command line; Hydra rejects the former with a traceback."""
    key, _, value = arg.partition("=")
    if value == "null" and key.isidentifier() and (Path(CONFIG_DIR) / key).is_dir():
        return f"~{key}"
    return arg


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from pipeline import console, runner

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    report = None
    try:
        # The guard callback claimed it already; a config without the callback still gets the lock.
        run_dirs.claim(run_dir, fresh=False)
        run_dirs.check_choices(hydra_cfg)  # a sweep's jobs: the guard checked a single run's before
        source = cfg.get("from_run")
        if source and run_dirs.same_dir(Path(str(source)).expanduser(), run_dir):
            raise PipelineError(f"from_run={source} is this run's own dir: a run cannot take its artifacts from "
                                "itself.", "Point from_run at an earlier run's dir, and let this run write into a "
                                "new one (drop hydra.run.dir).")
        if prepare(cfg, list(hydra_cfg.overrides.task)):
            _save_effective_config(cfg, run_dir)
        schema.validate(cfg)
        check_target_options(cfg, list(hydra_cfg.overrides.task))
        if cfg.print_config:
            console.print_config(cfg)
        report = runner.run(cfg, run_dir)
    except PipelineError as exc:
        runner.report_early_end(cfg, run_dir, "failed", str(exc))
        _explain(exc.message, exc.hint, run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun:  # the job's report says failed; the sweep summary sets the exit code
            return None
        sys.exit(EXIT_FAILED)
    except (RunInterrupted, KeyboardInterrupt) as exc:
        _end_interrupted(cfg, run_dir, hydra_cfg, str(exc) or "Interrupted")
    except Exception as exc:  # outside any stage (the run dir became unwritable, the disk is full, a bug)
        if interrupts.stopping():  # a signal cut Hydra's or OmegaConf's work short: that is all that happened
            logfile.error("Error while stopping after a signal", exc_info=exc)
            _end_interrupted(cfg, run_dir, hydra_cfg, "Interrupted by a signal.")
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logfile.error("Unexpected error", exc_info=exc)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if disk.is_full(exc):  # e.g. report.json could not be written: the report may still say "running"
            full = disk.full_error(run_dir, "the run wrote its report")
            runner.report_early_end(cfg, run_dir, "failed", full.message)
            _explain(full.message, full.hint, run_dir)
            if multirun:
                return None
            sys.exit(EXIT_FAILED)
        _explain(f"{type(exc).__name__}: {text}", "Check that the run dir is writable and the disk has space; "
                 "the full traceback is in pipeline.log (report it as a bug if the cause is not there).", run_dir)
        if multirun:
            return None
        sys.exit(EXIT_FAILED)
    console.print_summary(report.data, run_dir)
    return runner.optimized_metric(cfg, report.data)


def _end_interrupted(cfg: DictConfig, run_dir: Path, hydra_cfg, reason: str) -> None:
    """The report says interrupted (a sweep writes its summary), then exit 130."""
    from pipeline import runner

    runner.report_early_end(cfg, run_dir, "interrupted", reason)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep stops here: Hydra calls no further callback
        _write_sweep_summary(Path(hydra_cfg.sweep.dir))
    _explain(reason, "", run_dir, verb="interrupted")
    sys.exit(EXIT_INTERRUPTED)


def _write_sweep_summary(sweep_dir: Path) -> None:
    from pipeline.sweep_summary import write_summary

    try:
        write_summary(sweep_dir)
    except Exception as exc:  # noqa: BLE001 - the jobs' reports are complete; the summary is a view of them
        logfile.warning("sweep summary not written: %s", exc)


def prepare(cfg: DictConfig, overrides: list[str]) -> bool:
    """What the composed config leaves to the run: adopt a from_run source's config, name the model.
    Returns whether the config now differs from what Hydra saved."""
    from pipeline import from_run, limits

    limits.configure(cfg)  # a source's files are read here, before the runner starts
    adopted = bool(cfg.get("from_run"))
    if adopted:
        from_run.load_source.cache_clear()  # a source read by an earlier job of this process may have changed
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


def check_target_options(cfg: DictConfig, overrides: list[str]) -> None:
    """``export.<target>.*`` on the command line for a target that ``export=`` does not select would be
    ignored without a word (``export=keras export.tflite_int8.int8_io=true``)."""
    from pipeline.converters import selected_targets
    from pipeline.targets import TARGETS

    selected = selected_targets(cfg)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "export" and parts[1] in TARGETS and parts[1] not in selected:
            shown = ",".join(selected) or "none: export=onnx"
            raise PipelineError(f"{key} is set, but export= does not select the {parts[1]} target (selected: "
                                f"{shown}), so it would be ignored.",
                                f"Add the target, e.g. export=[{','.join([*selected, parts[1]])}], or drop {key}.")


def _save_effective_config(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra saved the config as typed; from_run adopted the source's model/dataset: save what ran."""
    path = run_dir / ".hydra" / "config.yaml"
    write_with(path, lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg)))


def _explain(message: str, hint: str, run_dir: Path, verb: str = "failed") -> None:
    report = run_dir / "report.json"
    text = explain(message, hint, report if report.exists() else None, verb=verb)
    logfile.error(text)  # the console gets it once, below
    print(text, file=sys.stderr)
