"""report.md: the run as people read it (GitHub or a terminal), built from report.json and the config."""
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.atomic import write_with
from pipeline.quantized import refusal


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.4f}"
    return "-" if value is None else str(value)


def _count(value) -> str:
    return "?" if value is None else f"{value:,}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)


def render(report: dict, cfg: DictConfig, plots: list[Path]) -> str:
    lines = [f"# Run report: {report['model']['name']} — {report['status']}", ""]
    targets = [t for t, on in (cfg.export.get("targets") or {}).items() if on]
    lines += ["## Config", "", *_table(["key", "value"], [
        ["model", f"{cfg.model.name} ({_count(report['model']['parameters'])} trainable parameters)"],
        ["dataset", cfg.dataset._target_.rsplit(".", 1)[-1]],
        ["trainer", f"max_epochs={cfg.trainer.max_epochs}, accelerator={cfg.trainer.accelerator}"],
        ["optimizer", OmegaConf.to_yaml(cfg.optimizer).strip().replace("\n", ", ")],
        ["export", f"opset {cfg.export.opset}; targets: {', '.join(targets) or 'onnx only'}"],
        ["seed", cfg.seed], ["from_run", cfg.get("from_run")],
    ]), ""]
    lines += data_section(report.get("data") or {})
    lines += ["## Stages", "", *_table(["stage", "status", "seconds", "reason"], [
        [name, s["status"], s["seconds"], s.get("reason", "")] for name, s in report["stages"].items()]), ""]
    if report["metrics"]:
        metrics = list(report["metrics"].items())
        lines += ["## Metrics (PyTorch, test split)", "", *_table(["metric", "value"], metrics), ""]
    if report["parity"]:
        rtol, atol = cfg.parity.rtol, cfg.parity.atol
        lines += [f"## Parity vs PyTorch (rtol={rtol}, atol={atol})", "", *_table(
            ["runtime", "samples", "max abs err", "max rel err", "allclose", "top-1 agreement", "metric",
             "latency b1 (ms)", "throughput (/s)"],
            [[e["runtime"], e["samples"], e["max_abs_err"], e["max_rel_err"], e["allclose"], e["top1_agreement"],
              e["metric"], e.get("latency_ms_batch1"), _rounded(e.get("throughput_per_s"))]
             for e in report["parity"]]), ""]
        failures = [f"- **{e['runtime']}**: {e['error']}" for e in report["parity"] if e.get("error")]
        lines += [*failures, ""] if failures else []
        ref = report.get("reference") or {}
        if ref:
            lines += [f"PyTorch itself: metric {_fmt(ref['metric'])}, latency b1 {_fmt(ref['latency_ms_batch1'])} ms, "
                      f"throughput {_fmt(_rounded(ref['throughput_per_s']))}/s.", ""]
        lines += noise_floor_section(ref.get("noise_floor"))
    lines += sizes_section(report)
    lines += quantized_section(report, cfg)
    diagnosed = [e for e in report["parity"] if e.get("divergence")]
    if diagnosed:
        lines += ["## Where parity drifts", "", *_table(
            ["runtime", "first diverging node", "op", "max abs err", "inputs ok", "reproduce"],
            [[e["runtime"], e["divergence"].get("node") or e["divergence"].get("error") or "-",
              e["divergence"].get("op_type"), e["divergence"].get("max_abs_err"), e["divergence"].get("inputs_ok"),
              f"`{e['divergence']['command']}`" if e["divergence"].get("command") else "-"] for e in diagnosed]), ""]
    if report["targets"]:
        lines += ["## Conversion targets", "", *_table(["target", "status", "backend", "input layout", "reason"], [
            [t, e["status"], e.get("backend"), e.get("input_layout"), e.get("reason", "")]
            for t, e in report["targets"].items()]), ""]
        tried = [f"- {t}: " + "; ".join(_attempt(a) for a in e.get("attempts", []))
                 for t, e in report["targets"].items() if len(e.get("attempts", [])) > 1 or e["status"] != "ok"]
        lines += ["Backends tried, in order:", "", *tried, ""] if tried else []
    if report["artifacts"]:
        lines += ["## Artifacts", "", *_table(["artifact", "path", "size", "how to load"], [
            [k, f"`{a['path']}`", _size(a["bytes"]), _load_hint(k, report)]
            for k, a in report["artifacts"].items()]), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def noise_floor_section(floor: dict | None) -> list[str]:
    """float32's own noise per output and the atol it allowed (``pipeline.compare``), or why it was not measured."""
    if not floor:
        return []
    if not floor.get("measured"):
        return [f"Noise floor: not applied ({floor.get('reason')}).", ""]
    shown = "; ".join(f"{name}: {_fmt(noise['max_abs_err'])} -> atol {_fmt(noise['atol'])}"
                      for name, noise in floor["outputs"].items())
    return [f"Noise floor (PyTorch float32 against float64, {floor['samples']} samples, x{floor['multiple']:g}): "
            f"{shown}.", ""]


def sizes_section(report: dict) -> list[str]:
    """Free axes (export.dynamic_axes): every runtime at the other sizes of parity.shapes."""
    free = {name: {axis: label for axis, label in axes.items() if axis != "0"}
            for name, axes in (report.get("export") or {}).get("dynamic_axes", {}).items()}
    free = {name: axes for name, axes in free.items() if axes}
    entries = [e for e in report["parity"] if e.get("sizes")]
    if not free or not entries:
        return []
    shapes = [", ".join(f"{n} {s}" for n, s in size["shapes"].items()) for size in entries[0]["sizes"]]
    described = "; ".join(f"{name} axes " + ", ".join(f"{a} ({label})" for a, label in axes.items())
                          for name, axes in free.items())
    rows = [[e["runtime"], *(("yes" if s["in_tolerance"] else "**no**") + f", {_fmt(s.get('max_abs_err'))}"
                             for s in e["sizes"])] for e in entries]
    return [f"## Other input sizes (free axes: {described})", "",
            *_table(["runtime", *(f"{shape}: in tolerance, max abs err" for shape in shapes)], rows), ""]


def _value_range(bounds) -> str | None:
    """[low, high] with 6 significant digits: the bounds were float32 ([-8.489999771118164, ...])."""
    if not bounds or len(bounds) != 2 or not all(isinstance(b, int | float) for b in bounds):
        return bounds
    return f"[{bounds[0]:.6g}, {bounds[1]:.6g}]"


def data_section(data: dict) -> list[str]:
    """What every artifact takes (raw values: the preprocessing is in the graph) and the classes it returns."""
    if not data.get("inputs"):
        return []
    rows = []
    for spec in data["inputs"]:
        columns = spec.get("columns")
        shown = ", ".join(columns[:8]) + (f" and {len(columns) - 8} more" if len(columns) > 8 else "") \
            if columns else "-"
        categories = spec.get("categories")
        rows.append([f"`{spec['name']}`", spec["shape"], spec["dtype"], spec.get("layout"),
                     _value_range(spec.get("value_range")), shown,
                     "; ".join(f"{c}: {len(v) - 1} + unknown (0)" for c, v in categories.items()) if categories
                     else "-"])
    lines = ["## Data: what the artifacts take", "",
             "Every artifact takes the data as stored (one sample's shape, without the batch axis); "
             + (f"the preprocessing ({data['preprocessing']['formula']}) is part of the exported graph."
                if data.get("preprocessing") else "no preprocessing is applied."), "",
             *_table(["input", "shape", "dtype", "layout", "value range", "columns (in order)", "categories (ids)"],
                     rows), ""]
    if data.get("classes"):
        shown = ", ".join(f"{i}: {name}" for i, name in enumerate(data["classes"][:50]))
        lines += [f"Classes by output index ({len(data['classes'])}; also in `labels.txt`): {shown}"
                  + (" ..." if len(data["classes"]) > 50 else ""), ""]
    if data.get("skipped_files"):
        lines += [f"Skipped as corrupt ({len(data['skipped_files'])}): "
                  + ", ".join(f"`{f}`" for f in data["skipped_files"][:10]), ""]
    if data.get("ignored_files"):
        lines += ["Left out of the image folder (not images of a kind read here): "
                  + ", ".join(f"{kind} ({n})" for kind, n in data["ignored_files"].items()), ""]
    if data.get("read_as", {}).get("detected"):
        read_as = data["read_as"]
        lines += [f"The file was read with separator {read_as['separator']!r}, decimal mark {read_as['decimal']!r} and "
                  f"encoding {read_as.get('encoding', 'utf-8')} ({', '.join(read_as['detected'])} found in the file).",
                  ""]
    scaling = data.get("target_scaling")
    if scaling and "columns" in scaling:  # several target columns: output i is column i
        lines += ["The artifacts return the targets scaled: " + "; ".join(
            f"`{column}` = `output[:, {i}] * {std:.6g} + {mean:.6g}`"
            for i, (column, mean, std) in enumerate(zip(scaling["columns"], scaling["mean"], scaling["std"],
                                                        strict=True))) + ".", ""]
    elif scaling:
        lines += [f"The artifacts return `{scaling['column']}` scaled: the value is `output * {scaling['std']:.6g} + "
                  f"{scaling['mean']:.6g}`.", ""]
    return lines


def quantized_section(report: dict, cfg: DictConfig) -> list[str]:
    """Quantized and half-precision targets: judged by the task metric (parity.quantized), with size and speed."""
    entries = [e for e in report["parity"] if e.get("quantized")]
    refused = [f"- {t}: refused: {refusal(e)}" for t, e in report["targets"].items() if e.get("status") == "refused"]
    if not entries:
        return [*refused, ""] if refused else []
    q = cfg.parity.quantized
    rows = []
    for e in entries:
        target = report["targets"].get(e["runtime"], {})
        regressor = e.get("top1_agreement") is None and e.get("metric_change") is not None
        change = (f"{100 * e['metric_change']:+.2f} % MSE" if regressor else
                  f"{100 * e['metric_delta']:+.2f} points" if e.get("metric_delta") is not None else "-")
        rows.append([e["runtime"], target.get("quantization"), e.get("metric"), change, e.get("top1_agreement"),
                     "yes" if e["in_tolerance"] else "**no**", _size(e["bytes"]) if e.get("bytes") else "-",
                     f"{100 * e['size_ratio']:.1f} % of {e.get('size_ratio_to') or 'float32'}"
                     if e.get("size_ratio") is not None else "-",
                     e.get("latency_ms_batch1"), _rounded(e.get("throughput_per_s")), e.get("max_abs_err")])
    lines = [f"## Quantized targets (judged by the task: accuracy drop <= {100 * q.max_accuracy_drop:g} points and "
             f"top-1 agreement >= {q.min_top1_agreement}, or MSE at most {100 * q.max_mse_increase:g} % higher)", "",
             *_table(["target", "quantization", "metric", "change vs PyTorch", "top-1 agreement", "in tolerance",
                      "size", "vs float32", "latency b1 (ms)", "throughput (/s)", "max abs err (not gating)"], rows),
             ""]
    for e in entries:
        target = report["targets"].get(e["runtime"], {})
        if not e["in_tolerance"]:
            lines.append(f"- **{e['runtime']}**: {e.get('error') or e.get('judgement')}")
        judged = {name: o for name, o in (e.get("outputs") or {}).items() if o.get("judgement")}
        if len(judged) > 1:  # every output's own verdict, the task's first
            each = "; ".join(f"`{name}` {'ok' if o['in_tolerance'] else '**no**'} ({o['judgement']})"
                             for name, o in judged.items())
            lines.append(f"- {e['runtime']}, each output: {each}")
        if target.get("worst_layers"):
            worst = ", ".join(f"`{layer['layer']}` ({layer['op']}, {_gain(layer)})"
                              for layer in target["worst_layers"][:5])
            lines.append(f"- {e['runtime']}: the layers that lose most (on {target.get('layers_measured_on')} inputs; "
                         f"share of the int8 output error gone when kept alone in float): {worst}")
        if target.get("float_fallback"):
            kept = ", ".join(f"`{name}`" for name in target["float_fallback"])
            lines.append(f"- {e['runtime']}: kept in float32 (float fallback): {kept}")
    return lines + refused + [""]


def _gain(layer: dict) -> str:
    gain = layer.get("output_gain")
    return f"relative RMSE {layer['relative_rmse']:.3g}" if gain is None else f"{100 * gain:.0f} %"


def _attempt(attempt: dict) -> str:
    reason = f" ({attempt['reason']})" if attempt.get("reason") else ""
    return f"{attempt['backend']} {attempt['status']}{reason}"


def _rounded(value):
    return None if value is None else round(value)


def _load_hint(key: str, report: dict) -> str:
    from pipeline.targets import load_hint

    hint = load_hint(key)
    target = report["targets"].get(key, {})
    layout = target.get("input_layout")
    text = f"{hint}; input layout **{layout}**" if layout else hint
    layouts = target.get("io_layouts")
    if layouts:  # every input's and output's layout (export.layout)
        each = ", ".join(f"`{name}` {value}" for name, value in layouts["inputs"].items())
        out = ", ".join(f"`{name}` {value}" for name, value in layouts["outputs"].items())
        text += f" (inputs: {each}; outputs: {out})"
    return text


def write(run_dir: Path, report: dict, cfg: DictConfig, plots: list[Path]) -> Path:
    path = Path(run_dir) / "report.md"
    write_with(path, lambda tmp: tmp.write_text(render(report, cfg, plots)))
    return path
