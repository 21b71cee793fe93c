"""A run dir belongs to one run: refused before Hydra writes into it, locked while its run is alive.

Hydra writes ``.hydra/`` and the log inside ``run_job``; ``RunDirGuard.on_run_start`` (a Hydra
callback, conf/config.yaml) runs before that, so a dir that holds anything is refused untouched. A
new dir is claimed with an ``flock`` on ``.pipeline.lock``, which names its owner (pid, host, start):
a second run started into the same dir at the same time finds the lock taken and is refused with the
owner named. The kernel drops the lock when its process dies, even by kill -9, so a report that
still says "running" while nobody holds the lock is a killed run (``is_alive``), and from_run can
resume from it.

Sweeps: the sweep dir is claimed the same way in ``on_multirun_start``; each job then locks its own
job dir (fresh inside a sweep dir this process owns) in ``on_job_start``.
"""
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import PipelineError, explain
from pipeline.report import REPORT_NAME

LOCK_NAME = ".pipeline.lock"
OUTPUT_DIR = "${hydra.runtime.output_dir}"
_held: dict[Path, int] = {}  # dirs this process owns -> the open, flock-ed lock file


def absolute(run_dir) -> Path:
    """The dir as Hydra names it (``os.path.abspath``: ``..`` and a trailing slash resolved)."""
    return Path(os.path.abspath(run_dir))


def same_dir(one, other) -> bool:
    """Whether two paths name one dir, as written or through links."""
    return absolute(one) == absolute(other) or os.path.realpath(one) == os.path.realpath(other)


