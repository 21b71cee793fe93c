"""Checks that need the data and the network, before any stage: seconds instead of a crash mid-training.

One batch of the dataset goes through ``model.net`` and the loss of ``model.output``: a network that
cannot take the dataset's input, an output kind that does not fit the targets (a regression output
on class labels, log-probabilities that are not), or a loss that is not finite, fail here with the
key to change. The data itself must be finite (a NaN or inf in the inputs trains to NaN weights).
"""
import torch

from pipeline import tasks
from pipeline.context import RunContext
from pipeline.datasets.base import SPLITS
from pipeline.errors import PipelineError
from pipeline.network import dataset_name, model_hint
from pipeline.runtimes.torch_runtime import flatten_outputs

BATCH = 16
def check(ctx: RunContext, selected: list[str], needs_network: bool = True) -> None:
    """``needs_network``: a selected stage builds model.net (the stage contracts say which)."""
    if not needs_network:
        return  # convert alone reads model.onnx only
    data = ctx.data
    dataset = dataset_name(ctx.cfg)
    for split in ("train", "test"):
        if data.size(split) == 0:
            raise PipelineError(f"dataset={dataset} has an empty {split} split.",
                                "Use more data, or lower dataset.val_fraction / dataset.test_fraction.")
    x, y = data.head("train" if "train" in selected else "test", BATCH)
    # In-memory data is checked whole; streamed data (read from disk per batch) on the batch checked here.
    for split, (inputs, targets) in _checked_parts(data, x, y):
        tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]  # several named inputs, or one
        for name, tensor in [*(("inputs", t) for t in tensors), ("targets", targets)]:
            if tensor is not None and torch.is_floating_point(tensor) and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise PipelineError(f"dataset={dataset}: the {split} {name} hold {bad} NaN or infinite value(s).",
                                    "Clean the data (or, for a CSV series, set dataset.missing=drop|interpolate "
                                    "for missing values).")
    net = ctx.initial_net().eval()
    if "export" in selected:
        _check_exportable_size(ctx.cfg, net)
    out = _forward(ctx, net, x, dataset, exporting="export" in selected)
    if "parity" in selected:
        _check_deterministic(ctx, net, x, out)
    if y is None:  # generated inputs without labels: nothing to check the output against
        return
    labels = _all_targets(data)  # a label beyond the network's classes in any split, not just the first batch
    check_output(ctx.cfg, str(ctx.cfg.model.output), out, y, dataset, labels)
    if "train" in selected:
        _check_loss(ctx.cfg, str(ctx.cfg.model.output), out, y, dataset, labels)
        _check_trainable(ctx.cfg, net)
        _check_optimizer(ctx.cfg, net)  # it only reads the parameters: the same network will do
        _check_nodes(ctx.cfg)


# What a multi-node launch sets on every node (SLURM, torchrun, LSF, MPI, or by hand as Lightning documents).
MULTI_NODE_ENV = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "NODE_RANK",
                  "MASTER_ADDR")


def _check_nodes(cfg) -> None:
    """trainer.num_nodes above 1 outside a multi-node launch: the first node would wait for the others
    forever (torch.distributed's rendezvous, deaf to Ctrl+C)."""
    import os

    nodes = int(cfg.trainer.get("num_nodes") or 1)
    if nodes > 1 and not any(os.environ.get(name) for name in MULTI_NODE_ENV):
        raise PipelineError(f"trainer.num_nodes={nodes}, but this process was not started by a multi-node launcher "
                            "(no SLURM, torchrun, LSF or MPI job; no NODE_RANK/MASTER_ADDR): it would wait for the "
                            "other nodes forever.",
                            "Set trainer.num_nodes=1 on one machine (trainer.devices= for more processes), or start "
                            "every node through a launcher, e.g. hydra/launcher=submitit_slurm.")


def _checked_parts(data, x, y):
    """(split, (inputs, targets)) to check for NaN and inf: whole splits of in-memory data, else one batch."""
    from pipeline.datasets.base import InMemoryData

    if isinstance(data, InMemoryData):
        return [(split, getattr(data.splits, split)) for split in ("train", "test")]
    return [("first", (x, y))]


