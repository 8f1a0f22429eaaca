"""Time MGM's image path at full size with random weights (no download needed).

    python benchmarks/vision.py                      # MGM-2B shapes, 768, float16
    python benchmarks/vision.py --hd --dtype bfloat16 float32 --runs 5 --json

Prints CLIP / ConvNeXt / mining milliseconds (median of --runs after --warmup), peak
memory and the output shape. On a Mac this runs on the GPU; on Linux on the MLX CPU
backend, where one 768 image takes minutes.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx.clip import VisionConfig
from mgm_mlx.convnext import ConvNeXtConfig
from mgm_mlx.vision import MGMVision, VisionArgs

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map


def build(hd: bool, hidden: int, dtype) -> MGMVision:
    args = VisionArgs(image_size_aux=1536, image_grid=2, image_global=True) if hd else VisionArgs()
    model = MGMVision(args, VisionConfig(), ConvNeXtConfig(), hidden)
    # Trained layer scales are small; ones would let 36 residual blocks blow up in float16.
    for stage in model.vision_tower_aux.vision_stages:
        for block in stage.blocks:
            block.gamma = mx.full(block.gamma.shape, 0.1)
    model.update(tree_map(lambda p: p.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hd", action="store_true", help="HD: 1536 input, 2x2 tiles + global view")
    parser.add_argument("--dtype", nargs="+", default=["float16"], choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--hidden", type=int, default=2048, help="LLM width (2048 for MGM-2B, 4096 for 7B/8B)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object per dtype")
    args = parser.parse_args()

    size = 1536 if args.hd else 768
    print(f"# {platform.platform()} | {platform.processor() or platform.machine()} | mlx {mx.__version__} | "
          f"device {mx.default_device()} | {'HD ' if args.hd else ''}{size}px | hidden {args.hidden}", file=sys.stderr)
    rng = np.random.default_rng(0)
    pixels = mx.array(rng.standard_normal((1, size, size, 3)).astype(np.float32))
    for name in args.dtype:
        model = build(args.hd, args.hidden, getattr(mx, name))
        mx.reset_peak_memory()
        runs = []
        for i in range(args.warmup + args.runs):
            timings = {}
            tic = time.perf_counter()
            tokens = model(pixels, timings=timings)
            timings["total"] = 1000 * (time.perf_counter() - tic)
            if i >= args.warmup:
                runs.append(timings)
        result = {
            "dtype": name,
            "hd": args.hd,
            **{k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]},
            "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 3),
            "tokens": list(tokens.shape),
            "finite": bool(mx.all(mx.isfinite(tokens)).item()),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{name:>9}: CLIP {result['clip']:.0f} ms | ConvNeXt {result['convnext']:.0f} ms | "
                  f"mining {result['mining']:.0f} ms | total {result['total']:.0f} ms | "
                  f"peak {result['peak_memory_gb']:.2f} GB | tokens {tuple(tokens.shape)} | "
                  f"finite {result['finite']}")
        del model, tokens


if __name__ == "__main__":
    main()
