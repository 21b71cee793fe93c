"""The third-party model libraries are optional extras: a missing one is named with the pip command."""
import importlib

from pipeline.errors import PipelineError

# import name -> (the pyproject extra, the pip package)
EXTRAS = {
    "timm": ("timm", "timm"),
    "transformers": ("hf", "transformers"),
    "segmentation_models_pytorch": ("smp", "segmentation-models-pytorch"),
}


def require(module: str):
    """``import module``, or a PipelineError naming the extra that installs it."""
    extra, package = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PipelineError(f"model={extra} needs the {package} package, which cannot be imported ({exc}).",
                            f'Install it: pip install -e ".[{extra}]" (or pip install {package}).') from None
