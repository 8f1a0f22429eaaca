"""Patch info mining (mgm_arch.unified_resampler) and the MLP projector into the LLM.

Each low-res CLIP token q attends over the high-res pixels under it (an 8x8 window of
the ConvNeXt map for MGM): softmax(LN-Linear(q) . LN-Linear(a)^T / sqrt(C)) . LN-Linear(a),
then the raw CLIP feature is added back and `mm_projector` maps to the LLM width.
"""

import math
import re

import mlx.core as mx
import mlx.nn as nn

from . import ops


def norm_linear(in_dims: int, out_dims: int) -> list:
    """The vlm_uni_{query,aux,val}_projector layout: Sequential(LayerNorm, Linear)."""
    return [nn.LayerNorm(in_dims), nn.Linear(in_dims, out_dims)]


def build_projector(projector_type: str, in_dims: int, out_dims: int):
    """`mm_projector` as the reference builds it: 'linear' or 'mlp{N}x_gelu'."""
    if projector_type == "linear":
        return nn.Linear(in_dims, out_dims)
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not m:
        raise ValueError(f"unsupported mm_projector_type {projector_type!r}")
    layers = [nn.Linear(in_dims, out_dims)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dims, out_dims)]
    return layers


def chain(layers, x):
    """Apply a layer, or a list of layers in order. Lists rather than nn.Sequential keep the
    checkpoint's key names (mm_projector.0.weight, not mm_projector.layers.0.weight)."""
    if not isinstance(layers, list):
        return layers(x)
    for layer in layers:
        x = layer(x)
    return x


def mine(features, aux, query_projector, aux_projector, val_projector) -> mx.array:
    """CLIP features [N, T, C] + high-res map [N, h, w, Ca] -> features + mined [N, T, C]."""
    n = math.isqrt(features.shape[1])  # one window of the high-res map per CLIP token
    windows = ops.windows(aux, n).reshape(aux.shape[0], n * n, -1, aux.shape[-1])  # [N, T, s*s, Ca]
    q = chain(query_projector, features)
    k = chain(aux_projector, windows)
    v = chain(val_projector, windows)
    # The reference scales k by 1/sqrt(C) before the product; scaling q is the same and
    # cheaper, and like it keeps float16 dot products from overflowing.
    q = q * (k.shape[-1] ** -0.5)
    logits = (k @ q[..., None])[..., 0]  # [N, T, s*s]
    weights = mx.softmax(mx.nan_to_num(logits), axis=-1, precise=True)
    mined = (weights[..., None, :] @ v)[..., 0, :]
    return features + mined
