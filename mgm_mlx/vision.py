"""MGM's image path: pixels -> CLIP + ConvNeXt -> patch info mining -> LLM-width tokens.

Non-HD: one 576-token view. HD (image_grid=2, image_global=True): four tiles and a global
view, tokens in the order [global, tile00, tile01, tile10, tile11] (5 x 576 = 2880).
"""

import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import BaseModelArgs

from . import clip, convnext, mining, ops
from .config import checked

# part -> a tensor it must have (keys as model.sanitize writes them, under vision.)
REQUIRED = {
    "CLIP": "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "ConvNeXt": "vision_tower_aux.vision_stem.0.weight",
    "patch info mining": "vlm_uni_query_projector.1.weight",
}


@dataclass
class VisionArgs(BaseModelArgs):
    """The MGM config.json fields that shape the image path (HF names)."""

    image_size_aux: int = 768
    image_grid: int = 1
    image_global: bool = False
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_projector_type: str = "mlp2x_gelu"
    image_aspect_ratio: str = "pad"

    @classmethod
    def from_dict(cls, config: dict):
        return super().from_dict(checked(cls, config))  # each field of its declared type


class MissingPart(ValueError):
    """A part of the image path has no weights (loading says where they can come from)."""

    def __init__(self, part: str):
        super().__init__(f"the checkpoint has no {part} weights")
        self.part = part


