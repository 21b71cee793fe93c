"""keras3: our ONNX -> Keras 3 converter, with the layout tracked per tensor (see ``layout``).

``build`` probes the model with onnxruntime (``probe``), then walks its graph (``graph``) and converts
each op with the converter registered for it (``ops``), fusing a few patterns first (``patterns``).
The result uses built-in Keras layers and ``keras.ops`` only, so it saves as a ``.keras`` file that
loads with ``safe_mode=True``; an op it cannot convert exactly is refused by name.
"""
import numpy as np

from pipeline.converters.keras3.graph import Conversion, Converter
from pipeline.converters.keras3.probe import Probe, resolve_branches


def build(onnx_model, sample: dict[str, np.ndarray], extra_outputs: list[str] | None = None,
          loops: bool = False) -> tuple[Conversion, Probe]:
    """The Keras model for ``onnx_model``; ``sample`` holds a few real inputs, by ONNX input name.
    ``extra_outputs`` names intermediate ONNX tensors to expose as outputs too (where they exist);
    ``loops``: long or free-length recurrent layers as TFLite-runnable while loops (``loop_rnn``)."""
    onnx_model, probe = resolve_branches(onnx_model, sample)
    return Converter(onnx_model, probe, extra_outputs, loops).convert(), probe


def build_for(job, loops: bool = False) -> Conversion:
    """The conversion of ``job``'s ONNX model, built once per convert stage and shared by the keras3
    backends of every target (a refusal is remembered too). ``loops`` (the SavedModel's) builds apart
    only for a model with recurrent nodes."""
    import onnx

    from pipeline.converters import recurrent_ops

    if loops:
        recurrent = ("keras3_recurrent", str(job.onnx_path))
        if recurrent not in job.cache:
            job.cache[recurrent] = bool(recurrent_ops(onnx.load(str(job.onnx_path), load_external_data=False)))
        loops = job.cache[recurrent]
    key = ("keras3", str(job.onnx_path), tuple(job.debug_outputs), loops)
    if key not in job.cache:
        try:
            job.cache[key] = build(onnx.load(str(job.onnx_path)), job.sample, job.debug_outputs, loops)[0]
        except Exception as exc:  # noqa: BLE001 - remembered, re-raised below for every target
            job.cache[key] = exc
    if isinstance(job.cache[key], Exception):
        raise job.cache[key]
    return job.cache[key]


__all__ = ["Conversion", "Probe", "build", "build_for"]