def _all_targets(data) -> torch.Tensor:
    """The targets of every split, for checks of the label range (validation and test batches see them too)."""
    found = [data.targets(split) for split in SPLITS]
    parts = [t.reshape(len(t), -1) for t in found if t is not None and len(t)]
    return torch.cat(parts) if parts else found[0]


def _check_trainable(cfg, net: torch.nn.Module) -> None:
    """A network without a parameter that requires grad has nothing to train: the optimizer would get an
    empty list, or the loss no gradient (frozen parameters)."""
    if any(p.requires_grad for p in net.parameters()):
        return
    count = sum(p.numel() for p in net.parameters())
    what = f"all {count:,} of its parameters are frozen (requires_grad=False)" if count else "it has no parameters"
    raise PipelineError(f"model={cfg.model.name} ({cfg.model.net.get('_target_')}) has nothing to train: {what}.",
                        "Drop train from stages and export it as it is built: stages=[export,check,convert,parity] "
                        "model.weights=init (or model.weights=<file>); or unfreeze its parameters.")


def _check_optimizer(cfg, net: torch.nn.Module) -> None:
    """The optimizer and the schedule are built in Lightning's fit; build them here first."""
    from hydra.utils import instantiate

    from pipeline.lit_module import build_scheduler

    for key in ("optimizer", "scheduler"):
        node = cfg.get(key)
        if node is None and key == "scheduler":
            continue
        try:
            factory = instantiate(node)
            if key == "optimizer":
                optimizer = factory(net.parameters())
            else:
                build_scheduler(factory, optimizer, total_steps=100)
        except Exception as exc:
            cause = exc.__cause__ or exc
            text = " ".join(str(cause).split())[:300]
            raise PipelineError(f"{key}={node.get('_target_')} cannot be built from {key}.*: "
                                f"{type(cause).__name__}: {text}",
                                f"Check the {key}.* keys against that class's arguments.") from exc


DTYPE_ERRORS = ("dtype", "scalar type", "Double", "Long", "Int", "Half")


