"""The LLM: mlx-lm's own model code (gemma, llama, mixtral), chosen from the MGM config.

Released configs name the class (architectures) and a model_type that is either current
(mgm_gemma, mgm, mgm_mixtral) or from before the 2024-04 rename (mini_gemini_*).
"""

import importlib
import re
from dataclasses import MISSING, fields

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace, shard_linear
from mlx_lm.models import gemma, llama, mixtral
from mlx_lm.models.base import create_attention_mask

from .config import checked, expect

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

    def sanitize(self, weights: dict) -> dict:
        # Gemma ties lm_head to the embedding; the released 2B checkpoint stores it anyway.
        weights.pop("lm_head.weight", None)
        return weights

    def shard(self, group=None):
        """Tensor parallelism as mlx-lm's llama does it; the embedding (also the output layer)
        stays whole on every rank."""
        group = group or mx.distributed.init()
        for layer in self.model.layers:
            shard_attention(layer.self_attn, group)
            shard_mlp(layer.mlp, group)


class Llama(llama.Model):
    """mlx-lm's Llama (Vicuna, Llama-3, Yi); its own shard() unless the key/value heads do not
    divide by the group size (it would leave 0 heads), then KV heads replicated."""

    def shard(self, group=None):
        group = group or mx.distributed.init()
        if self.args.num_key_value_heads % group.size() == 0:
            return super().shard(group)
        for layer in self.model.layers:
            shard_attention(layer.self_attn, group)
            shard_mlp(layer.mlp, group)


class Mixtral(mixtral.Model):
    """mlx-lm's Mixtral, plus shard(): attention as in llama, each expert's matrices sharded in
    place along the intermediate dimension (as mlx-lm's MoE models do), the router replicated."""

    def shard(self, group=None):
        group = group or mx.distributed.init()
        for layer in self.model.layers:
            shard_attention(layer.self_attn, group, "num_heads", "num_key_value_heads")
            moe = layer.block_sparse_moe
            shard_inplace(moe.switch_mlp.gate_proj, "all-to-sharded", group=group)
            shard_inplace(moe.switch_mlp.up_proj, "all-to-sharded", group=group)
            shard_inplace(moe.switch_mlp.down_proj, "sharded-to-all", group=group)
            moe.__class__ = ShardedMoe
            moe.sharding_group = group


class ShardedMoe(mixtral.MixtralSparseMoeBlock):
    """Each rank's experts give part of every expert's output; the sum over ranks is the whole
    (the weighted sum over experts is linear, so one all_sum after it is enough)."""

    def __call__(self, x):
        return mx.distributed.all_sum(super().__call__(x), group=self.sharding_group)


