"""Limits for hostile sizes: files read and tensors built from them are bounded before memory runs out.

A 1 MB gzip CSV can expand to gigabytes; a few bytes of ONNX (``ConstantOfShape`` of a constant shape) can ask
for 256 GiB. Both are refused with the limit's key named, before anything is decompressed or allocated:

- ``limits.max_file_bytes``: the bytes of one data file as read (a CSV after decompression, the arrays of an
  .npz archive, a from_run source's ONNX model);
- ``limits.max_tensor_bytes``: one tensor that a file declares (an ONNX initializer or constant, the output of
  ``ConstantOfShape``/``Expand`` of a constant shape).

``configure(cfg)`` (the runner, at the start of a run) sets them from the config; the defaults apply otherwise.
"""
import bz2
import gzip
import lzma
import math
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError

MiB, GiB = 1 << 20, 1 << 30
DEFAULT_FILE_BYTES = 512 * MiB
DEFAULT_TENSOR_BYTES = 2 * GiB
_limits = {"max_file_bytes": DEFAULT_FILE_BYTES, "max_tensor_bytes": DEFAULT_TENSOR_BYTES}
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}


def configure(cfg) -> None:
    node = cfg.get("limits") if hasattr(cfg, "get") else None
    for key, default in (("max_file_bytes", DEFAULT_FILE_BYTES), ("max_tensor_bytes", DEFAULT_TENSOR_BYTES)):
        value = node.get(key) if node is not None else None
        _limits[key] = int(value) if value else default


def _too_big(what: str, size: int, key: str) -> PipelineError:
    limit = _limits[key]
    return PipelineError(f"{what} is {_size(size)}, above limits.{key}={limit} ({_size(limit)}); it is refused before "
                         "it is read into memory.",
                         f"If the size is expected, raise the limit (limits.{key}={max(size, limit) * 2}); otherwise "
                         "the file is not what it should be (a compression bomb, a crafted model).")


def check_file(path: Path, key: str) -> None:
    """The file at ``path`` (named by config ``key``) fits limits.max_file_bytes, also once decompressed."""
    path = Path(path)
    size = path.stat().st_size
    if size > _limits["max_file_bytes"]:
        raise _too_big(f"{key}={path}", size, "max_file_bytes")
    opener = OPENERS.get(path.suffix.lower())
    if opener is not None:
        _check_stream(opener, path, key)
    elif path.suffix.lower() in (".zip", ".npz") and zipfile.is_zipfile(path):
        check_archive(path, key)


def _check_stream(opener, path: Path, key: str) -> None:
    """Decompress and count (nothing is kept): a bomb is refused once it passes the limit."""
    total, limit = 0, _limits["max_file_bytes"]
    try:
        with opener(path, "rb") as stream:
            while block := stream.read(4 * MiB):
                total += len(block)
                if total > limit:
                    raise _too_big(f"{key}={path} once decompressed", total, "max_file_bytes")
    except (OSError, EOFError, lzma.LZMAError):
        return  # not compressed after all, or damaged: the reader names it


def check_archive(path: Path, key: str) -> None:
    """A zip archive (.npz) holds at most limits.max_file_bytes once extracted (the sizes its members declare
    bound what zipfile extracts)."""
    with zipfile.ZipFile(path) as archive:
        total = sum(member.file_size for member in archive.infolist())
    if total > _limits["max_file_bytes"]:
        raise _too_big(f"{key}={path} once extracted", total, "max_file_bytes")


# --- ONNX: what a model declares it will allocate ---

# Bytes per element of the ONNX TensorProto data types (undefined/strings: 1).
ONNX_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
# Ops whose output shape is their shape input, read from a constant.
SHAPED_BY_INPUT = {"ConstantOfShape": 0, "Expand": 1}


def check_onnx(model, key: str) -> None:
    """Every tensor the model declares (initializers, constants, ``ConstantOfShape``/``Expand`` of a constant
    shape) fits limits.max_tensor_bytes, and none of its data lives outside the file."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = attribute.t
    for name, tensor in constants.items():
        if tensor.data_location == TensorProto.EXTERNAL:
            raise PipelineError(f"{key}: tensor {name!r} is stored outside the model file (external data); a model "
                                "from elsewhere is read from its own file only.",
                                "Use a model saved as one file (onnx.save without external data).")
        _check_tensor(f"{key}: tensor {name!r}", list(tensor.dims), tensor.data_type)
    for node in graph.node:
        index = SHAPED_BY_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[index]]).reshape(-1).tolist()
        _check_tensor(f"{key}: node {node.name or node.op_type!r} ({node.op_type} of shape {shape})", shape,
                      _value_type(node))


def _value_type(node) -> int:
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.t is not None:
            return attribute.t.data_type or 1
    return 1  # float32: ConstantOfShape's default; Expand's input type is not known here


def _check_tensor(what: str, shape: list, data_type: int) -> None:
    if any(int(d) < 0 for d in shape):
        return  # a dynamic (-1) dimension is the runtime's business
    size = math.prod(int(d) for d in shape) * ONNX_ITEM_BYTES.get(data_type, 1)
    if size > _limits["max_tensor_bytes"]:
        raise _too_big(what, size, "max_tensor_bytes")


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
