"""tensorflow -> saved_model/ from the keras3 conversion, taking and returning PyTorch's layout."""
from pipeline.atomic import write_dir_with
from pipeline.converters import ConvertJob, backend


@backend("tensorflow", "keras3", order=10)
def convert(job: ConvertJob) -> dict:
    """The keras3 model exported as a SavedModel; its serving_default signature transposes to and
    from the ONNX layout, so that it (and TFLite made from it) takes what PyTorch takes."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.converters.keras3 import build_for
    from pipeline.runtimes import signature_key

    conversion = build_for(job)
    model = conversion.model
    # The batch and the free axes (export.dynamic_axes) are None: the signature says which sizes are open.
    specs = [tf.TensorSpec([None, *conversion.values[name].onnx_shape()[1:]], tf.as_dtype(job.sample[name].dtype),
                           name=signature_key(name)) for name in conversion.input_names]
    restore = [[int(i) for i in np.argsort(p)] for p in conversion.output_perms]

    def serve(*inputs):
        moved = [tf.transpose(x, perm) for x, perm in zip(inputs, conversion.input_perms, strict=True)]
        outputs = model(moved if len(moved) > 1 else moved[0], training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return {name: tf.transpose(y, perm) for name, y, perm in
                zip(conversion.output_names, outputs, restore, strict=True)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    write_dir_with(job.out_path, lambda tmp: archive.write_out(str(tmp), verbose=False))
    return {"signature": "serving_default",
            "load": "tf.saved_model.load(path).signatures['serving_default']"}
