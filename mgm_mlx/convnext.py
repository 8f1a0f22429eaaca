"""High-res tower: the OpenCLIP ConvNeXt trunk (timm semantics, eval mode), channels-last.

MGM keeps only `trunk.stem` and `trunk.stages` (as `vision_stem`, `vision_stages`) and
uses every stage: stages 1-3 are upsampled to the stage-0 grid and all four are
concatenated on channels (192+384+768+1536 = 2880 for ConvNeXt-L).
"""

import re
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from .ops import resize_bilinear


@dataclass
class ConvNeXtConfig:
    depths: list[int] = field(default_factory=lambda: [3, 3, 27, 3])
    dims: list[int] = field(default_factory=lambda: [192, 384, 768, 1536])
    in_channels: int = 3
    stem_size: int = 4
    layer_norm_eps: float = 1e-6

    @property
    def hidden_size(self) -> int:
        return sum(self.dims)

    @classmethod
    def from_weights(cls, weights: dict, prefix: str = ""):
        """Derive stage widths and depths from tensor shapes and key counts."""
        block = re.compile(re.escape(prefix) + r"vision_stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight")
        depth = {}
        dims = {}
        for key, value in weights.items():
            if m := block.match(key):
                s, b = int(m.group(1)), int(m.group(2))
                depth[s] = max(depth.get(s, 0), b + 1)
                dims[s] = value.shape[0]
        stem = weights[prefix + "vision_stem.0.weight"]
        square = stem.shape[2] == stem.shape[3]  # PyTorch [O, I, k, k] or MLX [O, k, k, I]
        dims = [dims[s] for s in sorted(dims)]
        return cls(
            depths=[depth[s] for s in sorted(depth)],
            dims=dims,
            layer_norm_eps=1e-5 if dims == [384, 768, 1536, 3072] else 1e-6,  # timm: xxlarge uses 1e-5
            in_channels=stem.shape[1] if square else stem.shape[3],
            stem_size=stem.shape[2] if square else stem.shape[1],
        )


class Mlp(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, 4 * dims)
        self.fc2 = nn.Linear(4 * dims, dims)

    def __call__(self, x):
        return self.fc2(nn.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.conv_dw = nn.Conv2d(dims, dims, 7, padding=3, groups=dims)
        self.norm = nn.LayerNorm(dims, eps=eps)
        self.mlp = Mlp(dims)
        self.gamma = mx.ones((dims,))

    def __call__(self, x):
        return x + self.gamma * self.mlp(self.norm(self.conv_dw(x)))


class Stage(nn.Module):
    def __init__(self, in_dims: int, dims: int, depth: int, eps: float, downsample: bool):
        super().__init__()
        if downsample:
            self.downsample = [nn.LayerNorm(in_dims, eps=eps), nn.Conv2d(in_dims, dims, 2, stride=2)]
        self.blocks = [Block(dims, eps) for _ in range(depth)]

    def __call__(self, x):
        for layer in getattr(self, "downsample", []):
            x = layer(x)
        for block in self.blocks:
            x = block(x)
        return x


class ConvNeXt(nn.Module):
    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        self.config = config
        d0, eps = config.dims[0], config.layer_norm_eps
        k = config.stem_size
        self.vision_stem = [nn.Conv2d(config.in_channels, d0, k, stride=k), nn.LayerNorm(d0, eps=eps)]
        in_dims = [d0] + config.dims[:-1]
        self.vision_stages = [
            Stage(i, d, n, eps, downsample=s > 0)
            for s, (i, d, n) in enumerate(zip(in_dims, config.dims, config.depths))
        ]

    def stages(self, x: mx.array) -> list[mx.array]:
        """Pixels [B, H, W, 3] -> the output of every stage (NHWC)."""
        for layer in self.vision_stem:
            x = layer(x)
        outs = []
        for stage in self.vision_stages:
            x = stage(x)
            outs.append(x)
        return outs

    def __call__(self, x: mx.array) -> mx.array:
        """Pixels [B, H, W, 3] -> [B, H/4, W/4, sum(dims)]: all stages on the stage-0 grid."""
        outs = self.stages(x)
        size = outs[0].shape[1:3]
        return mx.concatenate([outs[0]] + [resize_bilinear(o, size) for o in outs[1:]], axis=-1)
