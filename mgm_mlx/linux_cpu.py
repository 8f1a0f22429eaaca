"""Linux CPU speed-up: use the system's OpenBLAS for MLX's float32 matmuls.

The `mlx[cpu]` wheel uses a slow reference BLAS (about 5 GFLOP/s for float32 on a 2-core
box). Loading OpenBLAS (Debian/Ubuntu: `apt install libopenblas0-pthread`) into the global
symbol namespace *before* MLX loads makes MLX use it (about 190 GFLOP/s on the same box).
It only works if nothing imported mlx earlier; `import mgm_mlx` first, or run with
LD_PRELOAD=libopenblas.so.0. Set MGM_MLX_NO_OPENBLAS=1 to turn it off. Never on macOS.
"""

import ctypes
import ctypes.util
import os
import sys

NAMES = ("libopenblas.so.0", "libopenblasp-r0.so", "libopenblas.so")
OPENBLAS = None  # the library that was loaded, if any


def preload_openblas():
    global OPENBLAS
    if not sys.platform.startswith("linux") or os.environ.get("MGM_MLX_NO_OPENBLAS"):
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
