"""Text models as they are deployed (int64 ids and a 0/1 attention mask in, logits out) and decoder-only
language models (logits of a prompt) convert to keras, tensorflow and tflite in parity; the converter
defects they showed, each on its own small graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.stages.export import export_onnx
from tests.conftest import run_composed

pytestmark = pytest.mark.tf  # TensorFlow / LiteRT in all but the export-only and hint tests
TARGETS = ("keras", "tensorflow", "tflite")
SEQ = 16
IDS = f"input_ids: {{shape: [{SEQ}], distribution: integers, high: 128}}"
MASK = f"attention_mask: {{shape: [{SEQ}], distribution: integers, low: 0, high: 2}}"


def _convert(model: str, inputs: str, run_dir, samples: int = 32) -> dict:
    return run_composed(f"model.net._target_=tests.text_models.{model}", "model.output=logits",
                        "model.weights=init", "dataset=synthetic", f"dataset.inputs={{{inputs}}}",
                        f"dataset.samples={samples}", "stages=[export,check,convert,parity]",
                        f"export=[{','.join(TARGETS)}]", "parity.latency_repeats=2", run_dir=run_dir)


def _assert_every_target_in_parity(report: dict) -> None:
    assert report["status"] == "ok", report["stages"]
    assert {e["runtime"] for e in report["parity"]} == {"onnxruntime", *TARGETS}
    for entry in report["parity"]:
        assert entry["in_tolerance"] and entry["top1_agreement"] == 1.0, entry


@pytest.mark.slow
def test_bert_with_an_attention_mask_converts_to_every_target(tmp_path):
    """Two int64 inputs; the mask's batch-indexed positions are integer arithmetic TFLite must run."""
    report = _convert("TinyBert", f"{IDS}, {MASK}", tmp_path / "run")
    _assert_every_target_in_parity(report)
    assert report["export"]["inputs"] == ["input_ids", "attention_mask"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["TinyGPT2", "TinyLlama"])
@pytest.mark.parametrize("masked", [True, False], ids=["ids_and_mask", "ids_only"])
def test_causal_lm_logits_of_a_prompt_convert_to_every_target(model, masked, tmp_path):
    """With a padding mask (rows of fully masked queries: softmax NaN zeroed by sdpa) and with ids alone
    (position ids from a bool cumsum; a branch on a batch of 1 at trace time)."""
    report = _convert(model, f"{IDS}, {MASK}" if masked else IDS, tmp_path / "run")
    _assert_every_target_in_parity(report)
    assert report["check"]["outputs"][0]["shape"][:2] == ["batch", 128]  # [N, vocab, T]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["TinyQwen2", "TinyMistral"])
def test_qwen2_and_mistral_style_causal_lms_convert_to_every_target(model, tmp_path):
    _assert_every_target_in_parity(_convert(model, f"{IDS}, {MASK}", tmp_path / "run"))


@pytest.mark.slow
def test_mamba_causal_lm_converts_to_every_target(tmp_path):
    """transformers' sequential Mamba path: ``tensor_split`` at positions computed in forward."""
    ids = "input_ids: {shape: [8], distribution: integers, high: 128}"
    _assert_every_target_in_parity(_convert("TinyMamba", ids, tmp_path / "run"))


class BatchIndexedIds(nn.Module):
    """Ids offset by their flat position ``n * T + t`` (how a batch-indexed mask addresses its rows):
    int64 arithmetic on the batch index, counted along the batch axis, plus a per-position constant."""

    def forward(self, ids):
        n, t = ids.shape
        flat = torch.arange(n)[:, None] * t + torch.arange(t)[None, :]
        return ids + flat


