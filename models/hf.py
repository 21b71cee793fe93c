"""A Hugging Face transformers model as a source: ``model=hf model.net.path=<save_pretrained folder>``
or ``model.net.config={model_type: bert, hidden_size: 32, ...}`` (random weights), for a ``task``.

A folder is read as data, never code: ``config.json`` (``trust_remote_code=False``) and safetensors
weights only; a folder holding pickled weights (``pytorch_model.bin``) alone is refused. The network
takes the inputs the library names (``input_ids`` and ``attention_mask``, ``pixel_values``,
``input_values``) positionally in that order, and returns ``{logits: ...}`` or
``{last_hidden_state: ...}`` picked out of the ``ModelOutput``: the ONNX graph carries those names.
Causal LMs return the logits of the whole prompt without a KV cache (``use_cache=False``).
"""
import json
from pathlib import Path

from torch import nn

from models.extras import require
from models.warmup import untrivialise_parameters
from pipeline.errors import PipelineError

# task -> (the transformers Auto class, the ModelOutput field returned)
TASKS = {
    "sequence_classification": ("AutoModelForSequenceClassification", "logits"),
    "token_classification": ("AutoModelForTokenClassification", "logits"),
    "causal_lm": ("AutoModelForCausalLM", "logits"),
    "masked_lm": ("AutoModelForMaskedLM", "logits"),
    "feature_extraction": ("AutoModel", "last_hidden_state"),
    "image_classification": ("AutoModelForImageClassification", "logits"),
    "semantic_segmentation": ("AutoModelForSemanticSegmentation", "logits"),
    "audio_classification": ("AutoModelForAudioClassification", "logits"),
}
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _check_task(task) -> str:
    if task not in TASKS:
        raise PipelineError(f"model.net.task={task!r} is not a task model=hf knows.",
                            f"Set model.net.task to one of: {', '.join(TASKS)}.")
    return task


def _quiet(transformers) -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _folder(path) -> Path:
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise PipelineError(f"model.net.path={path} is not a folder.",
                            "Point model.net.path at a folder written by model.save_pretrained(folder).")
    if not (folder / "config.json").is_file():
        raise PipelineError(f"model.net.path={path} holds no config.json.",
                            "Point model.net.path at a folder written by model.save_pretrained(folder).")
    if not any((folder / name).is_file() for name in SAFE_WEIGHTS):
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
        found = f" (it holds {', '.join(pickled)}: pickled weights, which are code when loaded)" if pickled else ""
        raise PipelineError(f"model.net.path={path} holds no safetensors weights (model.safetensors){found}.",
                            "Save the model with model.save_pretrained(folder, safe_serialization=True); pickled "
                            "weights are never loaded.")
    return folder


def load_config(path=None, config=None):
    """The transformers config: from ``path``/config.json, or built from the ``config`` mapping (a dict,
    or a JSON file/string) whose ``model_type`` names the architecture."""
    transformers = require("transformers")
    _quiet(transformers)
    if (path is None) == (config is None):
        raise PipelineError("model=hf needs exactly one of model.net.path (a save_pretrained folder) and "
                            "model.net.config (a config to build with random weights).",
                            "Set model.net.path=<folder> or model.net.config={model_type: bert, ...}.")
    if path is not None:
        folder = _folder(path)
        try:
            return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                           trust_remote_code=False)
        except (ValueError, OSError, KeyError) as exc:
            raise PipelineError(f"model.net.path={path}: config.json cannot be read by transformers "
                                f"({str(exc).splitlines()[0][:300]}).",
                                "Only architectures built into transformers load (trust_remote_code is off).") \
                from None
    values = _config_mapping(config)
    model_type = values.pop("model_type", None)
    try:
        return transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError) as exc:
        known = ", ".join(sorted(transformers.CONFIG_MAPPING.keys())[:12])
        raise PipelineError(f"model.net.config: model_type={model_type!r} cannot be built "
                            f"({str(exc).splitlines()[0][:300]}).",
                            f"Set model.net.config.model_type to a transformers architecture ({known}, ...).") \
            from None


