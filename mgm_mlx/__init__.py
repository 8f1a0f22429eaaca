"""mgm-mlx: Mini-Gemini vision-language models with MLX."""

from .linux_cpu import preload_openblas

preload_openblas()  # before anything imports mlx; a no-op on macOS (see linux_cpu.py)

from .image import ImageError, load_image, preprocess  # noqa: E402
from .loading import load, load_vision  # noqa: E402
from .model import Model  # noqa: E402
from .processor import Processor  # noqa: E402
from .session import Chat, ContextFull, Session, Settings, Turn, stream_generate  # noqa: E402
from .vision import MGMVision  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Chat", "ContextFull", "ImageError", "MGMVision", "Model", "Processor", "Session", "Settings", "Turn",
    "generate", "load", "load_image", "load_vision", "preprocess", "stream_generate",
]


def __getattr__(name):
    # `mgm_mlx.generate` is the command's module, which is callable as the function (see
    # generate.py); imported on first use, so `python -m mgm_mlx.generate` does not find
    # itself already loaded.
    if name == "generate":
        import importlib

        globals()["generate"] = importlib.import_module(".generate", __name__)
        return globals()["generate"]
    raise AttributeError(f"module 'mgm_mlx' has no attribute {name!r}")
