"""Reading the exported ONNX model: the file, its opset, its data inputs and outputs."""
from pathlib import Path

from pipeline.errors import PipelineError


def read_onnx(path: Path, external_data: bool = False):
    """The ONNX model at ``path`` (its external data too with ``external_data``); a missing, truncated or
    foreign file is a PipelineError naming it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"No ONNX model at {path} (or it is not a file).",
                            "Run the export stage first (or pick a from_run whose export finished).")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf DecodeError on a truncated or foreign file
        raise PipelineError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {_first_line(exc)[:200]}).",
                            "The file is corrupt or truncated: re-run the export stage (or pick another "
                            "from_run).") from exc


def opset_of(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def io_names(path: Path) -> tuple[list[str], list[str]]:
    """The graph's data inputs (initializers left out) and outputs, by name."""
    graph = read_onnx(path).graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
