"""A run dir from elsewhere is data, never code (issue 23): a from_run source's config names no callable
and reads nothing of this machine, links never carry files across a run's boundary, a checkpoint with two
networks is never picked from by chance, and faults end in one paragraph.

The source run dirs are crafted here (a composed config edited, a report saying every stage finished):
each case asserts exit 1 (130 for signals), no traceback, the key named, that the hostile callable never
ran, and that nothing that existed before changed.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, read_report, run_in_process, tree

TABULAR = ("model=tabular_mlp", "dataset=synthetic_tabular", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
           "trainer.limit_val_batches=2", "parity.samples=64", "parity.latency_repeats=2")
STAGES = ("train", "export", "check", "convert", "parity")


def assert_refused(outcome, *expected: str, code: int = 1) -> None:
    assert outcome.code == code, f"exit {outcome.code}\n{outcome.output[-4000:]}"
    assert "Traceback" not in outcome.output, outcome.output[-4000:]
    for part in expected:
        assert part in outcome.stderr, (part, outcome.stderr[-3000:])


def composed(*overrides: str) -> dict:
    """The config a run of ``overrides`` saves in .hydra/config.yaml (interpolations as written)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline import schema

    schema.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["print_config=false", *overrides])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)


def craft_source(where: Path, edit=None, status: str = "ok") -> Path:
    """A run dir as a finished run leaves it (report.json, .hydra/config.yaml), its config edited by ``edit``."""
    config = composed(*TABULAR)
    if edit:
        edit(config)
    (where / ".hydra").mkdir(parents=True)
    (where / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    report = {"status": status, "stages": {s: {"status": status} for s in STAGES}, "metrics": {}, "targets": {}}
    (where / "report.json").write_text(json.dumps(report))
    return where


def run_dir_text(run_dir: Path) -> str:
    """Every file a run left, as text: to prove a value never reached them."""
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in Path(run_dir).rglob("*") if p.is_file())


# --- 1. a foreign config is data ---

def _set(key: str, value):
    def edit(config):
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return edit


HOSTILE_TARGETS = [
    ("model.net", lambda marker: {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}),
    ("model.net", lambda marker: {"_target_": "os.system", "command": f"touch {marker}"}),
    ("model.net", lambda marker: {"_target_": "models.tabular_mlp.TabularMLP", "in_features": 20,
                                  "hidden": {"_target_": "pathlib.Path.touch", "self": str(marker)}}),
    ("model.net", lambda marker: {"_target_": "models.tabular_mlp.torch.save", "obj": 1, "f": str(marker)}),
    ("dataset", lambda marker: {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}),
    ("optimizer", lambda marker: {"_target_": "builtins.open", "file": str(marker), "mode": "w"}),
    ("trainer._target_", lambda marker: "distutils.spawn.spawn"),
]


@pytest.mark.parametrize("key, make", HOSTILE_TARGETS)
@pytest.mark.parametrize("extra", [["stages=[export]"], []], ids=["stages", "resume"])
@pytest.mark.slow
def test_a_foreign_callable_in_a_source_config_is_refused_by_key_and_never_runs(tmp_path, key, make, extra):
    marker = tmp_path / "marker"
    source = craft_source(tmp_path / "source", _set(key, make(marker)), status="ok" if extra else "interrupted")
    before = tree(source)
    outcome = run_in_process(f"from_run={source}", *extra, run_dir=tmp_path / "run")
    target_key = key if key.endswith("_target_") else f"{key}._target_"
    assert_refused(outcome, f"from_run={source}", "from_run_trust=true")
    assert target_key in outcome.stderr or "model.net.hidden._target_" in outcome.stderr, outcome.stderr
    assert not marker.exists()
    assert tree(source) == before


def test_a_dataset_of_an_unknown_class_is_never_adopted_untyped(tmp_path):
    source = craft_source(tmp_path / "source", _set("dataset._target_", "torch.nn.Linear"))
    outcome = run_in_process(f"from_run={source}", "stages=[parity]", run_dir=tmp_path / "run")
    assert_refused(outcome, "its dataset (_target_=torch.nn.Linear) is not one of this project's datasets",
                   "dataset=mnist")


