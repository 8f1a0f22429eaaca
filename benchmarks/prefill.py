"""Prefill through a 4-bit LLM with and without the Linux CPU quantized-prefill route
(mgm_mlx/linux_cpu.py), alternating in one process on the same random weights.

    python benchmarks/prefill.py                     # Gemma-2B shapes (MGM-2B), 32 tokens
    python benchmarks/prefill.py --prompt 128 --runs 5

Prints prefill tokens-per-second for both (median of --runs after a warm-up) and the ratio.
"""

import argparse
import statistics
import sys
import time

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx import linux_cpu
from mgm_mlx.language import build

import mlx.core as mx
import mlx.nn as nn
from decode import GEMMA_2B, SMALL
from mlx_lm.models.cache import make_prompt_cache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 4-layer 512-wide Gemma")
    parser.add_argument("--bits", type=int, default=4, choices=[4, 8])
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    config = SMALL if args.small else GEMMA_2B
    model = build(config)
    nn.quantize(model, 64, args.bits)
    mx.eval(model.parameters())
    if not linux_cpu.route_quantized_prefill(model):
        sys.exit("the route is off here (not Linux, not the CPU, or MGM_MLX_NO_CPU_PATH is set)")
    routed = type(model.model.layers[0].mlp.gate_proj)
    layers = [m for _, m in model.named_modules() if type(m) is routed]
    ids = mx.array([[3 + (7 * i) % 997 for i in range(args.prompt)]])

    def prefill(route: bool) -> float:
        for m in layers:
            m.__class__ = routed if route else nn.QuantizedLinear
        cache = make_prompt_cache(model)
        tic = time.perf_counter()
        model(ids[:, :-1], cache=cache)  # as mlx-lm's generate_step: the cache, then the last token
        mx.eval([c.state for c in cache])
        mx.eval(model(ids[:, -1:], cache=cache))
        return args.prompt / (time.perf_counter() - tic)

    prefill(True), prefill(False)  # warm-up
    on, off = [], []
    for i in range(args.runs):  # alternate who goes first
        for route in ((True, False) if i % 2 == 0 else (False, True)):
            (on if route else off).append(prefill(route))
    a, b = statistics.median(on), statistics.median(off)
    print(f"# mlx {mx.__version__} | {mx.default_device()} | OpenBLAS {linux_cpu.OPENBLAS} | "
          f"{'small' if args.small else 'Gemma-2B'} {args.bits}-bit | {args.prompt} tokens x {args.runs}", file=sys.stderr)
    print(f"prefill with the route: {a:.2f} tok/s | quantized_matmul: {b:.2f} tok/s | speed-up {a / b:.2f}x")
    print(f"  runs: route {[round(x, 2) for x in on]} | quantized_matmul {[round(x, 2) for x in off]}")


if __name__ == "__main__":
    main()
