"""TensorFlow SavedModel -> TFLite flatbuffer with TensorFlow's own converter."""
from pathlib import Path

from pipeline.atomic import write_with
from pipeline.errors import ConversionError


def convert(saved_model: Path, out_path: Path) -> dict:
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        flatbuffer = converter.convert()
    except Exception as exc:
        raise ConversionError(f"The TFLite converter failed: {type(exc).__name__}: {exc}",
                              "Check the TensorFlow SavedModel target first.") from exc
    write_with(out_path, lambda tmp: tmp.write_bytes(flatbuffer))
    return {"converted_from": "tensorflow",
            "load": "ai_edge_litert.interpreter.Interpreter(model_path=path)"}
