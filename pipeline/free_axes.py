"""Free axes: input axes besides the batch whose size the artifacts leave open (``export.dynamic_axes``).

``export.dynamic_axes`` names them per input, ``{input: {2: height, 3: width}}``, or by a shorthand:
``spatial`` (every axis after the channels of a rank-3..5 input: length, height/width, depth/height/width)
or ``time`` (axis 1 of every rank-2 or rank-3 input: ``[N, T]`` token ids, ``[N, T, F]`` batch_first
sequences). The export writes them into the ONNX graph as named dimensions; the converters read them
from there (``of_onnx``), so every later stage, a ``from_run`` included, sees the same free axes.

Before the artifacts are made, the export proves the network takes other sizes (``check_export``):
PyTorch and onnxruntime run at two other sizes and must agree; a module or ONNX node that pins a free
axis (a reshape to a constant, a positional table of fixed length, a Linear over a flattened image) is
refused by name. Parity then runs every runtime at the trained size and at ``parity.shapes`` (two other
sizes by default: every free axis at 2x and 3x its trained size, which keeps any stride's divisibility).
"""
import re

import numpy as np

from pipeline.errors import PipelineError

SHORTHANDS = ("spatial", "time")
SPATIAL_NAMES = {3: ["length"], 4: ["height", "width"], 5: ["depth", "height", "width"]}
# Other sizes, as multiples of the trained size: a multiple keeps every stride's and pool's divisibility.
FACTORS = ((2, 3), (3, 2))
HINT = ("Set export.dynamic_axes to spatial, time, or a mapping {input: {axis: name}} with axes >= 1 of the "
        "model's inputs, e.g. export.dynamic_axes={input:{2:height,3:width}}.")


def resolve(spec, shapes: dict[str, tuple]) -> dict[str, dict[int, str]]:
    """``export.dynamic_axes`` as {input: {axis: name}} for inputs of ``shapes`` (full shapes, batch first)."""
    if spec is None or spec == {}:
        return {}
    if isinstance(spec, str):
        return _shorthand(spec, shapes)
    spec = _plain(spec)
    if not isinstance(spec, dict):
        raise PipelineError(f"export.dynamic_axes={spec!r} is neither a shorthand nor a mapping.", HINT)
    if spec and all(_is_axis(key) for key in spec) and len(shapes) == 1:  # {2: height} for the only input
        spec = {next(iter(shapes)): spec}
    free = {}
    for name, axes in spec.items():
        if name not in shapes:
            raise PipelineError(f"export.dynamic_axes names input {name!r}; the model's inputs are "
                                f"{', '.join(shapes)}.", HINT)
        if not isinstance(axes, dict):
            axes = {axis: f"{name}_{axis}" for axis in (axes if isinstance(axes, list) else [axes])}
        free[name] = {_axis(name, axis, len(shapes[name])): str(label) for axis, label in axes.items()}
    return {name: axes for name, axes in free.items() if axes}


def _shorthand(spec: str, shapes: dict[str, tuple]) -> dict[str, dict[int, str]]:
    if spec not in SHORTHANDS:
        raise PipelineError(f"export.dynamic_axes={spec!r} is not a shorthand ({', '.join(SHORTHANDS)}).", HINT)
    if spec == "spatial":
        free = {name: dict(zip(range(2, len(shape)), SPATIAL_NAMES[len(shape)], strict=True))
                for name, shape in shapes.items() if len(shape) in SPATIAL_NAMES}
    else:
        free = {name: {1: "time"} for name, shape in shapes.items() if len(shape) in (2, 3)}
    if not free:
        found = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        needs = "a rank-3 to rank-5 input [N, C, ...]" if spec == "spatial" else "a [N, T] or [N, T, F] input"
        raise PipelineError(f"export.dynamic_axes={spec} applies to no input ({found}): {spec} needs {needs}.", HINT)
    return free


def _plain(spec):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(spec) if isinstance(spec, DictConfig | ListConfig) else spec


def _is_axis(key) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit())


def _axis(name: str, axis, rank: int) -> int:
    if not _is_axis(axis) or not 1 <= int(axis) % rank < rank or not -rank <= int(axis) < rank:
        raise PipelineError(f"export.dynamic_axes: axis {axis!r} of input {name} is not a free-able axis of its "
                            f"rank-{rank} shape (0 is the batch, already free).", HINT)
    return int(axis) % rank


def onnx_axes(free: dict[str, dict[int, str]], names: list[str]) -> dict[str, dict[int, str]]:
    """torch.onnx.export's ``dynamic_axes`` for inputs ``names``: the batch and the free axes."""
    return {name: {0: "batch", **free.get(name, {})} for name in names}


