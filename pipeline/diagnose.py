"""Where a drifting runtime departs from the ONNX model: the first node whose output differs, and a
reproducer for that node alone.

For a runtime that fails parity (every runtime with ``parity.diagnose=true``, none with ``false``), the
backends that made its artifact convert the model again with every intermediate tensor exposed as an
extra output (keras3 from its own tensor map, onnx-tf from marked graph outputs; TFLite is converted
from that SavedModel as before). The copy runs on a few held-out samples, and its tensors, brought
back to the ONNX layout with the recorded axis orders, are compared in graph order with
onnxruntime's values for the same tensors. onnxruntime itself is compared with the ONNX reference
implementation (``onnx.reference``). The first tensor out of the parity tolerance names the node;
its subgraph and its (correct) inputs go to ``diagnose/<runtime>/`` with a command that converts and
runs that node alone. A node whose reproducer clears it (it converts right alone: its value in the whole
graph came from how the converter fused or placed it) is passed over for the next diverging one, up to
``REPRODUCED_CANDIDATES``; the divergence lists them (``cleared_by_reproducer``):

    python -m pipeline.diagnose <run dir>/diagnose/<runtime>
"""
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
DIAGNOSE_DIR = "diagnose"
MANIFEST = "manifest.json"


def run(ctx, entries: list[dict]) -> dict[str, list]:
    """Adds ``divergence`` to the parity entries to diagnose; returns error-by-depth curves per runtime."""
    mode = ctx.cfg.parity.get("diagnose")  # None: the runtimes that drift; True: all; False: none
    curves = {}
    for entry in entries:
        if mode is False or (mode is None and entry["in_tolerance"]) or not diagnosable(entry["runtime"]):
            continue  # a quantized target's losses are per layer by design: its report names the worst
        start = time.perf_counter()
        try:
            entry["divergence"], curves[entry["runtime"]] = localise(ctx, entry["runtime"])
        except Exception as exc:  # noqa: BLE001 - a diagnosis that fails must not hide the parity result
            entry["divergence"] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        entry["divergence"]["seconds"] = round(time.perf_counter() - start, 2)
    return curves


def diagnosable(runtime: str) -> bool:
    """onnxruntime (against the ONNX reference implementation) and the targets that declare it."""
    from pipeline.runtimes import ONNX_RUNTIME
    from pipeline.targets import TARGETS

    return runtime == ONNX_RUNTIME or (runtime in TARGETS and TARGETS[runtime].diagnosable)


