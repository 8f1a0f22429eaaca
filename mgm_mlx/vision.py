"""MGM's image path: pixels -> CLIP + ConvNeXt -> patch info mining -> LLM-width tokens.

Non-HD: one 576-token view. HD (image_grid=2, image_global=True): four tiles and a global
view, tokens in the order [global, tile00, tile01, tile10, tile11] (5 x 576 = 2880).
"""

import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import clip, convnext, mining
from .config import checked
from .image import lowres_views, resize_bilinear, split_grid

# Checkpoint key prefixes (after "model.") that belong to the image path.
VISION_PREFIXES = ("vision_tower.", "vision_tower_aux.", "vlm_uni_", "mm_projector.")
# part -> (a tensor it must have, its released key prefix, where else it can come from)
REQUIRED = {
    "CLIP": ("vision_tower.vision_model.embeddings.patch_embedding.weight", "model.vision_tower.vision_tower.",
             "; give its folder with --vision-tower"),
    "ConvNeXt": ("vision_tower_aux.vision_stem.0.weight", "model.vision_tower_aux.",
                 "; give its folder with --vision-tower-aux"),
    "patch info mining": ("vlm_uni_query_projector.1.weight", "model.vlm_uni_", ""),
}


@dataclass
class VisionArgs:
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
        return cls(**checked(cls, config))


def rename(key: str) -> str:
    """Released MGM key -> key in this module tree ('' when not part of the image path)."""
    if key.startswith("model."):
        key = key[len("model.") :]
    if not key.startswith(VISION_PREFIXES):
        return ""
    # The reference wraps CLIPVisionModel in CLIPVisionTower: vision_tower.vision_tower.*
    return key.replace("vision_tower.vision_tower.", "vision_tower.", 1)


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
        """Build from an MGM config.json and its weights; tower sizes come from the weights.

        `mm_vision_config` in the config (written by the converter, or taken from a CLIP
        tower folder) overrides what the weights cannot say: heads, activation, depth."""
        w = {rename(k): v for k, v in weights.items()}
        try:
            return cls._from_renamed(config, w)
        except KeyError as e:
            raise ValueError(f"the checkpoint lacks {e.args[0]} (or it has the wrong name)") from None

    @classmethod
    def _from_renamed(cls, config: dict, w: dict):
        for part, (key, prefix, hint) in REQUIRED.items():
            if key not in w:
                raise ValueError(f"the checkpoint has no {part} weights ({prefix}*){hint}")
        args = VisionArgs.from_dict(config)
        sections = {}
        for name, kind in (("mm_vision_config", clip.VisionConfig), ("mm_vision_aux_config", convnext.ConvNeXtConfig)):
            section = config.get(name) or {}
            if not isinstance(section, dict):
                raise ValueError(f"config {name} should be an object")
            sections[name] = checked(kind, section, f"config {name}", strict=True)
        overrides = {**sections["mm_vision_config"], "select_layer": args.mm_vision_select_layer}
        clip_config = clip.VisionConfig.from_weights(w, prefix="vision_tower.vision_model.", **overrides)
        convnext_config = convnext.ConvNeXtConfig.from_weights(w, prefix="vision_tower_aux.")
        for k, v in sections["mm_vision_aux_config"].items():
            setattr(convnext_config, k, v)
        if not -clip_config.num_hidden_layers <= args.mm_vision_select_layer <= clip_config.num_hidden_layers:
            raise ValueError(f"config mm_vision_select_layer={args.mm_vision_select_layer} is outside the "
                             f"{clip_config.num_hidden_layers} CLIP layers")
        first = "mm_projector.weight" if "mm_projector.weight" in w else "mm_projector.0.weight"
        for name, expected in (("mm_hidden_size", clip_config.hidden_size), ("mm_hidden_size_aux", convnext_config.hidden_size)):
            if config.get(name, expected) != expected:
                raise ValueError(f"config {name}={config[name]} but the weights have {expected}")
        return cls(args, clip_config, convnext_config, hidden_size=w[first].shape[0])

    def sanitize(self, weights: dict) -> dict:
        """Released (or already sanitized) weights -> this tree. Keys the image path does not
        use (CLIP's post_layernorm, the LLM) are dropped; convs OIHW -> OHWI."""
        expected = dict(tree_flatten(self.parameters()))
        out = {}
        for key, value in weights.items():
            key = rename(key)
            if key in expected:
                if value.ndim == 4 and value.shape != expected[key].shape:
                    value = value.transpose(0, 2, 3, 1)
                out[key] = value
        return out

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
        args = self.args
        g, use_global = args.image_grid, args.image_global
        s = args.image_size_aux
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3):
            raise ValueError(f"expected pixels [B, {s}, {s}, 3] from preprocess(image, {s}); got {tuple(pixels.shape)}")
        b = pixels.shape[0]
        dtype = self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype
        aux_dtype = self.vision_tower_aux.vision_stem[0].weight.dtype

        tic = time.perf_counter()
        views = lowres_views(pixels, self.vision_tower.config.image_size, g, use_global)
        feats = self.vision_tower(views.astype(dtype))
        tic = _lap(timings, "clip", feats, tic)
        aux = self.vision_tower_aux(pixels.astype(aux_dtype)).astype(feats.dtype)
        tic = _lap(timings, "convnext", aux, tic)

        t, c = feats.shape[1:]
        feats = feats.reshape(b, -1, t, c)
        projectors = (self.vlm_uni_query_projector, self.vlm_uni_aux_projector, self.vlm_uni_val_projector)
        parts = []
        if use_global:
            h, w = aux.shape[1:3]
            aux_global = resize_bilinear(aux, (h // g, w // g))
            parts.append(mining.mine(feats[:, -1], aux_global, *projectors))
        if g > 1:
            tiles = feats[:, : g * g].reshape(b * g * g, t, c)
            parts.append(mining.mine(tiles, split_grid(aux, g), *projectors).reshape(b, g * g * t, c))
        else:
            parts.append(mining.mine(feats[:, 0], aux, *projectors))
        tokens = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)
        tokens = mining.run(self.mm_projector, tokens)
        _lap(timings, "mining", tokens, tic)
        return tokens


def load_strict(module: nn.Module, weights: dict):
    """Every parameter present and of the configured shape, else one clear line."""
    try:
        module.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        text = " ".join(str(e).split())
        raise ValueError(f"the weights do not match the config: {text[:300]}") from None


def _lap(timings, name, value, tic):
    if timings is None:
        return tic
    mx.eval(value)
    toc = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + 1000 * (toc - tic)
    return toc
