"""Low-res tower: CLIP ViT (transformers CLIPVisionModel semantics), channels-last input.

MGM takes hidden_states[select_layer] (-2: the output of the second-to-last layer) and
drops the CLS token, so only the first layers run and post_layernorm is never built. All
layers are kept, so the depth read from any saved copy of the weights stays right.
"""

import math
import re
from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn


@dataclass
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    select_layer: int = -2

    @property
    def num_layers_run(self) -> int:
        # hidden_states has num_hidden_layers + 1 entries; entry k is the output of k layers.
        k = self.select_layer % (self.num_hidden_layers + 1)
        return k

    @classmethod
    def from_weights(cls, weights: dict, prefix: str = "vision_model.", **overrides):
        """Derive the tower size from tensor shapes (MGM's config.json does not describe it)."""
        patch = weights[prefix + "embeddings.patch_embedding.weight"]
        positions = weights[prefix + "embeddings.position_embedding.weight"].shape[0]
        hidden = patch.shape[0]
        # PyTorch [O, I, k, k] or MLX [O, k, k, I]
        channels, k = (patch.shape[1], patch.shape[2]) if patch.shape[2] == patch.shape[3] else (patch.shape[3], patch.shape[1])
        layer = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        depth = 1 + max(int(m.group(1)) for key in weights if (m := layer.match(key)))
        fc1 = weights[prefix + "encoder.layers.0.mlp.fc1.weight"]
        args = dict(
            hidden_size=hidden,
            intermediate_size=fc1.shape[0],
            num_hidden_layers=depth,
            num_attention_heads=max(1, hidden // 64),
            image_size=math.isqrt(positions - 1) * k,
            patch_size=k,
            num_channels=channels,
        )
        args.update(overrides)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in args.items() if k in names})


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x):
        B, L, D = x.shape
        q, k, v = (
            p(x).reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, D))


# OpenAI's CLIP uses quick_gelu, x * sigmoid(1.702 x): MLX's gelu_fast_approx.
ACTIVATIONS = {"quick_gelu": nn.gelu_fast_approx, "gelu": nn.gelu, "gelu_pytorch_tanh": nn.gelu_approx}


class MLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported CLIP activation {config.hidden_act!r}")
        self.act = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = [EncoderLayer(config) for _ in range(config.num_hidden_layers)]


class Embeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        d = config.hidden_size
        self.class_embedding = mx.zeros((d,))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, d, config.patch_size, stride=config.patch_size, bias=False
        )
        num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(num_positions, d)

    def __call__(self, x):
        x = self.patch_embedding(x)  # [B, h, w, D]
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        cls = mx.broadcast_to(self.class_embedding.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        return mx.concatenate([cls, x], axis=1) + self.position_embedding.weight


class ClipVisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.num_layers_run = config.num_layers_run

    def __call__(self, x):
        x = self.pre_layrnorm(self.embeddings(x))
        for layer in self.encoder.layers[: self.num_layers_run]:
            x = layer(x)
        return x


class VisionModel(nn.Module):
    """CLIP vision tower; keys follow transformers' CLIPVisionModel (`vision_model.*`)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = ClipVisionTransformer(config)

    def __call__(self, pixels: mx.array) -> mx.array:
        """Pixels [B, H, W, 3] -> patch features [B, (H/p)*(W/p), D] (CLS dropped)."""
        return self.vision_model(pixels)[:, 1:]

