"""tensorflow -> saved_model/ from the keras3 conversion, in the layout of export.layout (io_layout)."""
from pipeline.converters import ConvertJob, backend


@backend("tensorflow", "keras3", order=10)
def convert(job: ConvertJob) -> dict:
    """The keras3 model exported as a SavedModel. With ``nchw`` its serving_default signature transposes to
    and from the ONNX layout, so that it (and TFLite made from it) takes what PyTorch takes; with ``nhwc``
    it takes and returns the Keras model's own channels-last tensors, with no transpose at the boundary."""
    from pipeline.converters import io_layout
    from pipeline.converters.keras3 import build_for

    layout = io_layout.wanted(job)
    perms = io_layout.write_saved_model(build_for(job, loops=True), job.out_path, layout, job.sample)
    job.cache[("saved_model_layout", str(job.out_path))] = perms  # what the TFLite targets convert from
    return {**perms, "signature": "serving_default",
            "load": "tf.saved_model.load(path).signatures['serving_default']"}