def localise(ctx, runtime: str) -> tuple[dict, list[tuple[int, float]]]:
    import onnx

    from pipeline.converters.keras3.probe import intermediates

    model = onnx.load(str(ctx.onnx_path))
    settings = ctx.cfg.parity
    feeds = ctx.samples.held_out(int(settings.get("diagnose_samples", 4)))
    tensors = traced_tensors(model)
    onnx_values = {**feeds, **intermediates(model, feeds)}
    float64 = False
    if runtime == "onnxruntime":
        reference, actual = reference_values(model, feeds), onnx_values
    else:
        reference, actual = onnx_values, converted_values(ctx, runtime, [name for _, _, name in tensors], feeds)
    curve, compared, bad, first = _first_divergence(tensors, actual, reference, settings)
    if first is None and runtime == "onnxruntime":
        # onnxruntime computes every tensor as the float32 reference implementation does: its drift from
        # PyTorch is float32 rounding. The first node whose rounding exceeds the tolerance, against exact
        # (float64) arithmetic, is where it starts.
        try:
            exact = reference_values(model, feeds, float64=True)
        except Exception as exc:  # noqa: BLE001 - an op the float64 copy cannot run: keep the float32 result
            log.info("diagnose: no float64 reference (%s: %s)", type(exc).__name__, exc)
        else:
            curve, compared, bad, first = _first_divergence(tensors, actual, exact, settings)
            float64 = first is not None
    result = {"compared_nodes": len(compared), "samples": len(next(iter(feeds.values())))}
    if float64:
        result["against"] = "the ONNX reference implementation in float64 (float32 agrees within tolerance)"
    if first is None:
        return {**result, "node": None, "note": "every compared intermediate tensor is within tolerance: the "
                "drift comes from an uncompared tensor or from the outputs' handling"}, curve
    directory = ctx.run_dir / DIAGNOSE_DIR / runtime
    candidates = [(node, name, error) for _, node, name in tensors if name in bad
                  for error in [_difference(actual[name], reference[name], settings.rtol, settings.atol)[0]]]
    cleared, chosen = [], None
    for candidate in candidates[:REPRODUCED_CANDIDATES]:
        written = _write_for(ctx, model, runtime, candidate[0], onnx_values, directory, float64)
        if runtime == "onnxruntime" or _reproduces(directory):
            chosen = candidate, written
            break
        cleared.append(candidate[0].name)  # alone, the node converts right: its drift came from around it
    if chosen is None:  # none reproduces alone: the first, as measured in the whole graph
        chosen = first, _write_for(ctx, model, runtime, first[0], onnx_values, directory, float64)
    (node, name, error), (data_inputs, command) = chosen
    unchecked = [i for i in data_inputs if i not in compared and i not in feeds]
    extra = {"cleared_by_reproducer": cleared, "reproduced": node.name not in cleared} if cleared else {}
    return {**result, "node": node.name, "op_type": node.op_type, "output": name, "max_abs_err": error,
            "inputs_ok": not unchecked and not (set(data_inputs) & bad), "unchecked_inputs": unchecked,
            "reproducer": str(directory.relative_to(ctx.run_dir)), "command": command, **extra}, curve


# Diverging nodes whose reproducer is run before one is named: a node that converts right alone (its value
# in the whole graph differs from how the converter fused or placed it) is passed over for the next.
REPRODUCED_CANDIDATES = 3


def _write_for(ctx, model, runtime: str, node, onnx_values: dict, directory: Path, float64: bool):
    initializers = {x.name for x in model.graph.initializer}
    data_inputs = [i for i in node.input if i in onnx_values and i not in initializers]
    return data_inputs, write_reproducer(ctx, model, runtime, node, data_inputs, onnx_values, directory, float64)


def _reproduces(directory: Path) -> bool:
    """Whether the node alone drifts as in the whole graph (a reproducer that cannot run counts as one)."""
    try:
        return bool(reproduce(directory)["drift"])
    except Exception as exc:  # noqa: BLE001 - a subgraph the converter refuses alone still names its node
        log.info("diagnose: the reproducer in %s does not run (%s: %s)", directory, type(exc).__name__, exc)
        return True


def _first_divergence(tensors: list, actual: dict, reference: dict, settings) -> tuple[list, set, set, tuple | None]:
    """The error curve along the graph, the tensors compared, those out of tolerance, and the first of them."""
    curve, compared, bad, first = [], set(), set(), None
    for index, node, name in tensors:
        if name not in actual or name not in reference:
            continue
        error, close = _difference(actual[name], reference[name], settings.rtol, settings.atol)
        curve.append((index, error))
        compared.add(name)
        if not close:
            bad.add(name)
            first = first or (node, name, error)
    return curve, compared, bad, first


