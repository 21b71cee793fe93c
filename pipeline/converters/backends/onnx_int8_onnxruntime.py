"""onnx_int8 -> model_int8.onnx with onnxruntime.quantization: static (QDQ, calibrated on training inputs),
or dynamic for recurrent models (their recurrent weights quantize well; their activations do not)."""
from pathlib import Path

from pipeline.converters import ConvertJob, backend
from pipeline.errors import ConversionError

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}


@backend("onnx_int8", "onnxruntime", order=10)
def convert(job: ConvertJob) -> dict:
    """onnxruntime.quantization: quantize_static (QDQ, per-channel int8) or quantize_dynamic."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from pipeline.atomic import write_with

    model = onnx.load(str(job.onnx_path))
    recurrent = sorted(RECURRENT_OPS & {node.op_type for node in model.graph.node})
    method = "dynamic" if recurrent else "static"

    def write(tmp: Path) -> None:
        try:
            if recurrent:
                quantize_dynamic(str(job.onnx_path), str(tmp), weight_type=QuantType.QInt8)
            else:
                quantize_static(str(job.onnx_path), str(tmp), _Reader(job), quant_format=QuantFormat.QDQ,
                                per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
        except Exception as exc:
            raise ConversionError(f"onnxruntime could not quantize the model ({method}): "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}",
                                  "Drop the onnx_int8 target for this model.") from exc

    write_with(job.out_path, write)
    return {"quantization": f"int8, {method}" + (f" (recurrent: {', '.join(recurrent)})" if recurrent else ""),
            "calibration_samples": 0 if recurrent else len(next(iter(job.calibration().values()))),
            "load": "onnxruntime.InferenceSession(path)"}


class _Reader:
    """onnxruntime's CalibrationDataReader over the training-split calibration samples, one at a time."""

    def __init__(self, job: ConvertJob):
        if job.calibration is None:
            raise ConversionError("onnx_int8 needs calibration data, which this run has none of.",
                                  "Use a dataset with a training split.")
        self.samples = job.calibration()
        self.index = 0

    def get_next(self):
        count = len(next(iter(self.samples.values())))
        if self.index >= count:
            return None
        row = {name: value[self.index:self.index + 1] for name, value in self.samples.items()}
        self.index += 1
        return row

    def rewind(self):
        self.index = 0