def _dtype_mismatch(x, dataset: str, exc: Exception) -> PipelineError | None:
    """A forward that fails on the input's dtype (float64 or int64 generated inputs into float32 layers): the
    dataset's dtype key is what to change, not model.net."""
    inputs = x if isinstance(x, dict) else {None: x}
    odd = {name: t.dtype for name, t in inputs.items() if t.dtype != torch.float32}
    if not odd or not any(word in str(exc) for word in DTYPE_ERRORS):
        return None
    name, dtype = next(iter(odd.items()))
    shown = str(dtype).replace("torch.", "")
    if name is not None:
        key = f"dataset.inputs.{name}.dtype"
        what, fix = f"input {name!r} as {shown} ({key})", f"Set {key}=float32 (with a normal or uniform distribution)"
    else:
        what = f"its input as {shown} (the dataset's dtype)"
        fix = "Give the dataset float32 inputs (dataset.distribution=normal or uniform for generated ones)"
    return PipelineError(f"dataset={dataset} gives {what}, but model.net computes in float32: "
                         f"{type(exc).__name__}: {_first_line(exc)}",
                         f"{fix}; integer inputs suit only a network that embeds them (token ids).")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _forward(ctx: RunContext, net: torch.nn.Module, x, dataset: str, exporting: bool = True) -> torch.Tensor:
    """The network (with model.weights loaded when given) on a batch; its first output."""
    shape = {n: list(t.shape) for n, t in x.items()} if isinstance(x, dict) else list(x.shape)
    try:
        with torch.no_grad():
            out = _call(net, x)
    except SystemExit as exc:  # user code calling sys.exit() / exit()
        raise PipelineError(f"model={ctx.cfg.model.name} ({ctx.cfg.model.net.get('_target_')}) called "
                            f"sys.exit({exc.code!r}) in its forward pass.",
                            "Remove the exit from model.net's forward, or point model.net._target_ at another "
                            "class.") from None
    except Exception as exc:
        mismatch = _dtype_mismatch(x, dataset, exc)
        if mismatch:
            raise mismatch from exc
        raise PipelineError(
            f"model={ctx.cfg.model.name} cannot take dataset={dataset}'s input (a batch of shape "
            f"{shape}): {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            f"For dataset={dataset}, {model_hint(ctx.cfg)}, or change model.net.* to fit that input.") from exc
    first = check_returned(ctx.cfg, out, exporting)
    _check_finite(ctx.cfg, first)
    return first


def _call(net: torch.nn.Module, x):
    """``net`` on copies of the dataset's tensors: a network that changes its input in place (``x.mul_(2)``)
    must not change the data that training, export and parity read."""
    if isinstance(x, dict):
        return net(**{n: t.clone() for n, t in x.items()})
    return net(x.clone())


# An ONNX file is one protobuf message, limited to 2 GiB (and so is a TFLite flatbuffer); the graph needs some room.
MAX_EXPORT_BYTES = 2**31 - 2**24


def _check_exportable_size(cfg, net: torch.nn.Module) -> None:
    # a lazy module left unbuilt (its first forward failed: _forward says why) has no size yet
    tensors = [t for t in [*net.parameters(), *net.buffers()] if not torch.nn.parameter.is_lazy(t)]
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size > MAX_EXPORT_BYTES:
        count = sum(t.numel() for t in net.parameters())
        raise PipelineError(f"model={cfg.model.name} holds {size / 2**30:.2f} GiB of weights ({count:,} parameters): "
                            "more than one ONNX file (a 2 GiB protobuf) or a TFLite flatbuffer holds; the pipeline "
                            "does not export weights as external data.",
                            "Use a smaller network (its model.net.* arguments), or drop export and the later stages "
                            "from stages=[...].")


def _check_deterministic(ctx: RunContext, net: torch.nn.Module, x, first: torch.Tensor) -> None:
    """Parity compares runtimes on the same inputs: a network whose eval-mode output changes from one call
    to the next (torch.rand in forward, dropout with training=True) would fail it for no runtime's fault."""
    with torch.no_grad():
        again = flatten_outputs(_call(net, x))[0]
    if again.shape == first.shape and torch.allclose(again, first, rtol=1e-5, atol=1e-6):
        return
    diff = float((again.double() - first.double()).abs().max()) if again.shape == first.shape else float("nan")
    raise PipelineError(f"model={ctx.cfg.model.name} is not deterministic in eval mode: two forward passes on the same "
                        f"inputs differ (max abs difference {diff:.3g}), so parity cannot compare runtimes on it.",
                        "Remove the randomness from model.net's forward in eval mode (torch.rand/randn, dropout "
                        "with training=True, sampling); use nn.Dropout, which eval() turns off. Or drop parity "
                        "from stages.")


def check_returned(cfg, out, exporting: bool = True) -> torch.Tensor:
    """What forward returned must be a tensor, or a tuple/list/dict of them (the ONNX outputs); returns the
    first one (the task's), which must hold floating-point numbers."""
    try:
        outputs = flatten_outputs(out)
    except Exception:  # noqa: BLE001 - anything that is not nested tensors
        outputs = None
    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise PipelineError(f"model={cfg.model.name} ({cfg.model.net.get('_target_')}) returns {_describe(out)} "
                            "from its forward pass; it must return a tensor, or a tuple, list or dict of tensors.",
                            "Make model.net's forward return its output tensor(s), or point model.net._target_ at "
                            "another class.")
    odd_key = _non_string_key(out) if exporting else None
    if odd_key is not None:
        raise PipelineError(f"model={cfg.model.name} ({cfg.model.net.get('_target_')}) returns a dict with the key "
                            f"{odd_key!r} ({type(odd_key).__name__}); the ONNX outputs are named after the keys, so "
                            "they must be strings (torch.onnx.export fails on others).",
                            f"Use string keys in model.net's returned dict (e.g. {str(odd_key)!r}), or return a "
                            "tuple of tensors.")
    first = outputs[0]
    if not torch.is_floating_point(first):
        raise PipelineError(f"model={cfg.model.name} returns {str(first.dtype).replace('torch.', '')} values "
                            f"(shape {list(first.shape)}); model.output={cfg.model.output} needs floating-point "
                            "scores or values, which training differentiates and parity compares.",
                            "Return the raw float output (class scores, probabilities or values) from model.net; "
                            "take argmax or thresholds outside the network.")
    return first


def _non_string_key(out):
    """The first key of a returned dict (at any depth) that is not a string, or None."""
    if isinstance(out, dict):
        for key, value in out.items():
            if not isinstance(key, str):
                return key
            found = _non_string_key(value)
            if found is not None:
                return found
    elif isinstance(out, list | tuple):
        for value in out:
            found = _non_string_key(value)
            if found is not None:
                return found
    return None


def _describe(out) -> str:
    if isinstance(out, list | tuple | dict) and out:
        items = out.values() if isinstance(out, dict) else out
        return f"a {type(out).__name__} of {', '.join(sorted({type(v).__name__ for v in items}))}"
    if isinstance(out, list | tuple | dict):
        return f"an empty {type(out).__name__}"
    return "None" if out is None else f"a {type(out).__name__}"


def _check_finite(cfg, out: torch.Tensor) -> None:
    if torch.isfinite(out).all():
        return
    bad = int((~torch.isfinite(out)).sum())
    weights = cfg.model.get("weights")
    source = (f" with model.weights={weights}" if weights and weights != "init" else " as its constructor builds it"
              if weights == "init" else "")
    raise PipelineError(f"model={cfg.model.name}{source} returns {bad} NaN or infinite value(s) out of "
                        f"{out.numel()} on the first batch of finite inputs.",
                        ("Check model.weights (NaN or inf in the file?) and model.net's forward (log of 0, division by "
                         "0, ...)." if weights and weights != "init" else
                         "Check model.net's forward (log of 0, division by 0, ...) and its initialisation."))


def check_finite_outputs(cfg, outputs: dict, where: str) -> None:
    """The network's outputs on a whole split (``where``): a NaN or inf there is counted by the metric as a
    prediction, and matches the same NaN in every runtime, so parity would compare nothing at those samples."""
    import numpy as np

    for name, values in outputs.items():
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all():
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1) if values.ndim else np.array([True])
        raise PipelineError(f"model={cfg.model.name} returns NaN or infinite values for {int(bad.sum())} of "
                            f"{len(bad)} {where} samples (output {name!r}, first at sample "
                            f"{int(np.flatnonzero(bad)[0])}): its metric and parity would not mean anything there.",
                            "Fix model.net's forward for those inputs (a log or sqrt of a negative value, a division "
                            "by 0, an overflow) or its weights (model.weights).")


