"""How parity judges a quantized (or half-precision) target: by what matters for it.

Not by ``allclose``: int8 outputs differ from float ones by design. Instead (``parity.quantized``):
the task metric's change against PyTorch (classifiers: accuracy drop in points; regressors: MSE
increase, relative) and top-1 agreement. Its max abs error is reported, not gating. Its size is
compared with its float32 twin (the float TFLite model, or the ONNX model). A full-integer TFLite
model that fails names the layers that lose most (from the convert stage's QuantizationDebugger).
"""
from pipeline import tasks


def judge(ctx, entry: dict, target) -> None:
    """Adds ``metric_delta``, ``bytes``, ``size_ratio``, ``judgement`` and sets ``in_tolerance``."""
    limits = ctx.cfg.parity.quantized
    entry["quantized"] = True
    entry.update(_size(ctx, target))
    if entry.get("error"):
        return
    reference = ctx.report.data["reference"].get("metric")
    metric = entry.get("metric")
    entry["metric_delta"] = None if metric is None or reference is None else metric - reference
    problems = []
    if tasks.is_classifier(ctx.output_kind):
        drop = None if entry["metric_delta"] is None else -entry["metric_delta"]
        if drop is not None and drop > limits.max_accuracy_drop:
            problems.append(f"accuracy {metric:.4f} vs PyTorch's {reference:.4f}: a drop of {100 * drop:.2f} points "
                            f"(at most {100 * limits.max_accuracy_drop:.2f} allowed)")
        agreement = entry.get("top1_agreement")
        if agreement is not None and agreement < limits.min_top1_agreement:
            problems.append(f"top-1 agreement {agreement:.4f} (at least {limits.min_top1_agreement} needed)")
    elif metric is not None and reference:
        increase = metric / reference - 1
        entry["metric_change"] = increase
        if increase > limits.max_mse_increase:
            problems.append(f"test MSE {metric:.4g} vs PyTorch's {reference:.4g}: {100 * increase:.1f} % higher "
                            f"(at most {100 * limits.max_mse_increase:.0f} % allowed)")
    worst = ctx.report.data["targets"].get(entry["runtime"], {}).get("worst_layers")
    if problems and worst:
        nodes = [layer["node"] for layer in worst[:2]]
        named = ", ".join(f"{layer['node']} ({layer['op']})" for layer in worst[:3])
        problems.append(f"the layers that lose most: {named}; keep them in float with "
                        f"export.{entry['runtime']}.float_fallback=[{','.join(nodes)}]")
    entry["in_tolerance"] = not problems
    entry["judgement"] = "; ".join(problems) if problems else "within parity.quantized"


def _size(ctx, target) -> dict:
    path = ctx.converted.get(target.name)
    if path is None:
        return {}
    from pipeline.report import size_of

    twin = ctx.onnx_path if target.float_twin == "onnx" else ctx.converted.get(target.float_twin)
    size = size_of(path)
    if twin is None or not twin.exists():
        return {"bytes": size}
    return {"bytes": size, "size_ratio": size / size_of(twin), "size_ratio_to": twin.name}
