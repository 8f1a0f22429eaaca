"""The whole MGM model: the image path (vision.py) beside an mlx-lm LLM (language.py).

Released checkpoints keep everything under `model.` (`model.layers.*`, `model.mm_projector.*`,
`model.vision_tower.vision_tower.*`, ...) plus `lm_head.*`. Here the tree is
`vision.*` + `language_model.*`; `sanitize` maps both the released and the converted layout.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import language, linux_cpu
from .vision import MGMVision, load_strict, rename


class Model(nn.Module):
    def __init__(self, config: dict, vision: MGMVision, language_model: nn.Module):
        super().__init__()
        self.config = config
        self.vision = vision
        self.language_model = language_model

    @classmethod
    def from_weights(cls, config: dict, weights: dict):
        """Build from a config and raw or converted weights (tower sizes come from the weights)."""
        vision_weights = {k[len("vision.") :] if k.startswith("vision.") else k: v for k, v in weights.items()}
        vision = MGMVision.from_weights(config, vision_weights)  # first: checks the image-path config
        return cls(config, vision, language.build(config))

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

    def sanitize(self, weights: dict) -> dict:
        vision, llm = {}, {}
        for key, value in weights.items():
            if key.startswith("vision."):
                vision[key[len("vision.") :]] = value
            elif key.startswith("language_model."):
                llm[key[len("language_model.") :]] = value
            elif rename(key):
                vision[key] = value
            else:
                llm[key] = value
        if hasattr(self.language_model, "sanitize"):
            llm = self.language_model.sanitize(llm)
        if language.is_tied(self.config):
            # The released 2B checkpoint stores lm_head beside the embedding it is tied to.
            llm.pop("lm_head.weight", None)
        return {
            **{"vision." + k: v for k, v in self.vision.sanitize(vision).items()},
            **{"language_model." + k: v for k, v in llm.items()},
        }

    def quantize(self, group_size: int = 64, bits: int = 4, weights: dict | None = None):
        """Quantize the LLM (embeddings and lm_head too, as mlx-lm does); the image path stays.

        With `weights` (a converted folder), exactly the layers that have scales there. On a
        Linux CPU, prefill through the quantized layers takes a BLAS route (linux_cpu.py)."""

        def predicate(path, module):
            if not hasattr(module, "to_quantized"):
                return False
            if weights is not None:
                return f"language_model.{path}.scales" in weights
            return module.weight.shape[-1] % group_size == 0

        nn.quantize(self.language_model, group_size, bits, class_predicate=predicate)
        linux_cpu.route_quantized_prefill(self.language_model)

    def load(self, weights: dict, dtype=None, vision_dtype=None):
        """Load sanitized weights strictly (every tensor present, every shape as configured)."""
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
