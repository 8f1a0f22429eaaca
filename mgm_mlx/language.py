"""The LLM: mlx-lm's own model code (gemma, llama, mixtral), chosen from the MGM config.

Released configs name the class (architectures) and a model_type that is either current
(mgm_gemma, mgm, mgm_mixtral) or from before the 2024-04 rename (mini_gemini_*).
"""

import importlib

import mlx.nn as nn
from mlx_lm.models import gemma
from mlx_lm.models.base import create_attention_mask

# MGM class / model_type -> mlx_lm.models module
ARCHITECTURES = {
    "MGMGemmaForCausalLM": "gemma",
    "MGMLlamaForCausalLM": "llama",
    "MGMMixtralForCausalLM": "mixtral",
    "MGMMistralForCausalLM": "llama",
    "MiniGeminiGemmaForCausalLM": "gemma",
    "MiniGeminiLlamaForCausalLM": "llama",
    "MiniGeminiMixtralForCausalLM": "mixtral",
    "MiniGeminiMistralForCausalLM": "llama",
}
MODEL_TYPES = {
    "mgm_gemma": "gemma",
    "mgm": "llama",
    "mgm_mixtral": "mixtral",
    "mgm_mistral": "llama",
    "mini_gemini_gemma": "gemma",
    "mini_gemini": "llama",
    "mini_gemini_mixtral": "mixtral",
    "mini_gemini_mistral": "llama",
}


def family(config: dict) -> str:
    """The mlx-lm model module for an MGM config; a clear error for anything else."""
    architectures = config.get("architectures") or []
    for name in [architectures] if isinstance(architectures, str) else architectures:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    raise ValueError(
        f"unknown model type {config.get('model_type')!r} (architectures {architectures}); "
        f"supported: {', '.join(MODEL_TYPES)}"
    )


class Gemma(gemma.Model):
    """mlx-lm's Gemma, plus the `input_embeddings` input that llama and mixtral have.

    transformers' GemmaModel multiplies whatever embeddings it gets by sqrt(hidden), so the
    spliced image tokens are scaled too; MGM-2B was trained that way."""

    def __call__(self, inputs, cache=None, input_embeddings=None):
        m = self.model
        h = m.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        h = h * (self.args.hidden_size**0.5)
        cache = cache or [None] * len(m.layers)
        mask = create_attention_mask(h, cache[0])
        for layer, c in zip(m.layers, cache):
            h = layer(h, mask, c)
        return m.embed_tokens.as_linear(m.norm(h))


def build(config: dict) -> nn.Module:
    """An mlx-lm model whose __call__ takes (inputs, cache, input_embeddings)."""
    name = family(config)
    module = importlib.import_module(f"mlx_lm.models.{name}")
    args = module.ModelArgs.from_dict({**config, "model_type": name})
    return Gemma(args) if name == "gemma" else module.Model(args)


def is_tied(config: dict) -> bool:
    # mlx-lm's gemma always uses the embedding as the output layer, as HF ties them.
    return family(config) == "gemma" or bool(config.get("tie_word_embeddings", False))
