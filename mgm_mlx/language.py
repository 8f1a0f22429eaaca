"""The LLM: mlx-lm's own model code (gemma, llama, mixtral), chosen from the MGM config.

Released configs name the class (architectures) and a model_type that is either current
(mgm_gemma, mgm, mgm_mixtral) or from before the 2024-04 rename (mini_gemini_*).
"""

import importlib

import mlx.nn as nn

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


def build(config: dict) -> nn.Module:
    name = family(config)
    module = importlib.import_module(f"mlx_lm.models.{name}")
    return module.Model(module.ModelArgs.from_dict({**config, "model_type": name}))


def is_tied(config: dict) -> bool:
    # mlx-lm's gemma always uses the embedding as the output layer, as HF ties them.
    return family(config) == "gemma" or bool(config.get("tie_word_embeddings", False))
