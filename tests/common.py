"""Inputs shared by the tests and the golden-file script; no torch, no randomness."""

from pathlib import Path

import numpy as np

GOLDENS = Path(__file__).parent / "goldens"
TINY = GOLDENS / "tiny-mgm"
# The HD config differs from the non-HD one only in these fields (same weights).
HD_FIELDS = {"image_size_aux": 1536, "image_grid": 2, "image_global": True, "tokenizer_model_max_length": 4096}
# Sizes used for preprocessing goldens: the real 768 plus a small one for the many modes.
SMALL = 96
TOL = 1e-4  # fp32 max-abs error allowed against PyTorch


def smooth(shape, seed=0.0) -> np.ndarray:
    """Deterministic, busy float32 values in [-1, 1] (the same on every platform)."""
    i = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return (np.sin(i * 0.7071 + seed) * np.cos(i * 0.01371 + 2 * seed)).astype(np.float32)


def sample_array(h=200, w=300) -> np.ndarray:
    """A non-square uint8 RGB test picture: gradients, a disc and stripes."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 255 * y / (h - 1)
    b = 128 + 127 * np.sin(x / 7.0) * np.cos(y / 11.0)
    disc = (x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.25 * h) ** 2
    r[disc], g[disc], b[disc] = 250, 30, 60
    img = np.stack([r, g, b], -1)
    img[:, ::17] = 0
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def mode_variants():
    """The sample picture in the Pillow modes the preprocessing must handle."""
    from PIL import Image

    rgb = Image.fromarray(sample_array())
    alpha = Image.fromarray((sample_array()[..., 0] // 2 + 64).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    return {
        "rgb": rgb,
        "rgba": rgba,
        "palette": rgb.quantize(64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE),
        "gray": rgb.convert("L"),
        "cmyk": rgb.convert("CMYK"),
        "tall": rgb.transpose(Image.Transpose.ROTATE_90),
    }
