"""Draw MGM's picture prompts with diffusionkit (Argmax's MLX FLUX.1 and Stable Diffusion 3).

diffusionkit is an optional extra, patched for today's MLX in diffusionkit_compat.py. Its
pipelines keep state in module globals (configs, RNG seeds), so there is one pipeline per
process, used under a lock, and rebuilt after any failure (a failed run leaves it broken).
Weights come from the Hugging Face cache (downloaded on first use; HF_HUB_OFFLINE is honoured).
"""

import contextlib
import gc
import random
import threading
import time
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np

from .imagegen import INSTALL, GenerationError, ImageRequest, Picture, Stopped, clean_prompt

SHARED = ("argmaxinc/stable-diffusion", "google/t5-v1_1-xxl")  # text encoders and tokenizers


@dataclass(frozen=True)
class Spec:
    repo: str
    title: str
    flux: bool
    steps: int
    guidance: float
    shift: float


MODELS = {
    "flux-schnell": Spec("argmaxinc/mlx-FLUX.1-schnell", "FLUX.1-schnell", True, 4, 0.0, 1.0),
    "flux-schnell-4bit": Spec("argmaxinc/mlx-FLUX.1-schnell-4bit-quantized", "FLUX.1-schnell 4-bit", True, 4, 0.0, 1.0),
    "sd3-medium": Spec("argmaxinc/mlx-stable-diffusion-3-medium", "Stable Diffusion 3 medium", False, 50, 5.0, 3.0),
}
MIN_SIDE, MAX_SIDE = 64, 2048

_LOCK = threading.RLock()
_PIPELINE = None  # (key, pipeline): at most one per process


def _diffusionkit():
    try:
        from . import diffusionkit_compat

        diffusionkit_compat.apply()
        from diffusionkit import mlx as dk
    except ImportError as e:
        raise GenerationError(f"{INSTALL} ({e})") from None
    return dk


def spec(model: str) -> Spec:
    if model not in MODELS:
        raise GenerationError(f"unknown image model {model!r}; choose from {', '.join(MODELS)}")
    return MODELS[model]


def check_size(name: str, width: int, height: int, max_side: int = MAX_SIDE):
    if width % 16 or height % 16 or min(width, height) < MIN_SIDE or max(width, height) > max_side:
        raise GenerationError(f"{name} draws sizes that are multiples of 16 from {MIN_SIDE} to "
                              f"{max_side} pixels a side; {width}x{height} is not one")


def _drop():
    global _PIPELINE
    _PIPELINE = None
    gc.collect()
    mx.clear_cache()


def _offline(spec: Spec) -> str:
    repos = ", ".join((spec.repo,) + SHARED)
    return (f"the {spec.title} weights are not in the Hugging Face cache and the hub can't be reached; "
            f"run once online to download them ({repos})")


def _explain(e: Exception, spec: Spec) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return f"{spec.repo} is gated: accept its licence on huggingface.co, then log in with `hf auth login`"
    if isinstance(e, RepositoryNotFoundError):
        return f"{spec.repo} was not found on the Hugging Face hub"
    # transformers (the T5 config and tokenizer) says "couldn't connect to 'https://huggingface.co'"
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or "couldn't connect" in str(e).lower():
        return _offline(spec)
    return f"image generation failed: {' '.join(str(e).split()) or type(e).__name__}"


