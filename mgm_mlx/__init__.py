"""mgm-mlx: Mini-Gemini vision-language models with MLX."""

from .generate import Chat, generate, stream_generate
from .image import ImageError, load_image, preprocess
from .loading import load, load_vision
from .model import Model
from .vision import MGMVision

__version__ = "0.1.0"
__all__ = [
    "Chat", "ImageError", "MGMVision", "Model", "generate", "load", "load_image", "load_vision",
    "preprocess", "stream_generate",
]
