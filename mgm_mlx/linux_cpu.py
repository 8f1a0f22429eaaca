"""Linux CPU speed-ups: the system's OpenBLAS for MLX's float32 matmuls, and a BLAS route
for prefill through quantized layers.

The `mlx[cpu]` wheel uses a slow reference BLAS (about 5 GFLOP/s for float32 on a 2-core
box). Loading OpenBLAS (Debian/Ubuntu: `apt install libopenblas0-pthread`) into the global
symbol namespace *before* MLX loads makes MLX use it (about 190 GFLOP/s on the same box).
It only works if nothing imported mlx earlier; `import mgm_mlx` first, or run with
LD_PRELOAD=libopenblas.so.0. Set MGM_MLX_NO_OPENBLAS=1 to turn it off. Never on macOS.

On the CPU, `quantized_matmul` costs the same per row as for one row (0.9 s for 32 rows of a
4-bit 16384x2048 weight on 2 cores), so a prompt through a 4-bit model takes minutes. Past
PREFILL_ROWS rows, QuantizedLinear layers of a loaded model dequantize their weight to
float32 and use the BLAS matmul instead (0.2 s for any row count up to a few hundred);
decode (one row) keeps `quantized_matmul`. MGM_MLX_NO_CPU_PATH=1 turns off both speed-ups.
"""

import ctypes
import ctypes.util
import os
import sys
from functools import cache

NAMES = ("libopenblas.so.0", "libopenblasp-r0.so", "libopenblas.so")
OPENBLAS = None  # the library that was loaded, if any
PREFILL_ROWS = 8  # from here on dequantize + BLAS beats quantized_matmul (measured crossover ~7)


def enabled() -> bool:
    """The Linux CPU path applies: Linux, and not switched off."""
    return sys.platform.startswith("linux") and not os.environ.get("MGM_MLX_NO_CPU_PATH")


def preload_openblas():
    global OPENBLAS
    if not enabled() or os.environ.get("MGM_MLX_NO_OPENBLAS"):
        return None
    if "mlx.core" in sys.modules or OPENBLAS:
        return OPENBLAS  # too late to change MLX's BLAS (or already done)
    for name in NAMES + ((ctypes.util.find_library("openblas") or "",)):
        if not name:
            continue
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        OPENBLAS = name
        break
    return OPENBLAS


def route_quantized_prefill(model) -> int:
    """Give the plain QuantizedLinear layers of `model` the prefill route (on a Linux CPU
    device only; never on macOS). Returns how many layers got it. MoE experts
    (mlx-lm's QuantizedSwitchLinear) and quantized embeddings are left as they are."""
    import mlx.core as mx
    from mlx import nn

    if not enabled() or mx.default_device().type != mx.cpu:
        return 0
    routed = _prefill_class()
    n = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = routed
            n += 1
    return n


@cache
def _prefill_class():
    import mlx.core as mx
    from mlx import nn

    class PrefillQuantizedLinear(nn.QuantizedLinear):
        """QuantizedLinear that, for PREFILL_ROWS rows or more on the CPU, runs a float32
        BLAS matmul on the dequantized weight (made per call, never kept)."""

        def __call__(self, x):
            if x.size < PREFILL_ROWS * x.shape[-1] or mx.default_device().type != mx.cpu:
                return super().__call__(x)
            y = x.astype(mx.float32) @ dequantize(self).T
            if "bias" in self:
                y = y + self["bias"]
            return y.astype(x.dtype)

    return PrefillQuantizedLinear


def dequantize(layer):
    """A quantized layer's weight in float32; affine 2/4/8-bit by shifts and masks (twice as
    fast as mx.dequantize on the CPU), anything else through mx.dequantize."""
    import mlx.core as mx

    w, scales, biases = layer["weight"], layer["scales"], layer.get("biases")
    bits, group = layer.bits, layer.group_size
    if getattr(layer, "mode", "affine") != "affine" or 32 % bits:
        return mx.dequantize(w, scales, biases, group, bits, mode=layer.mode).astype(mx.float32)
    shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
    q = (w[..., None] >> shifts) & ((1 << bits) - 1)
    q = q.reshape(*scales.shape, group).astype(mx.float32)
    q = q * scales[..., None].astype(mx.float32) + biases[..., None].astype(mx.float32)
    return q.reshape(*w.shape[:-1], -1)
