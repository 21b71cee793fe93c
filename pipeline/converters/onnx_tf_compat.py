"""Make onnx-tf 1.10 (archived) import on today's onnx and TensorFlow/Keras 3.

Three things broke it; each is patched only for the duration of the import:
- ``onnx.mapping`` (also read as ``onnx.helper.mapping``) was removed in onnx 1.16; we provide it
  again from ``onnx._mapping``.
- its Hardmax handler imports ``tensorflow_addons``, which is dead and fails on Keras 3; we give it
  a stand-in module whose only function, ``seq2seq.hardmax``, is written in plain TensorFlow.
- its Bernoulli handler imports ``tensorflow_probability`` (not a dependency, and it needs tf-keras
  on Keras 3) for ``distributions.Bernoulli``; the stand-in samples it with plain TensorFlow.
Its Squeeze and Unsqueeze handlers also stop at version 11, so an opset-13 graph using them
(torch's LSTM export does) fails with ``Unsqueeze version 13 is not implemented``. Opset 13 only
moved ``axes`` from an attribute to an input, so ``_add_axes_input_handlers`` gives both handler
classes the missing ``version_13``, reading ``axes`` from that (constant) input; this one stays
in place after the import, and only adds what was missing. (``onnx.version_converter`` cannot
take such graphs down to opset 12 instead: it has no down-adapter for Shape-13, for one.)
Nothing else in onnx-tf is changed.
"""
import sys
import types


def _mapping_module() -> types.ModuleType:
    from onnx import TensorProto
    from onnx._mapping import TENSOR_TYPE_MAP

    mapping = types.ModuleType("onnx.mapping")
    mapping.TENSOR_TYPE_TO_NP_TYPE = {k: v.np_dtype for k, v in TENSOR_TYPE_MAP.items()}
    mapping.TENSOR_TYPE_TO_STORAGE_TENSOR_TYPE = {k: v.storage_dtype for k, v in TENSOR_TYPE_MAP.items()}
    np_to_tensor = {}
    for tensor_type, entry in TENSOR_TYPE_MAP.items():
        np_to_tensor.setdefault(entry.np_dtype, tensor_type)  # first (canonical) type wins
    mapping.NP_TYPE_TO_TENSOR_TYPE = np_to_tensor
    mapping.STORAGE_TENSOR_TYPE_TO_FIELD = {
        int(TensorProto.FLOAT): "float_data",
        int(TensorProto.INT32): "int32_data",
        int(TensorProto.INT64): "int64_data",
        int(TensorProto.DOUBLE): "double_data",
        int(TensorProto.UINT64): "uint64_data",
        int(TensorProto.STRING): "string_data",
    }
    return mapping


def _tensorflow_addons_stand_in() -> types.ModuleType:
    def hardmax(logits, name=None):
        import tensorflow as tf

        depth = tf.shape(logits)[-1]
        return tf.one_hot(tf.argmax(logits, axis=-1), depth, dtype=logits.dtype, name=name)

    tfa = types.ModuleType("tensorflow_addons")
    tfa.seq2seq = types.SimpleNamespace(hardmax=hardmax)
    return tfa


class _Bernoulli:
    def __init__(self, probs, dtype):
        self.probs, self.dtype = probs, dtype

    def sample(self, sample_shape=(), seed=None):
        import tensorflow as tf

        shape = tf.concat([tf.constant(sample_shape, tf.int32), tf.shape(self.probs)], 0)
        return tf.cast(tf.random.uniform(shape, seed=seed) < self.probs, self.dtype)


def _tensorflow_probability_stand_in() -> types.ModuleType:
    tfp = types.ModuleType("tensorflow_probability")
    tfp.distributions = types.SimpleNamespace(Bernoulli=_Bernoulli)
    return tfp


STAND_INS = {
    "tensorflow_addons": _tensorflow_addons_stand_in,
    "tensorflow_probability": _tensorflow_probability_stand_in,
}


def import_onnx_tf_backend():
    """Return ``onnx_tf.backend`` imported with the compat patches in place."""
    import onnx
    import onnx.helper

    if not hasattr(onnx, "mapping"):
        onnx.mapping = sys.modules["onnx.mapping"] = _mapping_module()
    if not hasattr(onnx.helper, "mapping"):  # onnx-tf also reads it as onnx.helper.mapping
        onnx.helper.mapping = onnx.mapping
    saved = {name: sys.modules.get(name) for name in STAND_INS}
    sys.modules.update({name: make() for name, make in STAND_INS.items()})
    try:
        from onnx_tf import backend
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    _add_axes_input_handlers()
    return backend


def _static_axes(node, tensor_dict) -> list[int] | None:
    """The ``axes`` input of a Squeeze/Unsqueeze-13 as ints; None when it is omitted."""
    import tensorflow as tf

    if len(node.inputs) < 2 or not node.inputs[1]:
        return None
    axes = tf.get_static_value(tensor_dict[node.inputs[1]])
    if axes is None:
        raise NotImplementedError(f"{node.op_type} with computed (non-constant) axes is not supported.")
    return [int(a) for a in axes.reshape(-1)]


def _squeeze_13(cls, node, **kwargs):
    import tensorflow as tf

    tensor_dict = kwargs["tensor_dict"]
    return [tf.squeeze(tensor_dict[node.inputs[0]], axis=_static_axes(node, tensor_dict))]


def _unsqueeze_13(cls, node, **kwargs):
    import tensorflow as tf

    tensor_dict = kwargs["tensor_dict"]
    x = tensor_dict[node.inputs[0]]
    axes = _static_axes(node, tensor_dict)
    rank = len(x.shape) + len(axes)  # negative axes count from the end of the output
    for axis in sorted(a % rank for a in axes):
        x = tf.expand_dims(x, axis=axis)
    return [x]


def _add_axes_input_handlers() -> None:
    from onnx_tf.handlers.backend.squeeze import Squeeze
    from onnx_tf.handlers.backend.unsqueeze import Unsqueeze

    for handler, version_13 in ((Squeeze, _squeeze_13), (Unsqueeze, _unsqueeze_13)):
        if not hasattr(handler, "version_13"):
            handler.version_13 = classmethod(version_13)