class IdsPlusOffsets(nn.Module):
    """Ids offset per column into one shared table (a recommender's ``cat + offsets``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("offsets", torch.arange(6) * 50)

    def forward(self, ids):
        return ids + self.offsets


def _tflite_of(module: nn.Module, sample: np.ndarray, tmp_path):
    """The module exported, converted by keras3, saved as a SavedModel and converted to TFLite as the
    pipeline does: (TensorFlow op types of the SavedModel, the LiteRT signature runner)."""
    import keras
    import tensorflow as tf

    from pipeline.converters.backends.tflite_tf_converter import convert_file
    from pipeline.converters.keras3 import build
    from pipeline.runtimes.tflite_runtime import _interpreter_class

    export_onnx(module.eval(), (torch.from_numpy(sample[:2]),), tmp_path / "m.onnx", 13, ["ids"], ["output"],
                {"ids": {0: "batch"}, "output": {0: "batch"}})
    conversion, _ = build(onnx.load(str(tmp_path / "m.onnx")), {"ids": sample[:3]})
    model = conversion.model
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoint = archive.add_endpoint(name="serving_default", fn=lambda ids: {"output": model(ids, training=False)},
                                    input_signature=[tf.TensorSpec([None, sample.shape[1]], tf.int64, name="ids")])
    op_types = {node.op for function in endpoint.get_concrete_function(
        tf.TensorSpec([None, sample.shape[1]], tf.int64)).graph.as_graph_def().library.function
        for node in function.node_def}
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    convert_file(tmp_path / "saved_model", tmp_path / "m.tflite")
    return op_types, _interpreter_class()(model_path=str(tmp_path / "m.tflite")).get_signature_runner()


@pytest.mark.parametrize("module", [BatchIndexedIds(), IdsPlusOffsets()], ids=["batch_indexed", "offsets"])
def test_an_int64_add_of_a_constant_stays_an_integer_add_in_tflite(module, tmp_path):
    """Keras' add of a [1, T] constant to an int64 tensor is a BiasAdd, which TFLite has no kernel for."""
    sample = np.random.default_rng(0).integers(0, 100, (4, 6)).astype(np.int64)
    op_types, runner = _tflite_of(module, sample, tmp_path)
    assert "BiasAdd" not in op_types
    got = runner(ids=sample)["output"]
    assert got.dtype.kind == "i"
    np.testing.assert_array_equal(got, module(torch.from_numpy(sample)).numpy())


def test_a_bool_cumsum_exports_as_pytorch_computes_it(tmp_path):
    """``(x != 1).cumsum(-1)`` (transformers' packed-sequence count): int64, valid ONNX."""
    class PackedCount(nn.Module):
        def forward(self, x):
            return (x != 1).cumsum(-1) + torch.cumsum(x.to(torch.int32), 1)

    x = torch.tensor([[1, 1, 2, 1], [0, 1, 1, 3]])
    export_onnx(PackedCount().eval(), (x,), tmp_path / "m.onnx", 13)
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    expected = PackedCount()(x)
    assert got.dtype == np.int64 and expected.dtype == torch.int64
    np.testing.assert_array_equal(got, expected.numpy())


def test_tensor_split_at_positions_computed_in_forward_exports_as_slices(tmp_path):
    class SplitAtComputed(nn.Module):
        def forward(self, x):
            head, tail = torch.tensor_split(x, [x.shape[1] - 2], dim=1)
            return head.sum(1) * 2 + tail.sum(1)

    x = torch.randn(3, 7)
    export_onnx(SplitAtComputed().eval(), (x,), tmp_path / "m.onnx", 13, axes={
        "input": {0: "batch", 1: "length"}, "output": {0: "batch"}})
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for shape in ((3, 7), (5, 4)):
        value = torch.randn(*shape)
        np.testing.assert_allclose(session.run(None, {"input": value.numpy()})[0], SplitAtComputed()(value).numpy(),
                                   rtol=1e-6, atol=1e-6)


def _tflite_model(tmp_path, stateful: bool):
    """A real TFLite model of ``x * 2``; ``stateful``: plus a variable it increments at every call (what a
    runtime that reuses one call's memory in the next looks like from outside)."""
    import tensorflow as tf

    from pipeline.runtimes.tflite_runtime import TFLiteRuntime

    class Counter(tf.Module):
        def __init__(self):
            super().__init__()
            self.calls = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="input")])
        def serve(self, x):
            if not stateful:
                return {"output": x * 2.0}
            self.calls.assign_add(1.0)
            return {"output": x * 2.0 + self.calls}

    module = Counter()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={"serving_default": module.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    (tmp_path / "m.tflite").write_bytes(converter.convert())
    return TFLiteRuntime(tmp_path / "m.tflite", ["input"], ["output"])


@pytest.mark.parametrize("stateful", [False, True])
def test_a_tflite_model_that_answers_a_later_call_differently_is_caught(stateful, tmp_path):
    from pipeline import repeat_calls

    adapter = _tflite_model(tmp_path, stateful)
    feeds = {"input": np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)}
    verdict = repeat_calls.second_call_differs(adapter, feeds, limit=1e-6)
    if stateful:
        assert verdict is not None and not verdict["ok"]
        assert "second call at batch 64" in verdict["reason"] and verdict["max_abs_err"] == pytest.approx(1.0)
    else:
        assert verdict is None


