"""Tiny transformers text models with random weights, as users deploy them: ``(input_ids, attention_mask)``
in, ``.logits`` out. For ``model.net._target_=tests.text_models.<Class>`` runs (no download: each builds
its model from a small config)."""
import torch
from torch import nn

VOCAB = 128


def _config(kind: str, vocab: int, hidden: int, layers: int, seq: int):
    import transformers

    common = {"vocab_size": vocab, "num_hidden_layers": layers, "num_attention_heads": 4,
              "max_position_embeddings": max(64, seq)}
    if kind == "bert":
        return transformers.BertConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_labels=3, **common)
    if kind == "mamba":
        return transformers.MambaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, state_size=8,
                                        use_cache=False)
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                                       n_positions=max(64, seq), use_cache=False,
                                       bos_token_id=0, eos_token_id=0)
    llama_style = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_key_value_heads": 2,
                   "use_cache": False, **common}
    configs = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}
    return configs[kind](**llama_style)


class _TextModel(nn.Module):
    kind = ""
    head = "causal"

    def __init__(self, vocab: int = VOCAB, hidden: int = 32, layers: int = 2, seq: int = 16,
                 attention: str = "sdpa"):
        super().__init__()
        import transformers

        torch.manual_seed(0)
        config = _config(self.kind, vocab, hidden, layers, seq)
        # Wider than the default 0.02: logits of random weights spread enough that top-1 is not a tie.
        config.initializer_range = 0.1
        if self.kind != "mamba":  # no attention
            config._attn_implementation = attention  # transformers' default ("sdpa"), or "eager"
        auto = (transformers.AutoModelForSequenceClassification if self.head == "classify"
                else transformers.AutoModelForCausalLM)
        self.model = auto.from_config(config).eval()

    def forward(self, input_ids, attention_mask=None):
        if self.head == "classify":
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        # [N, vocab, T]: the classes on dim 1, as cross-entropy takes them, so that parity's top-1 agreement
        # compares the predicted token of each position (on [N, T, vocab] it would compare positions).
        return logits.transpose(1, 2)


class TinyBert(_TextModel):
    """BERT sequence classification (3 classes) with an attention mask."""

    kind, head = "bert", "classify"


class TinyGPT2(_TextModel):
    """GPT-2 causal LM: logits of every position of a prompt."""

    kind = "gpt2"


class TinyLlama(_TextModel):
    kind = "llama"


class TinyQwen2(_TextModel):
    kind = "qwen2"


class TinyMistral(_TextModel):
    kind = "mistral"


class TinyMamba(_TextModel):
    """Mamba (selective state space, transformers' sequential path): ids only, it takes no attention mask."""

    kind = "mamba"
