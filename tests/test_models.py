"""The seed networks, built from their configs with the arguments their seed datasets give them (the built-in
models follow the data): exact parameter counts and output shapes."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pipeline import schema
from tests.conftest import ROOT

schema.register()

EXPECTED = {  # model: (its seed dataset, parameters, input shape, output shape)
    "mnist_cnn": ("mnist", 431_080, (3, 1, 28, 28), (3, 10)),
    "mnist_mlp": ("mnist", 101_770, (3, 1, 28, 28), (3, 10)),
    "tabular_mlp": ("synthetic_tabular", 3_651, (3, 20), (3, 1)),
    "ts_cnn": ("italy_power", None, (3, 1, 24), (3, 2)),
    "lstm_forecaster": ("series", None, (3, 12, 1), (3, 1)),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_model_config_builds_the_seed_network(name, mnist_root):
    from pipeline import network
    from pipeline.context import _build

    dataset, parameters, in_shape, out_shape = EXPECTED[name]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"model={name}", f"dataset={dataset}", f"dataset.root={mnist_root}"
                                           if dataset == "mnist" else "seed=42"])
    filled = network.from_data(cfg.model.net, _build(cfg.dataset, "dataset").spec(), str(cfg.model.output))
    net = instantiate(network.net_config(cfg.model.net, filled)).eval()
    if parameters is not None:
        assert sum(p.numel() for p in net.parameters() if p.requires_grad) == parameters
    with torch.no_grad():
        assert tuple(net(torch.randn(*in_shape)).shape) == out_shape
