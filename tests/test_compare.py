"""pipeline.compare: float32 round-off is judged against float32's own noise (a float64 copy of the model
as the truth), and a broken conversion still fails.

The model is a deep conv-bn-relu stack (tests/deep_nets.py) whose float32 error against float64 is far
above parity.atol=1e-5; onnxruntime runs its real ONNX export. The broken conversions are that export
with one initializer edited as a converter bug would leave it: two input channels swapped, a BatchNorm
folded with a wrong epsilon, a BatchNorm folded with wrong running statistics.
"""
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf
from onnx import numpy_helper
from torch import nn

from pipeline import compare
from tests.conftest import run_composed
from tests.deep_nets import DeepConvBN

PARITY = OmegaConf.create({"rtol": 1e-3, "atol": 1e-5, "min_top1_agreement": 0.999})
MULTIPLE = 8.0
# The middle block's conv (ONNX Conv node k >= 1 holds conv k with BatchNorm k-1 folded into it).
BROKEN_CONV = 16


@pytest.fixture(scope="module")
def deep():
    net = DeepConvBN()
    feeds = {"input": torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()}
    with torch.inference_mode():
        reference = {"output": net(torch.from_numpy(feeds["input"])).numpy()}
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.from_numpy(feeds["input"][:1]), buffer, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=13, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    floor = compare.measure_noise(net, feeds, reference, MULTIPLE)
    return net, feeds, reference, model, floor


def _onnxruntime(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {"output": session.run(None, feeds)[0]}


def test_a_deep_nets_float32_noise_is_above_the_fixed_atol_and_measured_per_output(deep):
    _, _, _, _, floor = deep
    noise = floor.outputs["output"]
    assert floor.reason is None and floor.samples == 32
    assert noise["max_abs_err"] > 1e-5  # the premise: round-off alone exceeds parity.atol
    assert floor.atol("output", 1e-5) == pytest.approx(MULTIPLE * noise["max_abs_err"])
    report = floor.report(1e-5)
    assert report["measured"] and report["multiple"] == MULTIPLE and report["outputs"]["output"]["atol"] > 1e-5


def test_onnxruntime_passes_with_the_noise_floor_and_fails_without_it(deep):
    _, feeds, reference, model, floor = deep
    got = _onnxruntime(model, feeds)
    with_floor = compare.compare_outputs(got, reference, "value", PARITY, floor)
    assert with_floor["in_tolerance"] and with_floor["allclose"], with_floor
    assert with_floor["tolerance"]["output"]["noise_floor"] is True
    fixed = compare.compare_outputs(got, reference, "value", PARITY, compare.off("parity.noise_floor=false"))
    assert not fixed["in_tolerance"] and not fixed["allclose"], fixed  # the same outputs: only the rule differs
    assert fixed["tolerance"]["output"] == {"rtol": 1e-3, "atol": 1e-5, "noise_floor": False}
    assert fixed["max_abs_err"] == with_floor["max_abs_err"] > 1e-5


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name).copy()


