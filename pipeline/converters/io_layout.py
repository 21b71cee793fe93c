"""The layout an artifact takes and returns its tensors in (``export.layout``, ``export.<target>.layout``).

- ``nchw`` (default): PyTorch's, channels first; the SavedModel's signature transposes to and from the
  Keras model's channels-last layout, and TFLite made from it keeps those transposes at its boundary.
- ``nhwc``: channels last, as camera frames, ``tf.image`` and every TFLite example hold images: the
  SavedModel's signature is the Keras model's own (image tensors ``[N, H, W, C]``, 1-D convolution
  inputs ``[N, L, C]``, everything else as ONNX), so the TFLite graph starts at its first real op.

The tensorflow target writes the SavedModel in its layout; a TFLite target converts from it when the
layouts match, else from a SavedModel of its own layout written beside (``saved_model_for``). Each target's
report entry records ``input_perms``/``output_perms`` (the ONNX axis each axis of the artifact's tensor
holds); the runtime adapters transpose by them in parity, and ``describe`` names every tensor's layout.
"""
import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.converters.keras3.layout import identity, layout_name

NCHW, NHWC = "nchw", "nhwc"
LAYOUTS = (NCHW, NHWC)


def wanted(job) -> str:
    """The layout ``job``'s target is to take: ``export.<target>.layout``, else ``export.layout``."""
    return str(job.options.get("layout") or NCHW)


def write_saved_model(conversion, out_path: Path, layout: str, sample: dict) -> dict:
    """The keras3 ``conversion`` as a SavedModel whose serving_default takes ``layout``; returns its perms."""
    import keras
    import tensorflow as tf

    from pipeline.atomic import write_dir_with
    from pipeline.runtimes import signature_key

    model = conversion.model
    native = layout == NHWC  # the Keras model's own axis orders at the boundary: no transposes
    in_perms = [tuple(p) if native else identity(len(p)) for p in conversion.input_perms]
    out_perms = [tuple(p) if native else identity(len(p)) for p in conversion.output_perms]
    # The batch and the free axes (export.dynamic_axes) are None: the signature says which sizes are open.
    specs = []
    for name, perm in zip(conversion.input_names, in_perms, strict=True):
        onnx_shape = conversion.values[name].onnx_shape()
        shape = [None, *(onnx_shape[axis] for axis in perm[1:])]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(sample[name].dtype), name=signature_key(name)))
    to_keras = [_relative(have, want) for have, want in zip(in_perms, conversion.input_perms, strict=True)]
    to_artifact = [_relative(have, want) for have, want in zip(conversion.output_perms, out_perms, strict=True)]

    def serve(*inputs):
        moved = [x if perm is None else tf.transpose(x, perm) for x, perm in zip(inputs, to_keras, strict=True)]
        outputs = model(moved if len(moved) > 1 else moved[0], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return {name: y if perm is None else tf.transpose(y, perm) for name, y, perm in
                zip(conversion.output_names, outputs, to_artifact, strict=True)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    write_dir_with(out_path, lambda tmp: archive.write_out(str(tmp), verbose=False))
    return perms_entry(conversion.input_names, in_perms, conversion.output_names, out_perms, layout)


def _relative(have, want) -> list[int] | None:
    """The transpose taking a tensor stored in ``have`` order to ``want`` order (None: none needed)."""
    have, want = tuple(have), tuple(want)
    return None if have == want else [have.index(axis) for axis in want]


def perms_entry(inputs: list[str], in_perms, outputs: list[str], out_perms, layout: str) -> dict:
    """The report entry's layout keys: every tensor's axis order, and the layout asked for."""
    return {"layout": layout, "input_layout": layout_name(in_perms[0]) if in_perms else None,
            "input_perms": {n: list(p) for n, p in zip(inputs, in_perms, strict=True)},
            "output_perms": {n: list(p) for n, p in zip(outputs, out_perms, strict=True)}}


def saved_model_for(job) -> tuple[Path, dict]:
    """The SavedModel a TFLite target converts from, in its layout, and the layout keys of its entry: this
    run's tensorflow artifact when its layout is the one wanted, else one written for it (once per layout)."""
    layout = wanted(job)
    saved = Path(job.artifacts["tensorflow"])
    recorded = job.cache.get(("saved_model_layout", str(saved)))
    if recorded is None and layout == NCHW:  # onnx-tf's SavedModel, or one from an earlier run: ONNX layout
        return saved, {"layout": NCHW}
    if recorded is not None and recorded["layout"] == layout:
        return saved, recorded
    key = ("saved_model_in", layout)
    if key not in job.cache:
        from pipeline.converters.keras3 import build_for

        folder = Path(tempfile.mkdtemp(prefix=f"pipeline_saved_model_{layout}_"))
        atexit.register(shutil.rmtree, folder, True)  # only the TFLite made from it is an artifact
        path = folder / "saved_model"
        job.cache[key] = (path, write_saved_model(build_for(job, loops=True), path, layout, job.sample))
    return job.cache[key]


def to_artifact(feeds: dict[str, np.ndarray], perms: dict | None) -> dict[str, np.ndarray]:
    """Inputs in ONNX layout transposed to the artifact's (``input_perms``)."""
    from pipeline.runtimes import to_layout

    return {name: to_layout(value, (perms or {}).get(name)) for name, value in feeds.items()}


def from_artifact(outputs: dict[str, np.ndarray], perms: dict | None) -> dict[str, np.ndarray]:
    """Outputs in the artifact's layout (``output_perms``) brought back to ONNX's."""
    from pipeline.runtimes import from_layout

    return {name: from_layout(value, (perms or {}).get(name), name) for name, value in outputs.items()}


def describe(entry: dict, inputs: dict[str, int], outputs: dict[str, int]) -> dict:
    """Every input's and output's layout by name (``NHWC``, ``NCHW``, ``NC``...; ranks by ONNX name), for
    report.json/md: the artifact's axis order when it records one, else ONNX's."""
    def named(tensor: str, rank: int, perms: dict | None) -> str:
        perm = (perms or {}).get(tensor) or identity(rank)
        return layout_name(perm) if len(perm) > 1 else "N"

    return {"inputs": {t: named(t, r, entry.get("input_perms")) for t, r in inputs.items()},
            "outputs": {t: named(t, r, entry.get("output_perms")) for t, r in outputs.items()}}
