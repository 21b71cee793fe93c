"""Models follow the data: constructor arguments that the dataset's spec determines.

A network's constructor argument named below (``num_classes``, ``input_shape``, ``in_features``,
``in_channels``, ``n_features``) that the config leaves unset or null is taken from the dataset
(``DataSpec``): the number of classes and the shape model.net receives. A value the user sets wins.
This holds for the built-in models (their configs leave these null) and for a user's own class.
"""
import inspect

from omegaconf import DictConfig, OmegaConf

from pipeline.datasets.base import DataSpec


def _num_classes(spec: DataSpec, kind: str):
    if spec.task == "regression":
        return spec.target_width
    if spec.task in ("classification", "multi_label") and kind != "probability":
        return spec.num_classes
    return None


def _shape(spec: DataSpec):
    return spec.net_input_shape


def _in_features(spec: DataSpec):
    shape = spec.net_input_shape
    return shape[0] if shape is not None and len(shape) == 1 else None


def _in_channels(spec: DataSpec):
    shape = spec.net_input_shape
    return shape[0] if shape is not None and len(shape) >= 2 else None


def _n_features(spec: DataSpec):
    # sequences are [T, F] batch first; images and channel-first series declare their layout
    shape, layout = spec.net_input_shape, spec.inputs[0].layout if spec.inputs else None
    return shape[-1] if shape is not None and len(shape) == 2 and layout in (None, "NTC") else None


DATA_ARGUMENTS = {
    "num_classes": lambda spec, kind: _num_classes(spec, kind),
    "input_shape": lambda spec, kind: _shape(spec),
    "in_features": lambda spec, kind: _in_features(spec),
    "in_channels": lambda spec, kind: _in_channels(spec),
    "n_features": lambda spec, kind: _n_features(spec),
}


def constructor_parameters(target: str) -> set[str]:
    """The named parameters of ``model.net._target_`` (empty when it cannot be inspected: the build names
    the problem)."""
    from hydra.utils import get_object

    try:
        return set(inspect.signature(get_object(target)).parameters)
    except Exception:  # noqa: BLE001 - an unimportable target fails in the build, with its own message
        return set()


def from_data(net_cfg: DictConfig, spec: DataSpec | None, kind: str) -> dict:
    """The constructor arguments to take from the data: {name: value} for each one the constructor has,
    the config leaves null or unset, and the data determines."""
    if spec is None or not isinstance(net_cfg, DictConfig):
        return {}
    parameters = constructor_parameters(str(net_cfg.get("_target_")))
    filled = {}
    for name, derive in DATA_ARGUMENTS.items():
        if name not in parameters or net_cfg.get(name) is not None:
            continue
        value = derive(spec, kind)
        if value is not None:
            filled[name] = list(value) if isinstance(value, list | tuple) else int(value)
    return filled


def net_config(net_cfg: DictConfig, filled: dict) -> DictConfig:
    """``model.net`` with the data's arguments filled in and the remaining nulls of DATA_ARGUMENTS dropped
    (the constructor's defaults apply where the data says nothing)."""
    if not isinstance(net_cfg, DictConfig):  # model.net=null: the build names it
        return net_cfg
    plain = OmegaConf.to_container(net_cfg, resolve=False)
    for name in DATA_ARGUMENTS:
        if plain.get(name, 0) is None:
            del plain[name]
    plain.update(filled)
    return OmegaConf.create(plain)


def dataset_name(cfg) -> str:
    """``conf/dataset/<name>.yaml`` is named after its module: pipeline.datasets.<name>.Class."""
    target = str(cfg.dataset.get("_target_", "?"))
    parts = target.split(".")
    return parts[-2] if len(parts) >= 2 else target


def model_hint(cfg) -> str:
    """The models made for the dataset (its class's ``suggested_models``), for a network that does not fit."""
    from hydra.utils import get_class

    try:
        suggested = getattr(get_class(str(cfg.dataset._target_)), "suggested_models", None)
    except Exception:  # noqa: BLE001 - a dataset class that cannot be imported: no suggestion
        suggested = None
    return f"pick a model made for it (model={suggested})" if suggested else "pick a model made for it"
