"""Array operations the model files share: PyTorch's bilinear resize and square windows.

`resize_bilinear` is written out rather than taken from `nn.Upsample`: MGM resizes with
`F.interpolate(align_corners=False, antialias=False)` in float32, and only the same taps,
clamping and rounding give the same numbers.
"""

import mlx.core as mx
import numpy as np


def _bilinear_taps(out_size: int, in_size: int):
    # PyTorch align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0, float32.
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0.astype(np.float32)
    return mx.array(i0), mx.array(i1), mx.array(w1)


def resize_bilinear(x: mx.array, size) -> mx.array:
    """Bilinear resize of NHWC `x` to `size` (h, w) like F.interpolate(align_corners=False,
    antialias=False). Computed in float32, returned in x.dtype."""
    h, w = size
    dtype = x.dtype
    x = x.astype(mx.float32)
    if x.shape[1] != h:
        i0, i1, w1 = _bilinear_taps(h, x.shape[1])
        w1 = w1[:, None, None]
        x = mx.take(x, i0, axis=1) * (1 - w1) + mx.take(x, i1, axis=1) * w1
    if x.shape[2] != w:
        i0, i1, w1 = _bilinear_taps(w, x.shape[2])
        w1 = w1[:, None]
        x = mx.take(x, i0, axis=2) * (1 - w1) + mx.take(x, i1, axis=2) * w1
    return x.astype(dtype)


def windows(x: mx.array, n: int) -> mx.array:
    """[B, n*s, n*s, C] -> [B, n*n, s, s, C]: an n x n grid of windows, row-major.

    HD splits the image into its 2x2 tiles with it (tile00, tile01, tile10, tile11), and
    patch info mining the high-res map into one window per CLIP token."""
    b, h, w, c = x.shape
    x = x.reshape(b, n, h // n, n, w // n, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, n * n, h // n, w // n, c)


def lowres_views(pixels: mx.array, size: int, grid: int = 1, use_global: bool = False):
    """High-res pixels [B, S, S, 3] -> CLIP inputs [B * views, size, size, 3].

    The reference derives them from the normalised high-res tensor with a bilinear resize.
    Views per image are the grid tiles in row-major order, then the global view (HD).
    """
    lr = resize_bilinear(pixels, (size * grid, size * grid))
    if grid == 1:
        return lr
    views = windows(lr, grid)
    if use_global:
        glob = resize_bilinear(lr, (size, size))[:, None]
        views = mx.concatenate([views, glob], axis=1)
    return views.reshape(-1, size, size, 3)