@pytest.mark.slow
def test_the_same_conversion_twice_gives_the_same_tflite_bytes(tmp_path):
    """Conversion is deterministic: the same command, the same artifact (a parity verdict that changes
    between two runs of one command comes from the runtime, which the convert stage's second call catches)."""
    reports = [_convert("TinyGPT2", f"{IDS}, {MASK}", tmp_path / name, samples=16) for name in ("a", "b")]
    assert all(r["status"] == "ok" for r in reports)
    first, second = ((tmp_path / name / "model.tflite").read_bytes() for name in ("a", "b"))
    assert first == second


def _graph(nodes, inputs, outputs, opset: int = 13) -> onnx.ModelProto:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_invalid_onnx_node_is_named_with_what_to_change_not_another_opset():
    """A bool CumSum (what the exporter wrote for transformers' packed-sequence count) fails onnx's check:
    the hint names the op and says to cast its input."""
    from onnx import TensorProto, helper

    from pipeline.stages.check import invalid_model_hint

    model = _graph([helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [],
                                                                                        [1])),
                    helper.make_node("CumSum", ["x", "axis"], ["y"], name="/model/CumSum")],
                   [helper.make_tensor_value_info("x", TensorProto.BOOL, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.BOOL, ["N", 4])])
    with pytest.raises(Exception) as raised:
        onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    hint = invalid_model_hint(str(raised.value))
    assert "CumSum (/model/CumSum) on bool values" in hint and "x.long()" in hint and "opset" not in hint


def test_a_node_onnxruntime_refuses_at_the_check_is_named_with_its_batch():
    """A Tile whose repeats are 2-D (the exporter's tensor_split of computed positions) passes onnx's
    checker and fails in onnxruntime: the check names the node and op."""
    from onnx import TensorProto, helper

    from pipeline.errors import PipelineError
    from pipeline.stages.check import _run

    model = _graph([helper.make_node("Shape", ["x"], ["shape"]),
                    helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.INT64, [1],
                                                                                        [0])),
                    helper.make_node("Unsqueeze", ["shape", "zero"], ["repeats"]),
                    helper.make_node("Tile", ["x", "repeats"], ["y"], name="/mixer/Tile_9")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(PipelineError) as raised:
        _run(session, {"x": np.ones((7, 4), np.float32)}, 7)
    assert "Tile node /mixer/Tile_9" in str(raised.value) and "batch 7" in str(raised.value)
    assert "Tile (/mixer/Tile_9)" in raised.value.hint


def test_an_op_tflite_has_no_kernel_for_gets_its_own_hint():
    from pipeline.converters.backends.tflite_tf_converter import explain

    bias_add = explain(RuntimeError("... TF Select ops: BiasAdd ..."))
    assert "BiasAdd of integers" in bias_add.hint and "GELU" not in bias_add.hint
    assert "approximate='tanh'" in explain(RuntimeError("TF Select ops: Erf")).hint
    other = explain(RuntimeError("TF Select ops: Bincount"))
    assert other.hint.startswith("Replace Bincount") and other.unsupported_op == "Bincount"


def test_the_convert_stage_records_the_second_call_it_checked(tmp_path):
    report = _convert("TinyBert", f"{IDS}, {MASK}", tmp_path / "run", samples=12)
    verified = report["targets"]["tflite"]["attempts"][-1]["verify"]
    assert verified["ok"] and verified["second_call_batch"] == 12
    assert "second_call_batch" not in report["targets"]["keras"]["attempts"][-1]["verify"]