def test_a_foreign_callable_given_again_on_the_command_line_is_not_adopted(tmp_path):
    marker = tmp_path / "marker"
    source = craft_source(tmp_path / "source", _set("model.net", HOSTILE_TARGETS[0][1](marker)))
    outcome = run_in_process(f"from_run={source}", "model=tabular_mlp", "stages=[export]", run_dir=tmp_path / "run")
    # The command line's model replaces the source's: what is left is the missing model.pt of this crafted source.
    assert_refused(outcome, "has no model.pt")
    assert "_target_" not in outcome.stderr and not marker.exists()


def test_a_yaml_alias_bomb_in_a_source_config_is_refused_unexpanded(tmp_path):
    source = craft_source(tmp_path / "source")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    config = source / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + laughs)
    outcome = run_in_process(f"from_run={source}", "stages=[export]", run_dir=tmp_path / "run")
    assert_refused(outcome, "unreadable", "YAML alias")


def test_torch_classes_and_the_project_s_models_are_adopted(tmp_path):
    from pipeline.foreign_config import allowed_target

    for target in ("torch.nn.Linear", "torch.optim.AdamW", "torch.optim.lr_scheduler.StepLR",
                   "models.mnist_cnn.MnistCNN", "models.torchvision.build", "torchvision.models.resnet18",
                   "pipeline.datasets.mnist.MnistData",
                   "pytorch_lightning.loggers.TensorBoardLogger"):
        assert allowed_target(target), target
    for target in ("torch.load", "torch.hub.load", "torch.nn.functional.relu", "models.mnist_cnn.torch.load",
                   "pipeline.atomic.write_json", "numpy.load", "pandas.read_pickle", "os.symlink", "builtins.eval",
                   "torch.nn.Linear.__init__.__globals__", "models.warmup.nn.Linear.x"):
        assert not allowed_target(target), target


@pytest.mark.parametrize("key, value", [
    ("model.name", "${oc.env:PIPELINE_TEST_SECRET}"),
    ("model.name", "x-${oc.env:PIPELINE_TEST_SECRET,none}"),
    ("seed", "${oc.decode:${oc.env:PIPELINE_TEST_SECRET}}"),
    ("dataset.samples", "${oc.env:PIPELINE_TEST_SECRET}"),
])
def test_an_env_interpolation_in_a_source_config_is_never_resolved_here(tmp_path, monkeypatch, key, value):
    monkeypatch.setenv("PIPELINE_TEST_SECRET", "s3cr3t-t0ken")
    source = craft_source(tmp_path / "source", _set(key, value))
    run_dir = tmp_path / "run"
    outcome = run_in_process(f"from_run={source}", "stages=[export]", run_dir=run_dir)
    assert_refused(outcome, f"{key}={value}", f"{key}=<value>", "from_run_trust=true")
    assert "s3cr3t-t0ken" not in outcome.output
    assert "s3cr3t-t0ken" not in run_dir_text(run_dir)
    assert read_report(run_dir)["status"] == "failed"


def test_the_project_s_own_interpolations_are_adopted_and_trust_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_SECRET", "s3cr3t-t0ken")
    source = craft_source(tmp_path / "source", _set("model.name", "${oc.env:PIPELINE_TEST_SECRET}"))
    # Trusted: adopted (and resolved) as before; this crafted source has no model.pt to export.
    outcome = run_in_process(f"from_run={source}", "from_run_trust=true", "stages=[export]", run_dir=tmp_path / "a")
    assert_refused(outcome, "has no model.pt")
    assert read_report(tmp_path / "a")["from_run"]["trusted"] is True  # the opt-in is on record
    # Given again on the command line: the source's value is not read.
    outcome = run_in_process(f"from_run={source}", "model.name=mine", "stages=[export]", run_dir=tmp_path / "b")
    assert_refused(outcome, "has no model.pt")
    assert "s3cr3t-t0ken" not in run_dir_text(tmp_path / "b")
    # An mnist source keeps ${oc.env:PIPELINE_MNIST_ROOT,data} (conf/dataset/mnist.yaml's own): adopted.
    mnist = tmp_path / "mnist"
    craft_source(mnist, lambda c: c.update(dataset=composed()["dataset"], model=composed()["model"]))
    outcome = run_in_process(f"from_run={mnist}", "stages=[export]", run_dir=tmp_path / "c")
    assert_refused(outcome, "has no model.pt")


