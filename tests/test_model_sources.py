"""Third-party models as sources: model=timm, model=hf (a save_pretrained folder or a config), model=smp.

Real libraries, real converters: each model goes through export, every target and parity on the inputs
that dataset=model_inputs generates as the library names them.
"""
import os
from pathlib import Path

import onnx
import pytest

from tests.conftest import assert_ok, read_report, run_cli, run_in_process

NO_TRAINING = ("model.weights=init", "stages=[export,check,convert,parity]", "dataset=model_inputs",
               "parity.latency_repeats=3", "parity.latency_budget_s=0.2")
TARGETS = ("keras", "tensorflow", "tflite")


def assert_every_target_in_parity(report: dict) -> None:
    """keras, tensorflow and tflite converted, and every runtime in tolerance of PyTorch's outputs."""
    failed = {t: v.get("reason") for t, v in report["targets"].items() if v["status"] != "ok"}
    by_runtime = {row["runtime"]: row for row in report["parity"]}
    drifting = {r: row["max_abs_err"] for r, row in by_runtime.items() if not row["allclose"]}
    compared = sorted(by_runtime)
    # one message with every problem: which targets did not convert, which drifted, which were compared
    assert not failed and not drifting and set(TARGETS) <= set(compared), \
        f"not converted: {failed}; drifting: {drifting}; compared in parity: {compared}"
    assert report["status"] == "ok"


def tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=128, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=128, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_timm_model_by_name_converts_to_every_target_in_parity(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("model=timm", "model.net.name=resnet10t", "model.net.input_size=[3,64,64]", "export=all",
                   "dataset.samples=32", *NO_TRAINING, run_dir=run_dir)
    assert_ok(proc)
    report = read_report(run_dir)
    assert report["data"]["inputs"][0]["shape"] == [3, 64, 64]
    assert_every_target_in_parity(report)


@pytest.mark.slow
@pytest.mark.parametrize(("build", "task", "output"), [(tiny_bert, "sequence_classification", "logits"),
                                                       (tiny_llama, "causal_lm", "logits")])
def test_a_saved_transformers_model_converts_with_ids_and_mask_in_parity(build, task, output, tmp_path):
    folder = build(tmp_path / "saved")
    run_dir = tmp_path / "run"
    proc = run_cli("model=hf", f"model.net.path={folder}", f"model.net.task={task}", "model.net.seq_len=12",
                   "export=all", "dataset.samples=32", *NO_TRAINING, run_dir=run_dir)
    report = read_report(run_dir)
    graph = onnx.load(str(run_dir / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == [output]
    inputs = {i["name"]: i for i in report["data"]["inputs"]}
    assert inputs["input_ids"]["dtype"] == "int64" and inputs["input_ids"]["shape"] == [12]
    assert_every_target_in_parity(report)
    assert_ok(proc)


def test_the_generated_attention_masks_pad_some_rows_and_ids_stay_in_the_vocabulary(tmp_path):
    from pipeline.datasets.model_inputs import ModelInputs

    folder = tiny_bert(tmp_path / "saved")
    data = ModelInputs(net={"_target_": "models.hf.build", "path": str(folder), "seq_len": 20}, samples=64)
    x, y = data.head("test")
    assert list(x) == ["input_ids", "attention_mask"] and y is None
    assert int(x["input_ids"].min()) >= 0 and int(x["input_ids"].max()) < 128
    mask = x["attention_mask"]
    assert (mask[0] == 1).all()  # the first row is unpadded
    padded = (mask == 0).any(dim=1)
    assert 0 < int(padded.sum()) < 64
    # padding is at the tail: once 0, the rest of the row is 0
    assert (mask[:, 1:] <= mask[:, :-1]).all()


@pytest.mark.slow
def test_a_segmentation_models_pytorch_model_converts_to_every_target_in_parity(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("model=smp", "model.net.arch=Unet", "model.net.encoder=resnet18", "model.net.input_size=[3,64,64]",
                   "export=all", "dataset.samples=16", *NO_TRAINING, run_dir=run_dir)
    assert_ok(proc)
    assert_every_target_in_parity(read_report(run_dir))


def _refused(tmp_path, *overrides) -> str:
    outcome = run_in_process(*overrides, "export=onnx", *NO_TRAINING, run_dir=tmp_path / "run")
    assert outcome.code != 0, outcome.output
    return outcome.output


def test_an_unknown_timm_name_lists_close_matches(tmp_path):
    output = _refused(tmp_path, "model=timm", "model.net.name=resnet19")
    assert "model.net.name='resnet19' is not a timm model" in output
    assert "resnet18" in output and "Close matches" in output


def test_a_missing_path_is_named(tmp_path):
    output = _refused(tmp_path, "model=hf", f"model.net.path={tmp_path / 'nowhere'}")
    assert "is not a folder" in output and "save_pretrained" in output


def test_pickled_weights_are_refused_with_the_safe_serialization_hint(tmp_path):
    folder = tiny_bert(tmp_path / "saved")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # what a pickle-only folder holds
    output = _refused(tmp_path, "model=hf", f"model.net.path={folder}")
    assert "pytorch_model.bin" in output and "safe_serialization=True" in output


def test_an_unknown_task_names_the_tasks(tmp_path):
    folder = tiny_bert(tmp_path / "saved")
    output = _refused(tmp_path, "model=hf", f"model.net.path={folder}", "model.net.task=translation")
    assert "model.net.task='translation'" in output and "causal_lm" in output and "sequence_classification" in output


def test_a_missing_library_names_the_pip_command(tmp_path):
    shadow = tmp_path / "shadow" / "timm"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('timm is not installed here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("model=timm", "export=onnx", *NO_TRAINING, run_dir=tmp_path / "run", env=env)
    assert proc.returncode != 0
    assert 'pip install -e ".[timm]"' in proc.stdout + proc.stderr


class CachingNet(__import__("torch").nn.Module):
    """Caches a tensor built in its first forward (timm's convit_tiny caches its relative positions)."""

    def __init__(self, input_shape=(8,), num_classes: int = 3):
        import torch

        super().__init__()
        self.linear = torch.nn.Linear(input_shape[0], num_classes)
        self.positions, self.batch = None, None

    def forward(self, x):
        import torch

        y = self.linear(x)
        if self.positions is None or self.batch != y.shape[0]:  # rebuilt when the batch size changes
            self.positions, self.batch = torch.linspace(0.5, 1, y.shape[1]).unsqueeze(0), y.shape[0]
        return y * self.positions  # saved for backward while traced: an inference tensor cannot be


@pytest.mark.parametrize("stages", ["[export,check]", "[train,export,check]"])
def test_a_model_that_caches_a_tensor_in_forward_exports(stages, tmp_path):
    outcome = run_in_process("model.net._target_=tests.test_model_sources.CachingNet", "model.output=logits",
                             "dataset=synthetic", "dataset.shape=[8]", "dataset.num_classes=3", "dataset.samples=32",
                             "trainer.max_epochs=1", "model.weights=init" if "train" not in stages else "seed=1",
                             f"stages={stages}", "export=onnx", run_dir=tmp_path / "run")
    assert outcome.code == 0, outcome.output


class PadUnfold(__import__("torch").nn.Module):
    """Windows over an input padded by amounts computed from its shape (timm's HaloNet): the exporter
    does not know the padded length that ``unfold`` slides over."""

    def forward(self, x):
        from torch.nn import functional as F

        pad = x.shape[-1] % 3 + 1
        return F.pad(x, [pad, pad]).unfold(2, 4, 2).mean(-1)


def test_unfold_over_an_axis_of_unknown_length_exports_and_converts_in_parity(tmp_path):
    report_dir = tmp_path / "run"
    outcome = run_in_process("model.net._target_=tests.test_model_sources.PadUnfold", "model.output=value",
                             "dataset=synthetic", "dataset.shape=[3,10]", "dataset.samples=16", "export=all",
                             "model.weights=init", "stages=[export,check,convert,parity]", "parity.timing=false",
                             run_dir=report_dir)
    assert outcome.code == 0, outcome.output
    assert_every_target_in_parity(read_report(report_dir))


class RollByShape(__import__("torch").nn.Module):
    """``torch.roll`` by a tuple of shifts computed from the input's shape: the exporter cannot export it."""

    def forward(self, x):
        import torch

        return torch.roll(x, shifts=(x.shape[-1] // 2,), dims=(-1,))


def test_an_export_failure_leaves_its_traceback_in_pipeline_log(tmp_path):
    run_dir = tmp_path / "run"
    outcome = run_in_process("model.net._target_=tests.test_model_sources.RollByShape", "model.output=value",
                             "dataset=synthetic", "dataset.shape=[4,10]", "dataset.samples=8", "export=onnx",
                             "model.weights=init", "stages=[export]", run_dir=run_dir)
    assert outcome.code != 0
    assert "torch.onnx.export failed" in outcome.output and "pipeline.log" in outcome.output
    log = (run_dir / "pipeline.log").read_text()
    assert "Traceback (most recent call last)" in log and "torch/onnx" in log


def test_the_op_the_exporter_was_translating_is_kept_in_the_message():
    from pipeline.stages.export import first_line, translated_op

    # how torch.onnx's TorchScript exporter words a symbolic's failure (utils._run_symbolic_function)
    error = TypeError("'NoneType' object is not subscriptable \n(Occurred when translating col2im).")
    assert translated_op(error) == "col2im"
    assert first_line(error) == ("TypeError: 'NoneType' object is not subscriptable (occurred when translating "
                                 "col2im)")


CACHED_WEIGHTS_SCRIPT = """
import os, pathlib, sys
root = pathlib.Path(sys.argv[1])
os.environ["HF_HUB_CACHE"], os.environ["HF_HUB_OFFLINE"] = str(root), "1"
import timm, torch
from safetensors.torch import save_file
reference = timm.create_model("resnet10t")  # weights as a download would leave them in the cache
repo = root / ("models--" + timm.models.get_pretrained_cfg("resnet10t").hf_hub_id.replace("/", "--"))
snapshot = repo / "snapshots" / ("0" * 40)
snapshot.mkdir(parents=True)
(repo / "refs").mkdir()
(repo / "refs" / "main").write_text("0" * 40)
save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
from models.timm import build
for pretrained in ("auto", False):
    net = build("resnet10t", input_shape=[3, 64, 64], pretrained=pretrained)
    same = all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))
    print(pretrained, same)
"""


def test_timm_uses_weights_the_local_cache_holds_and_random_ones_otherwise(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", CACHED_WEIGHTS_SCRIPT, str(tmp_path / "hub")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["auto True", "False False"], proc.stdout
