"""The run's network: model.net is constructed once per run, whatever stages run."""
import torch

from models.tabular_mlp import TabularMLP
from pipeline import tasks
from tests.conftest import run_composed

CONSTRUCTIONS = 0  # how many times CountingMLP.__init__ ran


class CountingMLP(TabularMLP):
    """The seed tabular MLP, counting its constructions."""

    def __init__(self, in_features: int = 20, hidden: tuple[int, ...] = (8,), num_classes: int | None = None):
        global CONSTRUCTIONS
        CONSTRUCTIONS += 1
        super().__init__(in_features, hidden, num_classes)


COUNTED = ("model=tabular_mlp", "model.net._target_=tests.test_network.CountingMLP", "dataset=synthetic_tabular",
           "dataset.samples=400", "export=keras", "parity.samples=32")


def _constructions_in(*overrides: str, run_dir) -> tuple[int, dict]:
    global CONSTRUCTIONS
    CONSTRUCTIONS = 0
    report = run_composed(*COUNTED, *overrides, run_dir=run_dir)
    return CONSTRUCTIONS, report


def test_a_conversion_only_run_constructs_the_network_once(tmp_path):
    count, report = _constructions_in("model.weights=init", "stages=[export,check,convert,parity]",
                                      run_dir=tmp_path / "run")
    assert report["status"] == "ok"
    assert count == 1


def test_a_full_run_constructs_the_network_once_and_exports_the_trained_weights(tmp_path):
    count, report = _constructions_in("trainer.max_epochs=1", run_dir=tmp_path / "run")
    assert report["status"] == "ok"
    assert count == 1
    # the network the later stages exported is the trained one (parity compares it with model.pt's outputs)
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert report["parity"][0]["in_tolerance"] and trained


def test_given_weights_are_loaded_into_the_one_construction(tmp_path):
    _, first = _constructions_in("trainer.max_epochs=1", "stages=[train]", run_dir=tmp_path / "first")
    count, report = _constructions_in(f"model.weights={tmp_path / 'first' / 'model.pt'}",
                                      "stages=[export,check,convert,parity]", run_dir=tmp_path / "second")
    assert count == 1
    # the exported network holds the given weights: its test metric is the first run's
    metric = first["metrics"][tasks.metric_name("probability")]
    assert abs(report["reference"]["metric"] - metric) < 0.15


def test_training_follows_the_same_random_stream_as_a_fresh_build(tmp_path):
    """The build moved from the train stage to the first stage: a config still trains to the same weights
    on every run (the random state after the build is restored when training starts)."""
    _constructions_in("trainer.max_epochs=1", "stages=[train]", run_dir=tmp_path / "a")
    _constructions_in("trainer.max_epochs=1", "stages=[train]", run_dir=tmp_path / "b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
