"""Image files to pixels: read, make RGB, pad to square, bicubic resize, CLIP-normalise.

The reference (mgm/serve/cli.py + mm_utils.process_images) makes one high-res tensor
(`image_size_aux`, 768 or 1536); the model derives the low-res CLIP views from it
(ops.lowres_views). Only PIL and numpy here: what happens inside the model is in ops.py.
"""

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# expand2square fills with the mean colour as integers: (122, 116, 104).
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)
# A padded canvas larger than this is shrunk first (the reference would pad a
# 100000x40 strip to 100000x100000 pixels and run out of memory).
MAX_CANVAS_SIDE = 10240
# Files are decoded to at most this many pixels (a 140 KB PNG can say 12000x12000, 2 GB
# decoded). JPEGs over it are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling),
# so a JPEG of up to 64x this still reads; anything else over it is refused.
MAX_PIXELS = 64_000_000


# Downloads of images by URL: at most this many bytes, in at most this many seconds.
MAX_DOWNLOAD_BYTES = 50 << 20
DOWNLOAD_TIMEOUT = 30.0


class ImageError(ValueError):
    """An input that cannot be used as an image. The message is one line for the user."""


def is_url(text) -> bool:
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def fetch(url: str, max_bytes: int = MAX_DOWNLOAD_BYTES, timeout: float = DOWNLOAD_TIMEOUT) -> bytes:
    """The bytes of an http(s) URL, bounded in size and time; one-line ImageError otherwise."""
    import time
    import urllib.error
    import urllib.request

    if not is_url(url):
        raise ImageError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "mgm-mlx"})
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            size = response.headers.get("Content-Length")
            if size and size.isdigit() and int(size) > max_bytes:
                raise ImageError(f"{url} is {int(size) >> 20} MB; images of up to {max_bytes >> 20} MB are downloaded")
            data = bytearray()
            while block := response.read(1 << 16):
                data += block
                if len(data) > max_bytes:
                    raise ImageError(f"{url} is larger than {max_bytes >> 20} MB; not downloaded")
                if time.monotonic() > deadline:
                    raise ImageError(f"{url} took longer than {timeout:g} s to download")
    except urllib.error.HTTPError as e:
        raise ImageError(f"cannot download {url} (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ImageError(f"cannot download {url} ({reason}); are you offline?") from None
    return bytes(data)


def load_image(source) -> Image.Image:
    """Read a path, an http(s) URL, the bytes of a file, a PIL image or a numpy array as an
    8-bit RGB PIL image (EXIF orientation applied)."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif is_url(source):
        image = _decode(io.BytesIO(fetch(source)), source)
    elif isinstance(source, (str, os.PathLike)):
        image = _open(Path(source))
    elif isinstance(source, bytes):
        image = _decode(io.BytesIO(source), "the image")
    else:
        raise ImageError(f"cannot use a {type(source).__name__} as an image")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not lose the picture
        pass
    if image.width < 1 or image.height < 1:
        raise ImageError(f"image has no pixels ({image.width}x{image.height})")
    return to_rgb(image)


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes)")
    return _decode(path, path)


def _decode(file, name) -> Image.Image:
    """Open and decode a file (path or file object) in bounded memory; one-line errors."""
    try:
        with warnings.catch_warnings():  # the size is checked here, against MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)  # reads the header only
            _limit_pixels(image, name)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has too many pixels to load safely") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image file that Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name} is damaged or truncated ({e})") from None
    return image


def _limit_pixels(image: Image.Image, name) -> None:
    """Decode at most MAX_PIXELS: shrink a large JPEG while decoding, refuse other formats."""
    w, h = image.size
    if w * h <= MAX_PIXELS:
        return
    if image.format == "JPEG":
        for scale in (2, 4, 8):
            if (-(-w // scale)) * (-(-h // scale)) <= MAX_PIXELS:
                image.draft(image.mode, (-(-w // scale), -(-h // scale)))
                return
    raise ImageError(f"{name} is {w}x{h} pixels; mgm-mlx reads images of up to {MAX_PIXELS // 1_000_000} "
                     f"megapixels ({64 * MAX_PIXELS // 1_000_000} for JPEG); shrink it first")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = _to_8bit(a)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError("image array has NaN or infinite values")
        scale = 255.0 if a.max() <= 1.0 else 1.0  # [0, 1] floats or [0, 255] floats
        a = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image array dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_8bit(a: np.ndarray) -> np.ndarray:
    # 16-bit data maps 65535 -> 255; 8-bit data stored in a wide mode stays as it is.
    a = a.astype(np.float64)
    if a.max() > 255:
        a = a / 257.0
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Alpha is dropped as the reference's convert('RGB') does."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_to_8bit(np.asarray(image))).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def expand2square(image: Image.Image, color=PAD_COLOR) -> Image.Image:
    """Centre the image on a square canvas of the mean colour (mm_utils.expand2square).
    Written out: ImageOps.pad resizes too, and rounds the offsets differently."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess(source, image_size: int) -> np.ndarray:
    """Image -> normalised float32 array [image_size, image_size, 3] (channels last)."""
    image = load_image(source)
    side = max(image.size)
    if side > MAX_CANVAS_SIDE:
        s = MAX_CANVAS_SIDE / side
        image = image.resize(
            (max(1, round(image.width * s)), max(1, round(image.height * s))),
            Image.BICUBIC,
        )
    image = expand2square(image).resize((image_size, image_size), Image.BICUBIC)
    x = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
