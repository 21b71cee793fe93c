"""What a network's output means, one ``Task`` per output kind: it picks the training loss, the predictions and
the metric. ``output`` in ``conf/model/*.yaml`` names one (the schema's ``OutputKind`` is made from these):
- ``log_probs``: class log-probabilities [N, C] (NLL loss, accuracy)
- ``logits``: class scores [N, C] (cross-entropy loss, accuracy)
- ``probability``: one sigmoid probability per sample [N, 1] (BCE loss, accuracy at 0.5)
- ``value``: a regression value [N, 1] (MSE loss, MSE/MAE)
- ``token_logits``: class scores along the last axis [N, ..., C] (token classification, a language model's
  logits per position: cross-entropy, accuracy per position)
- ``multi_label``: one score (logit) per class [N, C], any number of classes per sample, targets 0/1 [N, C]
  (binary cross-entropy per class; accuracy per label, exact match per sample, micro F1)
torch is imported where a loss is computed: the schema reads the kinds at start-up.
"""
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError
from pipeline.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    loss: Callable  # (outputs, targets) -> a scalar tensor
    labels: Callable[[np.ndarray], np.ndarray] | None = None  # class labels from outputs; None: a regressor
    class_axis: int = 1  # where the class scores are (top-1 is taken along it)
    # Metrics beyond test_accuracy: (predicted labels, targets) -> {name: value}, and their names.
    extra_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None
    extra_metric_names: tuple[str, ...] = ()

    @property
    def classifier(self) -> bool:
        return self.labels is not None

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric report.json ``metrics`` holds for it (the first is the task metric)."""
        return ("test_accuracy", *self.extra_metric_names) if self.classifier else ("test_mse", "test_mae")

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray, inverse=None) -> dict:
        """Task metrics from raw outputs; ``inverse`` maps regression values back to original units."""
        outputs, targets = np.asarray(outputs), np.asarray(targets)
        if self.classifier:  # multi_label: the share of right labels (each class of each sample)
            predicted = self.labels(outputs)
            extra = self.extra_metrics(predicted, targets) if self.extra_metrics else {}
            return {"test_accuracy": float((predicted.reshape(-1) == targets.reshape(-1)).mean()), **extra}
        values, truth = outputs.reshape(-1), targets.reshape(-1)
        if inverse is not None:
            values, truth = inverse(values), inverse(truth)
        err = values - truth
        return {"test_mse": float(np.mean(err**2)), "test_mae": float(np.mean(np.abs(err)))}

    def training_metric(self, outputs, targets):
        """Accuracy for classifiers, MSE (scaled units) for regressors: logged every epoch."""
        import torch.nn.functional as F

        if self.classifier:
            if self.name == "probability":
                predicted = (outputs.reshape(-1) > 0.5).long()
            elif self.name == "multi_label":
                predicted = (outputs > 0).long().reshape(-1)
            else:
                predicted = outputs.argmax(dim=self.class_axis).reshape(-1)
            return (predicted == targets.reshape(-1)).float().mean()
        return F.mse_loss(outputs.reshape(-1), targets.float().reshape(-1))


def _nll(outputs, targets):
    import torch.nn.functional as F

    return F.nll_loss(outputs, targets)


def _cross_entropy(outputs, targets):
    import torch.nn.functional as F

    return F.cross_entropy(outputs, targets)


# Targets in the output's float type: a network that computes in float64 trains as one in float32.
def _binary_cross_entropy(outputs, targets):
    import torch
    import torch.nn.functional as F

    if not torch.isfinite(outputs).all():  # BCE raises on them ("between 0 and 1"): a NaN loss, like the others
        return (outputs * float("nan")).mean()
    return F.binary_cross_entropy(outputs.reshape(-1), targets.to(outputs.dtype).reshape(-1))


def _mse(outputs, targets):
    import torch.nn.functional as F

    return F.mse_loss(outputs.reshape(-1), targets.to(outputs.dtype).reshape(-1))


def _token_cross_entropy(outputs, targets):
    import torch.nn.functional as F

    return F.cross_entropy(outputs.movedim(-1, 1), targets)  # torch takes the classes on axis 1


def _binary_cross_entropy_per_class(outputs, targets):
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype).reshape(outputs.shape))


def _positive_scores(outputs: np.ndarray) -> np.ndarray:
    """multi_label: the classes whose score is above 0 (probability above 0.5), as 0/1 [N, C]."""
    return (outputs > 0).astype(np.int64)


def _multi_label_metrics(predicted: np.ndarray, targets: np.ndarray) -> dict:
    predicted, targets = predicted.reshape(len(predicted), -1), targets.reshape(len(targets), -1).astype(np.int64)
    true_positives = float((predicted & targets).sum())
    called, present = float(predicted.sum()), float(targets.sum())
    return {"test_exact_match": float((predicted == targets).all(axis=1).mean()),
            "test_f1_micro": 2 * true_positives / (called + present) if called + present else 1.0}


def _argmax(outputs: np.ndarray) -> np.ndarray:
    return outputs.argmax(axis=1)


def _argmax_last(outputs: np.ndarray) -> np.ndarray:
    return outputs.argmax(axis=-1)


def _above_half(outputs: np.ndarray) -> np.ndarray:
    return (outputs.reshape(-1) > 0.5).astype(np.int64)


TASKS: Registry[Task] = Registry("output kind")
for _task in (Task("log_probs", "class log-probabilities [N, C]: NLL loss, accuracy", _nll, _argmax),
              Task("logits", "class scores [N, C]: cross-entropy, accuracy", _cross_entropy, _argmax),
              Task("probability", "one sigmoid probability per sample [N, 1]: BCE, accuracy at 0.5",
                   _binary_cross_entropy, _above_half),
              Task("value", "one regression value per sample [N, 1]: MSE, MSE/MAE in original units", _mse),
              Task("token_logits", "class scores along the last axis [N, ..., C]: cross-entropy, accuracy per "
                   "position", _token_cross_entropy, _argmax_last, class_axis=-1),
              Task("multi_label", "one logit per class [N, C], any number of classes per sample (targets 0/1 "
                   "[N, C]): binary cross-entropy per class, accuracy per label, exact match, micro F1",
                   _binary_cross_entropy_per_class, _positive_scores, extra_metrics=_multi_label_metrics,
                   extra_metric_names=("test_exact_match", "test_f1_micro"))):
    TASKS.add(_task)
OUTPUT_KINDS = tuple(TASKS)


def task(kind: str) -> Task:
    return TASKS[str(kind)]


def check_output_kind(kind: str) -> str:
    """The kind as a plain string (the schema's Enum already refuses unknown kinds from the config)."""
    if kind not in TASKS:
        raise PipelineError(f"model.output={kind} is not a known output kind.",
                            f"Use one of: {', '.join(OUTPUT_KINDS)}.")
    return str(kind)


# The task's functions by kind name, as the stages call them.
def is_classifier(kind: str) -> bool:
    return task(kind).classifier


def metric_name(kind: str) -> str:
    return task(kind).metric_names[0]


def metric_names(kind: str) -> tuple[str, ...]:
    return task(kind).metric_names


def loss(kind: str, outputs, targets):
    return task(kind).loss(outputs, targets)


def predictions(kind: str, outputs: np.ndarray) -> np.ndarray | None:
    """Class labels for classifiers, None for regressors (top-1 means nothing there)."""
    labels = task(kind).labels
    return None if labels is None else labels(outputs)


def evaluate(kind: str, outputs: np.ndarray, targets: np.ndarray, inverse=None) -> dict:
    return task(kind).evaluate(outputs, targets, inverse)


def training_metric(kind: str, outputs, targets):
    return task(kind).training_metric(outputs, targets)
