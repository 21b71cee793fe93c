"""Call ``prepare()`` before anything imports TensorFlow (or Keras, onnx-tf, onnx2keras).

torch's Triton and TensorFlow both bundle LLVM: importing TensorFlow first and Triton later (which
torchvision and torch._dynamo do) segfaults the process. Triton first is safe, and costs ~0.3 s.
"""
import os
import sys


def prepare() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    if "tensorflow" in sys.modules:  # too late: loading Triton now is the very crash to avoid
        return
    try:
        import triton  # noqa: F401
    except ImportError:  # CPU-only torch builds ship no Triton, and then there is no conflict
        pass
