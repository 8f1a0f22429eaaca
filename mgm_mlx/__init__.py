"""mgm-mlx: Mini-Gemini vision-language models with MLX."""

from .linux_cpu import preload_openblas

preload_openblas()  # before anything imports mlx; a no-op on macOS (see linux_cpu.py)

from pathlib import Path  # noqa: E402

from .image import ImageError, load_image, preprocess  # noqa: E402
from .loading import load, load_vision  # noqa: E402
from .model import Model  # noqa: E402
from .vision import MGMVision  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Chat", "ImageError", "MGMVision", "Model", "generate", "load", "load_image", "load_vision",
    "preprocess", "stream_generate",
]

# Installed, convert/ and tui/ live inside this package; in a source checkout they sit
# beside it, so `python -m mgm_mlx.convert` run there finds them too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "convert" / "__init__.py").exists() and not (Path(__file__).parent / "convert").exists():
    __path__.append(str(_checkout))



def __getattr__(name):
    # Imported on first use, so `python -m mgm_mlx.generate` does not find its own module
    # already loaded. `mgm_mlx.generate` is that module, which is callable as the function.
    if name in ("generate", "stream_generate", "Chat"):
        import importlib

        module = importlib.import_module(".generate", __name__)  # not `from . import`: that asks us again
        globals().update(generate=module, stream_generate=module.stream_generate, Chat=module.Chat)
        return globals()[name]
    raise AttributeError(f"module 'mgm_mlx' has no attribute {name!r}")
