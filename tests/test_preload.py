"""TensorFlow imported in the background while training runs: only where a later stage needs it and it is safe."""
import pytest
from hydra import compose, initialize_config_dir

from pipeline import preload, schema
from tests.conftest import ROOT

STAGES = ["train", "export", "check", "convert", "parity"]


def _cfg(*overrides: str):
    schema.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=["model=tabular_mlp", "dataset=synthetic_tabular", *overrides])


@pytest.mark.parametrize(("overrides", "stages", "expected"), [
    (("export=keras",), STAGES, True),
    (("export=tflite",), STAGES, True),
    (("export=onnx",), STAGES, False),  # no target needs TensorFlow
    (("export=onnx_int8",), STAGES, False),  # onnxruntime only
    (("export=keras",), ["export", "check", "convert", "parity"], False),  # no training to overlap with
    (("export=keras",), ["train", "export"], False),
    (("export=keras", "trainer=ddp_cpu"), STAGES, False),  # several training processes
])
def test_preload_only_where_a_later_stage_needs_tensorflow_and_training_runs_in_one_process(overrides, stages,
                                                                                           expected):
    cfg = _cfg(*overrides)
    assert (preload._wanted(cfg, stages) and preload._safe(cfg)) is expected


def test_no_preload_with_dataloader_worker_processes():
    cfg = _cfg("export=keras", "dataset=image_folder", "dataset.num_workers=2")
    assert not preload._safe(cfg)


def test_a_preload_is_waited_for():
    background = preload.Preload(None)
    background.wait()  # nothing started: returns at once
    assert background.thread is None