class DiffusionKitGenerator:
    """generate(ImageRequest) -> Picture with FLUX.1-schnell (default) or SD3-medium.

    keep=False (default) frees the pipeline after each picture (and runs diffusionkit's low
    memory mode, which drops each part once used); keep=True keeps it resident for the next.
    half: 16-bit weights and activations; default on the GPU (Metal), float32 on the CPU,
    where half precision is emulated and slower.
    """

    def __init__(self, model: str = "flux-schnell", keep: bool = False, half: bool | None = None):
        self.spec = spec(model)
        self.name = self.spec.title
        self.keep = keep
        self.half = mx.default_device() == mx.gpu if half is None else half
        self._dk = _diffusionkit()  # a missing extra fails here, before any work

    def check(self, request: ImageRequest) -> None:
        check_size(self.name, request.width, request.height, self._max_side())
        if request.steps is not None and request.steps < 1:
            raise GenerationError("the number of steps must be at least 1")
        if not self.spec.flux and request.guidance is not None and request.guidance <= 0:
            raise GenerationError(f"{self.name} needs a guidance above 0 (default {self.spec.guidance})")
        if self.spec.flux and request.guidance:  # diffusionkit would double the batch and fail
            raise GenerationError(f"{self.name} is distilled to run without guidance; leave it at 0")
        clean_prompt(request.prompt)

    def check_weights(self) -> None:
        """Offline (HF_HUB_OFFLINE), say now if the weights are not cached, before any other work.
        Online they are downloaded when the first picture is drawn."""
        from diffusionkit.mlx import model_io
        from huggingface_hub import constants, try_to_load_from_cache

        if not constants.HF_HUB_OFFLINE:
            return
        files = [(self.spec.repo, name) for name in {*model_io._MMDIT[self.spec.repo].values(), "config.json"}]
        parts = ["clip_l", "clip_l_config", "tokenizer_l_vocab", "tokenizer_l_merges", "t5"]
        if not self.spec.flux:
            parts += ["clip_g", "clip_g_config", "tokenizer_g_vocab", "tokenizer_g_merges"]
        files += [(SHARED[0], model_io._MODELS[SHARED[0]][k]) for k in parts]
        files += [(SHARED[1], name) for name in ("config.json", "tokenizer_config.json", "spiece.model")]
        if any(not isinstance(try_to_load_from_cache(repo, name), str) for repo, name in files):
            raise GenerationError(_offline(self.spec))

    def _max_side(self) -> int:
        if self.spec.flux:
            return MAX_SIDE
        from diffusionkit.mlx import model_io  # SD3's learned position table: 8 px x its latent size

        return min(MAX_SIDE, 8 * model_io._CONFIG[self.spec.repo].max_latent_resolution)

    def _pipeline(self):
        global _PIPELINE
        key = (self.spec.repo, self.half, self.keep)
        if _PIPELINE is not None and _PIPELINE[0] == key:
            return _PIPELINE[1]
        _drop()
        cls = self._dk.FluxPipeline if self.spec.flux else self._dk.DiffusionPipeline
        pipe = cls(model_version=self.spec.repo, low_memory_mode=not self.keep, w16=self.half, a16=self.half,
                   shift=self.spec.shift)
        _PIPELINE = (key, pipe)
        return pipe

    def generate(self, request: ImageRequest, progress=None) -> Picture:
        """progress(step, total) after each denoising step; None shows diffusionkit's tqdm bar."""
        self.check(request)
        spec = self.spec
        guidance = spec.guidance if request.guidance is None else request.guidance
        drawn = replace(request, prompt=clean_prompt(request.prompt), steps=request.steps or spec.steps,
                        guidance=guidance, seed=random.randrange(2**31) if request.seed is None else request.seed,
                        negative_prompt=request.negative_prompt if not spec.flux and guidance > 1 else "")
        with _LOCK:
            limit = mx.get_memory_limit()  # diffusionkit's T5 changes it
            np_state = np.random.get_state()
            mx.reset_peak_memory()
            tic = time.perf_counter()
            try:
                from .diffusionkit_compat import steps

                with steps(progress) if progress else contextlib.nullcontext():
                    image, _ = self._pipeline().generate_image(
                        drawn.prompt, num_steps=drawn.steps, cfg_weight=guidance, negative_text=drawn.negative_prompt,
                        latent_size=(drawn.height // 8, drawn.width // 8), seed=drawn.seed, verbose=False)
            except BaseException as e:  # the pipeline is left half-swapped: build a new one next time
                _drop()
                if isinstance(e, (Stopped, GenerationError)) or not isinstance(e, Exception):
                    raise
                raise GenerationError(_explain(e, spec)) from e
            finally:
                mx.set_memory_limit(limit)
                # diffusionkit seeded the global RNGs with the picture's seed; don't let that
                # decide what the chat samples next
                np.random.set_state(np_state)
                mx.random.seed(random.SystemRandom().getrandbits(31))
            seconds, peak = time.perf_counter() - tic, mx.get_peak_memory() / 1e9
            if not self.keep:
                _drop()
        return Picture(image.convert("RGB"), drawn, seconds, peak)

    def close(self) -> None:
        with _LOCK:
            _drop()