def _config_mapping(config) -> dict:
    if isinstance(config, str):
        text = Path(config).read_text() if Path(config).expanduser().is_file() else config
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"model.net.config={config[:80]!r} is neither a JSON file nor JSON ({exc}).",
                                "Give a mapping, e.g. model.net.config={model_type: bert, hidden_size: 32}.") from None
    if not hasattr(config, "items"):
        raise PipelineError(f"model.net.config={config!r} is not a mapping.",
                            "Give e.g. model.net.config={model_type: bert, hidden_size: 32}.")
    return dict(config.items())


def model_class(config, task: str):
    """The concrete class the task's Auto class picks for this config (not instantiated)."""
    transformers = require("transformers")
    auto = getattr(transformers, TASKS[_check_task(task)][0])
    try:
        return auto._model_mapping[type(config)]
    except KeyError:
        raise PipelineError(f"model.net.task={task}: transformers has no {auto.__name__} for model_type "
                            f"{config.model_type!r}.",
                            f"Pick a task this architecture has (one of: {', '.join(TASKS)}).") from None


def input_specs(path=None, config=None, task="sequence_classification", seq_len: int = 16,
                audio_samples: int = 4000, **_) -> dict:
    """What ``dataset=model_inputs`` generates: the inputs the model's main input implies."""
    cfg = load_config(path, config)
    main = model_class(cfg, task).main_input_name
    if main == "input_ids":
        limit = getattr(cfg, "max_position_embeddings", None)
        length = min(int(seq_len), int(limit)) if limit else int(seq_len)
        vocab = int(cfg.vocab_size)
        return {"input_ids": {"shape": [length], "distribution": "integers", "low": 0, "high": vocab,
                              "dtype": "int64"},
                "attention_mask": {"shape": [length], "distribution": "mask", "dtype": "int64"}}
    if main == "pixel_values":
        size = getattr(cfg, "image_size", 224)
        size = list(size) if isinstance(size, list | tuple) else [int(size), int(size)]
        return {"pixel_values": {"shape": [int(getattr(cfg, "num_channels", 3)), *size], "distribution": "normal",
                                 "dtype": "float32"}}
    if main == "input_values":
        return {"input_values": {"shape": [int(audio_samples)], "distribution": "normal", "dtype": "float32"}}
    raise PipelineError(f"model=hf: the main input {main!r} of {cfg.model_type} ({task}) has no generated inputs.",
                        "Use a dataset of your own whose inputs are named as the model's arguments.")


class HfTaskModel(nn.Module):
    """A transformers model called with named inputs, returning one field of its ModelOutput."""

    def __init__(self, model: nn.Module, input_names: list[str], output: str):
        super().__init__()
        self.model, self.input_names, self.output = model, list(input_names), output

    def forward(self, *inputs, **named):
        # positionally in input_names order (the export, training), or by name (the pre-training check)
        named = {**dict(zip(self.input_names, inputs, strict=False)), **named}
        out = self.model(**named, return_dict=True)
        return {self.output: out[self.output]}


def build(path=None, config=None, task: str = "sequence_classification", num_classes: int | None = None,
          attn_implementation: str = "eager", seq_len: int = 16, audio_samples: int = 4000) -> nn.Module:
    transformers = require("transformers")
    _quiet(transformers)
    cfg = load_config(path, config)
    if num_classes is not None and task in ("sequence_classification", "token_classification",
                                            "image_classification", "audio_classification"):
        cfg.num_labels = int(num_classes)
    if hasattr(cfg, "use_cache"):
        cfg.use_cache = False  # the logits of the whole prompt; no KV cache among the outputs
    model_class(cfg, task)  # a task the architecture lacks is refused by name, before any build
    auto = getattr(transformers, TASKS[task][0])
    if path is not None:
        model = auto.from_pretrained(str(_folder(path)), config=cfg, local_files_only=True, trust_remote_code=False,
                                     use_safetensors=True, attn_implementation=attn_implementation)
    else:
        model = auto.from_config(cfg, attn_implementation=attn_implementation)
        untrivialise_parameters(model)
    names = list(input_specs(path, config, task, seq_len=seq_len, audio_samples=audio_samples))
    return HfTaskModel(model.eval(), names, TASKS[task][1]).eval()