def _replace(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _broken(model: onnx.ModelProto, net: DeepConvBN, bug: str) -> onnx.ModelProto:
    """A copy of the export with the folded conv-bn of block ``BROKEN_CONV`` as a converter bug leaves it."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    conv = [n for n in broken.graph.node if n.op_type == "Conv"][BROKEN_CONV]
    weight, bias = _initializer(broken, conv.input[1]), _initializer(broken, conv.input[2])
    norm = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][BROKEN_CONV - 1]
    var, gamma, beta = (t.detach().double().numpy() for t in (norm.running_var, norm.weight, norm.bias))
    scale = gamma / np.sqrt(var + norm.eps)  # what the export folded into the conv, per output channel
    if bug == "swapped_channel":  # two input channels in each other's place (an RGB/BGR-style mix-up)
        weight[:, [0, 1]] = weight[:, [1, 0]]
    elif bug == "wrong_bn_epsilon":  # folded with Keras' default epsilon 1e-3 instead of PyTorch's 1e-5
        ratio = np.sqrt((var + norm.eps) / (var + 1e-3))
        weight, bias = weight * ratio[:, None, None, None], (bias - beta) * ratio + beta
    elif bug == "wrong_bn_statistics":  # folded with a running mean off by 5 % of the running std
        bias = bias - scale * 0.05 * np.sqrt(var)
    _replace(broken, conv.input[1], weight)
    _replace(broken, conv.input[2], bias)
    return broken


@pytest.mark.parametrize("bug", ["swapped_channel", "wrong_bn_epsilon", "wrong_bn_statistics"])
def test_a_broken_conversion_fails_parity_and_the_convert_check_with_the_noise_floor(deep, bug):
    net, feeds, reference, model, floor = deep
    broken = _onnxruntime(_broken(model, net, bug), feeds)
    verdict = compare.compare_outputs(broken, reference, "value", PARITY, floor)
    assert not verdict["in_tolerance"] and not verdict["allclose"], verdict
    assert verdict["max_abs_err"] > floor.atol("output", PARITY.atol)  # not a near miss
    # the convert stage's check (against onnxruntime on the unbroken model) refuses it too, where its
    # scale-relative part (export.verify.rtol x the output's max, 0.07 here) leaves the floor to decide
    check = compare.verify_outputs(broken, _onnxruntime(model, feeds), 0.0, 1e-6, 32, floor)
    assert check["ok"] is False and "differs from onnxruntime" in check["reason"], check


def test_the_convert_check_passes_a_correct_artifact_within_the_floor(deep):
    _, feeds, reference, model, floor = deep
    check = compare.verify_outputs(_onnxruntime(model, feeds), reference, 0.0, 1e-6, 32, floor)
    assert check["ok"] is True and check["noise_floor"]["output"] == floor.atol("output", 0.0)
    strict = compare.verify_outputs(_onnxruntime(model, feeds), reference, 0.0, 1e-6, 32)
    assert strict["ok"] is False  # the same artifact without the floor, at an atol below the round-off


class FixedDtypeNet(nn.Module):
    """A float32 matrix kept as a plain attribute (not a buffer): ``double()`` leaves it float32, and the
    float64 copy cannot multiply by it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.mix = torch.eye(3)

    def forward(self, x):
        return self.linear(x) @ self.mix


class ComplexNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, dtype=torch.complex64))

    def forward(self, x):
        return (x * self.weight).real


@pytest.mark.parametrize("net, why", [(FixedDtypeNet(), "does not run (RuntimeError"),
                                      (ComplexNet(), "complex parameters")])
def test_a_model_whose_float64_copy_cannot_run_keeps_the_fixed_tolerances_and_says_why(net, why):
    feeds = {"input": np.ones((2, 4), np.float32)}
    with torch.inference_mode():
        reference = {"output": net(torch.from_numpy(feeds["input"])).numpy()}
    floor = compare.measure_noise(net, feeds, reference, MULTIPLE)
    assert floor.reason is not None and why in floor.reason and "fixed rtol/atol" in floor.reason
    assert floor.atol("output", 1e-5) == 1e-5
    assert floor.report(1e-5) == {"measured": False, "reason": floor.reason}
    assert net.linear.weight.dtype == torch.float32 if hasattr(net, "linear") else True  # the run's net untouched


class ThresholdNet(nn.Module):
    """A threshold on a value float32 and float64 round differently: the outputs differ by 1000 where the
    decision flips, which is no round-off to allow."""

    def forward(self, x):
        return x + 1000.0 * ((x * 0.1) * 10.0 > x).to(x.dtype)


def test_a_flipped_decision_is_not_taken_for_round_off():
    net = ThresholdNet()
    feeds = {"input": np.linspace(1, 2, 512, dtype=np.float32).reshape(8, 64)}
    with torch.inference_mode():
        reference = {"output": net(torch.from_numpy(feeds["input"])).numpy()}
    floor = compare.measure_noise(net, feeds, reference, MULTIPLE)
    noise = floor.outputs["output"]
    assert noise["max_abs_err"] > 999  # the premise: float32 and float64 decide differently somewhere
    assert noise["applied"] is False and "not round-off" in noise["reason"]
    assert floor.atol("output", 1e-5) == 1e-5 and floor.report(1e-5)["outputs"]["output"]["atol"] == 1e-5


def test_integer_inputs_stay_integer_in_the_float64_copy():
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    feeds = {"ids": np.array([[1, 2, 3], [4, 5, 9]], np.int64)}
    with torch.inference_mode():
        reference = {"output": embedding(torch.from_numpy(feeds["ids"])).numpy()}
    floor = compare.measure_noise(embedding, feeds, reference, MULTIPLE)
    assert floor.reason is None and floor.outputs["output"]["max_abs_err"] < 1e-5
    assert next(embedding.parameters()).dtype == torch.float32


DEEP = ("model.net._target_=tests.deep_nets.DeepConvBN", "model.output=value",
        "model.weights=init", "dataset=synthetic", "dataset.shape=[1,16,16]", "dataset.samples=32",
        "stages=[export,check,convert,parity]", "parity.timing=false")


