"""tflite -> model.tflite with TensorFlow's own converter, from this run's SavedModel (the tensorflow target)."""
import re
from pathlib import Path

from pipeline.atomic import write_with
from pipeline.converters import ConvertJob, backend
from pipeline.errors import ConversionError

# The converter lists the TensorFlow ops that have no TFLite builtin kernel, e.g. "TF Select ops: Erf".
_SELECT_OPS = re.compile(r"TF Select ops: ([\w, ]+)")
# ... or, when it cannot even place them, "'tf.IsInf' op is neither a custom op nor a flex op".
_NO_KERNEL = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
# keras3 names a recurrent layer after its ONNX node and direction: "converted_1/gru_GRU_1_d0_1/TensorArrayV2_1".
_RECURRENT_LAYER = re.compile(r"/((?:\w*_)?(LSTM|GRU|RNN)(?:_\d+)?)_d\d")


@backend("tflite", "tf-converter", order=10, needs="tensorflow")
def convert(job: ConvertJob) -> dict:
    """TFLiteConverter.from_saved_model on the tensorflow target's artifact (or a SavedModel of the layout
    export.tflite.layout asks, io_layout); builtin ops only."""
    from pipeline.converters import io_layout

    saved_model, layout = io_layout.saved_model_for(job)
    return {**layout, **convert_file(saved_model, job.out_path)}


def convert_file(saved_model: Path, out_path: Path, configure=None) -> dict:
    """Convert ``saved_model``; ``configure(converter)`` sets quantization options (and may build the
    flatbuffer itself, returning it)."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        built = configure(converter) if configure else None
        flatbuffer = built if isinstance(built, bytes) else converter.convert()
    except ConversionError:
        raise
    except Exception as exc:
        raise explain(exc) from exc
    write_with(out_path, lambda tmp: tmp.write_bytes(flatbuffer))
    return {"converted_from": "tensorflow",
            "load": "ai_edge_litert.interpreter.Interpreter(model_path=path)"}


# What to change in the model for an op TFLite has no builtin kernel for (the others: a generic hint).
_REPLACEMENTS = {
    "Erf": "exact GELU (Erf): use nn.GELU(approximate='tanh')",
    # TFLite lowers a float BiasAdd to Add: the one left is an integer tensor plus a per-axis constant.
    "BiasAdd": "BiasAdd of integers (an integer tensor plus a per-axis constant, e.g. ids + offsets or "
               "positions): the keras3 backend writes integer adds as Sub, so name the model in a bug report "
               "(pipeline.log has the TensorFlow op); meanwhile do that add in float in the model "
               "(x.float() + c, then .long())",
}


def _replacement_hint(ops: list[str]) -> str:
    known = [_REPLACEMENTS[op] for op in ops if op in _REPLACEMENTS]
    others = [op for op in ops if op not in _REPLACEMENTS]
    steps = known + ([f"replace {', '.join(others)} in the model with ops TFLite has builtin kernels for"]
                     if others else [])
    return f"{'; '.join(steps)[:1].upper()}{'; '.join(steps)[1:]}; or drop the tflite target " \
           "(export=[keras,tensorflow])."


def explain(exc: Exception) -> ConversionError:
    if "TensorListReserve" in str(exc) or "tensor list ops" in str(exc):
        layer = _RECURRENT_LAYER.search(str(exc))
        from pipeline.converters.keras3.ops.recurrent import UNROLL_MAX_STEPS

        return ConversionError(
            f"TFLite's builtin ops cannot run a recurrent layer kept as a loop with a dynamic batch "
            f"({layer.group(1) if layer else 'an LSTM/GRU/RNN'}): keras3 unrolls sequences of up to "
            f"{UNROLL_MAX_STEPS} steps only; longer ones, and a free time axis (export.dynamic_axes), stay a loop "
            "(TensorList ops, TF Select only).",
            f"Shorten the sequence the recurrent layer sees to {UNROLL_MAX_STEPS} steps or fewer (e.g. a strided "
            "Conv1d or pooling before it) and keep its time axis fixed, or drop the tflite targets.",
            unsupported_op=layer.group(2) if layer else "TensorListReserve")
    match = _SELECT_OPS.search(str(exc))
    no_kernel = list(dict.fromkeys(_NO_KERNEL.findall(str(exc))))
    if match or no_kernel:
        ops = [op.strip() for op in match.group(1).split(",") if op.strip()] if match else no_kernel
        return ConversionError(
            f"TFLite has no builtin kernel for TensorFlow op(s) {', '.join(ops)} (they would need TF Select "
            "flex ops, which the LiteRT interpreter does not run).",
            _replacement_hint(ops), unsupported_op=ops[0])
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ConversionError(f"The TFLite converter failed: {type(exc).__name__}: {first_line}",
                           "Check that the tensorflow target converts and runs first.")