def owner(run_dir: Path) -> dict | None:
    """Who holds ``run_dir``'s lock now (pid, host, started, command), or None if no live process does."""
    path = absolute(run_dir)
    if path in _held:
        return _read_owner(path)
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(path) or {"pid": "unknown"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_alive(run_dir: Path) -> bool:
    return owner(run_dir) is not None


def owns(run_dir: Path) -> bool:
    """Whether this process holds ``run_dir``'s lock (and so may write into it)."""
    return absolute(run_dir) in _held


def describe_owner(info: dict) -> str:
    started = info.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {info.get('pid')} on {info.get('host', 'this host')}{since}"


def _read_owner(path: Path) -> dict | None:
    try:
        return json.loads((path / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def check_unused(run_dir: Path, key: str) -> None:
    """Refuse a dir that another run owns or that already holds anything; touches nothing."""
    try:
        _check_unused(absolute(run_dir), key)
    except OSError as exc:  # a name too long, a path through a broken mount, ...
        raise PipelineError(f"{key}={run_dir} cannot be used: {exc.strerror or exc}.",
                            f"Set {key} to a shorter path in a writable location.") from exc


def _check_unused(path: Path, key: str) -> None:
    _check_not_inside_a_run(path, key)
    if path.is_symlink() and not path.exists():
        raise PipelineError(f"{key}={path} is a broken symbolic link (to {os.readlink(path)}, which does not exist).",
                            f"Set {key} to a new directory, or remove the link.")
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{key}={path} is a file, not a directory.", f"Set {key} to a new directory.")
    if not path.exists():
        _check_creatable(path, key)
        return
    holder = owner(path)
    if holder:
        raise _busy(path, key, holder)
    try:
        entries = sorted(e.name for e in path.iterdir() if e.name != LOCK_NAME)
    except OSError as exc:
        raise PipelineError(f"{key}={path} cannot be read: {exc.strerror}.", f"Set {key} to a new directory.") from exc
    if entries:
        raise PipelineError(f"{key}={path} is not empty ({_what_it_holds(path, entries)}); it is left untouched.",
                            f"Every run writes into a new dir: drop {key} (a new dated dir is the default) "
                            f"or set it to a path that does not exist yet."
                            + _resume_hint(path))


def _check_not_inside_a_run(path: Path, key: str) -> None:
    """A dir inside another run's dir would add files to that run (a sweep's own jobs are claimed apart). Real
    paths too: a link (the dir itself or a folder above it) may lead into another run."""
    real = Path(os.path.realpath(path))
    for ancestor in dict.fromkeys([*path.parents, *real.parents]):
        if (ancestor / REPORT_NAME).is_file() or ((ancestor / LOCK_NAME).is_file() and owner(ancestor)):
            through = "" if ancestor in path.parents else f" (through a link: its real path is {real})"
            raise PipelineError(f"{key}={path} is inside the run dir {ancestor}{through}, which it would change.",
                                f"Set {key} to a path outside other runs' dirs.")


def _check_creatable(path: Path, key: str) -> None:
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PipelineError(f"{key}={path} cannot be created: {ancestor} is a file, not a directory.",
                            f"Set {key} to a path under a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PipelineError(f"{key}={path} cannot be created: {ancestor} is not writable.",
                            f"Set {key} to a writable location.")


def _what_it_holds(path: Path, entries: list[str]) -> str:
    if REPORT_NAME not in entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        return f"it holds {shown}"
    try:
        status = json.loads((path / REPORT_NAME).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = "unreadable"
    if status == "running":
        return "it holds a run whose process was killed while it was running"
    return f"it holds a run with status {status!r}"


def _resume_hint(path: Path) -> str:
    if (path / REPORT_NAME).is_file() and (path / ".hydra" / "config.yaml").is_file():
        return f" To continue that run into a new dir: python -m pipeline from_run={path}"
    return ""


def _busy(path: Path, key: str, holder: dict) -> PipelineError:
    return PipelineError(f"{key}={path} is in use by another run ({describe_owner(holder)}); it is left untouched.",
                         f"Wait for that run to finish (or stop it), or set {key} to a new directory.")


def claim(run_dir: Path, key: str = "hydra.run.dir", fresh: bool = True) -> None:
    """Lock ``run_dir`` for this process. ``fresh``: it must be new or empty (nothing written yet);
    otherwise (a sweep job, Hydra already wrote its config there) it must hold no report yet."""
    path = absolute(run_dir)
    if path in _held:
        return
    if fresh:
        check_unused(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise PipelineError(f"{key}={path} cannot be created or written: {exc.strerror or exc}.",
                            f"Set {key} to a writable location.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(path, key, _read_owner(path) or {"pid": "unknown"}) from None
    # Another run may have claimed the dir, written and exited between the check and the lock.
    taken = (fresh and any(e.name != LOCK_NAME for e in path.iterdir())) or (path / REPORT_NAME).exists()
    if taken:
        os.close(fd)
        raise PipelineError(f"{key}={path} already holds a run; it is left untouched.",
                            f"Set {key} to a new directory." + _resume_hint(path))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": " ".join(sys.argv)}).encode())
    _held[path] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(absolute(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing drops the flock; the file stays, naming the last owner


def release_all() -> None:
    for path in list(_held):
        release(path)


def exit_on_error(action) -> None:
    """Run ``action``; a PipelineError is one paragraph on stderr and exit 1 (Hydra would print a traceback).

    Any other error exits 1 too: Hydra only warns about an exception raised in a callback and goes on, so
    a guard that failed would let the run write into a dir it never checked."""
    try:
        action()
    except PipelineError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(explain(exc.message, exc.hint), file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        from pipeline import interrupts

        if interrupts.stopping():  # a signal cut the check short: nothing was written, the run stops as asked
            print(explain("Interrupted by a signal before the run started; nothing was written.", "",
                          verb="interrupted"), file=sys.stderr)
            sys.exit(130)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        text = " ".join(str(exc).split())[:300]
        print(explain(f"the run dir could not be checked ({type(exc).__name__}: {text}); nothing was written.",
                      "Check hydra.run.dir / hydra.sweep.dir and the overrides named above; HYDRA_FULL_ERROR=1 "
                      "shows where it failed."), file=sys.stderr)
        sys.exit(1)


class RunDirGuard(Callback):
    """Hydra callback: refuse a used run dir before Hydra writes into it; lock it for the run."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from pipeline import schema

        # The config first: a bad value then leaves no run dir at all.
        exit_on_error(lambda: schema.validate(config))
        exit_on_error(lambda: check_choices(config.hydra))
        exit_on_error(lambda: check_inside(config))
        exit_on_error(lambda: claim(Path(config.hydra.run.dir), "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        subdir = str(config.hydra.sweep._get_node("subdir")._value())
        if "hydra.job.num" not in subdir and "hydra.job.id" not in subdir:
            exit_on_error(lambda: _raise(PipelineError(
                f"hydra.sweep.subdir={subdir} does not differ between jobs: every job would write into one dir.",
                "Keep ${hydra.job.num} in hydra.sweep.subdir (the default is ${hydra.job.num}).")))
        exit_on_error(lambda: _check_relative("hydra.sweep.subdir", subdir, "the sweep dir"))
        exit_on_error(lambda: check_inside(config))
        exit_on_error(lambda: claim(Path(config.hydra.sweep.dir), "hydra.sweep.dir"))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        # In a sweep, Hydra has just written this job's config into a new dir of the sweep dir we own.
        exit_on_error(lambda: claim(Path(config.hydra.runtime.output_dir), "hydra.sweep.subdir", fresh=False))

    def on_job_end(self, config: DictConfig, **kwargs) -> None:
        release(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        release(Path(config.hydra.sweep.dir))


def _raise(exc: Exception):
    raise exc


def _check_relative(key: str, value: str, inside: str) -> None:
    """A path Hydra joins to the run (or sweep) dir must stay inside it: no absolute path, no ``..``."""
    if os.path.isabs(value) or ".." in Path(value).parts:
        raise PipelineError(f"{key}={value} leads out of {inside}: Hydra would write there, possibly into another "
                            "run's files.",
                            f"Set {key} to a relative path without '..' (or drop the override).")


def check_inside(config: DictConfig) -> None:
    """What Hydra writes besides the run dir itself (the saved config, the log) stays inside it."""
    hydra_cfg = config.hydra
    output_subdir = hydra_cfg._get_node("output_subdir")._value()
    if output_subdir is not None:
        _check_relative("hydra.output_subdir", str(output_subdir), "the run dir")
    for section in ("job_logging", "hydra_logging"):
        handlers = OmegaConf.select(hydra_cfg, f"{section}.handlers", default=None)
        for handler, spec in (handlers.items_ex(resolve=False) if isinstance(handlers, DictConfig) else []):
            node = spec._get_node("filename") if isinstance(spec, DictConfig) and "filename" in spec else None
            if node is None:
                continue
            raw = str(node._value())
            inside = raw.startswith(OUTPUT_DIR + "/") and ".." not in Path(raw[len(OUTPUT_DIR) + 1:]).parts
            if not inside:
                key = f"hydra.{section}.handlers.{handler}.filename"
                raise PipelineError(f"{key}={raw} writes the log outside the run dir, possibly into another run's "
                                    "files.",
                                    f"Keep it under the run dir: {key}={OUTPUT_DIR}/<name>.log (or drop the override).")
    if hydra_cfg.job.get("chdir"):
        raise PipelineError("hydra.job.chdir=true would run the job inside its run dir: relative paths on the command "
                            "line (model.weights, dataset.path, dataset.root, from_run) would then be read from there, "
                            "not from where you started it, and could name other files.",
                            "Drop the override (the default is false); give absolute paths if the job must not "
                            "depend on the working directory.")
    name = str(hydra_cfg.job._get_node("name")._value())
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise PipelineError(f"hydra.job.name={name!r} is not a plain file name: the log "
                            f"(<run dir>/<hydra.job.name>.log) would be written elsewhere.",
                            "Drop the override (the default is pipeline) or use a name without '/'.")


def check_choices(hydra_cfg: DictConfig) -> None:
    """An optional config group (``experiment``, ``hparams_search``) with a choice that does not exist is
    skipped by Hydra without a word: ``experiment=seed00_mnist_cnn`` would run the defaults instead."""
    from hydra.core.global_hydra import GlobalHydra

    choices = hydra_cfg.runtime.get("choices") or {}
    if not GlobalHydra.instance().is_initialized():
        return
    repository = GlobalHydra.instance().config_loader().repository
    for group, choice in choices.items():
        if choice is None or str(group).startswith("hydra/") or not isinstance(choice, str):
            continue
        if not repository.config_exists(f"{group}/{choice}"):
            options = sorted(repository.get_group_options(str(group)))
            raise PipelineError(f"{group}={choice} is not an option of the {group} config group (conf/{group}/).",
                                f"Pick one of: {', '.join(options) or 'none available'}.")
