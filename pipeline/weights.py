"""Reading PyTorch weights files (model.pt, a state_dict, a Lightning checkpoint) into a network: only
tensors are ever unpickled (``weights_only``); what is wrong with a file is said from its first bytes."""
from pathlib import Path

import torch

from pipeline.errors import PipelineError


def check_file(path, what: str, fix: str) -> None:
    """Refuse a file that cannot be torch.save's, from its first bytes (``what``: how the error names it)."""
    problem = _not_torch_file(path)
    if problem:
        raise PipelineError(f"{what} is not PyTorch weights: {problem}.", fix)


def load_into(net: torch.nn.Module, path, what: str, fix: str, prefix: str | None, model: str) -> None:
    """``net`` with the tensors of ``path`` (a state_dict, or one network of a checkpoint: ``prefix``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if _truncated_zip(path):  # torch's own message: "[Errno 22] Invalid argument"
            reason = ("it starts as a torch.save zip archive but is truncated or corrupt (no zip directory at its "
                      "end: an interrupted copy, download or save?)")
        elif "weights_only" in str(exc) or type(exc).__name__ == "UnpicklingError":
            reason = ("it holds Python objects other than tensors and plain containers, which are never "
                      "loaded (unpickling them could run arbitrary code)")
        else:
            reason = f"{type(exc).__name__}: {_first_line(exc)[:300]}"
        raise PipelineError(f"{what} is unreadable as PyTorch weights: {reason}.", fix) from exc
    try:
        net.load_state_dict(state_dict_of(state, net, prefix))
    except PipelineError as exc:  # several networks in one checkpoint: named, with the key that picks one
        raise PipelineError(f"{what}: {exc.message}", exc.hint) from None
    except Exception as exc:
        raise PipelineError(
            f"{what}: the weights in {path} do not fit {model}: {_mismatch(state, net, exc, prefix)}",
            "Check that model= (and its model.net.* arguments) match the network that produced them "
            "(with from_run, drop model= to use that run's model).",
        ) from exc


def state_dict_of(loaded, net: torch.nn.Module, prefix: str | None = None) -> dict:
    """A plain state_dict from what torch.load returned: a state_dict, or a Lightning checkpoint whose
    keys carry the LightningModule's attribute prefix (``net.``, ``model.``). ``prefix`` (model.weights_prefix)
    picks one; without it, a checkpoint in which several prefixes fit (``net.`` and ``ema.``) is refused,
    never picked from by chance."""
    if not isinstance(loaded, dict):
        raise TypeError(f"expected a state_dict (a dict of tensors), got {type(loaded).__name__}")
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, dict):
        raise TypeError(f"expected a state_dict (a dict of tensors), got {type(state).__name__} under 'state_dict'")
    odd = [k for k, v in state.items() if not isinstance(k, str)
           or not (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))]
    if odd:
        raise TypeError(f"expected a state_dict (names -> tensors), but {len(odd)} of its entries "
                        f"{'is' if len(odd) == 1 else 'are'} not: {', '.join(map(repr, odd[:3]))}"
                        f"{', ...' if len(odd) > 3 else ''}")
    if prefix:
        picked = _under_prefix(state, prefix.rstrip(".") + ".")
        if not picked:
            found = sorted({key.split(".", 1)[0] for key in state if "." in key})
            raise PipelineError(f"model.weights_prefix={prefix} names no weights in it (its prefixes: "
                                f"{', '.join(found) or 'none'}).",
                                "Set model.weights_prefix to one of those, or drop it for a plain state_dict.")
        return picked
    expected = set(net.state_dict())
    if set(state) == expected:
        return state
    prefixes = sorted({key.split(".", 1)[0] + "." for key in state if "." in key})
    fitting = [p for p in prefixes if set(_under_prefix(state, p)) == expected]
    if len(fitting) > 1:
        names = ", ".join(f"{p}*" for p in fitting)
        raise PipelineError(f"it holds {len(fitting)} networks that fit ({names}); which one to load is not "
                            "guessed.",
                            f"Pick one with model.weights_prefix=<prefix>, e.g. model.weights_prefix="
                            f"{fitting[0].rstrip('.')}.")
    return _under_prefix(state, fitting[0]) if fitting else state


def _under_prefix(state: dict, prefix: str) -> dict:
    """The entries of ``state`` whose names start with ``prefix``, without it."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _truncated_zip(path: Path) -> bool:
    import zipfile

    with open(path, "rb") as handle:
        return handle.read(2) == b"PK" and not zipfile.is_zipfile(path)


def _not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch.save file, from its first bytes (None: it may be one)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(8)
    # torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte (0x80).
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return None
    onnx_magic = len(head) > 1 and head[0] == 0x08 and 1 <= head[1] <= 20  # a protobuf's ir_version field
    if path.suffix.lower() == ".onnx" or onnx_magic:
        return ("it looks like an ONNX model; the pipeline exports ONNX itself from PyTorch weights "
                "(to convert an existing run's model.onnx use from_run=<run dir> stages=[convert,parity])")
    if head.startswith(b"\x89HDF") or path.suffix.lower() in (".h5", ".keras", ".tflite", ".pb", ".safetensors"):
        return f"a {path.suffix or 'non-PyTorch'} file is not a torch.save state_dict"
    return "it is neither a torch.save zip archive nor a pickle (first bytes " + repr(head) + ")"


def _mismatch(state, net: torch.nn.Module, exc: Exception, prefix: str | None = None) -> str:
    """What does not fit, in one line: missing and unexpected names, shapes that differ."""
    try:
        state = state_dict_of(state, net, prefix)
    except TypeError as type_error:
        return str(type_error)
    ours = net.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [f"{k} {list(state[k].shape)} vs {list(ours[k].shape)}" for k in ours
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(ours[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs (file vs model)", shapes)):
        if items:
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}")
    return "; ".join(parts) if parts else _first_line(exc)[:400]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
