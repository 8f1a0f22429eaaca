"""The whole MGM model: the image path (vision.py) beside an mlx-lm LLM (language.py), and
`sanitize`, the one place where checkpoint key names are mapped to this module tree.

Released checkpoints keep everything under `model.` (`model.layers.*`, `model.mm_projector.*`,
`model.vision_tower.vision_tower.*`, ...) plus `lm_head.*`; towers may also come from their
own folders (HF CLIP `vision_model.*`, OpenCLIP `visual.trunk.*`). Here the tree is
`vision.*` + `language_model.*`, which is also what a converted folder stores.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import linux_cpu
from .vision import MGMVision

# (key prefix in a file, prefix in this tree, stored in PyTorch's layout), first match wins
LAYOUTS = (
    ("vision.", "vision.", False),  # converted by mgm-mlx
    ("language_model.", "language_model.", False),
    ("model.vision_tower.vision_tower.", "vision.vision_tower.", True),  # released MGM
    ("model.vision_tower_aux.", "vision.vision_tower_aux.", True),
    ("model.vlm_uni_", "vision.vlm_uni_", True),
    ("model.mm_projector.", "vision.mm_projector.", True),
    ("vision_model.", "vision.vision_tower.vision_model.", True),  # a CLIP folder (HF)
    ("visual.trunk.stem.", "vision.vision_tower_aux.vision_stem.", True),  # a ConvNeXt folder (OpenCLIP)
    ("visual.trunk.stages.", "vision.vision_tower_aux.vision_stages.", True),
    ("model.", "language_model.model.", True),  # the LLM under its Hugging Face names
    ("lm_head.", "language_model.lm_head.", True),
)
# Stored but never used: MGM stops CLIP before its last norm; buffers HF saved with weights.
UNUSED = (".post_layernorm.", ".position_ids", ".rotary_emb.inv_freq")


def sanitize(weights: dict) -> dict:
    """Weights in any layout above -> this tree, each key renamed once; convolutions from
    PyTorch's OIHW to MLX's OHWI. Other parts of a tower folder (its text model, heads) are
    dropped."""
    out = {}
    for key, value in weights.items():
        match = next((layout for layout in LAYOUTS if key.startswith(layout[0])), None)
        if match is None or any(unused in key for unused in UNUSED):
            continue
        source, target, torch_layout = match
        if torch_layout and value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        out[target + key[len(source) :]] = value
    return out


def part(weights: dict, prefix: str) -> dict:
    """The weights under `prefix` (e.g. "vision."), with the prefix taken off."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


class Model(nn.Module):
    def __init__(self, config: dict, vision: MGMVision, language_model: nn.Module):
        super().__init__()
        self.config = config
        self.vision = vision
        self.language_model = language_model

    def sanitize(self, weights: dict) -> dict:
        """The LLM family's own sanitize from mlx-lm (Mixtral's experts stacked, a tied
        lm_head dropped), on weights already in this tree (model.sanitize)."""
        if not hasattr(self.language_model, "sanitize"):
            return weights
        prefix = "language_model."
        llm = self.language_model.sanitize(part(weights, prefix))
        return {k: v for k, v in weights.items() if not k.startswith(prefix)} | {prefix + k: v for k, v in llm.items()}

    @property
    def max_length(self) -> int:
        """Text plus image tokens the model takes (the reference truncates at this length)."""
        return int(self.config.get("tokenizer_model_max_length") or 2048)

    def embed(self, ids: list, images: list) -> mx.array:
        """Token ids with IMAGE_TOKEN_INDEX placeholders + one [T, H] block per placeholder
        -> input embeddings [1, L, H] (prepare_inputs_labels_for_multimodal)."""
        embed_tokens = self.language_model.model.embed_tokens
        dtype = self.language_model.model.norm.weight.dtype
        pieces, text, k = [], [], 0
        for i in ids + [None]:
            if i is not None and i >= 0:
                text.append(i)
                continue
            if text:
                pieces.append(embed_tokens(mx.array(text)).astype(dtype))
                text = []
            if i is not None:
                pieces.append(images[k].astype(dtype))
                k += 1
        if k != len(images):
            raise ValueError(f"the prompt has {k} <image> tokens for {len(images)} images")
        return mx.concatenate(pieces, axis=0)[None]

    def quantize(self, group_size: int = 64, bits: int = 4, mode: str = "affine", predicate=None,
                 config: dict | None = None) -> dict:
        """Quantize the LLM (embeddings and lm_head too, as mlx-lm does); the image path stays.

        Through mlx-lm's quantize_model: `predicate(path, module)` may choose per layer (a
        mixed-precision recipe). Returns the config with its "quantization" entry. On a Linux
        CPU, prefill through the quantized layers takes a BLAS route (linux_cpu.py)."""
        import contextlib
        import io

        from mlx_lm.utils import quantize_model

        def llm_only(path, module):
            if path.startswith("vision."):
                return False
            return predicate(path, module) if predicate else True

        with contextlib.redirect_stdout(io.StringIO()):  # its "[INFO] ... bits per weight" line
            _, config = quantize_model(self, config or self.config, group_size, bits, mode=mode,
                                       quant_predicate=llm_only)
        config.pop("quantization_config", None)  # mlx-lm's copy for the HF tree; one is enough
        if mode == "affine":  # the default everywhere; folders written before stay identical
            config["quantization"].pop("mode", None)
        self.config = config
        linux_cpu.route_quantized_prefill(self.language_model)
        return config

    def quantize_as_stored(self, weights: dict):
        """A converted folder: quantize exactly the layers that have scales there, each with
        its own settings where the config has per-layer ones (mixed precision)."""
        q = self.config["quantization"]

        def predicate(path, module):
            if path in q and isinstance(q[path], dict):
                return q[path]
            return hasattr(module, "to_quantized") and f"{path}.scales" in weights

        nn.quantize(self, q["group_size"], q["bits"], mode=q.get("mode", "affine"), class_predicate=predicate)
        linux_cpu.route_quantized_prefill(self.language_model)

    def load_checked(self, weights: dict, dtype=None, vision_dtype=None):
        """Load sanitized weights strictly: every tensor present, of the configured shape, a
        float where floats belong; cast the LLM to dtype and the image path to vision_dtype."""
        cast = {}
        expected = dict(tree_flatten(self.parameters()))
        for key, value in weights.items():
            if key in expected and mx.issubdtype(expected[key].dtype, mx.floating) != mx.issubdtype(value.dtype, mx.floating):
                raise ValueError(f"the weight {key} is {str(value.dtype).split('.')[-1]}; "
                                 f"it should be {str(expected[key].dtype).split('.')[-1]}")
            target = vision_dtype if key.startswith("vision.") else dtype
            if target is not None and mx.issubdtype(value.dtype, mx.floating):
                value = value.astype(target)
            cast[key] = value
        load_strict(self, cast)


def load_strict(module: nn.Module, weights: dict):
    """Every parameter present and of the configured shape, else one clear line."""
    try:
        module.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        text = " ".join(str(e).split())
        raise ValueError(f"the weights do not match the config: {text[:300]}") from None
