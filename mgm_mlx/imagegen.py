"""VLM-guided image generation: MGM writes a picture prompt inside <h>...</h>, a diffusion
model draws it (mgm/serve/cli.py --gen; the reference draws with SDXL on CUDA).

The user turn gets " <GEN>" appended, the reply's last <h>...</h> block is the prompt, and a
generator (diffusion.py: diffusionkit on MLX) turns an ImageRequest into a PIL image.
"""

import importlib
import importlib.util
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

GEN = " <GEN>"
# mgm/serve/cli.py's common_neg_prompt, word for word.
NEGATIVE_PROMPT = (
    "out of frame, lowres, text, error, cropped, worst quality, low quality, jpeg artifacts, ugly, duplicate, "
    "morbid, mutilated, out of frame, extra fingers, mutated hands, poorly drawn hands, poorly drawn face, "
    "mutation, deformed, blurry, dehydrated, bad anatomy, bad proportions, extra limbs, cloned face, disfigured, "
    "gross proportions, malformed limbs, missing arms, missing legs, extra arms, extra legs, fused fingers, "
    "too many fingers, long neck, username, watermark, signature"
)
INSTALL = ("image generation needs diffusionkit: pip install 'mgm-mlx[gen]' && "
           "pip install --no-deps diffusionkit==0.5.1")


class GenerationError(Exception):
    """A picture could not be made; the message says what to do."""


class Stopped(Exception):
    """Raised by a progress callback to stop a picture between steps (not an error)."""

    def __str__(self):
        return "stopped"


class NoPicturePrompt(GenerationError):
    """The reply has no <h>...</h> block to draw (each front-end says what to do instead)."""

    def __init__(self):
        super().__init__("the reply has no <h>...</h> picture prompt (MGM-2B often leaves it out; "
                         "the 13B and 34B models write it more reliably)")


@dataclass
class ImageRequest:
    prompt: str
    width: int = 1024
    height: int = 1024
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    seed: int | None = None  # None: a random seed, reported back
    negative_prompt: str = NEGATIVE_PROMPT


@dataclass
class Picture:
    image: object  # PIL.Image.Image
    request: ImageRequest  # as drawn: steps, guidance and seed filled in
    seconds: float = 0.0
    peak_memory: float = 0.0  # GB


class ImageGenerator(Protocol):
    name: str

    def check(self, request: ImageRequest) -> None:
        """Raise GenerationError for what this backend cannot do, before any heavy work."""

    def generate(self, request: ImageRequest, progress=None) -> Picture:
        """progress: None, or called as progress(step, total) while drawing."""

    def check_weights(self) -> None:
        """Raise GenerationError if the weights are known to be unavailable (offline)."""

    def close(self) -> None:
        """Free whatever the generator holds."""


BACKENDS = {"diffusionkit": "mgm_mlx.diffusion:DiffusionKitGenerator"}


def get_generator(backend: str = "diffusionkit", **options) -> ImageGenerator:
    if backend not in BACKENDS:
        raise GenerationError(f"unknown image backend {backend!r}; choose from {', '.join(BACKENDS)}")
    target = BACKENDS[backend]
    if isinstance(target, str):
        module, name = target.split(":")
        target = getattr(importlib.import_module(module), name)
    return target(**options)


def missing_extra() -> str | None:
    """What to install for image generation, or None when it is there (no import done)."""
    try:
        found = importlib.util.find_spec("diffusionkit") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else INSTALL


def with_gen(text: str) -> str:
    """The user turn as the reference sends it when asked for a picture."""
    return text + GEN


def extract_prompt(reply: str) -> str | None:
    """The last <h>...</h> block of a reply (as mgm/serve/cli.py takes it), or None."""
    blocks = re.findall(r"<h>(.*?)</h>", reply, flags=re.S)
    prompt = " ".join(blocks[-1].split()) if blocks else ""
    return prompt or None


def picture_prompt(reply: str, from_reply: bool = False) -> str:
    """What to draw for a reply: its last <h> block, else (from_reply) the reply itself."""
    text = extract_prompt(reply) or (reply_prompt(reply) if from_reply else None)
    if text is None:
        raise NoPicturePrompt()
    return text


def prepare(model: str = "flux-schnell", size: str | tuple = "1024", steps=None, guidance=None, seed=None,
            keep: bool = False):
    """A generator and a request template, checked before any heavy work: a missing extra,
    an unknown model, a size or guidance it cannot draw, weights not cached offline."""
    width, height = parse_size(size) if isinstance(size, str) else size
    generator = get_generator(model=model, keep=keep)
    request = ImageRequest("a picture", width, height, steps, guidance, seed)
    generator.check(request)
    generator.check_weights()
    return generator, request


def reply_prompt(reply: str) -> str | None:
    """The reply itself as a picture prompt (--gen-from-reply): tags and line breaks out."""
    text = " ".join(re.sub(r"</?h>|<GEN>", " ", reply).split())
    return text or None


def clean_prompt(prompt: str) -> str:
    """ASCII only: diffusionkit's simplified CLIP tokenizer has no byte fallback, so a
    character outside its vocabulary (é, emoji) would stop generation with a KeyError."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    text = " ".join(text.split())
    if not text:
        raise GenerationError("the picture prompt is empty (after dropping non-ASCII characters)")
    return text


def parse_size(text: str) -> tuple[int, int]:
    """"1024" or "768x512" (width x height) -> (width, height)."""
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise GenerationError(f"bad image size {text!r}; use N or WIDTHxHEIGHT, e.g. 1024 or 768x512")
    return parts[0], parts[1]


def next_image_path(folder: str | Path = ".", stem: str = "mgm-image") -> Path:
    """The first free `mgm-image-NNN.png` in folder (existing files are never overwritten)."""
    folder = Path(folder)
    taken = [int(m.group(1)) for p in folder.glob(f"{stem}-*.png") if (m := re.fullmatch(rf"{stem}-(\d+)\.png", p.name))]
    return folder / f"{stem}-{max(taken, default=0) + 1:03d}.png"


def check_output(path: str | Path | None) -> None:
    """Refuse an output file that exists or a folder that doesn't, before anything runs."""
    if path is None:
        return
    path = Path(path)
    if path.exists():
        raise GenerationError(f"{path} exists; choose another --output-image (images are never overwritten)")
    if not path.parent.is_dir():
        raise GenerationError(f"folder {path.parent} does not exist")
    if path.suffix.lower() != ".png":
        raise GenerationError(f"{path}: the image is saved as PNG; use a .png name")


def save_png(image, path: str | Path | None = None) -> Path:
    """Write atomically (a partial file never shows) and never over an existing file."""
    path = Path(path) if path is not None else next_image_path()
    check_output(path)
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=".partial-", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as a plain new file would be, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        try:
            os.link(tmp, path)  # fails if the name was taken meanwhile, unlike rename
        except FileExistsError:
            raise GenerationError(f"{path} exists; images are never overwritten") from None
        except OSError:  # a file system without hard links
            if path.exists():
                raise GenerationError(f"{path} exists; images are never overwritten") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
