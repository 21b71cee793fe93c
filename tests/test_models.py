"""The seed networks: exact parameter counts and output shapes."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pipeline import schema
from tests.conftest import ROOT

schema.register()

EXPECTED = {
    "mnist_cnn": (431_080, (3, 1, 28, 28), (3, 10)),
    "mnist_mlp": (101_770, (3, 1, 28, 28), (3, 10)),
    "tabular_mlp": (3_651, (3, 20), (3, 1)),
    "ts_cnn": (None, (3, 1, 24), (3, 2)),
    "lstm_forecaster": (None, (3, 12, 1), (3, 1)),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_model_config_builds_the_seed_network(name):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"model={name}"])
    net = instantiate(cfg.model.net).eval()
    parameters, in_shape, out_shape = EXPECTED[name]
    if parameters is not None:
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == parameters
    with torch.no_grad():
        assert tuple(net(torch.randn(*in_shape)).shape) == out_shape