def output_axes(reference: dict[str, tuple], other: dict[str, tuple], labels: dict[tuple, str] | None = None
                ) -> dict[str, dict[int, str]]:
    """The outputs' axes that change between two input sizes: free in ONNX too, named after the input axis
    of the same two sizes (``labels``: {(trained, other): name}) where there is one."""
    labels = labels or {}
    axes = {}
    for name, shape in reference.items():
        changed = {axis: labels.get((a, b), f"{name}_{axis}") for axis, (a, b)
                   in enumerate(zip(shape, other[name], strict=True)) if axis and a != b}
        axes[name] = {0: "batch", **changed}
    return axes


def size_labels(free: dict[str, dict[int, str]], trained: dict[str, tuple], other: dict[str, tuple]
                ) -> dict[tuple, str]:
    """{(trained size, other size): axis name} of the free input axes."""
    return {(trained[name][axis], other[name][axis]): label for name, axes in free.items()
            for axis, label in axes.items()}


def of_onnx(model) -> dict[str, dict[int, str]]:
    """The free axes (named dimensions after the batch) of an ONNX model's inputs."""
    free = {}
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        axes = {axis: dim.dim_param for axis, dim in enumerate(dims) if axis > 0 and dim.dim_param}
        if axes:
            free[info.name] = axes
    return free


def other_shapes(free: dict[str, dict[int, str]], shapes: dict[str, tuple]) -> list[dict[str, tuple]]:
    """Two other sizes (full shapes): the free axes at 2x/3x their trained size, then 3x/2x. Axes that share a
    name (the time of two inputs) take the same size."""
    result = []
    for factors in FACTORS:
        by_name: dict[str, int] = {}
        sized = {}
        for name, shape in shapes.items():
            shape = list(shape)
            for index, (axis, label) in enumerate(sorted(free.get(name, {}).items())):
                by_name.setdefault(label, shape[axis] * factors[index % len(factors)])
                shape[axis] = by_name[label]
            sized[name] = tuple(shape)
        result.append(sized)
    return result


def parity_shapes(setting, free: dict[str, dict[int, str]], shapes: dict[str, tuple]) -> list[dict[str, tuple]]:
    """``parity.shapes`` (per-sample shapes, batch left out: ``[[3,48,64],[3,96,32]]`` for one input, or
    ``[{ids: [40]}, {ids: [7]}]`` by name) as full shapes; derived (``other_shapes``) when null."""
    if setting is None:
        return other_shapes(free, shapes) if free else []
    setting = _plain(setting)
    if setting == []:
        return []
    hint = ("Set parity.shapes to a list of per-sample shapes without the batch, e.g. parity.shapes=[[3,48,64]] "
            "(one input) or [{ids:[40]}] by input name; only free axes (export.dynamic_axes) may change.")
    result = []
    for item in setting if isinstance(setting, list) else [setting]:
        item = item if isinstance(item, dict) else {next(iter(shapes)): item} if len(shapes) == 1 else None
        if item is None:
            raise PipelineError(f"parity.shapes item {setting!r} does not name inputs; the model has "
                                f"{', '.join(shapes)}.", hint)
        sized = {}
        for name, shape in shapes.items():
            wanted = (shape[0], *[int(d) for d in item[name]]) if name in item else tuple(shape)
            pinned = [a for a, (x, y) in enumerate(zip(shape, wanted, strict=False))
                      if a > 0 and x != y and a not in free.get(name, {})]
            if len(wanted) != len(shape) or pinned:
                raise PipelineError(f"parity.shapes: {name} {list(wanted[1:])} changes "
                                    f"{'its rank' if len(wanted) != len(shape) else f'axis {pinned[0]}'}, which "
                                    f"is not free (trained {list(shape[1:])}, free axes "
                                    f"{sorted(free.get(name, {}))}).", hint)
            sized[name] = wanted
        result.append(sized)
    return result


def tiled(array: np.ndarray, shape: tuple) -> np.ndarray:
    """``array`` brought to ``shape`` (batch kept) by repeating or cutting it along each axis that differs:
    token ids stay valid ids, images stay images."""
    for axis, size in enumerate(shape):
        if axis and array.shape[axis] != size:
            array = np.take(array, np.arange(size) % array.shape[axis], axis=axis)
    return np.ascontiguousarray(array)


