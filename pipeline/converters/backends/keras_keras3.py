"""keras -> model.keras with keras3, our converter that tracks the layout per tensor."""
from pathlib import Path

from pipeline.atomic import write_with
from pipeline.converters import ConvertJob, backend
from pipeline.converters.keras3.layout import layout_name


@backend("keras", "keras3", order=10)
def convert(job: ConvertJob) -> dict:
    """ONNX -> Keras 3 with per-tensor layouts; built-in layers and keras.ops only (safe_mode loads)."""
    from pipeline.converters.keras3 import build_for

    conversion = build_for(job)
    write_with(job.out_path, lambda tmp: save_keras(conversion.model, tmp))
    return {
        **io_layouts(conversion),
        "load": "keras.saving.load_model(path, safe_mode=True)",
        "layers": len(conversion.model.layers),
        **({"fused": conversion.fused} if conversion.fused else {}),
    }


def io_layouts(conversion) -> dict:
    inputs = dict(zip(conversion.input_names, map(list, conversion.input_perms), strict=True))
    outputs = dict(zip(conversion.output_names, map(list, conversion.output_perms), strict=True))
    return {"input_layout": layout_name(conversion.input_perms[0]), "input_perms": inputs, "output_perms": outputs}


def save_keras(model, tmp: Path) -> None:
    # Keras insists on the .keras suffix: save beside, then move onto the temp name.
    staged = tmp.with_name(tmp.name + ".keras")
    try:
        model.save(staged)
        staged.replace(tmp)
    finally:
        staged.unlink(missing_ok=True)