def shard_attention(attn, group, heads: str = "n_heads", kv_heads: str = "n_kv_heads"):
    """Query heads (and o_proj's columns) divided among the ranks. Key/value heads too when
    they divide by the group size; otherwise each rank keeps, whole, the KV heads its own
    query heads read (MGM-2B's single KV head: every rank keeps it)."""
    n, rank = group.size(), group.rank()
    n_heads, n_kv = getattr(attn, heads), getattr(attn, kv_heads)
    attn.q_proj = shard_linear(attn.q_proj, "all-to-sharded", group=group)
    attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
    if n_kv % n == 0:
        attn.k_proj = shard_linear(attn.k_proj, "all-to-sharded", group=group)
        attn.v_proj = shard_linear(attn.v_proj, "all-to-sharded", group=group)
        local_kv = n_kv // n
    else:
        keep = kv_heads_for(rank, n_heads // n, n_heads // n_kv)
        head_dim = attn.k_proj.weight.shape[0] // n_kv
        rows = mx.array([h * head_dim + i for h in keep for i in range(head_dim)])
        for proj in (attn.k_proj, attn.v_proj):
            proj.update({k: mx.take(v, rows, axis=0) for k, v in proj.parameters().items()})
        local_kv = len(keep)
    setattr(attn, heads, n_heads // n)
    setattr(attn, kv_heads, local_kv)


def kv_heads_for(rank: int, local_heads: int, group_size: int) -> list:
    """The KV heads a rank's query heads [rank * local_heads, ...) read, in the order that
    grouped-query attention pairs them: each once when every one serves the same number of
    local query heads, else one per query head."""
    wanted = [q // group_size for q in range(rank * local_heads, (rank + 1) * local_heads)]
    unique = sorted(set(wanted))
    if local_heads % len(unique) == 0 and all(wanted.count(h) == local_heads // len(unique) for h in unique):
        return unique
    return wanted


def shard_mlp(mlp, group):
    mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
    mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
    mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)



def check(config: dict, shapes: dict) -> None:
    """Refuse an LLM config that is malformed or that its weights contradict, before anything
    is built (num_hidden_layers: 1000000 would build a million layers first).

    shapes: LLM tensor name (Hugging Face / mlx-lm layout, `model.layers.0...`) -> shape."""
    name = family(config)
    args_class = importlib.import_module(f"mlx_lm.models.{name}").ModelArgs
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    if not layers or "model.embed_tokens.weight" not in shapes:
        raise ValueError("the checkpoint has no LLM weights (model.layers.*): it holds only the image path "
                         "(load that with mgm_mlx.load_vision, as examples/encode_image.py does)")
    embed = shapes["model.embed_tokens.weight"]
    checked(args_class, config)
    for f in fields(args_class):
        if f.default is MISSING and f.default_factory is MISSING and config.get(f.name) is None:
            raise ValueError(f"config.json lacks {f.name}, which a {name} LLM needs")
    expect(config, "vocab_size", embed[0], "rows of model.embed_tokens")
    hidden = shapes.get("model.norm.weight", (config["hidden_size"],))[0]
    expect(config, "hidden_size", hidden, "width of model.norm")
    expect(config, "num_hidden_layers", len(layers), "layers in the weights")
    if layers != set(range(len(layers))):
        raise ValueError(f"the weights skip layer {min(set(range(len(layers))) - layers)}")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    attention = "model.layers.0.self_attn."
    if attention + "q_proj.weight" in shapes:
        expect(config, "num_attention_heads", shapes[attention + "q_proj.weight"][0] // head_dim,
               f"q_proj rows / head size {head_dim}")
        kv = shapes[attention + "k_proj.weight"][0] // head_dim if attention + "k_proj.weight" in shapes else heads
        expect(config, "num_key_value_heads", kv, f"k_proj rows / head size {head_dim}")
    mlp = {k[len("model.layers.0."):]: v for k, v in shapes.items() if k.startswith("model.layers.0.")}
    if "mlp.gate_proj.weight" in mlp:
        expect(config, "intermediate_size", mlp["mlp.gate_proj.weight"][0], "rows of mlp.gate_proj")
    if "block_sparse_moe.switch_mlp.gate_proj.weight" in mlp:  # converted: experts stacked
        experts, inner = mlp["block_sparse_moe.switch_mlp.gate_proj.weight"][:2]
    else:  # released: one tensor per expert
        found = {int(m.group(1)) for k in mlp if (m := re.match(r"block_sparse_moe\.experts\.(\d+)\.w1\.weight", k))}
        experts = len(found) or None
        inner = mlp.get("block_sparse_moe.experts.0.w1.weight", (None,))[0]
    if experts:
        expect(config, "num_local_experts", experts, "experts in the weights")
        expect(config, "intermediate_size", inner, "rows of the experts' w1")


def build(config: dict) -> nn.Module:
    """An mlx-lm model whose __call__ takes (inputs, cache, input_embeddings)."""
    name = family(config)
    module = importlib.import_module(f"mlx_lm.models.{name}")
    args = module.ModelArgs.from_dict({**config, "model_type": name})
    return {"gemma": Gemma, "llama": Llama, "mixtral": Mixtral}[name](args)