def feeds_at(feeds: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    return {name: tiled(value, shapes[name]) for name, value in feeds.items()}


def described(free: dict[str, dict[int, str]]) -> str:
    """The free axes in words: ``input axes [2, 3] (height, width)``."""
    return ", ".join(f"{name} axes {sorted(a)} ({', '.join(a[k] for k in sorted(a))})" for name, a in free.items())


def describe(shapes: dict[str, tuple]) -> str:
    return ", ".join(f"{name} {list(shape[1:])}" for name, shape in shapes.items())


# --- the export's proof that the network takes other sizes ------------------------------------------

_ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")


def check_export(net, onnx_path, args: tuple, names: list[str], free: dict[str, dict[int, str]],
                 rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """PyTorch and onnxruntime at two other sizes of the free axes: both run, and agree. Refuses, naming the
    module or node, a network whose graph pins a free axis."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    trained = {name: tuple(arg.shape) for name, arg in zip(names, args, strict=True)}
    axes = described(free)
    for shapes in other_shapes(free, trained):
        feeds = {name: tiled(arg.numpy(), shapes[name]) for name, arg in zip(names, args, strict=True)}
        expected = torch_outputs(net, feeds, names, free, trained)
        try:
            got = session.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime names the node that cannot take the size
            node = _ORT_NODE.search(str(exc))
            where = f"ONNX node {node.group(2)} ({node.group(1)})" if node else "the ONNX graph"
            raise PipelineError(f"export.dynamic_axes: {where} pins a free axis ({axes}): at {describe(shapes)} "
                                f"onnxruntime fails: {str(exc).split('Status Message:')[-1].strip()[:200]} (a size "
                                "the trace froze into a constant: report.json stages.export.warnings lists the "
                                "TracerWarnings)",
                                _PIN_HINT) from exc
        for index, (want, have) in enumerate(zip(expected, got, strict=True)):
            if want.shape != have.shape or not np.allclose(have, want, rtol=rtol, atol=atol):
                raise PipelineError(f"export.dynamic_axes: the ONNX graph pins a free axis ({axes}): at "
                                    f"{describe(shapes)} output {index} is {list(have.shape)} "
                                    f"{'with other values' if want.shape == have.shape else ''} where PyTorch "
                                    f"gives {list(want.shape)}; the trace froze a size into a constant "
                                    "(see report.json stages.export.warnings: TracerWarnings).", _PIN_HINT)


def _fixed_tables(module, free: dict[str, dict[int, str]], trained: dict[str, tuple]) -> str:
    """Parameters and buffers of ``module`` (not of its children) with an axis of a free axis' trained size."""
    sizes = {trained[name][axis]: label for name, axes in free.items() for axis, label in axes.items()}
    tables = [f"{name} {list(value.shape)}" for name, value in [*module.named_parameters(recurse=False),
                                                               *module.named_buffers(recurse=False)]
              if value.dim() >= 2 and set(value.shape[1:]) & set(sizes)]
    if not tables:
        return ""
    return (f"; {', '.join(tables)} has the trained size of {', '.join(sorted(set(sizes.values())))}: a table of "
            "fixed length (slice it to the input's size)")


def _left(running: list) -> None:
    """A forward hook's body: returns None, so that the module's output stands."""
    if running:
        running.pop()


_PIN_HINT = ("Compute sizes from the tensor (x.shape[2], x.flatten(1), F.adaptive_avg_pool2d(x, 1), a positional "
             "table sliced to x.shape[1]) instead of constants, or leave that axis out of export.dynamic_axes.")


def torch_outputs(net, feeds: dict, names: list[str], free: dict[str, dict[int, str]], trained: dict[str, tuple]
                  ) -> list[np.ndarray]:
    """PyTorch's outputs on ``feeds``; the innermost module that cannot take their size is named, and a
    parameter or buffer as long as a free axis was trained (a positional table) is suspected."""
    import torch

    from pipeline.runtimes.torch_runtime import flatten_outputs

    running: list[str] = []  # modules entered and not yet left: on an error, the innermost failed
    modules = [(name, module) for name, module in net.named_modules() if name]
    hooks = [hook for name, module in modules for hook in (
        module.register_forward_pre_hook(lambda _m, _i, n=name: running.append(n)),
        module.register_forward_hook(lambda _m, _i, _o: _left(running)))]
    try:
        with torch.no_grad():  # not inference_mode: a tensor cached in forward must stay exportable
            result = net(*[torch.from_numpy(feeds[n].copy()) for n in names])
    except Exception as exc:  # noqa: BLE001 - the network itself pins the axis
        module = running[-1] if running else None
        owner = dict(modules)[module] if module else net
        where = f"module {module} ({type(owner).__name__})" if module else f"{type(net).__name__}.forward"
        shapes = {name: feeds[name].shape for name in names}
        raise PipelineError(f"export.dynamic_axes: {where} pins a free axis ({described(free)}): at {describe(shapes)} "
                            f"PyTorch fails: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                            f"{_fixed_tables(owner, free, trained)}", _PIN_HINT) from exc
    finally:
        for hook in hooks:
            hook.remove()
    return [t.detach().numpy() for t in flatten_outputs(result)]