@pytest.mark.slow
@pytest.mark.tf
def test_a_deep_net_is_in_parity_with_the_noise_floor_and_drifts_without_it(tmp_path):
    report = run_composed(*DEEP, "export=keras", run_dir=tmp_path / "floor")
    assert report["status"] == "ok", report["stages"]
    floor = report["reference"]["noise_floor"]
    assert floor["measured"] and floor["multiple"] == 8 and floor["outputs"]["output"]["max_abs_err"] > 1e-5
    for entry in report["parity"]:
        assert entry["in_tolerance"] and entry["max_abs_err"] > 1e-5, entry
        assert entry["tolerance"]["output"]["atol"] == floor["outputs"]["output"]["atol"]
    assert report["targets"]["keras"]["attempts"][0]["verify"]["noise_floor"]["output"] > 0

    fixed = run_composed(*DEEP, "export=keras", "parity.noise_floor=false", "export.verify.rtol=0",
                         run_dir=tmp_path / "fixed", expect_failure=True)
    assert fixed["reference"]["noise_floor"] == {"measured": False,
                                                 "reason": "parity.noise_floor=false: the fixed rtol/atol only"}
    assert {e["runtime"] for e in fixed["parity"] if not e["in_tolerance"]} == {"onnxruntime", "keras"}
    assert fixed["targets"]["keras"]["attempts"][0]["status"] == "drifted"  # convert's check: same rule


@pytest.mark.slow
@pytest.mark.tf
def test_a_keras_artifact_broken_after_conversion_fails_with_the_noise_floor(tmp_path, deep):
    """The run's converted model.keras, by its runtime adapter: in tolerance as converted, out of it with two
    input channels of one conv swapped in the artifact, under the same noise floor."""
    from pipeline import runtimes, tf_env

    net, feeds, reference, _, floor = deep
    source = tmp_path / "source"
    report = run_composed(*DEEP, "export=keras", run_dir=source)
    assert report["status"] == "ok"
    layout = {k: report["targets"]["keras"].get(k) for k in ("input_perms", "output_perms")}

    def keras_outputs() -> dict:
        return runtimes.load("keras", source / "model.keras", ["input"], ["output"], **layout).predict(feeds)

    assert compare.compare_outputs(keras_outputs(), reference, "value", PARITY, floor)["in_tolerance"] is True
    tf_env.prepare()
    import keras

    model = keras.saving.load_model(str(source / "model.keras"), safe_mode=True, compile=False)
    conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][BROKEN_CONV]
    kernel, *rest = conv.get_weights()  # HWIO
    conv.set_weights([kernel[:, :, [1, 0, *range(2, kernel.shape[2])]], *rest])
    model.save(str(source / "model.keras"))
    verdict = compare.compare_outputs(keras_outputs(), reference, "value", PARITY, floor)
    assert not verdict["in_tolerance"] and verdict["max_abs_err"] > floor.atol("output", PARITY.atol), verdict


@pytest.mark.slow
@pytest.mark.tf
def test_timm_dla34_is_in_parity_with_the_noise_floor_and_drifts_without_it(tmp_path):
    """A real deep net (timm dla34, random weights, warmed-up BatchNorm) at 64x64: onnxruntime and Keras
    differ from PyTorch by more than 1e-5 + 1e-3 |ref| (6e-5 measured) from round-off alone."""
    pytest.importorskip("timm")
    dla34 = ("model.net._target_=tests.deep_nets.timm_model", "+model.net.name=dla34", "model.output=logits",
             "model.weights=init", "dataset=synthetic", "dataset.shape=[3,64,64]", "dataset.samples=32",
             "stages=[export,check,convert,parity]", "parity.timing=false")
    report = run_composed(*dla34, "export=keras", run_dir=tmp_path / "floor")
    assert report["status"] == "ok", report["stages"]
    noise = report["reference"]["noise_floor"]["outputs"]["output"]
    assert noise["max_abs_err"] > 1e-5
    assert all(e["in_tolerance"] and e["tolerance"]["output"]["noise_floor"] for e in report["parity"]), \
        report["parity"]
    fixed = run_composed(*dla34, "export=onnx", "parity.noise_floor=false", run_dir=tmp_path / "fixed",
                         expect_failure=True)
    assert fixed["parity"][0]["runtime"] == "onnxruntime" and fixed["parity"][0]["allclose"] is False
