"""Turn images into MGM image tokens with the Python API.

    python examples/encode_image.py --model tests/goldens/tiny-mgm --image examples/house.png

`--model` is an MGM checkpoint folder (config.json + safetensors). Prints the token shape
and where the time went (CLIP, ConvNeXt, patch info mining).
"""

import argparse
import sys

import mgm_mlx

import mlx.core as mx


def main():
    parser = argparse.ArgumentParser(description="Encode images into MGM image tokens.")
    parser.add_argument("--model", required=True, help="MGM checkpoint folder")
    parser.add_argument("--image", required=True, nargs="+", help="image files")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()

    try:
        vision = mgm_mlx.load_vision(args.model, dtype=getattr(mx, args.dtype))
        size = vision.args.image_size_aux
        pixels = mx.stack([mx.array(mgm_mlx.preprocess(path, size)) for path in args.image])
    except (mgm_mlx.ImageError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

    timings = {}
    tokens = vision(pixels, timings=timings)
    print(f"{len(args.image)} image(s) -> tokens {tuple(tokens.shape)} {tokens.dtype}")
    print(" | ".join(f"{name} {ms:.0f} ms" for name, ms in timings.items()))


if __name__ == "__main__":
    main()
