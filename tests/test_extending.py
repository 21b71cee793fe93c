"""Extending the pipeline the README's way, in the test itself: a new export target is its spec, its backend
and its conf file; a new parity runtime for an existing artifact is one module (here: a spec registered
by the test); a new dataset is its module and conf file. Each goes through a real run."""
import numpy as np
import onnx
import pytest
import torch

from pipeline import converters, runtimes, schema
from pipeline.datasets.base import InMemoryData, Splits
from pipeline.runtimes import onnx_runtime
from pipeline.targets import TARGETS, TargetSpec
from tests.conftest import run_composed

TARGET = TargetSpec("onnx_resaved", "model_resaved.onnx", "onnxruntime",
                    "model.onnx written again by onnx.save (a throwaway target of this test)",
                    "`onnxruntime.InferenceSession(path)`", needs_tensorflow=False)


def resave(job: converters.ConvertJob) -> dict:
    onnx.save(onnx.load(str(job.onnx_path)), str(job.out_path))
    return {"resaved_by": "onnx.save"}


class Unoptimised(onnx_runtime.OnnxRuntime):
    """onnxruntime with its graph optimisations off: a second runtime for the artifacts onnxruntime runs."""

    name = "onnxruntime_unoptimised"

    def __init__(self, path, inputs, outputs, threads: int = 0):
        import onnxruntime as ort

        runtimes.Adapter.__init__(self, inputs, outputs)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


RUNTIME = runtimes.RuntimeSpec("onnxruntime_unoptimised", lambda path, inputs, outputs, threads=0, **_:
                               Unoptimised(path, inputs, outputs, threads), alternative_to="onnxruntime")


class TwoBlobs(InMemoryData):
    """Two Gaussian blobs in 4 dimensions: a dataset module of this test."""

    def __init__(self, samples: int = 300, **kwargs):
        super().__init__(**kwargs)
        self.samples = samples

    def load(self) -> Splits:
        rng = np.random.default_rng(self.seed)
        y = rng.integers(0, 2, self.samples)
        x = (rng.normal(size=(self.samples, 4)) + 4.0 * y[:, None]).astype(np.float32)

        def rows(part: slice):
            return torch.from_numpy(x[part]), torch.from_numpy(y[part])

        return Splits(train=rows(slice(0, 200)), val=rows(slice(200, 240)), test=rows(slice(240, None)))


@pytest.fixture
def extensions(tmp_path):
    """The target, its backend and conf file, the runtime, and the dataset's conf file; removed after."""
    conf = tmp_path / "conf"
    (conf / "export").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "export" / "onnx_resaved.yaml").write_text("targets:\n  onnx_resaved: true\n")
    (conf / "dataset" / "two_blobs.yaml").write_text(
        "_target_: tests.test_extending.TwoBlobs\nsamples: 300\nseed: ${seed}\nbatch_size: 32\nval_fraction: 0.1\n")
    converters.backend("onnx_resaved", "onnx_save", order=0)(resave)
    with TARGETS.temporarily(TARGET), runtimes.RUNTIMES.temporarily(RUNTIME):
        schema.register()  # export.onnx_resaved joins the schema
        yield conf
    converters.remove_backend("onnx_resaved", "onnx_save")
    schema.register()


def test_a_new_target_runtime_and_dataset_run_end_to_end(extensions, tmp_path):
    report = run_composed("model=tabular_mlp", "dataset=two_blobs", "export=onnx_resaved", "trainer.max_epochs=2",
                          "parity.runtimes=[onnxruntime_unoptimised]", f"hydra.searchpath=[file://{extensions}]",
                          run_dir=tmp_path / "run")
    assert report["status"] == "ok", report["stages"]
    assert report["targets"]["onnx_resaved"]["status"] == "ok"
    assert report["artifacts"]["onnx_resaved"]["path"] == "model_resaved.onnx"
    assert report["artifacts"]["onnx_resaved"]["producer"] == "convert"
    runtimes_run = {e["runtime"]: e for e in report["parity"]}
    assert set(runtimes_run) == {"onnxruntime", "onnxruntime@onnxruntime_unoptimised", "onnx_resaved",
                                 "onnx_resaved@onnxruntime_unoptimised"}
    assert all(e["in_tolerance"] for e in runtimes_run.values()), runtimes_run
    assert report["reference"]["metric"] > 0.75  # the blobs are separable: the dataset was really trained on
    assert "model_resaved.onnx" in (tmp_path / "run" / "report.md").read_text()


def test_an_unknown_alternative_runtime_is_refused_with_the_valid_ones(extensions, tmp_path):
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="onnxruntime_unoptimised") as caught:
        run_composed("model=tabular_mlp", "dataset=synthetic_tabular", "export=onnx", "stages=[train]",
                     "parity.runtimes=[nope]", run_dir=tmp_path / "run")
    assert "not an alternative runtime" in str(caught.value)


def test_a_removed_target_leaves_nothing_behind(extensions):
    assert "onnx_resaved" in schema.ExportConfig.__dataclass_fields__  # inside the fixture: registered


def test_the_registries_are_as_shipped_outside_the_fixture():
    # the fixture's target is gone outside it: the schema and the registries are as shipped
    assert "onnx_resaved" not in TARGETS and "onnx_resaved" not in {f for f in schema.ExportConfig.__dataclass_fields__}
    assert not converters.backends_for("onnx_resaved")