def check_output(cfg, kind: str, out: torch.Tensor, y: torch.Tensor, dataset: str,
                 all_labels: torch.Tensor | None = None) -> None:
    """Does what ``model.net`` returns mean what ``model.output`` says, for these targets?"""
    shape = list(out.shape)
    classes = not torch.is_floating_point(y)
    per_sample = out.numel() == len(y)
    if kind == "value":
        if classes:
            flags = " (multi_label: a logit per class, for these 0/1 flags per class)" if y.dim() == 2 else ""
            raise PipelineError(
                f"model.output=value trains a regression (MSE), but dataset={dataset} has class labels.",
                "Set model.output to what model.net returns: log_probs (log_softmax), logits (class scores), "
                f"probability (one sigmoid output, two classes) or multi_label{flags}.")
        if out.numel() != y.numel():  # one value per sample, or as many as each sample's target holds
            wanted = [len(y), *y.shape[1:]] if y.dim() > 1 else [len(y), 1]
            raise PipelineError(f"model.output=value needs {wanted[1:] if y.dim() > 1 else 'one value'} per sample "
                                f"({wanted}, the targets' shape), but model.net returns {shape}.",
                                f"Make model.net return {wanted} for dataset={dataset}, or {model_hint(cfg)}.")
        return
    if kind == "multi_label":
        _check_multi_label(cfg, out, all_labels if all_labels is not None else y, dataset)
        return
    if not classes:
        raise PipelineError(f"model.output={kind} is for classification, but dataset={dataset} has real-valued "
                            "targets.",
                            "Set model.output=value for a regression.")
    if kind == "probability":
        if not per_sample:
            raise PipelineError(
                f"model.output=probability needs one probability per sample ([N, 1]), but model.net returns {shape}.",
                "For one score per class set model.output=logits (raw scores) or log_probs (log_softmax).")
        labels = all_labels if all_labels is not None else y
        if labels.max() > 1 or labels.min() < 0:
            raise PipelineError(f"model.output=probability is for two classes, but dataset={dataset} has labels "
                                f"from {int(labels.min())} to {int(labels.max())}.",
                                "Set model.output=logits or log_probs.")
        if out.min() < 0 or out.max() > 1:
            raise PipelineError(f"model.output=probability needs values in [0, 1] (a sigmoid), but model.net returns "
                                f"values from {float(out.min()):.3g} to {float(out.max()):.3g}.",
                                "End model.net with a sigmoid, or pick the model.output that matches it.")
        return
    if kind in ("logits", "log_probs") and out.dim() == 2 and y.dim() == 2 and bool(((y == 0) | (y == 1)).all()):
        raise PipelineError(f"model.output={kind} takes one class per sample, but dataset={dataset} has 0/1 flags per "
                            f"class ({list(y.shape)}: any number of classes per sample).",
                            "Set model.output=multi_label (a logit per class, binary cross-entropy each).")
    axis = tasks.task(kind).class_axis  # where the class scores are: [N, C, ...] or, per token, [N, ..., C]
    if out.dim() < 2 or out.shape[axis] < 2:
        raise PipelineError(f"model.output={kind} needs one score per class ([N, classes]), but model.net returns "
                            f"{shape}.", "For one sigmoid output per sample set model.output=probability.")
    labels = all_labels if all_labels is not None else y
    if labels.min() < 0:
        raise PipelineError(f"dataset={dataset} has a negative class label ({int(labels.min())}); class labels "
                            "are 0..classes-1.", "Fix the labels in the data.")
    classes_in_data = int(labels.max()) + 1
    if out.shape[axis] < classes_in_data:
        raise PipelineError(f"model.net returns {out.shape[axis]} class scores per sample, but dataset={dataset} has "
                            f"{classes_in_data} classes.",
                            f"Set the model's number of classes (e.g. model.net.num_classes={classes_in_data}), "
                            f"or {model_hint(cfg)}.")
    if kind == "log_probs":
        totals = out.double().exp().sum(dim=1)
        if not torch.allclose(totals, torch.ones_like(totals), atol=1e-3):
            raise PipelineError(
                "model.output=log_probs needs log-probabilities (log_softmax: exp sums to 1 per sample), "
                f"but model.net's outputs do not (exp sums to {float(totals[0]):.3g}); NLL on raw scores diverges.",
                "Set model.output=logits for raw class scores, or end model.net with log_softmax.")


