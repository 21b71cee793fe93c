"""What a network's output means: it picks the training loss, the predictions and the metric.

``output`` in ``conf/model/*.yaml`` is one of:
- ``log_probs``: class log-probabilities [N, C] (NLL loss, accuracy)
- ``logits``: class scores [N, C] (cross-entropy loss, accuracy)
- ``probability``: one sigmoid probability per sample [N, 1] (BCE loss, accuracy at 0.5)
- ``value``: a regression value [N, 1] (MSE loss, MSE/MAE)
"""
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.schema import OutputKind

OUTPUT_KINDS = tuple(kind.value for kind in OutputKind)


def check_output_kind(kind: str) -> str:
    """The kind as a plain string (the schema's Enum already refuses unknown kinds from the config)."""
    if kind not in OUTPUT_KINDS:
        raise PipelineError(
            f"model.output={kind} is not a known output kind.",
            f"Use one of: {', '.join(OUTPUT_KINDS)}.",
        )
    return str(kind)


def is_classifier(kind: str) -> bool:
    return kind != "value"


def metric_name(kind: str) -> str:
    return "test_accuracy" if is_classifier(kind) else "test_mse"


def metric_names(kind: str) -> tuple[str, ...]:
    """Every metric report.json ``metrics`` holds for this output kind (see ``evaluate``)."""
    return ("test_accuracy",) if is_classifier(kind) else ("test_mse", "test_mae")


def loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if kind == "log_probs":
        return F.nll_loss(outputs, targets)
    if kind == "logits":
        return F.cross_entropy(outputs, targets)
    # Targets in the output's float type: a network that computes in float64 trains as one in float32.
    if kind == "probability":
        if not torch.isfinite(outputs).all():  # BCE raises on them ("between 0 and 1"): a NaN loss, like the others
            return (outputs * float("nan")).mean()
        return F.binary_cross_entropy(outputs.reshape(-1), targets.to(outputs.dtype).reshape(-1))
    return F.mse_loss(outputs.reshape(-1), targets.to(outputs.dtype).reshape(-1))


def predictions(kind: str, outputs: np.ndarray) -> np.ndarray | None:
    """Class labels for classifiers, None for regressors (top-1 means nothing there)."""
    if kind == "probability":
        return (outputs.reshape(-1) > 0.5).astype(np.int64)
    if kind in ("log_probs", "logits"):
        return outputs.argmax(axis=1)
    return None


def evaluate(kind: str, outputs: np.ndarray, targets: np.ndarray, inverse=None) -> dict:
    """Task metrics from raw outputs; ``inverse`` maps regression values back to original units."""
    outputs = np.asarray(outputs)
    targets = np.asarray(targets)
    labels = predictions(kind, outputs)
    if labels is not None:
        return {"test_accuracy": float((labels == targets.reshape(-1)).mean())}
    values, truth = outputs.reshape(-1), targets.reshape(-1)
    if inverse is not None:
        values, truth = inverse(values), inverse(truth)
    err = values - truth
    return {"test_mse": float(np.mean(err**2)), "test_mae": float(np.mean(np.abs(err)))}


def training_metric(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Accuracy for classifiers, MSE (scaled units) for regressors: logged every epoch."""
    if kind == "probability":
        return ((outputs.reshape(-1) > 0.5).long() == targets.reshape(-1)).float().mean()
    if kind in ("log_probs", "logits"):
        return (outputs.argmax(dim=1) == targets).float().mean()
    return F.mse_loss(outputs.reshape(-1), targets.float().reshape(-1))
