"""Before any work: does the network take the dataset's inputs, and does its output fit ``model.output``
and the labels? One forward pass on two held-out samples answers it, so that a mismatch is a clear
error naming the key to change, not a traceback deep in training or a silently meaningless metric.
"""
import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.runtimes.torch_runtime import flatten_outputs

LOG_PROB_TOLERANCE = 1e-3


def check_model_fits_data(ctx) -> torch.nn.Module:
    """Raises a PipelineError naming the key to change; returns the network it built."""
    net = ctx.initial_net()
    x, y = ctx.data.splits.test
    sample = {name: value[:2] for name, value in x.items()} if isinstance(x, dict) else x[:2]
    target = ctx.cfg.model.net.get("_target_")
    shapes = {n: list(v.shape[1:]) for n, v in sample.items()} if isinstance(sample, dict) else list(sample.shape[1:])
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            out = net(**sample) if isinstance(sample, dict) else net(sample)
        first = flatten_outputs(out)[0]
    except Exception as exc:  # noqa: BLE001 - any error here means the model does not fit the data
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"model.net ({target}) cannot take this dataset's inputs (one sample: {shapes}): {message}",
            "Pick a model= made for this dataset=, or set the model's size arguments (model.net.*) to fit it.",
        ) from exc
    finally:
        net.train(was_training)
    if y is not None:
        _check_output(ctx.cfg.model.output, first.float(), y[:len(first)], y)
    return net


def _check_output(kind: str, out: torch.Tensor, labels: torch.Tensor, all_labels: torch.Tensor) -> None:
    per_sample = out[0].numel() if out.ndim else 1
    classes = not torch.is_floating_point(all_labels)
    if kind in ("log_probs", "logits"):
        if not classes:
            raise PipelineError(f"model.output={kind} needs class labels; this dataset's targets are real values.",
                                "Use model.output=value (regression) for this dataset.")
        count = int(all_labels.max()) + 1
        width = out.shape[1] if out.ndim >= 2 else 1
        if width < count:
            binary = " A single sigmoid output is model.output=probability." if width == 1 and count == 2 else ""
            raise PipelineError(f"The model outputs {width} class score(s) per sample; the dataset has {count} "
                                "classes.",
                                f"Set the model's number of classes to {count} (e.g. model.net.num_classes={count}), "
                                f"or pick the model made for this dataset.{binary}")
        if kind == "log_probs" and out.ndim == 2:
            total = torch.logsumexp(out, dim=1)
            if not torch.allclose(total, torch.zeros_like(total), atol=LOG_PROB_TOLERANCE):
                raise PipelineError("model.output=log_probs, but the model's outputs are not log-probabilities "
                                    f"(their logsumexp is {float(total[0]):.3g}, not 0).",
                                    "Use model.output=logits for raw class scores.")
    elif kind == "probability":
        if per_sample != 1:
            raise PipelineError(f"model.output=probability needs one value per sample; the model gives {per_sample}.",
                                "Use model.output=logits for several class scores.")
        if classes and int(all_labels.max()) > 1:
            raise PipelineError(f"model.output=probability is binary; the dataset has {int(all_labels.max()) + 1} "
                                "classes.",
                                "Use model.output=logits with one score per class.")
        if float(out.min()) < 0 or float(out.max()) > 1:
            raise PipelineError(f"model.output=probability, but the model returns values in "
                                f"[{float(out.min()):.3g}, {float(out.max()):.3g}], not probabilities in [0, 1].",
                                "End the model with a sigmoid, or use model.output=logits.")
    elif kind == "value":
        if classes:
            raise PipelineError("model.output=value (regression) on a dataset of class labels would train on class "
                                "numbers as if they were quantities.",
                                "Use model.output=logits (or log_probs, probability) for a classifier.")
        expected = int(np.prod(labels.shape[1:] or (1,)))
        if per_sample != expected:
            raise PipelineError(f"The model gives {per_sample} value(s) per sample; the dataset's targets have "
                                f"{expected}.", "Match the model's output size to the targets.")