# --- 2. links never carry files across a run's boundary ---

SECRET = "outside-secret-0451"


def source_with_artifacts(tmp_path: Path, targets=("keras", "tflite")) -> Path:
    """A crafted finished source holding (placeholder) artifacts: what from_run copies before any stage reads them."""
    source = craft_source(tmp_path / "source", lambda c: c["export"]["targets"].update({t: True for t in targets}))
    report = json.loads((source / "report.json").read_text())
    report["targets"] = {t: {"status": "ok"} for t in targets}
    (source / "report.json").write_text(json.dumps(report))
    for name in ("model.pt", "model.keras", "model.tflite"):
        (source / name).write_bytes(b"PK placeholder")
    import onnx

    onnx.save(_constant_of_shape_model([2, 3]), str(source / "model.onnx"))  # small: within limits
    (source / "saved_model" / "variables").mkdir(parents=True)
    (source / "saved_model" / "saved_model.pb").write_bytes(b"placeholder")
    return source


def outside_file(tmp_path: Path) -> Path:
    outside = tmp_path / "elsewhere" / "private.txt"
    outside.parent.mkdir()
    outside.write_text(SECRET)
    return outside


@pytest.mark.parametrize("link, extra", [
    ("model.pt", ["stages=[export]"]),
    ("model.onnx", ["stages=[check]"]),
    ("model.keras", ["stages=[parity]", "export=keras"]),
    ("saved_model/variables/variables.data-00000-of-00001", ["stages=[parity]", "export=tensorflow"]),
    ("report.json", ["stages=[export]"]),
    (".hydra/config.yaml", ["stages=[export]"]),
])
@pytest.mark.tf
def test_a_link_out_of_the_source_is_refused_by_name_before_anything_is_copied(tmp_path, link, extra):
    source = source_with_artifacts(tmp_path, targets=("keras", "tensorflow"))
    (source / link).unlink(missing_ok=True)
    (source / link).symlink_to(outside_file(tmp_path))
    before, run_dir = tree(source), tmp_path / "run"
    outcome = run_in_process(f"from_run={source}", *extra, run_dir=run_dir)
    assert_refused(outcome, f"its {link} is a link to", "outside that run dir")
    assert tree(source) == before
    assert SECRET not in run_dir_text(run_dir)
    assert not (run_dir / "saved_model").exists()
    if link.startswith("model"):
        assert not (run_dir / link).exists()


@pytest.mark.tf
def test_a_link_to_a_folder_inside_a_saved_model_is_refused(tmp_path):
    source = source_with_artifacts(tmp_path, targets=("tensorflow",))
    (source / "saved_model" / "assets").symlink_to(source / "saved_model")  # a loop when followed
    outcome = run_in_process(f"from_run={source}", "stages=[parity]", "export=tensorflow", run_dir=tmp_path / "run")
    assert_refused(outcome, "saved_model/assets is a link to a folder")
    assert not (tmp_path / "run" / "saved_model").exists()


WRITER_SAVED_MODEL = """
import sys
import tensorflow as tf

class Writer(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 20], tf.float32)])
    def serve(self, x):
        tf.io.write_file(sys.argv[2], "pwned")
        return {"y": x}

module = Writer()
tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.serve})
"""