class MGMVision(nn.Module):
    def __init__(self, args: VisionArgs, clip_config, convnext_config, hidden_size: int):
        super().__init__()
        self.args = args
        if args.mm_vision_select_feature != "patch":
            raise ValueError(f"unsupported mm_vision_select_feature {args.mm_vision_select_feature!r}")
        if args.image_aspect_ratio != "pad":
            raise ValueError(f"unsupported image_aspect_ratio {args.image_aspect_ratio!r}")
        if args.image_global and args.image_grid < 2:
            raise ValueError("image_global needs image_grid >= 2")
        # Each CLIP token must sit on a whole window of the high-res map.
        grid_side = clip_config.image_size // clip_config.patch_size
        hr_side = args.image_size_aux // convnext_config.stem_size // args.image_grid
        if args.image_size_aux % (convnext_config.stem_size * args.image_grid) or hr_side % grid_side:
            raise ValueError(
                f"image_size_aux {args.image_size_aux} does not split into {grid_side}x{grid_side} "
                f"windows per tile (grid {args.image_grid})"
            )
        dims, aux_dims = clip_config.hidden_size, convnext_config.hidden_size
        self.vision_tower = clip.VisionModel(clip_config)
        self.vision_tower_aux = convnext.ConvNeXt(convnext_config)
        self.vlm_uni_query_projector = mining.norm_linear(dims, dims)
        self.vlm_uni_aux_projector = mining.norm_linear(aux_dims, dims)
        self.vlm_uni_val_projector = mining.norm_linear(aux_dims, dims)
        self.mm_projector = mining.build_projector(args.mm_projector_type, dims, hidden_size)

    @classmethod
    def from_weights(cls, config: dict, weights: dict):
        """Build from an MGM config.json and the sanitized weights of the image path (keys
        without the `vision.` prefix); tower sizes come from the weights' shapes.

        `mm_vision_config` in the config (written by the converter, or taken from a CLIP
        tower folder) overrides what the weights cannot say: heads, activation, depth."""
        for part, key in REQUIRED.items():
            if key not in weights:
                raise MissingPart(part)
        args = VisionArgs.from_dict(config)
        sections = {}
        for name, kind in (("mm_vision_config", clip.VisionConfig), ("mm_vision_aux_config", convnext.ConvNeXtConfig)):
            section = config.get(name) or {}
            if not isinstance(section, dict):
                raise ValueError(f"config {name} should be an object")
            sections[name] = checked(kind, section, f"config {name}", strict=True)
        overrides = {**sections["mm_vision_config"], "select_layer": args.mm_vision_select_layer}
        try:
            clip_config = clip.VisionConfig.from_weights(weights, prefix="vision_tower.vision_model.", **overrides)
            convnext_config = convnext.ConvNeXtConfig.from_weights(weights, prefix="vision_tower_aux.")
            first = "mm_projector.weight" if "mm_projector.weight" in weights else "mm_projector.0.weight"
            hidden_size = weights[first].shape[0]
        except KeyError as e:
            raise ValueError(f"the checkpoint lacks {e.args[0]} (or it has the wrong name)") from None
        for k, v in sections["mm_vision_aux_config"].items():
            setattr(convnext_config, k, v)
        if not -clip_config.num_hidden_layers <= args.mm_vision_select_layer <= clip_config.num_hidden_layers:
            raise ValueError(f"config mm_vision_select_layer={args.mm_vision_select_layer} is outside the "
                             f"{clip_config.num_hidden_layers} CLIP layers")
        if clip_config.hidden_size % clip_config.num_attention_heads:
            raise ValueError(f"CLIP width {clip_config.hidden_size} does not split into "
                             f"{clip_config.num_attention_heads} heads")
        for name, expected in (("mm_hidden_size", clip_config.hidden_size), ("mm_hidden_size_aux", convnext_config.hidden_size)):
            if config.get(name, expected) != expected:
                raise ValueError(f"config {name}={config[name]} but the weights have {expected}")
        return cls(args, clip_config, convnext_config, hidden_size)

    @property
    def num_tokens(self) -> int:
        """Image tokens per image: 576 per view, (grid^2 + global) views."""
        c = self.vision_tower.config
        views = self.args.image_grid**2 + int(self.args.image_global)
        return views * (c.image_size // c.patch_size) ** 2

    def __call__(self, pixels: mx.array, timings: dict | None = None) -> mx.array:
        """High-res pixels [B, S, S, 3] (from image.preprocess) -> image tokens [B, T, hidden].

        With `timings`, each stage is evaluated on its own and its milliseconds are added
        under "clip", "convnext" and "mining".
        """
        self.check_pixels(pixels)
        tic = time.perf_counter()
        feats = self.low_res(pixels)
        tic = _lap(timings, "clip", feats, tic)
        aux = self.high_res(pixels).astype(feats.dtype)
        tic = _lap(timings, "convnext", aux, tic)
        tokens = self.mine(feats, aux)
        _lap(timings, "mining", tokens, tic)
        return tokens

    def check_pixels(self, pixels: mx.array):
        s = self.args.image_size_aux
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3):
            raise ValueError(f"expected pixels [B, {s}, {s}, 3] from preprocess(image, {s}); got {tuple(pixels.shape)}")

    # The three stages (the towers need nothing from each other; mlx.launch ranks split them).

    def low_res(self, pixels: mx.array) -> mx.array:
        """CLIP features [B * views, T, C] of the low-res views (HD: tiles, then the global view)."""
        args = self.args
        dtype = self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype
        views = ops.lowres_views(pixels, self.vision_tower.config.image_size, args.image_grid, args.image_global)
        return self.vision_tower(views.astype(dtype))

    def high_res(self, pixels: mx.array) -> mx.array:
        """ConvNeXt's concatenated, upsampled stages [B, S/4, S/4, C_aux]."""
        return self.vision_tower_aux(pixels.astype(self.vision_tower_aux.vision_stem[0].weight.dtype))

    def mine(self, feats: mx.array, aux: mx.array) -> mx.array:
        """Patch info mining of each view's CLIP tokens over its high-res window, then the
        projector -> image tokens [B, T, hidden]."""
        g, use_global = self.args.image_grid, self.args.image_global
        t, c = feats.shape[1:]
        b = aux.shape[0]
        feats = feats.reshape(b, -1, t, c)
        projectors = (self.vlm_uni_query_projector, self.vlm_uni_aux_projector, self.vlm_uni_val_projector)
        parts = []
        if use_global:
            h, w = aux.shape[1:3]
            aux_global = ops.resize_bilinear(aux, (h // g, w // g))
            parts.append(mining.mine(feats[:, -1], aux_global, *projectors))
        if g > 1:
            tiles = feats[:, : g * g].reshape(b * g * g, t, c)
            aux_tiles = ops.windows(aux, g).reshape(b * g * g, aux.shape[1] // g, aux.shape[2] // g, aux.shape[3])
            parts.append(mining.mine(tiles, aux_tiles, *projectors).reshape(b, g * g * t, c))
        else:
            parts.append(mining.mine(feats[:, 0], aux, *projectors))
        tokens = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)
        return mining.chain(self.mm_projector, tokens)


def _lap(timings, name, value, tic):
    if timings is None:
        return tic
    mx.eval(value)
    toc = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + 1000 * (toc - tic)
    return toc
