"""One question about one image.

    python examples/ask.py --image examples/house.png "What is in the picture?"   # the default model
    python examples/ask.py --model mgm-2b-4bit
"""

import argparse
import sys
from pathlib import Path

import mgm_mlx
from mgm_mlx.default_model import default_model

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="a converted folder, a released folder or a repo id "
                    "(default: MGM-2B, downloaded and converted to 4 bits once)")
parser.add_argument("--image", default=str(Path(__file__).with_name("house.png")))
parser.add_argument("question", nargs="?", default="What is in the picture?")
args = parser.parse_args()

try:
    model, processor = mgm_mlx.load(args.model or default_model())
    mgm_mlx.generate(model, processor, args.question, [args.image], max_tokens=200, verbose=True)
except (FileNotFoundError, ValueError, OSError) as e:  # mgm_mlx.ImageError is a ValueError
    sys.exit(f"error: {e}")