def _difference(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> tuple[float, bool]:
    if np.shape(actual) != np.shape(expected):
        return float("inf"), False
    if expected.dtype.kind not in "fc":
        return float(np.sum(actual != expected)), bool(np.array_equal(actual, expected))
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return float(diff.max(initial=0.0)), bool(np.allclose(actual, expected, rtol=rtol, atol=atol))


def traced_tensors(model) -> list[tuple[int, object, str]]:
    """(node index, node, output name) of every tensor computed from the input data, in graph order."""
    dependent = {i.name for i in model.graph.input} - {init.name for init in model.graph.initializer}
    tensors = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in ("Shape", "Size") or not dependent & set(node.input):
            continue
        for name in node.output:
            if name:
                dependent.add(name)
                tensors.append((index, node, name))
    return tensors


def reference_values(model, feeds: dict, float64: bool = False) -> dict[str, np.ndarray]:
    """Every tensor as the ONNX reference implementation (NumPy) computes it; ``float64``: on a copy of the
    model whose float32 tensors are float64 (exact arithmetic, as far as float32 results go)."""
    from onnx.reference import ReferenceEvaluator

    if float64:
        model = as_float64(model)
        feeds = {name: value.astype(np.float64) if value.dtype == np.float32 else value
                 for name, value in feeds.items()}
    return {**feeds, **ReferenceEvaluator(model).run(None, feeds, intermediate=True)}


def as_float64(model):
    """A copy of ``model`` computing in float64 where it computes in float32: initializers, constants,
    casts and declared types."""
    import onnx
    from onnx import TensorProto, numpy_helper

    def widened(tensor):
        if tensor.data_type != TensorProto.FLOAT:
            return tensor
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for index, initializer in enumerate(graph.initializer):
        graph.initializer[index].CopyFrom(widened(initializer))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    for node in graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            raise ValueError(f"{node.op_type} subgraphs are not widened")
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                attribute.t.CopyFrom(widened(attribute.t))
            elif node.op_type in ("Cast", "CastLike", "RandomNormal", "RandomUniform", "EyeLike") and \
                    attribute.name in ("to", "dtype") and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
    return copy


def converted_values(ctx, target: str, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    """The tensors ``names`` as the target's runtime computes them, from a copy of its artifact made by
    the same backends with those tensors exposed as outputs."""
    converted = ctx.results.converted[target]
    work = Path(tempfile.mkdtemp(prefix=".diagnose.", dir=ctx.run_dir))
    try:
        backends = {t: c.backend for t, c in ctx.results.converted.items()}
        path, info = rebuild(ctx.onnx_path, target, backends, names, feeds, work)
        exposed = artifact_outputs(target, path, info)
        return run_artifact(target, path, info, ctx.input_names, exposed, feeds, converted.input_perms)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rebuild(onnx_path: Path, target: str, backends: dict, names: list[str], feeds: dict, work: Path,
            options: dict | None = None) -> tuple[Path, dict]:
    """Convert ``onnx_path`` to ``target`` with the named backends (and what they convert from)."""
    from pipeline.converters import ConvertJob, backends_for, prepare_tensorflow
    from pipeline.errors import PipelineError
    from pipeline.targets import TARGETS

    prepare_tensorflow()
    chosen = next((b for b in backends_for(target) if b.name == backends.get(target)), None)
    if chosen is None:
        raise PipelineError(f"No backend recorded for the {target} target.", "Re-run the convert stage.")
    artifacts = {}
    if chosen.needs:
        artifacts[chosen.needs] = rebuild(onnx_path, chosen.needs, backends, names, feeds, work, options)[0]
    job = ConvertJob(target, Path(onnx_path), work / TARGETS[target].artifact, feeds, artifacts,
                     dict((options or {}).get(target, {})), {}, list(names))
    return job.out_path, chosen.convert(job) or {}


def artifact_outputs(target: str, path: Path, info: dict) -> list[str]:
    """The output names a converted artifact has, in its own order."""
    from pipeline.runtimes import RUNTIMES
    from pipeline.targets import TARGETS

    runtime = RUNTIMES[TARGETS[target].runtime]
    if "output_perms" in info or runtime.output_names is None:
        return list(info.get("output_perms") or {})
    return runtime.output_names(path)


def run_artifact(target: str, path: Path, info: dict, inputs: list[str], outputs: list[str], feeds: dict,
                 input_perms=None) -> dict[str, np.ndarray]:
    from pipeline import runtimes
    from pipeline.targets import TARGETS

    adapter = runtimes.load(TARGETS[target].runtime, path, inputs, outputs,
                            input_perms=info.get("input_perms", input_perms), output_perms=info.get("output_perms"))
    return adapter.predict(feeds)


def write_reproducer(ctx, model, runtime: str, node, data_inputs: list[str], values: dict, directory: Path,
                     float64: bool = False) -> str:
    """The node's subgraph (it and the constants it reads), its correct inputs, and how to re-run it."""
    import onnx
    from onnx.utils import Extractor

    from pipeline.atomic import write_json

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    outputs = [name for name in node.output if name]
    subgraph = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(data_inputs, outputs)
    # The converters take axis 0 of every input for the batch (keras3 probes two batch sizes): an input
    # whose axis 0 is something else (a [T, T] attention mask, a [N * heads, T, T] score) goes in as a
    # constant; the reproducer runs these samples only.
    samples = len(next(iter(values[i.name] for i in model.graph.input if i.name in values)))
    batched = [name for name in data_inputs if np.ndim(values[name]) and len(values[name]) == samples]
    constants = [name for name in data_inputs if name not in batched]
    if constants:
        from onnx import numpy_helper

        kept = [value for value in subgraph.graph.input if value.name not in constants]
        del subgraph.graph.input[:]
        subgraph.graph.input.extend(kept)
        subgraph.graph.initializer.extend(numpy_helper.from_array(np.asarray(values[name]), name)
                                          for name in constants)
    onnx.save(subgraph, str(directory / "subgraph.onnx"))
    files = {}
    for index, name in enumerate(batched):
        files[name] = f"input_{index}.npy"
        np.save(directory / files[name], values[name])
    backends = {t: c.backend for t, c in ctx.results.converted.items()}
    write_json(directory / MANIFEST, {
        "runtime": runtime, "node": node.name, "op_type": node.op_type, "inputs": files, "constants": constants,
        "outputs": outputs,
        "backends": backends, "float64_reference": float64,
        "rtol": float(ctx.cfg.parity.rtol), "atol": float(ctx.cfg.parity.atol),
        "options": {t: dict(ctx.cfg.export.get(t) or {}) for t in backends}})
    return f"python -m pipeline.diagnose {directory}"


def reproduce(directory: Path) -> dict:
    """Convert and run the saved subgraph alone; compare it as parity did. Returns the comparison."""
    import onnx

    from pipeline.converters.keras3.probe import intermediates

    directory = Path(directory)
    manifest = read_manifest(directory)
    model = onnx.load(str(_inside(directory, "subgraph.onnx", "subgraph.onnx")), load_external_data=False)
    feeds = {name: _load_array(directory, file, f"inputs.{name}") for name, file in manifest["inputs"].items()}
    expected = {name: intermediates(model, feeds)[name] for name in manifest["outputs"]}
    runtime = manifest["runtime"]
    if runtime == "onnxruntime":
        exact = reference_values(model, feeds, float64=bool(manifest.get("float64_reference")))
        actual, expected = expected, {n: exact[n] for n in manifest["outputs"]}
    else:
        work = Path(tempfile.mkdtemp(prefix=".reproduce."))
        try:
            path, info = rebuild(directory / "subgraph.onnx", runtime, manifest["backends"], [], feeds, work,
                                 manifest.get("options"))
            actual = run_artifact(runtime, path, info, list(feeds), manifest["outputs"], feeds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    errors = {name: _difference(actual[name], expected[name], manifest["rtol"], manifest["atol"])
              for name in manifest["outputs"]}
    return {"node": manifest["node"], "op_type": manifest["op_type"], "runtime": runtime,
            "float64": bool(manifest.get("float64_reference")),
            "max_abs_err": max(e for e, _ in errors.values()), "drift": not all(ok for _, ok in errors.values())}


# --- a reproducer folder may come from elsewhere: its manifest is data, its files stay inside it ---

MANIFEST_KEYS = {"runtime": str, "node": str, "op_type": str, "inputs": dict, "outputs": list, "backends": dict,
                 "rtol": (int, float), "atol": (int, float)}


def _refuse(directory: Path, problem: str):
    from pipeline.errors import PipelineError

    raise PipelineError(f"{directory} is not a reproducer this pipeline wrote: {problem}.",
                        "Point python -m pipeline.diagnose at a <run dir>/diagnose/<runtime> folder written by a "
                        "parity run (parity.diagnose=true), unchanged.")


def read_manifest(directory: Path) -> dict:
    """manifest.json, checked: the keys and types written by ``write_reproducer``, a known runtime."""
    from pipeline.runtimes import ONNX_RUNTIME
    from pipeline.targets import TARGETS

    try:
        manifest = json.loads(_inside(directory, MANIFEST, MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        _refuse(directory, f"{MANIFEST} is unreadable ({type(exc).__name__}: {str(exc)[:200]})")
    if not isinstance(manifest, dict):
        _refuse(directory, f"{MANIFEST} holds a {type(manifest).__name__}, not an object")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            _refuse(directory, f"{MANIFEST} has no valid {key!r}")
    runtimes = [ONNX_RUNTIME, *TARGETS]
    if manifest["runtime"] not in runtimes:
        _refuse(directory, f"its runtime {manifest['runtime']!r} is not one of {', '.join(runtimes)}")
    if not all(isinstance(v, str) for v in [*manifest["inputs"].values(), *manifest["outputs"]]):
        _refuse(directory, f"{MANIFEST} inputs/outputs must name files and tensors")
    return manifest


def _inside(directory: Path, name: str, what: str) -> Path:
    """``directory/name``, refused if it leads out of ``directory`` (``..``, an absolute path, a link)."""
    folder = Path(os.path.realpath(directory))
    path = Path(os.path.realpath(directory / name))
    if folder not in path.parents:
        _refuse(directory, f"{what}={name} leads outside the folder")
    if not path.is_file():
        _refuse(directory, f"{what}={name} is not a file in it")
    return path


def _load_array(directory: Path, name: str, what: str) -> np.ndarray:
    """A saved input: plain numbers only (``allow_pickle=False``: a pickled .npy could run code)."""
    path = _inside(directory, name, what)
    if path.suffix != ".npy":
        _refuse(directory, f"{what}={name} is not a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        reason = "it holds Python objects, which are never unpickled" if "allow_pickle" in str(exc) else \
            f"{type(exc).__name__}: {str(exc)[:200]}"
        _refuse(directory, f"{what}={name} is not a NumPy array file ({reason})")


def _failed(message: str, hint: str) -> int:
    print(f"pipeline.diagnose failed: {message}\nHow to fix: {hint}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import PipelineError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / MANIFEST).is_file():
        print("usage: python -m pipeline.diagnose <run dir>/diagnose/<runtime>", file=sys.stderr)
        return 2
    try:
        result = reproduce(Path(args[0]))
    except PipelineError as exc:
        return _failed(exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - a reproducer that does not run: one paragraph, not a traceback
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return _failed(f"the reproducer in {args[0]} could not run: {type(exc).__name__}: {text}",
                       "Re-run the parity stage with parity.diagnose=true to write it again.")
    verdict = "drift reproduced" if result["drift"] else "no drift on this node alone"
    against = "onnxruntime"
    if result["runtime"] == "onnxruntime":
        against = "the ONNX reference implementation" + (" in float64" if result["float64"] else "")
    print(f"{result['runtime']}: node {result['node']} ({result['op_type']}): max abs error "
          f"{result['max_abs_err']:.3g} vs {against}: {verdict}")
    return 1 if result["drift"] else 0


if __name__ == "__main__":
    from pipeline.process_end import end_process

    end_process(main())