def _check_multi_label(cfg, out: torch.Tensor, labels: torch.Tensor, dataset: str) -> None:
    """Targets of 0/1 per class [N, C], and one score per class from the network."""
    flags = labels.dim() == 2 and bool(((labels == 0) | (labels == 1)).all())
    if not flags:
        span = f"values from {float(labels.min()):g} to {float(labels.max()):g}" if labels.numel() else "no values"
        raise PipelineError(f"model.output=multi_label needs targets of 0/1 per class ([N, classes]), but "
                            f"dataset={dataset} has targets of shape {list(labels.shape)} with {span}.",
                            "Save the targets as [N, classes] of 0 and 1, or set model.output=logits for one class "
                            "per sample.")
    if list(out.shape[1:]) != list(labels.shape[1:]):
        raise PipelineError(f"model.output=multi_label needs one score per class ([N, {labels.shape[1]}]), but "
                            f"model.net returns {list(out.shape)}.",
                            f"Set the model's number of classes (e.g. model.net.num_classes={labels.shape[1]}), or "
                            f"{model_hint(cfg)}.")


def _check_loss(cfg, kind: str, out: torch.Tensor, y: torch.Tensor, dataset: str, targets: torch.Tensor) -> None:
    try:
        loss = tasks.loss(kind, out, y)
    except Exception as exc:
        raise PipelineError(
            f"model={cfg.model.name} (model.output={kind}, returns {list(out.shape)}) does not fit dataset={dataset}'s "
            f"targets (shape {list(y.shape)}, {_describe_targets(targets)}): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            f"Make model.net's output match the targets (e.g. its number of classes), or {model_hint(cfg)}.") \
            from exc
    if not torch.isfinite(loss):
        raise PipelineError(f"The loss of the first batch is {float(loss)} for model={cfg.model.name} "
                            f"(model.output={kind}) on dataset={dataset}.",
                            "Check that model.output matches what model.net returns, and the data's values.")


def _describe_targets(y: torch.Tensor) -> str:
    if torch.is_floating_point(y):
        return "real values"
    return f"class labels {int(y.min())}..{int(y.max())}"