@pytest.mark.tf
@pytest.mark.slow
def test_a_saved_model_whose_graph_writes_files_is_refused_before_it_is_loaded(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "marker"
    source = source_with_artifacts(tmp_path, targets=("tensorflow",))
    shutil.rmtree(source / "saved_model")
    subprocess.run([sys.executable, "-c", WRITER_SAVED_MODEL, str(source / "saved_model"), str(marker)], check=True,
                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
    outcome = run_in_process(f"from_run={source}", "stages=[parity]", "export=tensorflow", run_dir=tmp_path / "run")
    assert_refused(outcome, "saved_model: its graph holds WriteFile", "add convert to stages")
    assert not marker.exists() and not (tmp_path / "run" / "saved_model").exists()


def test_a_run_dir_through_a_link_into_another_run_is_refused_before_anything_is_written(tmp_path):
    other = craft_source(tmp_path / "other")
    (other / "empty").mkdir()
    (tmp_path / "link").symlink_to(other / "empty")  # the run dir itself: a link to a folder of another run
    (tmp_path / "up").symlink_to(other / "empty")  # a folder above the run dir: the same
    before = tree(other)
    for run_dir in (tmp_path / "link", tmp_path / "up" / "new"):
        outcome = run_in_process(*TABULAR, run_dir=run_dir)
        assert_refused(outcome, f"hydra.run.dir={run_dir} is inside the run dir {other}", "through a link")
    assert tree(other) == before and not list((other / "empty").iterdir())


@pytest.mark.tf
def test_parity_from_a_source_measures_only_the_picked_target(tmp_path):
    source = source_with_artifacts(tmp_path, targets=("keras", "tflite"))
    run_dir = tmp_path / "run"
    run_in_process(f"from_run={source}", "stages=[parity]", "export=keras", run_dir=run_dir)
    assert not (run_dir / "model.tflite").exists()
    assert set(read_report(run_dir)["targets"]) <= {"keras"}


# --- the reproducer CLI (python -m pipeline.diagnose) reads its folder only ---

def reproducer(folder: Path, **manifest) -> Path:
    """A reproducer folder as parity writes it: a one-node ONNX model, its input, a manifest."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "subgraph.onnx"))
    np.save(folder / "input_0.npy", np.ones((2, 4), np.float32))
    (folder / "manifest.json").write_text(json.dumps({
        "runtime": "onnxruntime", "node": "relu", "op_type": "Relu", "inputs": {"x": "input_0.npy"},
        "constants": {}, "outputs": ["y"], "backends": {}, "float64_reference": False, "rtol": 1e-3, "atol": 1e-5,
        "options": {}, **manifest}))
    return folder


@pytest.mark.parametrize("make, expected", [
    (lambda d: reproducer(d, inputs={"x": "../../../../../../etc/hostname"}), "leads outside the folder"),
    (lambda d: reproducer(d, inputs={"x": "/etc/hostname"}), "leads outside the folder"),
    (lambda d: reproducer(d, runtime="my_runtime"), "runtime 'my_runtime' is not one of"),
    (lambda d: reproducer(d, outputs="y"), "no valid 'outputs'"),
    ("pickled", "holds Python objects, which are never unpickled"),
    ("linked", "leads outside the folder"),
    ("not json", "manifest.json is unreadable"),
])
def test_a_crafted_reproducer_is_a_one_paragraph_error(tmp_path, capsys, make, expected):
    import numpy as np

    from pipeline import diagnose

    folder = tmp_path / "repro"
    if callable(make):
        make(folder)
    else:
        reproducer(folder)
        if make == "pickled":
            np.save(folder / "input_0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif make == "linked":
            (folder / "input_0.npy").unlink()
            (folder / "input_0.npy").symlink_to(outside_file(tmp_path))
        else:
            (folder / "manifest.json").write_text("{")
    assert diagnose.main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "pipeline.diagnose failed" in err and expected in err and "Traceback" not in err, err


def test_an_intact_reproducer_still_runs(tmp_path, capsys):
    from pipeline import diagnose

    assert diagnose.main([str(reproducer(tmp_path / "repro"))]) == 0
    assert "no drift on this node alone" in capsys.readouterr().out


# --- 3. deterministic weights ---

def test_a_checkpoint_with_two_networks_is_refused_and_model_weights_prefix_picks_one(tmp_path):
    import torch

    from models.tabular_mlp import TabularMLP

    torch.manual_seed(0)
    net, ema = TabularMLP(20, [50, 50]).state_dict(), TabularMLP(20, [50, 50]).state_dict()
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": {**{f"net.{k}": v for k, v in net.items()}, **{f"ema.{k}": v for k, v in ema.items()}}},
               path)
    before = path.read_bytes()
    outcome = run_in_process(*TABULAR, f"model.weights={path}", "stages=[export]", run_dir=tmp_path / "a")
    assert_refused(outcome, f"model.weights={path}", "2 networks that fit (ema.*, net.*)", "model.weights_prefix=")
    outcome = run_in_process(*TABULAR, f"model.weights={path}", "model.weights_prefix=nope", "stages=[export]",
                             run_dir=tmp_path / "b")
    assert_refused(outcome, "model.weights_prefix=nope names no weights", "ema, net")
    outcome = run_in_process(*TABULAR, f"model.weights={path}", "model.weights_prefix=ema", "stages=[export]",
                             run_dir=tmp_path / "c")
    assert outcome.code == 0, outcome.output[-3000:]
    import numpy as np
    import onnx
    from onnx import numpy_helper

    exported = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "c" / "model.onnx")).graph.initializer]
    weight = next(v.numpy() for v in ema.values() if v.dim() == 2)  # the picked network's, not net's
    unpicked = next(v.numpy() for v in net.values() if v.dim() == 2)
    assert any(np.array_equal(a, weight) or np.array_equal(a, weight.T) for a in exported)
    assert not any(np.array_equal(a, unpicked) or np.array_equal(a, unpicked.T) for a in exported)
    assert path.read_bytes() == before


# --- 4. faults end cleanly ---

def _no_space(path=None):
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)


def assert_disk_full(outcome, run_dir: Path, folder: Path | None = None) -> None:
    assert_refused(outcome, f"The disk holding {folder or run_dir}", "is full (No space left on device)",
                   "free there", f"from_run={run_dir}\n")
    assert "Logging error" not in outcome.output and "report it as a bug" not in outcome.output
    assert "export.opset" not in outcome.stderr


def test_a_full_disk_while_training_is_one_paragraph_and_no_checkpoint_is_truncated(tmp_path, monkeypatch):
    from pipeline import lit_module

    real = lit_module.write_with

    def full_for_checkpoints(path, writer):
        if Path(path).suffix == ".ckpt":
            raise _no_space(path)
        return real(path, writer)

    monkeypatch.setattr(lit_module, "write_with", full_for_checkpoints)
    run_dir = tmp_path / "run"
    outcome = run_in_process(*TABULAR, "stages=[train]", run_dir=run_dir)
    assert_disk_full(outcome, run_dir, run_dir / "checkpoints")
    assert "more is needed" in outcome.stderr  # the checkpoint's size is known
    assert read_report(run_dir)["status"] == "failed"
    assert not list((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").exists() else True


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), where this machine lets the test mount one (root)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small filesystem needs root: the simulated ENOSPC tests cover this")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_really_full_disk_during_training_ends_in_one_paragraph(small_disk):
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"0" * (free - 60 * 1024))  # room for the config and log, not a checkpoint
    run_dir = small_disk / "run"
    outcome = run_in_process(*TABULAR, run_dir=run_dir)
    assert_disk_full(outcome, run_dir, run_dir / "checkpoints")
    assert read_report(run_dir)["stages"]["train"]["status"] == "failed"
    assert not list((run_dir / "checkpoints").iterdir())  # no truncated checkpoint to resume from


def _writes_fill_the_disk(monkeypatch, module) -> None:
    """Every file ``module`` writes through ``write_with`` fails as on a full disk."""
    def full(path, writer):
        raise _no_space(path)

    monkeypatch.setattr(module, "write_with", full)


@pytest.mark.tf
def test_a_full_disk_while_converting_names_the_disk_not_an_opset(tmp_path, monkeypatch):
    from pipeline.converters.backends import keras_keras3

    _writes_fill_the_disk(monkeypatch, keras_keras3)
    run_dir = tmp_path / "run"
    outcome = run_in_process(*TABULAR, "stages=[train,export,convert]", "export=keras", run_dir=run_dir)
    assert_disk_full(outcome, run_dir)
    report = read_report(run_dir)
    assert report["status"] == "failed" and report["stages"]["convert"]["status"] == "failed"


def test_a_full_disk_while_exporting_is_named_as_such(tmp_path, monkeypatch):
    from pipeline.stages import export

    _writes_fill_the_disk(monkeypatch, export)
    run_dir = tmp_path / "run"
    outcome = run_in_process(*TABULAR, "model.weights=init", "stages=[export]", run_dir=run_dir)
    assert_disk_full(outcome, run_dir)
    assert "torch.onnx.export failed" not in outcome.stderr


def test_a_full_disk_wrapped_by_a_converter_library_is_still_recognised():
    from pipeline import disk
    from pipeline.errors import ConversionError

    wrapped = ConversionError("onnx-tf failed: InternalError: write failed: No space left on device",
                              "Try another export.opset, or another target.")
    assert disk.is_full(wrapped)
    chained = RuntimeError("failed")
    chained.__cause__ = _no_space()
    assert disk.is_full(chained) and not disk.is_full(ValueError("bad value"))


def test_a_full_disk_while_writing_the_report_is_one_paragraph(tmp_path, monkeypatch):
    from pipeline import report

    real, calls = report.write_json, []

    def full_after_a_while(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise _no_space(path)
        return real(path, data)

    monkeypatch.setattr(report, "write_json", full_after_a_while)
    run_dir = tmp_path / "run"
    outcome = run_in_process(*TABULAR, "stages=[train]", run_dir=run_dir)
    assert_disk_full(outcome, run_dir)


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from pipeline import disk
    from pipeline.lit_module import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO(tmp_path)
    io.save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()
    real = Path.write_bytes

    def half_then_full(self, data):
        real(self, bytes(data)[: len(data) // 2])
        raise _no_space(self)

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(disk.DiskFull, match="more is needed"):
        io.save_checkpoint({"epoch": 2, "big": list(range(1000))}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["epoch"] == 1


def test_a_damaged_checkpoint_in_a_source_is_named_as_such(tmp_path):
    source = craft_source(tmp_path / "source", status="interrupted")
    (source / "checkpoints").mkdir()
    (source / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # truncated by a full disk
    before = tree(source)
    outcome = run_in_process(f"from_run={source}", run_dir=tmp_path / "run")
    assert_refused(outcome, "its checkpoints/last.ckpt is damaged", "Train anew")
    assert tree(source) == before


def test_a_signal_as_a_stage_starts_says_interrupted_not_skipped(tmp_path, monkeypatch):
    import os
    import signal

    from pipeline import runner

    real = runner.log.info

    def hangup_at_train(message, *args):
        if message == "stage %s" and args == ("train",):
            os.kill(os.getpid(), signal.SIGHUP)
        return real(message, *args)

    monkeypatch.setattr(runner.log, "info", hangup_at_train)
    run_dir = tmp_path / "run"
    outcome = run_in_process(*TABULAR, "stages=[train,export]", run_dir=run_dir)
    assert_refused(outcome, "SIGHUP", code=130)
    report = read_report(run_dir)
    assert report["status"] == "interrupted"
    assert report["stages"]["train"]["status"] == "interrupted"
    assert report["stages"]["export"]["status"] == "skipped"


def test_an_error_inside_hydra_while_a_sweep_stops_for_a_signal_exits_130(tmp_path, monkeypatch):
    from pipeline import cli, interrupts

    def cut_short(hydra_cfg):  # what a SIGTERM in a sweep's first second leaves: Hydra's state half-built
        interrupts._stopping = True
        raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")

    monkeypatch.setattr(cli.run_dirs, "check_choices", cut_short)
    outcome = run_in_process(*TABULAR, "stages=[train]", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                             multirun=True)
    assert_refused(outcome, "Interrupted by a signal", code=130)
    assert "_invalidate_flags_cache" not in outcome.output
    assert read_report(tmp_path / "sweep" / "0")["status"] == "interrupted"


# --- 5. limits for hostile sizes ---

def _constant_of_shape_model(shape: list[int]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = numpy_helper.from_array(__import__("numpy").array(shape, dtype="int64"), "dims")
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["dims"], ["big"], name="alloc"),
                               helper.make_node("Add", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 20])], [dims])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.tf
def test_a_source_model_asking_for_256_gib_is_refused_before_it_is_copied_or_run(tmp_path):
    import onnx

    source = source_with_artifacts(tmp_path)
    onnx.save(_constant_of_shape_model([1 << 22, 1 << 14]), str(source / "model.onnx"))  # 256 GiB of float32
    run_dir = tmp_path / "run"
    outcome = run_in_process(f"from_run={source}", "stages=[check]", run_dir=run_dir)
    assert_refused(outcome, "model.onnx: node 'alloc' (ConstantOfShape", "256.0 GiB", "limits.max_tensor_bytes=")
    assert not (run_dir / "model.onnx").exists()


def test_a_gzip_csv_that_expands_past_the_limit_is_refused_before_it_is_read(tmp_path):
    import gzip

    bomb = tmp_path / "series.csv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as handle:
        handle.write(b"value\n" + b"1\n" * 6_000_000)  # 12 MB of text in a few KB
    assert bomb.stat().st_size < 100_000
    outcome = run_in_process("model=lstm_forecaster", "dataset=series", f"dataset.path={bomb}", "stages=[train]",
                             "limits.max_file_bytes=10000000", run_dir=tmp_path / "run")
    assert_refused(outcome, f"dataset.path={bomb} once decompressed", "limits.max_file_bytes=10000000")


def test_an_npz_whose_arrays_exceed_the_limit_is_refused_before_they_are_extracted(tmp_path):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=np.zeros((3000, 1000), np.float32), y=np.zeros(3000, np.int64))
    outcome = run_in_process("dataset=arrays", f"dataset.path={path}", "model=tabular_mlp", "stages=[train]",
                             "limits.max_file_bytes=1000000", run_dir=tmp_path / "run")
    assert_refused(outcome, f"dataset.path={path} once extracted", "limits.max_file_bytes=")


# --- 6. the smaller items ---

@pytest.mark.parametrize("dtype, options", [("float64", ""), ("int64", ",distribution:integers,low:0,high:5")])
def test_a_generated_input_of_another_dtype_names_the_dataset_s_dtype(tmp_path, dtype, options):
    outcome = run_in_process("model=tabular_mlp", "dataset=synthetic", "dataset.samples=64", "model.weights=init",
                             f"dataset.inputs={{x:{{shape:[20],dtype:{dtype}{options}}}}}", "stages=[export]",
                             run_dir=tmp_path / "run")
    assert_refused(outcome, f"as {dtype} (dataset.inputs.x.dtype)", "Set dataset.inputs.x.dtype=float32")


def test_a_run_dir_with_spaces_gets_the_hint_to_quote_it(tmp_path):
    outcome = run_in_process("stages=[train]", f"hydra.run.dir={tmp_path}/my", "runs")
    assert_refused(outcome, "'runs' is not an override", f"'hydra.run.dir={tmp_path}/my runs'")
    outcome = run_in_process("stages=[train]", f"hydra.run.dir={tmp_path}/run (1)")
    assert_refused(outcome, "cannot be parsed", f"\"hydra.run.dir='{tmp_path}/run (1)'\"")
    assert not list(tmp_path.iterdir())


def test_a_source_that_never_trained_on_an_untyped_project_dataset_is_adopted(tmp_path):
    """dataset=model_inputs has no typed schema (a dataset is its module and conf file) and model=timm runs with
    model.weights=init (no model.pt): a later run of that dir checks its export without training or trust."""
    pytest.importorskip("timm")
    source, run_dir = tmp_path / "source", tmp_path / "run"
    first = run_in_process("model=timm", "model.net.name=lcnet_050", "model.net.input_size=[3,64,64]",
                           "dataset=model_inputs", "dataset.samples=8", "stages=[export]", run_dir=source)
    assert first.code == 0, first.output[-2000:]
    assert not (source / "model.pt").exists()
    outcome = run_in_process(f"from_run={source}", "stages=[check,parity]", "parity.timing=false", run_dir=run_dir)
    assert outcome.code == 0, outcome.output[-2000:]
    report = read_report(run_dir)
    assert report["artifacts"]["onnx"]["producer"] == "from_run" and "weights" not in report["artifacts"]
    assert [e["runtime"] for e in report["parity"]] == ["onnxruntime"] and report["parity"][0]["in_tolerance"]
