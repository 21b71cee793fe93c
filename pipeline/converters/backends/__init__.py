"""Converter backends, one module each, registered with ``@pipeline.converters.backend``; found on their own.

Module names read ``<target>_<backend>``. Heavy libraries (TensorFlow, Keras, onnx2keras, onnx-tf) are
imported inside ``convert``, never at module level: listing the backends must stay cheap.
"""
